"""NT-Xent against the float64 NumPy reference, and 8 simulated devices == 1 device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from simclr_jax.methods import losses
from tests import reference


def _z(n, d, seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize('n,d,temperature', [(2, 3, 0.5), (8, 16, 0.1), (16, 128, 0.5),
                                             (5, 7, 1.0)])
def test_matches_numpy_reference(n, d, temperature):
  z_a, z_b = _z(n, d, seed=n * d)
  want_loss, want_ga, want_gb = reference.nt_xent(z_a, z_b, temperature)
  fn = lambda a, b: losses.nt_xent(a, b, temperature=temperature)[0]
  loss = fn(z_a, z_b)
  ga, gb = jax.grad(fn, argnums=(0, 1))(z_a, z_b)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(ga, want_ga, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gb, want_gb, rtol=1e-5, atol=1e-7)


def test_unnormalized_matches_reference():
  z_a, z_b = _z(6, 4, seed=1)
  z_a, z_b = z_a * 0.3, z_b * 0.3
  want, _, _ = reference.nt_xent(z_a, z_b, 0.5, normalize=False)
  got, _ = losses.nt_xent(z_a, z_b, temperature=0.5, normalize=False)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_perfect_pairs_rank_first():
  z = np.eye(8, dtype=np.float32)
  _, metrics = losses.nt_xent(z, z, temperature=0.1)
  assert float(metrics['contrast_accuracy']) == 1.0
  z_a, z_b = _z(64, 8, seed=3)
  _, metrics = losses.nt_xent(z_a, z_b, temperature=0.1)
  assert float(metrics['contrast_accuracy']) < 0.3  # unrelated pairs: near chance (1/127)


def _sharded_loss_and_grads(z_a, z_b, temperature, num_devices):
  """Mean over cores of per-core losses and the pmean of per-core gradients."""
  mesh = jax.make_mesh((num_devices,), ('batch',), devices=jax.devices()[:num_devices])

  def per_core(a, b):
    def loss_fn(a, b):
      loss, metrics = losses.nt_xent(a, b, temperature=temperature, axis_name='batch')
      return loss, metrics
    (loss, metrics), (ga, gb) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(a, b)
    # The gradient w.r.t. this core's rows includes every core's loss terms (all_gather's
    # transpose sums them); dividing by the core count gives d(mean over cores)/dz.
    ga, gb = ga / num_devices, gb / num_devices
    logits, _, _ = losses.contrastive_logits(a, b, temperature=temperature, axis_name='batch')
    return (jax.lax.pmean(loss, 'batch'), jax.lax.pmean(metrics, 'batch'), ga, gb,
            jnp.asarray(logits.shape)[None])

  f = jax.jit(jax.shard_map(per_core, mesh=mesh, in_specs=(P('batch'), P('batch')),
                            out_specs=(P(), P(), P('batch'), P('batch'), P('batch'))))
  sharding = jax.NamedSharding(mesh, P('batch'))
  return f(jax.device_put(z_a, sharding), jax.device_put(z_b, sharding))


@pytest.mark.parametrize('temperature', [0.1, 0.5])
def test_eight_devices_equal_one(temperature):
  assert jax.device_count() >= 8
  z_a, z_b = _z(32, 16, seed=7)
  loss1, m1, ga1, gb1, shape1 = _sharded_loss_and_grads(z_a, z_b, temperature, 1)
  loss8, m8, ga8, gb8, shape8 = _sharded_loss_and_grads(z_a, z_b, temperature, 8)
  want, want_ga, want_gb = reference.nt_xent(z_a, z_b, temperature)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  np.testing.assert_allclose(loss8, want, rtol=1e-5)
  np.testing.assert_allclose(ga8, ga1, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gb8, want_gb, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m8['contrast_accuracy'], m1['contrast_accuracy'], rtol=1e-6)
  np.testing.assert_allclose(m8['contrast_entropy'], m1['contrast_entropy'], rtol=1e-5)
  # Each core holds only its rows: [2n, 2N] with n = 4, never [2N, 2N].
  np.testing.assert_array_equal(np.asarray(shape8), np.tile([[8, 64]], (8, 1)))
  np.testing.assert_array_equal(np.asarray(shape1), [[64, 64]])


@pytest.mark.parametrize('bad', [
    dict(z_a=np.zeros((4, 3)), z_b=np.zeros((5, 3)), temperature=0.1),
    dict(z_a=np.zeros((4,)), z_b=np.zeros((4,)), temperature=0.1),
    dict(z_a=np.ones((4, 3)), z_b=np.ones((4, 3)), temperature=0.0),
    dict(z_a=np.ones((4, 3)), z_b=np.ones((4, 3)), temperature=-1.0),
])
def test_bad_input_is_a_clear_error(bad):
  with pytest.raises(ValueError, match='shape|temperature'):
    losses.nt_xent(bad['z_a'], bad['z_b'], temperature=bad['temperature'])
