"""NT-Logistic and margin triplet against float64 NumPy references, 8 devices == 1, dispatch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from simclr_jax import defaults
from simclr_jax.methods import losses
from simclr_jax.methods import simclr
from tests import reference


def _z(n, d, seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)


def _mining(semi_hard):
  return 'semi_hard' if semi_hard else 'none'


@pytest.mark.parametrize('n,d,temperature,normalize,semi_hard', [
    (2, 3, 0.5, True, False), (8, 16, 0.2, True, False), (8, 16, 0.2, True, True),
    (5, 7, 1.0, False, True), (6, 4, 0.5, False, False)])
def test_nt_logistic_matches_reference(n, d, temperature, normalize, semi_hard):
  z_a, z_b = _z(n, d, seed=n * d)
  if not normalize:  # raw dot products: keep logits moderate
    z_a, z_b = z_a * 0.3, z_b * 0.3
  want, want_ga, want_gb = reference.nt_logistic(z_a, z_b, temperature, normalize, semi_hard)
  fn = lambda a, b: losses.nt_logistic(a, b, temperature=temperature, normalize=normalize,
                                       negative_mining=_mining(semi_hard))[0]
  np.testing.assert_allclose(fn(z_a, z_b), want, rtol=1e-5)
  ga, gb = jax.grad(fn, argnums=(0, 1))(z_a, z_b)
  np.testing.assert_allclose(ga, want_ga, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gb, want_gb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('n,d,margin,normalize,semi_hard', [
    (2, 3, 0.4, True, False), (8, 16, 0.8, True, False), (8, 16, 0.4, True, True),
    (16, 8, 0.0, True, True), (5, 7, 1.6, False, True)])
def test_margin_triplet_matches_reference(n, d, margin, normalize, semi_hard):
  z_a, z_b = _z(n, d, seed=n + d)
  want, want_ga, want_gb, want_active = reference.margin_triplet(z_a, z_b, margin, normalize,
                                                                 semi_hard)
  fn = lambda a, b: losses.margin_triplet(a, b, margin=margin, normalize=normalize,
                                          negative_mining=_mining(semi_hard))
  loss, metrics = fn(z_a, z_b)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics['active_fraction'], want_active, rtol=1e-5)
  ga, gb = jax.grad(lambda a, b: fn(a, b)[0], argnums=(0, 1))(z_a, z_b)
  np.testing.assert_allclose(ga, want_ga, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gb, want_gb, rtol=1e-4, atol=1e-6)


def test_semi_hard_choice_by_hand():
  # Row 0: positive at col 1 (0.5); negatives 0.9 (closer), 0.4 and 0.1 (farther): pick 0.4.
  # Row 1: every negative is closer than the positive (0.2): fall back to the farthest (0.3).
  sim = jnp.array([[-1e9, 0.5, 0.9, 0.4, 0.1],
                   [0.2, -1e9, 0.6, 0.3, 0.8]])
  pos_col = jnp.array([1, 0])
  negatives = losses.negative_mask(pos_col, jnp.array([0, 1]), 5)
  np.testing.assert_array_equal(losses.semi_hard_negatives(sim, pos_col, negatives), [3, 3])


def _sharded(loss_fn, z_a, z_b, num_devices):
  """Mean over cores of the per-core loss, and d(mean loss)/dz assembled from the cores."""
  mesh = jax.make_mesh((num_devices,), ('batch',), devices=jax.devices()[:num_devices])

  def per_core(a, b):
    loss, (ga, gb) = jax.value_and_grad(lambda a, b: loss_fn(a, b, 'batch')[0],
                                        argnums=(0, 1))(a, b)
    # all_gather's transpose sums every core's terms into this core's rows; / cores = d mean.
    return jax.lax.pmean(loss, 'batch'), ga / num_devices, gb / num_devices

  f = jax.jit(jax.shard_map(per_core, mesh=mesh, in_specs=(P('batch'), P('batch')),
                            out_specs=(P(), P('batch'), P('batch'))))
  sharding = jax.NamedSharding(mesh, P('batch'))
  return f(jax.device_put(z_a, sharding), jax.device_put(z_b, sharding))


@pytest.mark.parametrize('name', ['nt_logistic', 'margin_triplet'])
@pytest.mark.parametrize('semi_hard', [False, True])
def test_eight_devices_equal_one(name, semi_hard):
  assert jax.device_count() >= 8
  z_a, z_b = _z(32, 16, seed=11)
  if name == 'nt_logistic':
    loss_fn = lambda a, b, axis: losses.nt_logistic(
        a, b, temperature=0.2, axis_name=axis, negative_mining=_mining(semi_hard))
    want, want_ga, want_gb = reference.nt_logistic(z_a, z_b, 0.2, semi_hard=semi_hard)
  else:
    loss_fn = lambda a, b, axis: losses.margin_triplet(
        a, b, margin=0.4, axis_name=axis, negative_mining=_mining(semi_hard))
    want, want_ga, want_gb, _ = reference.margin_triplet(z_a, z_b, 0.4, semi_hard=semi_hard)
  loss1, ga1, gb1 = _sharded(loss_fn, z_a, z_b, 1)
  loss8, ga8, gb8 = _sharded(loss_fn, z_a, z_b, 8)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  np.testing.assert_allclose(loss8, want, rtol=1e-5)
  np.testing.assert_allclose(ga8, ga1, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(gb8, gb1, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(ga8, want_ga, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gb8, want_gb, rtol=1e-4, atol=1e-6)


def _loss_config(**overrides):
  c = defaults.get_config().loss
  c.update(overrides)
  return c


def test_dispatch_by_config():
  z_a, z_b = _z(6, 5, seed=3)
  got, _ = losses.contrastive_loss(z_a, z_b, _loss_config(temperature=0.5, normalize=False))
  want, _ = losses.nt_xent(z_a, z_b, temperature=0.5, normalize=False)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  got, _ = losses.contrastive_loss(z_a, z_b, _loss_config(
      name='margin_triplet', margin=0.8, negative_mining='semi_hard'))
  want, _ = losses.margin_triplet(z_a, z_b, margin=0.8, negative_mining='semi_hard')
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match='loss.name'):
    losses.contrastive_loss(z_a, z_b, _loss_config(name='hinge'))
  with pytest.raises(ValueError, match='negative_mining'):
    losses.contrastive_loss(z_a, z_b, _loss_config(negative_mining='semi_hard'))
  with pytest.raises(ValueError, match='negative_mining'):
    losses.contrastive_loss(z_a, z_b, _loss_config(name='nt_logistic', negative_mining='hard'))
  with pytest.raises(ValueError, match='margin'):
    losses.contrastive_loss(z_a, z_b, _loss_config(name='margin_triplet', margin=-0.1))


class _TinyModel(nn.Module):
  """For tests only: BN + Dense, returning the keys SimCLR's method reads."""

  @nn.compact
  def __call__(self, x, *, train):
    h = nn.BatchNorm(use_running_average=not train)(x.reshape(x.shape[0], -1))
    z = nn.Dense(8)(h)
    return {'h': h, 'z': z}


@pytest.mark.parametrize('name', losses.LOSSES)
def test_simclr_method_uses_config_loss(name):
  model = _TinyModel()
  views = np.random.default_rng(0).uniform(size=(4, 2, 3, 3, 1)).astype(np.float32)
  variables = model.init(jax.random.key(0), views[:, 0], train=False)
  config = ml_collections.ConfigDict({'loss': _loss_config(name=name, temperature=0.5)})
  loss, aux = simclr.SimCLR().loss(model, variables['params'], variables['batch_stats'], {},
                                   views, None, config=config, axis_name=None)
  z_a, z_b = jnp.split(aux.outputs['z'], 2)
  want, _ = losses.contrastive_loss(z_a, z_b, config.loss)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert 'contrast_accuracy' in aux.metrics
