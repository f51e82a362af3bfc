"""Tests for simclr_jax.models.heads (ProjectionHead, ContrastiveModel, build_model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import defaults
from simclr_jax.models import build_model, ContrastiveModel, ProjectionHead, ResNet

H_DIM = 16


def _init_key(seed: int = 0) -> jax.Array:
  # 'rbg': compiling threefry draws for a ResNet init takes ~15 s on a small CPU, rbg ~1 s.
  return jax.random.key(seed, impl='rbg')


def _apply_head(head: ProjectionHead, train: bool = True):
  h = jnp.asarray(np.random.default_rng(0).standard_normal((8, H_DIM)), jnp.float32)
  variables = head.init(_init_key(), h, train=False)
  outputs, _ = head.apply(variables, h, train=train, mutable=['batch_stats'])
  return h, variables, outputs


@pytest.mark.parametrize('num_layers', [1, 2, 3])
def test_nonlinear_head_returns_every_layer(num_layers):
  h, variables, outputs = _apply_head(
      ProjectionHead(mode='nonlinear', num_layers=num_layers, out_dim=8))
  assert len(outputs) == num_layers + 1
  np.testing.assert_array_equal(outputs[0], h)
  for hidden in outputs[1:-1]:
    assert hidden.shape == (8, H_DIM)
    assert float(jnp.min(hidden)) >= 0.0  # ReLU on hidden layers.
  assert outputs[-1].shape == (8, 8)
  assert float(jnp.min(outputs[-1])) < 0.0  # No ReLU on z.
  params = variables['params']
  for i in range(1, num_layers + 1):
    assert set(params[f'dense_{i}']) == {'kernel'}  # No Dense bias: BN follows.
    last = i == num_layers
    # The last BN has no offset (center=False), the hidden ones have one.
    expected = {'scale'} if last else {'scale', 'bias'}
    assert set(params[f'bn_{i}']) == expected


def test_linear_head_is_one_dense_and_uncentred_bn():
  _, variables, outputs = _apply_head(ProjectionHead(mode='linear', num_layers=3, out_dim=8))
  assert [o.shape for o in outputs] == [(8, H_DIM), (8, 8)]
  assert set(variables['params']) == {'dense_1', 'bn_1'}
  assert set(variables['params']['bn_1']) == {'scale'}
  # Batch-normalised without offset and gamma=1: each feature has batch mean 0.
  np.testing.assert_allclose(jnp.mean(outputs[-1], axis=0), 0.0, atol=1e-5)


def test_none_head_returns_h_only():
  h, variables, outputs = _apply_head(ProjectionHead(mode='none'))
  assert len(outputs) == 1
  np.testing.assert_array_equal(outputs[0], h)
  assert not variables.get('params')


def test_bad_head_mode_raises():
  with pytest.raises(ValueError, match='mode must be one of'):
    ProjectionHead(mode='mlp')


def _tiny_config(**overrides):
  config = defaults.get_config().model
  config.depth = 18
  config.width_multiplier = 0.125
  config.head_out_dim = 8
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture(scope='module')
def tiny_model():
  model = build_model(_tiny_config(), num_classes=10, image_size=16, axis_name=None)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 16, 16, 1)), jnp.float32)
  variables = jax.jit(lambda key: model.init(key, x, train=False))(_init_key())
  return model, variables, x


def test_build_model_reads_config(tiny_model):
  model, variables, _ = tiny_model
  assert isinstance(model, ContrastiveModel)
  assert model.encoder.cifar_stem is True  # image_size 16 <= 32.
  assert model.head.num_layers == 2 and model.head.out_dim == 8
  assert set(variables['params']) == {'encoder', 'head', 'probe'}
  big = build_model(_tiny_config(dtype='bfloat16'), num_classes=3, image_size=224, axis_name='b')
  assert big.encoder.cifar_stem is False
  assert big.encoder.dtype == jnp.bfloat16 and big.head.dtype == jnp.bfloat16
  assert big.encoder.axis_name == 'b' and big.head.axis_name == 'b'


def test_build_model_bad_dtype_raises():
  with pytest.raises(ValueError, match='dtype'):
    build_model(_tiny_config(dtype='float16'), num_classes=3, image_size=16, axis_name=None)


def test_model_outputs_and_probe_gets_no_gradient_into_encoder(tiny_model):
  model, variables, x = tiny_model

  @jax.jit
  def run(params):
    def probe_loss(params):
      out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                           train=True, mutable=['batch_stats'])
      return jnp.sum(out['probe_logits'] ** 2), out
    return jax.grad(probe_loss, has_aux=True)(params)

  grads, out = run(variables['params'])
  assert out['h'].shape == (4, 64)
  assert out['z'].shape == (4, 8)
  assert [o.shape for o in out['head_outputs']] == [(4, 64), (4, 64), (4, 8)]
  np.testing.assert_array_equal(out['z'], out['head_outputs'][-1])
  assert out['probe_logits'].shape == (4, 10)
  for leaf in jax.tree.leaves(grads['encoder']) + jax.tree.leaves(grads['head']):
    assert np.all(np.asarray(leaf) == 0)
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads['probe']))


def test_contrastive_model_none_head_z_is_h():
  model = ContrastiveModel(
      encoder=ResNet(18, width_multiplier=0.125), head=ProjectionHead(mode='none'),
      num_classes=5)
  out, variables = jax.eval_shape(
      lambda key: model.init_with_output(key, jnp.zeros((2, 16, 16, 3)), train=False),
      jax.random.key(0))
  assert out['z'].shape == out['h'].shape == (2, 64)
  assert len(out['head_outputs']) == 1
  assert variables['params']['probe']['kernel'].shape == (64, 5)
