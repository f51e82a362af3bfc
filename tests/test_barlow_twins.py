"""Barlow Twins: loss and gradient against float64 NumPy, and 8 simulated devices == 1 device
(loss function and real train steps on Fashion-MNIST)."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from simclr_jax import defaults
from simclr_jax import methods
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import train_step as train_step_lib
from simclr_jax.methods import barlow_twins
from simclr_jax.models import build_model
from tests import helpers
from tests import reference

BATCH = 16
STEPS = 3


def _z(n, d, seed):
  rng = np.random.default_rng(seed)
  z_a = rng.normal(size=(n, d))
  # z_b correlated with z_a, so C has a real diagonal and off-diagonal structure.
  z_b = 0.7 * z_a + 0.5 * rng.normal(size=(n, d)) + rng.normal(size=(1, d))
  return z_a.astype(np.float32), z_b.astype(np.float32)


@pytest.mark.parametrize('n,d,lambd', [(16, 8, 0.0051), (32, 16, 0.1), (8, 24, 1.0)])
def test_loss_and_gradient_match_numpy_reference(n, d, lambd):
  z_a, z_b = _z(n, d, seed=n + d)
  want_loss, want_ga, want_gb, want_c = reference.barlow_twins(z_a, z_b, lambd)
  fn = lambda a, b: barlow_twins.barlow_twins_loss(a, b, lambd=lambd)[0]
  np.testing.assert_allclose(fn(z_a, z_b), want_loss, rtol=1e-5)
  np.testing.assert_allclose(barlow_twins.cross_correlation(z_a, z_b, None), want_c, atol=1e-6)
  ga, gb = jax.grad(fn, argnums=(0, 1))(z_a, z_b)
  scale = np.abs(want_ga).max()
  np.testing.assert_allclose(ga, want_ga, rtol=1e-4, atol=1e-5 * scale)
  np.testing.assert_allclose(gb, want_gb, rtol=1e-4, atol=1e-5 * scale)


def test_reference_gradient_matches_finite_differences():
  z_a, z_b = (x.astype(np.float64) for x in _z(6, 3, seed=0))
  _, ga, gb, _ = reference.barlow_twins(z_a, z_b, 0.3)
  eps = 1e-6
  for z, grad, which in ((z_a, ga, 0), (z_b, gb, 1)):
    numeric = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
      step = np.zeros_like(z)
      step[idx] = eps
      args_plus = [z_a, z_b]
      args_minus = [z_a, z_b]
      args_plus[which] = z + step
      args_minus[which] = z - step
      numeric[idx] = (reference.barlow_twins(*args_plus, 0.3)[0]
                      - reference.barlow_twins(*args_minus, 0.3)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_perfectly_correlated_decorrelated_views_have_zero_loss():
  # Orthogonal, centred columns with equal norms: C = I exactly (up to eps), so L ~ 0.
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))
  z = (q[:, :4] - q[:, :4].mean(0)).astype(np.float32) * 10
  loss, metrics = barlow_twins.barlow_twins_loss(z, z, lambd=0.0051)
  assert float(metrics['invariance']) < 1e-4
  assert float(loss) < 1e-3


def _sharded_loss_and_grads(z_a, z_b, lambd, num_devices):
  """The per-core loss, and per-core gradients divided by the core count (= what the trainer's
  pmean of parameter gradients amounts to), for the rows each core holds."""
  mesh = jax.make_mesh((num_devices,), ('batch',), devices=jax.devices()[:num_devices])

  def per_core(a, b):
    fn = lambda a, b: barlow_twins.barlow_twins_loss(a, b, lambd=lambd, axis_name='batch')
    (loss, metrics), (ga, gb) = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(a, b)
    return jax.lax.pmean(loss, 'batch'), metrics, ga / num_devices, gb / num_devices

  # check_vma=False: the trainer's pmap semantics (the transpose of psum is psum).
  f = jax.jit(jax.shard_map(per_core, mesh=mesh, in_specs=(P('batch'), P('batch')),
                            out_specs=(P(), P(), P('batch'), P('batch')), check_vma=False))
  sharding = jax.NamedSharding(mesh, P('batch'))
  return f(jax.device_put(z_a, sharding), jax.device_put(z_b, sharding))


def test_eight_devices_equal_one_and_the_reference():
  z_a, z_b = _z(32, 12, seed=5)
  lambd = 0.05
  want_loss, want_ga, want_gb, _ = reference.barlow_twins(z_a, z_b, lambd)
  loss1, m1, ga1, gb1 = _sharded_loss_and_grads(z_a, z_b, lambd, 1)
  loss8, m8, ga8, gb8 = _sharded_loss_and_grads(z_a, z_b, lambd, 8)
  scale = np.abs(want_ga).max()
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  np.testing.assert_allclose(loss8, want_loss, rtol=1e-5)
  for got1, got8, want in ((ga1, ga8, want_ga), (gb1, gb8, want_gb)):
    np.testing.assert_allclose(got8, got1, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(got8, want, rtol=1e-4, atol=1e-5 * scale)
  for name in ('invariance', 'redundancy', 'mean_diagonal'):
    np.testing.assert_allclose(m8[name], m1[name], rtol=1e-5)


def _config():
  # A 3-layer projector with its own hidden width (head_hidden_dim), as the paper's 8192-8192-8192.
  return helpers.tiny_config(**{
      'method': 'barlow_twins', 'batch_size': BATCH, 'model.head_num_layers': 3,
      'model.head_hidden_dim': 24, 'model.head_out_dim': 32,
      'optimizer.bias_learning_rate_scale': 0.024, 'optimizer.learning_rate': 0.2})


@functools.lru_cache(maxsize=None)
def _initial_state():
  config = _config()
  model = build_model(config.model, num_classes=10, image_size=28, axis_name=parallel.AXIS)
  tx, _ = _optimizer(config)
  return jax.device_get(train_step_lib.create_train_state(
      model, methods.get_method('barlow_twins'), tx, config, image_shape=(28, 28, 1)))


def _optimizer(config):
  return optim.build_optimizer(config.optimizer, global_batch_size=config.batch_size,
                               total_steps=10, steps_per_epoch=4)


def _run(num_devices):
  config = _config()
  images, labels = helpers.fashion_mnist('train', 64)
  mapper = parallel.Mapper(num_devices)
  model = build_model(config.model, num_classes=10, image_size=28, axis_name=parallel.AXIS)
  tx, _ = _optimizer(config)
  step_fn = mapper.map_step(functools.partial(
      train_step_lib.train_step, model=model, method=methods.get_method('barlow_twins'), tx=tx,
      config=config, axis_name=parallel.AXIS))
  device_state = mapper.put_state(_initial_state())
  rng = train_step_lib.run_key(config.seed)
  history = []
  for step in range(STEPS):
    lo = step * BATCH
    batch = {'views': helpers.simple_views(images[lo:lo + BATCH]), 'label': labels[lo:lo + BATCH]}
    device_state, metrics = step_fn(device_state, mapper.put_batch(batch), rng)
    history.append(jax.device_get(metrics))
  return mapper.get_state(device_state), history


def test_train_steps_eight_devices_equal_one_device():
  state1, hist1 = _run(1)
  state8, hist8 = _run(8)
  initial = _initial_state()
  assert initial.params['head']['dense_1']['kernel'].shape[-1] == 24  # head_hidden_dim
  # Step 0's loss against NumPy on the z of an unmapped forward pass (BN over the whole batch,
  # one view at a time).
  images, _ = helpers.fashion_mnist('train', 64)
  views = helpers.simple_views(images[:BATCH])
  unmapped = build_model(_config().model, num_classes=10, image_size=28, axis_name=None)
  forward = jax.jit(lambda x: unmapped.apply(
      {'params': initial.params, 'batch_stats': initial.batch_stats}, x, train=True,
      mutable=['batch_stats'])[0]['z'])
  want_loss, _, _, _ = reference.barlow_twins(forward(views[:, 0]), forward(views[:, 1]), 0.0051)
  np.testing.assert_allclose(hist1[0]['loss'], want_loss, rtol=1e-4)
  for m1, m8 in zip(hist1, hist8):
    np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
    np.testing.assert_allclose(m8['grad_norm'], m1['grad_norm'], rtol=1e-4)
  # atol as test_moco's: after several steps float32 reassociation (per-device partial sums of
  # the BN statistics) leaves ~1e-6 on entries whose gradients are sums of cancelling terms.
  for tree in ('params', 'batch_stats'):
    flat1 = jax.tree_util.tree_leaves_with_path(getattr(state1, tree))
    for (path, a), b in zip(flat1, jax.tree.leaves(getattr(state8, tree))):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5,
                                 err_msg=tree + jax.tree_util.keystr(path))
  assert hist1[-1]['update_norm'] > 0
  assert hist1[-1]['loss'] < hist1[0]['loss']


def test_bias_learning_rate_scale_scales_only_biases_and_norms():
  params = {'encoder': {'conv': {'kernel': np.ones((3, 3, 2, 4), np.float32)},
                        'bn': {'scale': np.ones(4, np.float32), 'bias': np.zeros(4, np.float32)}},
            'probe': {'kernel': np.ones((4, 2), np.float32), 'bias': np.zeros(2, np.float32)}}
  grads = jax.tree.map(lambda x: np.full_like(x, 0.1), params)

  def updates(scale):
    config = defaults.get_config().optimizer
    config.bias_learning_rate_scale = scale
    config.warmup_epochs = 0.0
    tx, _ = optim.build_optimizer(config, global_batch_size=256, total_steps=10,
                                  steps_per_epoch=1)
    state = tx.init(params)
    for _ in range(2):  # two steps, so the momentum buffer is involved
      u, state = tx.update(grads, state, params)
    return u

  full, scaled = updates(1.0), updates(0.024)
  np.testing.assert_allclose(scaled['encoder']['bn']['scale'],
                             0.024 * full['encoder']['bn']['scale'], rtol=1e-6)
  np.testing.assert_allclose(scaled['encoder']['bn']['bias'],
                             0.024 * full['encoder']['bn']['bias'], rtol=1e-6)
  np.testing.assert_array_equal(scaled['encoder']['conv']['kernel'],
                                full['encoder']['conv']['kernel'])
  np.testing.assert_array_equal(scaled['probe']['bias'], full['probe']['bias'])  # own optimizer
  assert np.abs(full['encoder']['bn']['bias']).max() > 0
