"""Linear evaluation: logistic regression on frozen features.

The fast, exact protocol for features that fit in memory (the paper's SGD protocol, for any
split size, is `evaluation/linear_sgd.py`):
- `linear_eval` (and `pixel_baseline`): Features are extracted once,
  standardised with the training mean/std, and an L2-regularised multinomial logistic regression
  is solved to convergence with full-batch L-BFGS in JAX. No learning rate or epoch count to tune,
  so numbers are comparable across runs. The weight decay is `config.eval.l2_reg`, or, when
  `config.eval.l2_reg_grid` is set, the grid value that k-fold cross-validation on the labelled
  training examples picks (as the paper's L-BFGS linear evaluation chooses its regularisation on
  held-out training data): a fixed value over-regularises some label counts and under-
  regularises others (docs/evaluation.md). `probe_kwargs(config)` gives these settings.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from simclr_jax.evaluation import features as features_lib
from simclr_jax.evaluation import subsets


@dataclasses.dataclass(frozen=True)
class LinearClassifier:
  """A fitted logistic regression on standardised features.

  Attributes:
    kernel: `[D, C]` weights acting on standardised features.
    bias: `[C]`.
    mean: `[D]` training-feature mean used for standardisation.
    std: `[D]` training-feature std used for standardisation (1 where the feature is constant).
    num_iters: L-BFGS iterations run.
    grad_norm: L2 norm of the objective's gradient at the solution (convergence diagnostic).
    train_loss: regularised objective at the solution.
    l2_reg: the weight decay it was fitted with (chosen by cross-validation when a grid was given).
    cv_top1: `{l2_reg: mean held-out top-1}` of the cross-validation, empty without a grid.
  """
  kernel: np.ndarray
  bias: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  num_iters: int
  grad_norm: float
  train_loss: float
  l2_reg: float
  cv_top1: Mapping[float, float]

  def logits(self, features: np.ndarray) -> np.ndarray:
    """Class scores for raw (unstandardised) features `[N, D]` -> `[N, C]`."""
    standardised = (np.asarray(features, np.float32) - self.mean) / self.std
    return standardised @ self.kernel + self.bias


def _standardisation(train_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  # float64 statistics: a float32 running sum over 60k x 2048 features loses digits.
  mean = train_features.mean(axis=0, dtype=np.float64)
  std = train_features.std(axis=0, dtype=np.float64)
  # Constant features (e.g. always-black border pixels) would divide by zero; leave them unscaled.
  std = np.where(std < 1e-8, 1.0, std)
  return mean.astype(np.float32), std.astype(np.float32)


def _objective(params: Mapping[str, jax.Array], features: jax.Array, one_hot: jax.Array,
               weights: jax.Array, l2_reg: float) -> jax.Array:
  # Weighted mean cross-entropy + l2_reg/2 * |W|^2 (bias not penalised); with 0/1 weights it is
  # the objective on the examples weighted 1, the same as sklearn's
  # LogisticRegression(C=1 / (l2_reg * N)) on them.
  logits = features @ params['kernel'] + params['bias']
  cross_entropy = optax.softmax_cross_entropy(logits, one_hot)
  cross_entropy = jnp.sum(weights * cross_entropy) / jnp.sum(weights)
  return cross_entropy + 0.5 * l2_reg * jnp.sum(jnp.square(params['kernel']))


def _lbfgs(features: jax.Array, labels: jax.Array, weights: jax.Array, l2_reg: jax.Array,
           tol: jax.Array, *, num_classes: int, max_iters: int):
  """Minimises `_objective` with L-BFGS + zoom line search until |grad| < tol or max_iters."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  objective = functools.partial(_objective, features=features, one_hot=one_hot, weights=weights,
                                l2_reg=l2_reg)
  solver = optax.lbfgs()
  # Reuses the value and gradient the line search already computed at the accepted point.
  value_and_grad = optax.value_and_grad_from_state(objective)
  params = {'kernel': jnp.zeros((features.shape[1], num_classes), jnp.float32),
            'bias': jnp.zeros((num_classes,), jnp.float32)}

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=objective)
    return optax.apply_updates(params, updates), state

  def not_converged(carry):
    _, state = carry
    num_iters = otu.tree_get(state, 'count')
    grad_norm = otu.tree_norm(otu.tree_get(state, 'grad'))
    return (num_iters == 0) | ((num_iters < max_iters) & (grad_norm >= tol))

  params, state = jax.lax.while_loop(not_converged, step, (params, solver.init(params)))
  return (params, otu.tree_get(state, 'count'), otu.tree_norm(otu.tree_get(state, 'grad')),
          otu.tree_get(state, 'value'))


