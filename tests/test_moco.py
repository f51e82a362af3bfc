"""MoCo: InfoNCE against float64 NumPy, the queue and the momentum encoder through real train
steps on Fashion-MNIST, and 8 simulated devices == 1 device."""

import functools

import jax
import numpy as np
import pytest

from simclr_jax import methods
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import train_step as train_step_lib
from simclr_jax.methods import moco
from simclr_jax.models import build_model
from tests import helpers
from tests import reference

BATCH = 16  # global batch N
QUEUE = 32  # K = 2 global batches, so after 3 steps the oldest batch has been overwritten
MOMENTUM = 0.9  # far from 1, so the key encoder visibly moves in 3 steps
STEPS = 3


def _config(**overrides):
  return helpers.tiny_config(**{
      'method': 'moco', 'batch_size': BATCH, 'moco.queue_size': QUEUE,
      'moco.momentum': MOMENTUM, 'loss.temperature': 0.2, **overrides})


def _batch(step, images, labels):
  lo = step * BATCH
  return {'views': helpers.simple_views(images[lo:lo + BATCH]), 'label': labels[lo:lo + BATCH]}


@functools.lru_cache(maxsize=None)
def _initial_state():
  """The host TrainState before step 0 (built once: model init is the slow part on CPU)."""
  config = _config()
  model = build_model(config.model, num_classes=10, image_size=28, axis_name=parallel.AXIS)
  tx, _ = _optimizer(config)
  state = train_step_lib.create_train_state(model, methods.get_method('moco'), tx, config,
                                            image_shape=(28, 28, 1))
  return jax.device_get(state)


def _optimizer(config):
  return optim.build_optimizer(config.optimizer, global_batch_size=config.batch_size,
                               total_steps=10, steps_per_epoch=4)


def _run(num_devices, config):
  """STEPS train steps; returns the host states [before step 0, after step 0, ...] and metrics."""
  images, labels = helpers.fashion_mnist('train', 64)
  mapper = parallel.Mapper(num_devices)
  model = build_model(config.model, num_classes=10, image_size=28, axis_name=parallel.AXIS)
  tx, _ = _optimizer(config)
  step_fn = mapper.map_step(functools.partial(
      train_step_lib.train_step, model=model, method=methods.get_method('moco'), tx=tx,
      config=config, axis_name=parallel.AXIS))
  states = [_initial_state()]
  device_state = mapper.put_state(states[0])
  rng = train_step_lib.run_key(config.seed)
  history = []
  for step in range(STEPS):
    device_state, metrics = step_fn(device_state, mapper.put_batch(_batch(step, images, labels)),
                                    rng)
    history.append(jax.device_get(metrics))
    states.append(mapper.get_state(device_state))
  return states, history


@pytest.fixture(scope='module')
def one_device():
  return _run(1, _config())


@functools.lru_cache(maxsize=None)
def _forward():
  """Unmapped train-mode forward on a whole global batch: BN over the global batch, which is what
  the mapped model's synchronised BN computes."""
  model = build_model(_config().model, num_classes=10, image_size=28, axis_name=None)
  return jax.jit(lambda variables, x: model.apply(variables, x, train=True,
                                                  mutable=['batch_stats']))


def _z(params, batch_stats, x):
  out, state = _forward()({'params': params, 'batch_stats': batch_stats}, x)
  return np.asarray(out['z'], np.float64), state['batch_stats']


def _key_variables(state):
  params = dict(state.extra['key_params'], probe=state.params['probe'])
  return params, state.extra['key_batch_stats']


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize('n,d,k,temperature', [(4, 8, 16, 0.2), (8, 16, 64, 0.07), (3, 5, 7, 1.0)])
def test_info_nce_matches_numpy_reference(n, d, k, temperature):
  rng = np.random.default_rng(n * d + k)
  q, key = rng.normal(size=(2, n, d)).astype(np.float32)
  queue = _unit(rng.normal(size=(k, d))).astype(np.float32)
  want_loss, want_dq = reference.info_nce(q, key, queue, temperature)
  fn = lambda q: moco.info_nce(q, key, queue, temperature=temperature)[0]
  np.testing.assert_allclose(fn(q), want_loss, rtol=1e-5)
  np.testing.assert_allclose(jax.grad(fn)(q), want_dq, rtol=1e-4, atol=1e-6)


def test_info_nce_reference_gradient_matches_finite_differences():
  rng = np.random.default_rng(0)
  q, key = rng.normal(size=(2, 3, 4))
  queue = _unit(rng.normal(size=(5, 4)))
  _, dq = reference.info_nce(q, key, queue, 0.5)
  eps, numeric = 1e-6, np.zeros_like(q)
  for idx in np.ndindex(*q.shape):
    step = np.zeros_like(q)
    step[idx] = eps
    numeric[idx] = (reference.info_nce(q + step, key, queue, 0.5)[0]
                    - reference.info_nce(q - step, key, queue, 0.5)[0]) / (2 * eps)
  np.testing.assert_allclose(dq, numeric, rtol=1e-6, atol=1e-9)


