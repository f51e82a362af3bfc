"""Linear evaluation: logistic regression on frozen features.

Two protocols:
- `linear_eval` (and `pixel_baseline`): the fast, exact one for CPU. Features are extracted once,
  standardised with the training mean/std, and an L2-regularised multinomial logistic regression
  is solved to convergence with full-batch L-BFGS in JAX. No learning rate or epoch count to tune,
  so numbers are comparable across runs. This is what `config.eval.l2_reg` / `max_iters` drive.
- `linear_eval_official`: the SimCLR paper's protocol (Appendix B.6): frozen encoder with BN in
  inference mode, a linear layer on h trained with Nesterov momentum SGD and cosine decay, no
  weight decay, on randomly cropped and flipped images for a number of epochs. Slower (the encoder
  runs on every augmented batch); use it to reproduce the paper's setting.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from simclr_jax.evaluation import finetune as finetune_lib
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
  """
  kernel: np.ndarray
  bias: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  num_iters: int
  grad_norm: float
  train_loss: float

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
               l2_reg: float) -> jax.Array:
  # Mean cross-entropy + l2_reg/2 * |W|^2 (bias not penalised), the same objective as
  # sklearn's LogisticRegression(C=1 / (l2_reg * N)).
  logits = features @ params['kernel'] + params['bias']
  cross_entropy = optax.softmax_cross_entropy(logits, one_hot).mean()
  return cross_entropy + 0.5 * l2_reg * jnp.sum(jnp.square(params['kernel']))


@functools.partial(jax.jit, static_argnames=('num_classes', 'max_iters'))
def _fit_lbfgs(features: jax.Array, labels: jax.Array, l2_reg: jax.Array, tol: jax.Array, *,
               num_classes: int, max_iters: int):
  """Minimises `_objective` with L-BFGS + zoom line search until |grad| < tol or max_iters."""
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  objective = functools.partial(_objective, features=features, one_hot=one_hot, l2_reg=l2_reg)
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


def fit_linear_classifier(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    *,
    num_classes: int,
    l2_reg: float = 1e-4,
    max_iters: int = 500,
    tol: float = 1e-5,
) -> LinearClassifier:
  """Fits an L2-regularised multinomial logistic regression with full-batch L-BFGS.

  Minimises `mean_i CE(W x_i + b, y_i) + l2_reg / 2 * |W|_F^2` over standardised features
  `x = (f - mean) / std` (train statistics). This is sklearn's
  `LogisticRegression(C=1 / (l2_reg * N))` on the same standardised features.

  Args:
    train_features: `[N, D]` features.
    train_labels: `[N]` int labels in `[0, num_classes)`.
    num_classes: number of classes C.
    l2_reg: weight decay on W (config.eval.l2_reg).
    max_iters: L-BFGS iteration cap (config.eval.max_iters).
    tol: stop once the gradient's L2 norm falls below this.

  Returns:
    The fitted `LinearClassifier`.
  """
  train_features = np.asarray(train_features, np.float32)
  train_labels = np.asarray(train_labels)
  if train_features.ndim != 2 or train_labels.shape != train_features.shape[:1]:
    raise ValueError(f'want features [N, D] and labels [N], got {train_features.shape} and '
                     f'{train_labels.shape}')
  mean, std = _standardisation(train_features)
  standardised = (train_features - mean) / std
  params, num_iters, grad_norm, value = _fit_lbfgs(
      jnp.asarray(standardised), jnp.asarray(train_labels, jnp.int32),
      jnp.float32(l2_reg), jnp.float32(tol), num_classes=num_classes, max_iters=max_iters)
  return LinearClassifier(kernel=np.asarray(params['kernel']), bias=np.asarray(params['bias']),
                          mean=mean, std=std, num_iters=int(num_iters),
                          grad_norm=float(grad_norm), train_loss=float(value))


def linear_eval(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    l2_reg: float = 1e-4,
    max_iters: int = 500,
    tol: float = 1e-5,
) -> dict[str, Any]:
  """Fast exact linear evaluation: fit on train features, report accuracy on test features.

  Args:
    train_features: `[N, D]`.
    train_labels: `[N]` int.
    test_features: `[M, D]`.
    test_labels: `[M]` int.
    num_classes: number of classes C.
    l2_reg: weight decay on W (config.eval.l2_reg).
    max_iters: L-BFGS iteration cap (config.eval.max_iters).
    tol: gradient-norm stopping tolerance.

  Returns:
    `dict(top1=float, top5=float, train_top1=float, classifier=LinearClassifier)`.
  """
  classifier = fit_linear_classifier(train_features, train_labels, num_classes=num_classes,
                                     l2_reg=l2_reg, max_iters=max_iters, tol=tol)
  test_logits = classifier.logits(test_features)
  train_logits = classifier.logits(train_features)
  return dict(
      top1=features_lib.topk_accuracy(test_logits, test_labels, 1),
      top5=features_lib.topk_accuracy(test_logits, test_labels, 5),
      train_top1=features_lib.topk_accuracy(train_logits, train_labels, 1),
      classifier=classifier,
  )


