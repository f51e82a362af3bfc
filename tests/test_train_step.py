"""The per-core train step: 8 simulated devices == 1 device, BN statistics."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from simclr_jax import methods
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import train_step as train_step_lib
from simclr_jax.models import build_model
from tests import helpers
from tests import reference


def _run(num_devices, steps=3, config=None, device_augment=False):
  config = config or helpers.tiny_config()
  images, labels = helpers.fashion_mnist('train', 64)
  mapper = parallel.Mapper(num_devices)
  model = build_model(config.model, num_classes=10, image_size=28, axis_name=parallel.AXIS)
  method = methods.get_method(config.method)
  tx, _ = optim.build_optimizer(config.optimizer, global_batch_size=config.batch_size,
                                       total_steps=10, steps_per_epoch=4)
  state = train_step_lib.create_train_state(model, method, tx, config, image_shape=(28, 28, 1))
  step_fn = mapper.map_step(functools.partial(
      train_step_lib.train_step, model=model, method=method, tx=tx, config=config, axis_name=parallel.AXIS))
  device_state = mapper.put_state(state)
  rng = train_step_lib.run_key(config.seed)
  history = []
  for step in range(steps):
    lo = step * config.batch_size
    batch = {'views': helpers.simple_views(images[lo:lo + config.batch_size]),
             'label': labels[lo:lo + config.batch_size]}
    if device_augment:  # What the pipeline sends with config.augment.on_device.
      batch = {'image': np.round(images[lo:lo + config.batch_size] * 255).astype(np.uint8),
               'label': batch['label'], 'position': np.arange(config.batch_size, dtype=np.int32)}
    device_state, metrics = step_fn(device_state, mapper.put_batch(batch), rng)
    history.append(jax.device_get(metrics))
  return mapper.get_state(device_state), history


@pytest.fixture(scope='module')
def one_device():
  return _run(1)


def _assert_states_close(a, b, rtol):
  flat_a = jax.tree_util.tree_leaves_with_path(a.params)
  flat_b = jax.tree.leaves(b.params)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  for x, y in zip(jax.tree.leaves(a.batch_stats), jax.tree.leaves(b.batch_stats)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_eight_devices_equal_one_device(one_device):
  state1, hist1 = one_device
  state8, hist8 = _run(8)
  for m1, m8 in zip(hist1, hist8):
    np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
    np.testing.assert_allclose(m8['grad_norm'], m1['grad_norm'], rtol=1e-5)
  _assert_states_close(state8, state1, rtol=1e-4)
  assert int(state8.step) == 3
  # The run moved: parameters differ from their initial values.
  assert hist1[-1]['update_norm'] > 0


def test_device_augmentation_eight_devices_equal_one_device(one_device):
  """The views drawn in the step follow each image's global position, not its core."""
  config = helpers.tiny_config(**{'augment.on_device': True})
  state1, hist1 = _run(1, config=config, device_augment=True)
  state8, hist8 = _run(8, config=config, device_augment=True)
  for m1, m8 in zip(hist1, hist8):
    np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  _assert_states_close(state8, state1, rtol=1e-4)
  # Views drawn in the step, not the fixed ones: the loss differs from the fixed-views run.
  assert abs(float(one_device[1][0]['loss']) - float(hist1[0]['loss'])) > 1e-3


def test_cross_replica_bn_statistics_are_global_batch_statistics():
  """BN batch statistics with 8 devices equal NumPy's over the global batch of views."""
  images, _ = helpers.fashion_mnist('train', 64)
  views = helpers.simple_views(images[:16])
  x = np.concatenate([views[:, 0], views[:, 1]])  # the layout of methods.base.split_views
  config = helpers.tiny_config()
  model = build_model(config.model, num_classes=10, image_size=28, axis_name=parallel.AXIS)
  variables = train_step_lib.init_variables(model, image_shape=(28, 28, 1), seed=0)

  def first_bn_input(variables, x):
    """Stem conv output: the tensor whose statistics the first BN takes."""
    unmapped = build_model(config.model, num_classes=10, image_size=28, axis_name=None)
    _, inter = unmapped.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'],
                           capture_intermediates=lambda mdl, _: mdl.name == 'stem_conv')
    return jax.tree.leaves(inter['intermediates'])[0]

  def bn_stats(num_devices):
    mapper = parallel.Mapper(num_devices)

    def per_core(variables, xs):
      _, new = model.apply(variables, xs, train=True, mutable=['batch_stats'])
      return new['batch_stats']

    f = jax.jit(jax.shard_map(per_core, mesh=mapper.mesh, in_specs=(jax.P(), jax.P('batch')),
                              out_specs=jax.P()))
    return f(mapper.put_state(variables),
             jax.device_put(x, mapper.batch_sharding))

  stats1, stats8 = bn_stats(1), bn_stats(8)
  for a, b in zip(jax.tree.leaves(stats1), jax.tree.leaves(stats8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # Against NumPy: running mean after one step = 0.9 * 0 + 0.1 * batch mean.
  conv_out = np.asarray(first_bn_input(variables, x))
  mean, var = reference.batch_norm_stats(conv_out)
  stem_bn = stats8['encoder']['stem_bn']
  np.testing.assert_allclose(stem_bn['mean'], 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stem_bn['var'], 0.9 * 1.0 + 0.1 * var, rtol=1e-4, atol=1e-6)


def test_batch_that_does_not_divide_is_a_clear_error():
  mapper = parallel.Mapper(8)
  with pytest.raises(ValueError, match='multiple of 8'):
    mapper.check_batch_size(12)


def test_importing_the_step_does_not_load_tensorflow():
  """The step benchmarks import it; TensorFlow would add seconds and memory to what they time."""
  code = 'import sys; import simclr_jax.train_step; print("tensorflow" in sys.modules)'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.strip() == 'False'


def test_selective_kernel_net_eight_devices_equal_one_device():
  """SimCLRv2's selective-kernel ResNet-50 in the official layout: its mixing layers' BN (on
  pooled [B, C] features) averages over the global batch like every other BN."""
  config = helpers.tiny_config(**{
      'model.depth': 50, 'model.width_multiplier': 0.0625, 'model.sk_ratio': 0.0625,
      'model.cifar_stem': False,
      'model.stage_projection': 'always', 'model.max_pool_padding': 'same',
      'model.head_num_layers': 3})
  state1, hist1 = _run(1, steps=2, config=config)
  state8, hist8 = _run(8, steps=2, config=config)
  for m1, m8 in zip(hist1, hist8):
    np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  _assert_states_close(state8, state1, rtol=1e-4)
  assert 'conv2_sk' in state1.params['encoder']['stage1_block1']


def test_supervised_baseline_eight_devices_equal_one_device():
  """The supervised baseline runs in the same mapped step: its cross-entropy over the global batch
  and its BN statistics are the same on 8 devices as on 1."""
  config = helpers.tiny_config(method='supervised')
  state1, hist1 = _run(1, config=config)
  state8, hist8 = _run(8, config=config)
  for m1, m8 in zip(hist1, hist8):
    np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
    np.testing.assert_allclose(m8['train_accuracy'], m1['train_accuracy'], rtol=1e-6)
  _assert_states_close(state8, state1, rtol=1e-4)