_fit_lbfgs = jax.jit(_lbfgs, static_argnames=('num_classes', 'max_iters'))


def cv_fold_ids(labels: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
  """Stratified fold of each example `[N]` in `[0, folds)`: every class is shuffled with
  `np.random.default_rng(seed)` and dealt round-robin, so each fold holds ~1/folds of every
  class. Raises if a class has fewer than `folds` examples."""
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  if folds < 2:
    raise ValueError(f'cross-validation needs at least 2 folds, got {folds} '
                     '(config.eval.l2_reg_folds)')
  if counts.min() < folds:
    raise ValueError(f'class {classes[counts.argmin()]} has {counts.min()} labelled examples, '
                     f'fewer than the {folds} cross-validation folds: lower '
                     'config.eval.l2_reg_folds, or set config.eval.l2_reg_grid=() to use the '
                     'fixed config.eval.l2_reg')
  rng = np.random.default_rng(seed)
  fold = np.empty(labels.shape, np.int64)
  for c in classes:
    members = rng.permutation(np.flatnonzero(labels == c))
    fold[members] = np.arange(members.size) % folds
  return fold


def select_l2_reg(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    *,
    num_classes: int,
    grid: Sequence[float],
    folds: int = 5,
    seed: int = 0,
    max_iters: int = 500,
    tol: float = 1e-5,
) -> tuple[float, dict[float, float]]:
  """Picks the weight decay by stratified k-fold cross-validation on the labelled examples only.

  For every value of `grid` and every fold, the classifier is fitted on the other folds
  (standardised with the statistics of all the given features, which use no labels) and scored
  on the fold; the value with the best mean held-out top-1 wins, the larger value on a tie.
  The test set takes no part. Each fit weights the held-out fold 0 rather than slicing it out,
  so all `len(grid) * folds` fits share one compiled program. (Run together under vmap they
  were slower: the batched L-BFGS steps until its slowest member, the weakest decay, is done.)

  Args:
    train_features: `[N, D]` features of the labelled examples.
    train_labels: `[N]` int.
    num_classes: number of classes C.
    grid: candidate weight decays (config.eval.l2_reg_grid).
    folds: number of folds (config.eval.l2_reg_folds).
    seed: fold-assignment seed.
    max_iters: L-BFGS iteration cap.
    tol: gradient-norm stopping tolerance.

  Returns:
    `(chosen l2_reg, {l2_reg: mean held-out top-1})`.
  """
  mean, std = _standardisation(np.asarray(train_features, np.float32))
  standardised = jnp.asarray((np.asarray(train_features, np.float32) - mean) / std)
  return _select_l2_reg(standardised, np.asarray(train_labels), num_classes=num_classes,
                        grid=grid, folds=folds, seed=seed, max_iters=max_iters, tol=tol)


def _select_l2_reg(features: jax.Array, labels: np.ndarray, *, num_classes: int,
                   grid: Sequence[float], folds: int, seed: int, max_iters: int,
                   tol: float) -> tuple[float, dict[float, float]]:
  """`select_l2_reg` on features already standardised (fit_linear_classifier's own)."""
  grid = sorted(float(g) for g in grid)
  if not grid or min(grid) < 0:
    raise ValueError(f'config.eval.l2_reg_grid must hold weight decays >= 0, got {grid}')
  fold = cv_fold_ids(labels, folds=folds, seed=seed)
  labels_device = jnp.asarray(labels, jnp.int32)
  scores = {}
  for l2 in grid:
    fold_top1 = []
    for k in range(folds):
      params = _fit_lbfgs(features, labels_device, jnp.asarray(fold != k, jnp.float32),
                          jnp.float32(l2), jnp.float32(tol), num_classes=num_classes,
                          max_iters=max_iters)[0]
      held_out = fold == k
      logits = np.asarray(features[held_out] @ params['kernel'] + params['bias'])
      fold_top1.append(features_lib.topk_accuracy(logits, labels[held_out], 1))
    scores[l2] = float(np.mean(fold_top1))
  best = max(grid, key=lambda g: (scores[g], g))
  return best, scores


def probe_kwargs(config) -> dict[str, Any]:
  """The fast linear probe's settings from a config: `linear_eval(..., **probe_kwargs(config))`."""
  return dict(l2_reg=config.eval.l2_reg, max_iters=config.eval.max_iters,
              l2_grid=tuple(config.eval.l2_reg_grid), cv_folds=config.eval.l2_reg_folds,
              cv_seed=config.seed)


def fit_linear_classifier(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    *,
    num_classes: int,
    l2_reg: float = 1e-4,
    max_iters: int = 500,
    tol: float = 1e-5,
    l2_grid: Sequence[float] = (),
    cv_folds: int = 5,
    cv_seed: int = 0,
) -> LinearClassifier:
  """Fits an L2-regularised multinomial logistic regression with full-batch L-BFGS.

  Minimises `mean_i CE(W x_i + b, y_i) + l2_reg / 2 * |W|_F^2` over standardised features
  `x = (f - mean) / std` (train statistics). This is sklearn's
  `LogisticRegression(C=1 / (l2_reg * N))` on the same standardised features.

  Args:
    train_features: `[N, D]` features.
    train_labels: `[N]` int labels in `[0, num_classes)`.
    num_classes: number of classes C.
    l2_reg: weight decay on W (config.eval.l2_reg), used when `l2_grid` is empty; < 0: 1 / N,
      scikit-learn's default `C=1` on these N labelled examples (the regularisation grows as
      the labels get fewer).
    max_iters: L-BFGS iteration cap (config.eval.max_iters).
    tol: stop once the gradient's L2 norm falls below this.
    l2_grid: candidate weight decays; when given, `select_l2_reg` picks one by `cv_folds`-fold
      cross-validation on these labelled examples (config.eval.l2_reg_grid).
    cv_folds: cross-validation folds (config.eval.l2_reg_folds).
    cv_seed: fold-assignment seed.

  Returns:
    The fitted `LinearClassifier`.
  """
  train_features = np.asarray(train_features, np.float32)
  train_labels = np.asarray(train_labels)
  if train_features.ndim != 2 or train_labels.shape != train_features.shape[:1]:
    raise ValueError(f'want features [N, D] and labels [N], got {train_features.shape} and '
                     f'{train_labels.shape}')
  mean, std = _standardisation(train_features)
  standardised = jnp.asarray((train_features - mean) / std)
  cv_top1 = {}
  if l2_grid:
    l2_reg, cv_top1 = _select_l2_reg(standardised, train_labels, num_classes=num_classes,
                                     grid=l2_grid, folds=cv_folds, seed=cv_seed,
                                     max_iters=max_iters, tol=tol)
  elif l2_reg < 0:
    l2_reg = 1.0 / len(train_labels)
  params, num_iters, grad_norm, value = _fit_lbfgs(
      standardised, jnp.asarray(train_labels, jnp.int32),
      jnp.ones(train_labels.shape, jnp.float32), jnp.float32(l2_reg), jnp.float32(tol),
      num_classes=num_classes, max_iters=max_iters)
  return LinearClassifier(kernel=np.asarray(params['kernel']), bias=np.asarray(params['bias']),
                          mean=mean, std=std, num_iters=int(num_iters),
                          grad_norm=float(grad_norm), train_loss=float(value),
                          l2_reg=float(l2_reg), cv_top1=cv_top1)


def linear_eval(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    **fit_kwargs,
) -> dict[str, Any]:
  """Fast exact linear evaluation: fit on train features, report accuracy on test features.

  Args:
    train_features: `[N, D]`.
    train_labels: `[N]` int.
    test_features: `[M, D]`.
    test_labels: `[M]` int.
    num_classes: number of classes C.
    fit_kwargs: `fit_linear_classifier`'s options (l2_reg, max_iters, tol, l2_grid, cv_folds,
      cv_seed); `probe_kwargs(config)` gives them from a config.

  Returns:
    `dict(top1=float, top5=float, train_top1=float, l2_reg=the weight decay used,
    classifier=LinearClassifier)`.
  """
  classifier = fit_linear_classifier(train_features, train_labels, num_classes=num_classes,
                                     **fit_kwargs)
  test_logits = classifier.logits(test_features)
  train_logits = classifier.logits(train_features)
  return dict(
      top1=features_lib.topk_accuracy(test_logits, test_labels, 1),
      top5=features_lib.topk_accuracy(test_logits, test_labels, 5),
      train_top1=features_lib.topk_accuracy(train_logits, train_labels, 1),
      l2_reg=classifier.l2_reg,
      classifier=classifier,
  )


def pixel_baseline(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    **fit_kwargs,
) -> dict[str, Any]:
  """`linear_eval` on flattened raw pixels: the floor a learned representation must beat.

  Args:
    train_images: `[N, H, W, C]` uint8 or float in [0, 1].
    train_labels: `[N]` int.
    test_images: `[M, H, W, C]`, same format.
    test_labels: `[M]` int.
    num_classes: number of classes C.
    fit_kwargs: `fit_linear_classifier`'s options (l2_reg, max_iters, tol, l2_grid, cv_folds,
      cv_seed); `probe_kwargs(config)` gives them from a config.

  Returns:
    Same dict as `linear_eval`.
  """
  return linear_eval(pixel_features(train_images), train_labels, pixel_features(test_images),
                     test_labels, num_classes=num_classes, **fit_kwargs)


def pixel_features(images: np.ndarray) -> np.ndarray:
  """Raw pixels as features: `[N, H, W, C]` images -> float32 `[N, H * W * C]` in [0, 1]."""
  images = features_lib.to_model_input(np.asarray(images))
  return images.reshape(images.shape[0], -1)


def label_fraction_eval(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    fraction: float,
    seeds: Sequence[int],
    num_classes: int,
    **fit_kwargs,
) -> dict[str, Any]:
  """`linear_eval` with a class-balanced fraction of the labels, averaged over label subsets.

  With 1% of the labels the drawn subset matters: on Fashion-MNIST (600 labels) the test top-1
  of one encoder spreads by ~0.5 points (std) from one subset to the next, more than the gaps
  being compared (docs/evaluation.md). So each seed draws its own subset
  (`subsets.label_fraction_indices`), a classifier is fitted on it, and the mean is reported
  with the spread. `fraction=1.0` has one subset (all labels) and is fitted once.

  Args:
    train_features: `[N, D]` features of the whole training split.
    train_labels: `[N]` int.
    test_features: `[M, D]`.
    test_labels: `[M]` int.
    fraction: share of the labels, in (0, 1].
    seeds: subset seeds, one fit each (at least one).
    num_classes: number of classes C.
    fit_kwargs: `fit_linear_classifier`'s options (l2_reg, max_iters, tol, l2_grid, cv_folds,
      cv_seed); `probe_kwargs(config)` gives them from a config.

  Returns:
    `dict(top1=mean, top5=mean, top1_std=population std, top1_runs=[per seed], seeds=[used],
    num_labels=labelled examples per subset, l2_regs=[weight decay per seed])`.
  """
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError('label_fraction_eval needs at least one subset seed '
                     '(config.eval.label_subsets >= 1).')
  if fraction == 1.0:
    seeds = seeds[:1]  # every "subset" is the whole split
  top1, top5, l2_regs, num_labels = [], [], [], 0
  for seed in seeds:
    idx = subsets.label_fraction_indices(train_labels, fraction=fraction, seed=seed)
    res = linear_eval(train_features[idx], train_labels[idx], test_features, test_labels,
                      num_classes=num_classes, **fit_kwargs)
    top1.append(res['top1'])
    top5.append(res['top5'])
    l2_regs.append(res['l2_reg'])
    num_labels = int(len(idx))
  return dict(top1=float(np.mean(top1)), top5=float(np.mean(top5)),
              top1_std=float(np.std(top1)), top1_runs=top1, seeds=seeds, num_labels=num_labels,
              l2_regs=l2_regs)