def pixel_baseline(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    l2_reg: float = 1e-4,
    max_iters: int = 500,
    tol: float = 1e-5,
) -> dict[str, Any]:
  """`linear_eval` on flattened raw pixels: the floor a learned representation must beat.

  Args:
    train_images: `[N, H, W, C]` uint8 or float in [0, 1].
    train_labels: `[N]` int.
    test_images: `[M, H, W, C]`, same format.
    test_labels: `[M]` int.
    num_classes: number of classes C.
    l2_reg: weight decay on W.
    max_iters: L-BFGS iteration cap.
    tol: gradient-norm stopping tolerance.

  Returns:
    Same dict as `linear_eval`.
  """
  def flatten(images):
    images = features_lib.to_model_input(np.asarray(images))
    return images.reshape(images.shape[0], -1)

  return linear_eval(flatten(train_images), train_labels, flatten(test_images), test_labels,
                     num_classes=num_classes, l2_reg=l2_reg, max_iters=max_iters, tol=tol)


def label_fraction_eval(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    fraction: float,
    seeds: Sequence[int],
    num_classes: int,
    l2_reg: float = 1e-4,
    max_iters: int = 500,
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
    l2_reg: weight decay on W (config.eval.l2_reg).
    max_iters: L-BFGS iteration cap (config.eval.max_iters).

  Returns:
    `dict(top1=mean, top5=mean, top1_std=population std, top1_runs=[per seed], seeds=[used],
    num_labels=labelled examples per subset)`.
  """
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError('label_fraction_eval needs at least one subset seed '
                     '(config.eval.label_subsets >= 1).')
  if fraction == 1.0:
    seeds = seeds[:1]  # every "subset" is the whole split
  top1, top5, num_labels = [], [], 0
  for seed in seeds:
    idx = subsets.label_fraction_indices(train_labels, fraction=fraction, seed=seed)
    res = linear_eval(train_features[idx], train_labels[idx], test_features, test_labels,
                      num_classes=num_classes, l2_reg=l2_reg, max_iters=max_iters)
    top1.append(res['top1'])
    top5.append(res['top5'])
    num_labels = int(len(idx))
  return dict(top1=float(np.mean(top1)), top5=float(np.mean(top5)),
              top1_std=float(np.std(top1)), top1_runs=top1, seeds=seeds, num_labels=num_labels)


def linear_eval_official(
    model: nn.Module,
    variables: Mapping[str, Any],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    epochs: float = 90,
    batch_size: int = 4096,
    learning_rate: float | None = None,
    momentum: float = 0.9,
    feature: str = 'h',
    seed: int = 0,
    augment_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = finetune_lib.crop_and_flip,
    eval_batch_size: int = 512,
) -> dict[str, Any]:
  """The SimCLR paper's linear evaluation protocol.

  The whole model is frozen and runs in inference mode (running BN statistics, no parameter or
  statistic changes); a zero-bias, N(0, 0.01^2)-initialised linear layer on `feature` is trained
  with Nesterov momentum SGD, cosine-decayed learning rate, no weight decay, on a fresh random
  crop + horizontal flip of every training image at every step (the encoder runs on each
  augmented batch, so nothing is precomputed). Test accuracy uses the un-augmented test images.
  Paper (ImageNet): batch 4096, 90 epochs, learning rate 0.1 * batch_size / 256.

  Args:
    model: a `ContrastiveModel`.
    variables: its `{'params', 'batch_stats'}`; only read.
    train_images: `[N, H, W, C]` uint8 or float in [0, 1].
    train_labels: `[N]` int.
    test_images: `[M, H, W, C]`.
    test_labels: `[M]` int.
    num_classes: number of classes C.
    epochs: passes over the training set (may be fractional); steps = ceil(epochs * N / batch).
    batch_size: training batch size.
    learning_rate: peak rate; None = 0.1 * batch_size / 256 as in the paper.
    momentum: Nesterov momentum.
    feature: `'h'` or `'head_<i>'`; the paper uses h.
    seed: drives the batch order, augmentation and classifier init.
    augment_fn: `(rng, images [B,H,W,C]) -> images`; None trains on the plain images.
    eval_batch_size: batch size of the test-set forward pass.

  Returns:
    `dict(top1=, top5=, classifier={'kernel': [D, C], 'bias': [C]})`.
  """
  if learning_rate is None:
    learning_rate = 0.1 * batch_size / 256
  steps = max(1, math.ceil(epochs * len(train_images) / batch_size))
  result = finetune_lib.train_classifier(
      model, variables, train_images, train_labels, test_images, test_labels,
      num_classes=num_classes, fine_tune_after_block=4, head_layer=features_lib.parse_feature(feature),
      train_head=False, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
      momentum=momentum, seed=seed, augment_fn=augment_fn, eval_batch_size=eval_batch_size)
  return dict(top1=result['top1'], top5=result['top5'], classifier=result['classifier'])
