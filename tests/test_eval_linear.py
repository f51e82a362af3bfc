"""Tests for simclr_jax.evaluation.linear: L-BFGS linear eval, pixel baseline, official protocol."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from simclr_jax.evaluation import data
from simclr_jax.evaluation import linear
from simclr_jax.evaluation import linear_sgd
from simclr_jax.evaluation import subsets
from simclr_jax.models import build_model
from tests import helpers


def _objective64(features, labels, kernel, bias, l2_reg):
  """Float64 NumPy value and gradients of mean CE + l2_reg / 2 * |W|^2 (independent reference)."""
  features, kernel, bias = (np.asarray(a, np.float64) for a in (features, kernel, bias))
  logits = features @ kernel + bias
  logits -= logits.max(axis=1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  n = features.shape[0]
  value = -log_probs[np.arange(n), labels].mean() + 0.5 * l2_reg * np.sum(kernel ** 2)
  residual = np.exp(log_probs)
  residual[np.arange(n), labels] -= 1
  grad_kernel = features.T @ residual / n + l2_reg * kernel
  grad_bias = residual.mean(axis=0)
  return value, grad_kernel, grad_bias


def _standardise64(train, test):
  mean = train.mean(axis=0)
  std = train.std(axis=0)
  std[std < 1e-8] = 1.0
  return (train - mean) / std, (test - mean) / std


def test_converges_to_the_optimum_of_the_float64_objective():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, size=300)
  feats = rng.normal(size=(300, 6)) + 0.7 * np.eye(4, 6)[labels] * 3.0
  feats[:, 5] = 2.0  # A constant feature must not produce NaNs.
  l2_reg = 0.05
  classifier = linear.fit_linear_classifier(feats, labels, num_classes=4, l2_reg=l2_reg,
                                            max_iters=200)
  standardised, _ = _standardise64(feats, feats)
  _, grad_kernel, grad_bias = _objective64(standardised, labels, classifier.kernel,
                                           classifier.bias, l2_reg)
  assert np.all(np.isfinite(classifier.kernel))
  assert np.abs(grad_kernel).max() < 1e-4 and np.abs(grad_bias).max() < 1e-4
  assert classifier.num_iters < 200  # Stopped on the gradient tolerance, not the cap.


def test_pixel_baseline_matches_sklearn_on_fashion_mnist():
  train_images, train_labels = helpers.fashion_mnist('train', 2000)
  test_images, test_labels = helpers.fashion_mnist('test', 1000)
  # Strong enough regularisation that sklearn converges in a few hundred iterations.
  l2_reg = 1e-2
  result = linear.pixel_baseline(train_images, train_labels, test_images, test_labels,
                                 num_classes=10, l2_reg=l2_reg, max_iters=500)
  assert result['top1'] > 0.7
  assert result['top5'] >= result['top1']

  train, test = _standardise64(train_images.reshape(2000, -1).astype(np.float64),
                               test_images.reshape(1000, -1).astype(np.float64))
  # One BLAS thread: with several, the shared CPU makes sklearn's lbfgs ~20x slower.
  with threadpool_limits(1):
    reference = LogisticRegression(C=1 / (l2_reg * len(train)), max_iter=1000).fit(
        train, train_labels)
  assert abs(result['top1'] - reference.score(test, test_labels)) <= 0.02
  # Same objective: ours must reach sklearn's optimum (float64 evaluation of both solutions).
  ours, _, _ = _objective64(train, train_labels, result['classifier'].kernel,
                            result['classifier'].bias, l2_reg)
  theirs, _, _ = _objective64(train, train_labels, reference.coef_.T, reference.intercept_,
                              l2_reg)
  assert ours <= theirs * (1 + 1e-3)


def test_label_fraction_eval_averages_one_fit_per_subset_on_fashion_mnist():
  train_images, train_labels = helpers.fashion_mnist('train', 2000)
  test_images, test_labels = helpers.fashion_mnist('test', 500)
  train_f = train_images.reshape(2000, -1).astype(np.float32) / 255
  test_f = test_images.reshape(500, -1).astype(np.float32) / 255
  kw = dict(num_classes=10, l2_reg=1e-2, max_iters=100)
  res = linear.label_fraction_eval(train_f, train_labels, test_f, test_labels, fraction=0.05,
                                   seeds=[3, 4, 5], **kw)
  # Independent recomputation: one subset per seed, fitted on its own.
  runs = []
  for seed in (3, 4, 5):
    idx = subsets.label_fraction_indices(train_labels, fraction=0.05, seed=seed)
    runs.append(linear.linear_eval(train_f[idx], train_labels[idx], test_f, test_labels,
                                   **kw)['top1'])
  assert res['top1_runs'] == runs and res['seeds'] == [3, 4, 5]
  assert len(set(runs)) > 1  # different subsets, different classifiers
  np.testing.assert_allclose(res['top1'], np.mean(runs))
  np.testing.assert_allclose(res['top1_std'], np.std(runs))
  assert res['num_labels'] == 100 and res['top5'] >= res['top1']
  full = linear.label_fraction_eval(train_f, train_labels, test_f, test_labels, fraction=1.0,
                                    seeds=[0, 1, 2], **kw)
  assert full['seeds'] == [0] and full['num_labels'] == 2000 and full['top1_std'] == 0
  with pytest.raises(ValueError, match='label_subsets'):
    linear.label_fraction_eval(train_f, train_labels, test_f, test_labels, fraction=0.05,
                               seeds=[], **kw)


@pytest.fixture(scope='module')
def tiny():
  """(model, variables, images [512, 16, 16, 1], labels [512]) with a tiny ResNet-18."""
  model = build_model(helpers.tiny_config().model, num_classes=10, image_size=16)
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((2, 16, 16, 1)), train=False))(
      jax.random.key(0, impl='rbg'))
  # With zero-initialised residual gammas the random net's h is tiny and nearly constant, which
  # plain SGD cannot fit in a few epochs; unit gammas give a usable random representation.
  variables = jax.tree.map_with_path(
      lambda path, x: jnp.ones_like(x) if jax.tree_util.keystr(path).endswith("['scale']") else x,
      variables)
  images, labels = helpers.fashion_mnist('train', 512)
  images = np.asarray(jax.image.resize(images, (512, 16, 16, 1), 'linear'))
  return model, variables, images, labels


def _assert_trees_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_official_protocol_learns_and_freezes_the_model(tiny):
  model, variables, images, labels = tiny
  before = jax.tree.map(lambda x: np.array(x, copy=True), variables)
  train = data.EvalSplit.from_arrays(images[:256], labels[:256], num_classes=10)
  test = data.EvalSplit.from_arrays(images[256:], labels[256:], num_classes=10)
  result = linear_sgd.linear_eval_official(
      model, variables, train, test, num_classes=10, epochs=8, batch_size=64,
      learning_rate=10.0, augment_fn=None)
  assert result['top1'] > 0.4  # Chance is 0.1; L-BFGS on the same features gets ~0.65.
  assert result['classifier']['kernel'].shape == (64, 10)
  _assert_trees_bitwise_equal(variables, before)

  augmented = linear_sgd.linear_eval_official(model, variables, train, test, num_classes=10,
                                          epochs=1, batch_size=64)
  assert 0.0 <= augmented['top1'] <= augmented['top5'] <= 1.0
  _assert_trees_bitwise_equal(variables, before)


def test_cv_folds_are_stratified_reproducible_and_need_enough_examples():
  _, labels = helpers.fashion_mnist('train', 500)
  fold = linear.cv_fold_ids(labels, folds=5, seed=0)
  np.testing.assert_array_equal(fold, linear.cv_fold_ids(labels, folds=5, seed=0))
  assert not np.array_equal(fold, linear.cv_fold_ids(labels, folds=5, seed=1))
  for c in np.unique(labels):
    per_fold = np.bincount(fold[labels == c], minlength=5)
    assert per_fold.max() - per_fold.min() <= 1  # every class spread evenly over the folds
  with pytest.raises(ValueError, match='l2_reg_folds'):
    linear.cv_fold_ids(labels[:12], folds=5, seed=0)


def test_l2_grid_picks_what_sklearn_cross_validation_picks_on_fashion_mnist():
  """Our k-fold choice of the weight decay against sklearn fits on the same folds (float64)."""
  images, labels = helpers.fashion_mnist('train', 300)
  feats = images.reshape(300, -1).astype(np.float32)
  test_images, test_labels = helpers.fashion_mnist('test', 200)
  grid, folds = (1e-3, 1e-1, 10.0), 3
  chosen, scores = linear.select_l2_reg(feats, labels, num_classes=10, grid=grid, folds=folds,
                                        seed=7)
  standardised, _ = _standardise64(feats.astype(np.float64), feats.astype(np.float64))
  fold = linear.cv_fold_ids(labels, folds=folds, seed=7)
  reference = {}
  with threadpool_limits(1):
    for l2 in grid:
      accs = []
      for k in range(folds):
        train = fold != k
        clf = LogisticRegression(C=1 / (l2 * train.sum()), max_iter=2000).fit(
            standardised[train], labels[train])
        accs.append(clf.score(standardised[~train], labels[~train]))
      reference[l2] = np.mean(accs)
  assert sorted(scores) == sorted(grid)
  for l2 in grid:  # a near-tie example may flip between two optima of equal loss
    assert abs(scores[l2] - reference[l2]) <= 1.5 / (300 / folds), (l2, scores, reference)
  assert chosen == max(grid, key=lambda g: reference[g])
  assert len(set(scores.values())) > 1  # the grid spans values that matter

  # linear_eval with the grid: the chosen value, refitted on all the labelled examples.
  res = linear.linear_eval(feats, labels, test_images.reshape(200, -1), test_labels,
                           num_classes=10, l2_grid=grid, cv_folds=folds, cv_seed=7)
  fixed = linear.linear_eval(feats, labels, test_images.reshape(200, -1), test_labels,
                             num_classes=10, l2_reg=chosen)
  assert res['l2_reg'] == chosen and res['classifier'].cv_top1 == scores
  np.testing.assert_array_equal(res['classifier'].kernel, fixed['classifier'].kernel)
  assert res['top1'] == fixed['top1']


def test_sigterm_during_the_sgd_protocol_resumes_bitwise(tiny, tmp_path):
  """The paper's linear protocol on the shared loop: a SIGTERM saves a checkpoint and stops; the
  rerun in the same workdir continues to the classifier of an uninterrupted run, bit for bit."""
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  model, variables, images, labels = tiny
  train = data.EvalSplit.from_arrays(images[:256], labels[:256], num_classes=10)
  test = data.EvalSplit.from_arrays(images[256:], labels[256:], num_classes=10)
  kwargs = dict(num_classes=10, epochs=1.5, batch_size=64, learning_rate=1.0,
                checkpoint_every_steps=100)  # 6 steps; the only mid-run save is the signal's
  whole = linear_sgd.linear_eval_official(model, variables, train, test,
                                      workdir=str(tmp_path / 'whole'), **kwargs)

  def stop_at_3(step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  first = linear_sgd.linear_eval_official(model, variables, train, test,
                                      workdir=str(tmp_path / 'cut'), on_step=stop_at_3, **kwargs)
  assert first['preempted'] and first['top1'] is None
  resumed = linear_sgd.linear_eval_official(model, variables, train, test,
                                        workdir=str(tmp_path / 'cut'), **kwargs)
  assert not resumed['preempted'] and resumed['steps'] == whole['steps'] == 6
  for key in ('kernel', 'bias'):
    np.testing.assert_array_equal(resumed['classifier'][key], whole['classifier'][key])
  assert resumed['top1'] == whole['top1']


def test_rerun_with_other_settings_is_a_clear_error(tiny, tmp_path):
  """A protocol's workdir resumes only the run that wrote it; other settings name the fix."""
  from simclr_jax import config_validation  # pylint: disable=g-import-not-at-top
  model, variables, images, labels = tiny
  train = data.EvalSplit.from_arrays(images[:64], labels[:64], num_classes=10)
  linear_sgd.linear_eval_official(model, variables, train, train, num_classes=10, epochs=1,
                              batch_size=32, workdir=str(tmp_path))
  with pytest.raises(config_validation.ConfigError, match='learning_rate.*delete'):
    linear_sgd.linear_eval_official(model, variables, train, train, num_classes=10, epochs=1,
                                batch_size=32, learning_rate=0.5, workdir=str(tmp_path))


def test_negative_l2_reg_is_scikit_learns_default_c_on_the_labelled_examples():
  """l2_reg < 0 is 1 / N: LogisticRegression(C=1) on the same standardised features."""
  train_images, train_labels = helpers.fashion_mnist('train', 600)
  test_images, test_labels = helpers.fashion_mnist('test', 500)
  result = linear.pixel_baseline(train_images, train_labels, test_images, test_labels,
                                 num_classes=10, l2_reg=-1.0, max_iters=500)
  assert result['l2_reg'] == pytest.approx(1 / 600)
  train, test = _standardise64(train_images.reshape(600, -1).astype(np.float64),
                               test_images.reshape(500, -1).astype(np.float64))
  with threadpool_limits(1):
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(train, train_labels)
  assert abs(result['top1'] - reference.score(test, test_labels)) <= 0.01
  ours, _, _ = _objective64(train, train_labels, result['classifier'].kernel,
                            result['classifier'].bias, 1 / 600)
  theirs, _, _ = _objective64(train, train_labels, reference.coef_.T, reference.intercept_,
                              1 / 600)
  assert ours <= theirs * (1 + 1e-3)