def test_initial_extra():
  state = _initial_state()
  queue = np.asarray(state.extra['queue'])
  assert queue.shape == (QUEUE, 16)  # tiny_config's head_out_dim
  np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-6)
  # Fixed seed: the same queue every time; a different seed gives another one.
  np.testing.assert_array_equal(queue, moco.init_queue(0, QUEUE, 16))
  assert not np.allclose(queue, moco.init_queue(1, QUEUE, 16))
  assert int(state.extra['queue_ptr']) == 0
  # The key encoder starts as a copy of the query encoder (without the online probe).
  assert set(state.extra['key_params']) == {'encoder', 'head'}
  for a, b in zip(jax.tree.leaves(state.extra['key_params']),
                  jax.tree.leaves({k: state.params[k] for k in ('encoder', 'head')})):
    np.testing.assert_array_equal(a, b)


def test_queue_size_must_be_a_multiple_of_the_batch():
  variables = {'params': {'head': {'dense_1': {'kernel': np.zeros((8, 4))}},
                          'probe': {'kernel': np.zeros((8, 10))}}}
  with pytest.raises(ValueError, match='multiple of config.batch_size'):
    methods.get_method('moco').init_extra(variables, _config(**{'moco.queue_size': 40}))


def test_steps_match_numpy(one_device):
  """Loss, key encoder (EMA) and queue after each step, against NumPy on the same inputs."""
  states, history = one_device
  images, labels = helpers.fashion_mnist('train', 64)
  keys_per_step = []
  for step in range(STEPS):
    before, after = states[step], states[step + 1]
    views = _batch(step, images, labels)['views']
    q, _ = _z(before.params, before.batch_stats, views[:, 0])
    k, key_stats = _z(*_key_variables(before), views[:, 1])
    want_loss, _ = reference.info_nce(q, k, before.extra['queue'], 0.2)
    np.testing.assert_allclose(history[step]['loss'], want_loss, rtol=1e-4)
    keys_per_step.append(_unit(k))
    # The key encoder's running BN statistics come from its own forward pass on view 2.
    for a, b in zip(jax.tree.leaves(after.extra['key_batch_stats']), jax.tree.leaves(key_stats)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # EMA in float64: key_0 = query_0, key_t = m key_{t-1} + (1 - m) query_t (query after step t).
  online = lambda s: {k: s.params[k] for k in ('encoder', 'head')}
  want = jax.tree.map(lambda x: np.asarray(x, np.float64), online(states[0]))
  for state in states[1:]:
    want = jax.tree.map(lambda k, p: MOMENTUM * k + (1 - MOMENTUM) * np.asarray(p, np.float64),
                        want, online(state))
  got = states[-1].extra['key_params']
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  assert not np.allclose(jax.tree.leaves(got)[0], jax.tree.leaves(online(states[0]))[0])
  # Queue: after step 0 the first slot holds step 0's keys and the rest is still the initial
  # queue; after 3 steps it holds the last K/N = 2 batches, oldest first from the pointer.
  queue0 = states[0].extra['queue']
  np.testing.assert_allclose(states[1].extra['queue'][:BATCH], keys_per_step[0], atol=1e-5)
  np.testing.assert_array_equal(states[1].extra['queue'][BATCH:], queue0[BATCH:])
  ptr = int(states[-1].extra['queue_ptr'])
  assert ptr == (STEPS * BATCH) % QUEUE == BATCH
  in_order = np.roll(states[-1].extra['queue'], -ptr, axis=0)
  np.testing.assert_allclose(in_order, np.concatenate(keys_per_step[-2:]), atol=1e-5)


def test_eight_devices_equal_one_device(one_device):
  states1, hist1 = one_device
  states8, hist8 = _run(8, _config())
  for m1, m8 in zip(hist1, hist8):
    np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
    np.testing.assert_allclose(m8['grad_norm'], m1['grad_norm'], rtol=1e-4)
    np.testing.assert_allclose(m8['contrast_accuracy'], m1['contrast_accuracy'])
  s1, s8 = states1[-1], states8[-1]
  for tree in ('params', 'batch_stats', 'extra'):
    flat1 = jax.tree_util.tree_leaves_with_path(getattr(s1, tree))
    for (path, a), b in zip(flat1, jax.tree.leaves(getattr(s8, tree))):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5,
                                 err_msg=tree + jax.tree_util.keystr(path))
  assert int(s8.extra['queue_ptr']) == int(s1.extra['queue_ptr'])


def test_symmetric_loss_averages_both_directions_and_enqueues_once():
  config = _config(**{'moco.symmetric': True})
  states, history = _run(1, config)
  images, labels = helpers.fashion_mnist('train', 64)
  before = states[0]
  views = _batch(0, images, labels)['views']
  q_a, _ = _z(before.params, before.batch_stats, views[:, 0])
  q_b, _ = _z(before.params, before.batch_stats, views[:, 1])
  k_a, _ = _z(*_key_variables(before), views[:, 0])
  k_b, _ = _z(*_key_variables(before), views[:, 1])
  queue = before.extra['queue']
  want = 0.5 * (reference.info_nce(q_a, k_b, queue, 0.2)[0]
                + reference.info_nce(q_b, k_a, queue, 0.2)[0])
  np.testing.assert_allclose(history[0]['loss'], want, rtol=1e-4)
  # One global batch of keys (view 2's) per step.
  assert int(states[1].extra['queue_ptr']) == BATCH
  np.testing.assert_allclose(states[1].extra['queue'][:BATCH], _unit(k_b), atol=1e-5)
  assert all(np.isfinite(m['loss']) for m in history)
