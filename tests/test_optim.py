"""Tests for simclr_jax.optim against float64 NumPy references written from the LARS rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simclr_jax import defaults
from simclr_jax import optim
from simclr_jax.models import ContrastiveModel, ProjectionHead, ResNet

WEIGHT_DECAY = 0.1  # Large, so that a wrong mask or ordering shows.


def _params_and_grads(num_steps: int):
  """A small {'encoder','head','probe'} tree and num_steps gradient trees (float32).

  Includes the corner cases of the trust ratio: an all-zero kernel (||w|| = 0) and a kernel
  whose gradient is zero at step 1 (||g|| = 0 when there is no weight decay).
  """
  rng = np.random.default_rng(0)

  def tree(scale):
    n = lambda *shape: (scale * rng.standard_normal(shape)).astype(np.float32)
    return {
        'encoder': {
            'conv': {'kernel': n(3, 3, 2, 4)},
            'bn': {'scale': n(4), 'bias': n(4)},
            'zero_conv': {'kernel': n(1, 1, 4, 4)},
        },
        'head': {'dense_1': {'kernel': n(4, 3)}, 'bn_1': {'scale': n(3)}},
        'probe': {'kernel': n(4, 2), 'bias': n(2)},
    }

  params = tree(1.0)
  params['encoder']['zero_conv']['kernel'][:] = 0.0
  grads = [tree(0.1) for _ in range(num_steps)]
  grads[1]['head']['dense_1']['kernel'][:] = 0.0
  return params, grads


def _reference_lars(params, grads, lrs, *, weight_decay, eta, momentum, lr_inside_momentum,
                    probe_lr=None):
  """Float64 NumPy LARS, leaf by leaf, written from the rule (not from optax).

  Excluded leaves (biases, BN scale/offset: rank <= 1): u = g. Others: g' = g + wd * w,
  trust = eta * ||w|| / ||g'|| (1 if either norm is 0), u = trust * g'.
  lr_inside_momentum: v = m v + lr_t u, w -= v (official SimCLR "classic momentum", optax);
  otherwise v = m v + u, w -= lr_t v (the textbook form; equal for a constant lr).
  probe_lr: if given, params['probe'] gets plain momentum SGD: v = m v + g, w -= probe_lr v.
  """
  flat_w, treedef = jax.tree.flatten(params)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  w = [np.asarray(x, np.float64) for x in flat_w]
  v = [np.zeros_like(x) for x in w]
  for g_tree, lr in zip(grads, lrs):
    g_flat = [np.asarray(x, np.float64) for x in jax.tree.leaves(g_tree)]
    for i, g in enumerate(g_flat):
      if probe_lr is not None and paths[i].startswith("['probe']"):
        v[i] = momentum * v[i] + g
        w[i] = w[i] - probe_lr * v[i]
        continue
      if w[i].ndim <= 1:
        u = g
      else:
        g = g + weight_decay * w[i]
        w_norm, g_norm = np.linalg.norm(w[i]), np.linalg.norm(g)
        trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        u = trust * g
      if lr_inside_momentum:
        v[i] = momentum * v[i] + lr * u
        w[i] = w[i] - v[i]
      else:
        v[i] = momentum * v[i] + u
        w[i] = w[i] - lr * v[i]
  return jax.tree.unflatten(treedef, w)


def _run(tx: optax.GradientTransformation, params, grads):
  update = jax.jit(tx.update)
  state = tx.init(params)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _assert_trees_close(actual, expected):
  for a, e, (path, _) in zip(jax.tree.leaves(actual), jax.tree.leaves(expected),
                             jax.tree_util.tree_flatten_with_path(expected)[0]):
    np.testing.assert_allclose(np.asarray(a), e, rtol=2e-5, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('weight_decay', [WEIGHT_DECAY, 0.0])
def test_lars_constant_lr_matches_reference(weight_decay):
  params, grads = _params_and_grads(3)
  tx = optim.lars(0.5, weight_decay=weight_decay, momentum=0.9, trust_coefficient=0.1)
  actual = _run(tx, params, grads)
  for lr_inside_momentum in (True, False):  # The two forms agree when lr is constant.
    expected = _reference_lars(params, grads, [0.5] * 3, weight_decay=weight_decay, eta=0.1,
                               momentum=0.9, lr_inside_momentum=lr_inside_momentum)
    _assert_trees_close(actual, expected)
  # The all-zero kernel moved (trust 1), i.e. it was not stuck at 0 by a 0 ratio.
  assert np.any(np.asarray(actual['encoder']['zero_conv']['kernel']) != 0)


def _optimizer_config(**overrides):
  config = defaults.get_config().optimizer
  config.learning_rate = 0.3
  config.lr_scaling = 'linear'
  config.weight_decay = WEIGHT_DECAY
  config.warmup_epochs = 1.0
  config.probe_learning_rate = 0.05
  for key, value in overrides.items():
    config[key] = value
  return config


def test_build_optimizer_lars_with_schedule_and_probe_matches_reference():
  config = _optimizer_config()
  params, grads = _params_and_grads(3)
  tx, schedule = optim.build_optimizer(
      config, global_batch_size=512, total_steps=6, steps_per_epoch=2)
  actual = _run(tx, params, grads)
  lrs = [0.0, 0.3, 0.6]  # Peak 0.3 * 512 / 256 = 0.6, reached after 2 warmup steps.
  np.testing.assert_allclose([schedule(s) for s in range(3)], lrs, rtol=1e-6)
  expected = _reference_lars(
      params, grads, lrs, weight_decay=WEIGHT_DECAY, eta=config.trust_coefficient,
      momentum=config.momentum, lr_inside_momentum=True, probe_lr=config.probe_learning_rate)
  _assert_trees_close(actual, expected)


def test_build_optimizer_sgd_and_adamw_mask_bias_and_norm():
  params, _ = _params_and_grads(2)
  zero_grads = jax.tree.map(np.zeros_like, params)
  for name in ('sgd', 'adamw'):
    tx, _ = optim.build_optimizer(
        _optimizer_config(name=name, warmup_epochs=0.0), global_batch_size=256, total_steps=10,
        steps_per_epoch=2)
    new = _run(tx, params, [zero_grads])
    # With zero gradients only weight decay moves a parameter.
    np.testing.assert_array_equal(new['encoder']['bn']['scale'], params['encoder']['bn']['scale'])
    np.testing.assert_array_equal(new['encoder']['bn']['bias'], params['encoder']['bn']['bias'])
    np.testing.assert_array_equal(new['probe']['kernel'], params['probe']['kernel'])
    np.testing.assert_allclose(
        new['encoder']['conv']['kernel'],
        (1 - 0.3 * WEIGHT_DECAY) * params['encoder']['conv']['kernel'], rtol=1e-5, err_msg=name)


def test_exclude_bias_and_norm_on_model_tree():
  model = ContrastiveModel(encoder=ResNet(50, width_multiplier=0.125),
                           head=ProjectionHead(num_layers=3), num_classes=10)
  variables = jax.eval_shape(
      lambda key: model.init(key, jnp.zeros((1, 16, 16, 3)), train=False), jax.random.key(0))
  mask = optim.decay_mask(variables['params'])
  for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]:
    name = path[-1].key
    assert name in ('kernel', 'bias', 'scale')
    assert decayed == (name == 'kernel'), jax.tree_util.keystr(path)


def test_schedule_warmup_peak_and_cosine_to_zero():
  config = _optimizer_config(learning_rate=0.3, warmup_epochs=2.5)
  schedule = optim.learning_rate_schedule(
      config, global_batch_size=1024, total_steps=100, steps_per_epoch=10)
  peak = 0.3 * 1024 / 256
  values = np.array([schedule(s) for s in range(0, 106)])
  assert values[0] == 0.0
  np.testing.assert_allclose(values[12], peak * 12 / 25, rtol=1e-6)
  np.testing.assert_allclose(values[25], peak, rtol=1e-6)
  assert values.max() == pytest.approx(peak)
  np.testing.assert_allclose(values[60], peak * 0.5 * (1 + math.cos(math.pi * 35 / 75)),
                             rtol=1e-5)
  assert np.all(np.diff(values[:26]) > 0) and np.all(np.diff(values[25:101]) < 0)
  np.testing.assert_allclose(values[100:], 0.0, atol=1e-7)


@pytest.mark.parametrize('scaling, expected', [
    ('linear', 0.3 * 4096 / 256), ('sqrt', 0.3 * 64.0), ('none', 0.3)])
def test_learning_rate_scaling(scaling, expected):
  config = _optimizer_config(lr_scaling=scaling, warmup_epochs=0.0)
  schedule = optim.learning_rate_schedule(
      config, global_batch_size=4096, total_steps=10, steps_per_epoch=1)
  np.testing.assert_allclose(schedule(0), expected, rtol=1e-6)


def test_warmup_longer_than_training_raises():
  with pytest.raises(ValueError, match='warmup_epochs.*total_steps'):
    optim.build_optimizer(_optimizer_config(warmup_epochs=10.0), global_batch_size=256,
                          total_steps=50, steps_per_epoch=10)


@pytest.mark.parametrize('overrides, message', [
    (dict(name='adam'), 'optimizer.name'), (dict(lr_scaling='square'), 'lr_scaling')])
def test_bad_optimizer_config_raises(overrides, message):
  with pytest.raises(ValueError, match=message):
    optim.build_optimizer(_optimizer_config(**overrides), global_batch_size=256,
                          total_steps=50, steps_per_epoch=10)
