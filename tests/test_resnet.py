"""Tests for simclr_jax.models.resnet.

Shapes and parameter counts use jax.eval_shape (tracing only, no compute). Anything that runs
uses a ResNet-18 at width 0.125 on 16x16 images, to stay cheap on a small CPU.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax.models import ResNet
from simclr_jax.models import resnet as resnet_lib

TINY_WIDTH = 0.125
TINY_SHAPE = (4, 16, 16, 3)


def _init_key(seed: int = 0) -> jax.Array:
  # The 'rbg' bit generator: compiling ~60 threefry draws for an init takes ~15 s on a small
  # CPU, rbg ~1 s. What is tested does not depend on the generator.
  return jax.random.key(seed, impl='rbg')


def _init_shapes(model: ResNet, input_shape: tuple[int, ...]):
  """Variables and output shapes of model on zeros of input_shape, without computing."""
  return jax.eval_shape(
      lambda key: model.init_with_output(key, jnp.zeros(input_shape), train=False),
      jax.random.key(0))


def _num_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize('depth, expected', [(50, 23_508_032), (18, 11_176_512)])
def test_param_count_matches_standard_resnet_without_classifier(depth, expected):
  # Standard counts (torchvision resnet{18,50}) minus the 1000-way fc layer.
  _, variables = _init_shapes(ResNet(depth, cifar_stem=False), (1, 224, 224, 3))
  assert _num_params(variables['params']) == expected
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables['params']))


# Trainable / all variables of the official TF2 model's `resnet_model` (google-research/simclr
# tf2/resnet.py, counted by building it under TF 2.21 + tf_keras with FLAGS.resnet_depth,
# width_multiplier and sk_ratio set, on a 64x64 input). Its layout: a projection shortcut in the
# first block of every stage, ResNet-D stem and shortcuts whenever sk_ratio > 0.
OFFICIAL_COUNTS = [
    (18, 1, 0.0, 11_180_736, 11_190_464),
    (18, 1, 0.0625, 11_199_968, 11_209_824),
    (50, 1, 0.0, 23_508_032, 23_561_152),
    (50, 1, 0.0625, 35_215_584, 35_277_408),
    (50, 2, 0.0625, 140_306_048, 140_428_864),
    (101, 1, 0.0625, 64_662_304, 64_786_144),
    (152, 3, 0.0625, 794_704_160, 795_235_360),  # SimCLRv2's largest released model
]


@pytest.mark.parametrize('depth, width, sk_ratio, trainable, total', OFFICIAL_COUNTS)
def test_param_counts_equal_the_official_models(depth, width, sk_ratio, trainable, total):
  model = ResNet(depth, width_multiplier=width, sk_ratio=sk_ratio, cifar_stem=False,
                 stage_projection='always', max_pool_padding='same')
  _, variables = _init_shapes(model, (1, 64, 64, 3))
  assert _num_params(variables['params']) == trainable
  assert _num_params(variables['params']) + _num_params(variables['batch_stats']) == total


def test_selective_kernel_layout():
  model = ResNet(50, sk_ratio=0.0625, cifar_stem=False)
  _, variables = _init_shapes(model, (1, 64, 64, 3))
  params = variables['params']
  # ResNet-D stem: 3x3 convs to 32, 32, 64 channels.
  assert [params[n]['kernel'].shape for n in ('stem_conv_a', 'stem_conv_b', 'stem_conv')] == [
      (3, 3, 3, 32), (3, 3, 32, 32), (3, 3, 32, 64)]
  block = params['stage4_block1']
  assert 'conv2' not in block
  assert block['conv2_sk']['conv']['kernel'].shape == (3, 3, 512, 1024)  # two streams
  assert block['conv2_sk']['mix_dense_1']['kernel'].shape == (512, 32)  # max(512/16, 32)
  assert block['conv2_sk']['mix_dense_2']['kernel'].shape == (32, 1024)
  # The ResNet-D shortcut's 1x1 conv runs at stride 1 after the average pool.
  assert block['proj_conv']['kernel'].shape == (1, 1, 1024, 2048)


@pytest.mark.parametrize('side, expected', [(14, (0, 1)), (15, (1, 1)), (7, (1, 1)), (8, (0, 1))])
def test_same_padding_puts_the_extra_pixel_last(side, expected):
  assert resnet_lib.same_padding(side, 3, 2) == expected


def test_same_max_pool_moves_the_windows():
  """'same' and 'symmetric' give the same shapes and parameters but other features."""
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 28, 28, 3)), jnp.float32)
  outs = []
  for padding in resnet_lib.MAX_POOL_PADDINGS:
    model = ResNet(18, width_multiplier=TINY_WIDTH, cifar_stem=False, max_pool_padding=padding)
    variables = model.init(_init_key(), x, train=False)
    outs.append(model.apply(variables, x, train=False))
  assert outs[0].shape == outs[1].shape
  assert not np.allclose(outs[0], outs[1])


@pytest.mark.parametrize('depth', sorted(resnet_lib.STAGE_SIZES))
def test_representation_width_every_depth(depth):
  h, _ = _init_shapes(ResNet(depth), (2, 16, 16, 1))
  expected = 512 if depth in (18, 34) else 2048
  assert h.shape == (2, expected)
  assert h.dtype == jnp.float32
  assert resnet_lib.representation_dim(depth) == expected


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('width', [0.125, 0.25, 2.0, 4.0])
def test_representation_width_scales_with_width_multiplier(depth, width):
  h, variables = _init_shapes(ResNet(depth, width_multiplier=width), (2, 16, 16, 3))
  base = 512 if depth == 18 else 2048
  assert h.shape == (2, int(base * width))
  assert variables['params']['stem_conv']['kernel'].shape[-1] == int(64 * width)


def test_tiny_width_keeps_at_least_one_channel():
  h, variables = _init_shapes(ResNet(18, width_multiplier=0.001), (2, 16, 16, 3))
  assert variables['params']['stem_conv']['kernel'].shape[-1] == 1
  assert h.shape == (2, 1)


@pytest.mark.parametrize('side, cifar_stem, pool, expected_kernel, expected_stage1_side', [
    (32, None, True, 3, 32),  # Auto: CIFAR stem at <= 32.
    (28, None, True, 3, 28),
    (64, None, True, 7, 16),  # Auto: ImageNet stem (conv /2, max-pool /2).
    (32, False, True, 7, 8),
    (28, False, False, 7, 14),  # ImageNet stem without its max-pool: conv /2 only.
    (64, True, False, 3, 64),  # stem_max_pool does not touch the CIFAR stem.
    (64, True, True, 3, 64),
])
def test_stem_selection(side, cifar_stem, pool, expected_kernel, expected_stage1_side):
  model = ResNet(18, width_multiplier=TINY_WIDTH, cifar_stem=cifar_stem, stem_max_pool=pool)
  _, variables = _init_shapes(model, (1, side, side, 1))
  assert variables['params']['stem_conv']['kernel'].shape[:2] == (expected_kernel,) * 2
  _, state = jax.eval_shape(
      lambda v: model.apply(
          v, jnp.zeros((1, side, side, 1)), train=False,
          capture_intermediates=lambda mdl, _: mdl.name == 'stage1_block1',
          mutable=['intermediates']),
      variables)
  stage1_out = state['intermediates']['stage1_block1']['__call__'][0]
  assert stage1_out.shape[1:3] == (expected_stage1_side,) * 2


@pytest.fixture(scope='module')
def tiny():
  """A tiny ResNet-18, its variables with BN scales made nonzero, and an input batch."""
  model = ResNet(18, width_multiplier=TINY_WIDTH)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=TINY_SHAPE), jnp.float32)
  variables = jax.jit(lambda key: model.init(key, x, train=False))(_init_key())
  # Zero-init last gammas make every block the identity; perturb the BN parameters so that each
  # block contributes to h and has nonzero gradients.
  params = jax.tree.map(
      lambda p: p + 0.5 * rng.standard_normal(p.shape, np.float32) if p.ndim == 1 else p,
      variables['params'])
  return model, {'params': params, 'batch_stats': variables['batch_stats']}, x, variables


def test_last_bn_gamma_of_each_block_is_zero(tiny):
  _, _, _, initial = tiny
  params = initial['params']
  blocks = [name for name in params if name.startswith('stage')]
  assert len(blocks) == 8
  for name in blocks:
    np.testing.assert_array_equal(params[name]['bn2']['scale'], 0.0)
    np.testing.assert_array_equal(params[name]['bn1']['scale'], 1.0)
    if 'proj_bn' in params[name]:
      np.testing.assert_array_equal(params[name]['proj_bn']['scale'], 1.0)
  np.testing.assert_array_equal(params['stem_bn']['scale'], 1.0)


def test_bottleneck_last_bn_gamma_is_zero_and_v1_5_stride():
  block = resnet_lib.BottleneckBlock(
      filters=4, stride=2,
      norm=lambda **kw: flax.linen.BatchNorm(use_running_average=True, **kw))
  y, variables = block.init_with_output(_init_key(), jnp.ones((1, 8, 8, 8)))
  params = variables['params']
  assert y.shape == (1, 4, 4, 16)
  np.testing.assert_array_equal(params['bn3']['scale'], 0.0)
  np.testing.assert_array_equal(params['bn1']['scale'], 1.0)
  # v1.5: the 1x1 convs keep the resolution, the 3x3 conv strides.
  _, state = block.apply(variables, jnp.ones((1, 8, 8, 8)),
                         capture_intermediates=True, mutable=['intermediates'])
  assert state['intermediates']['conv1']['__call__'][0].shape[1:3] == (8, 8)
  assert state['intermediates']['conv2']['__call__'][0].shape[1:3] == (4, 4)


def _loss_like(h: jax.Array) -> jax.Array:
  """A scalar of the order of a classification loss, from a fixed linear map of h."""
  w = np.random.default_rng(3).standard_normal((h.shape[-1], 10)) / np.sqrt(h.shape[-1])
  logits = h @ w
  return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])


def test_bfloat16_compute_close_to_float32(tiny):
  model, variables, x, _ = tiny
  model_bf16 = ResNet(18, width_multiplier=TINY_WIDTH, dtype=jnp.bfloat16)

  def run(m):
    h, state = m.apply(variables, x, train=True, mutable=['batch_stats'])
    return _loss_like(h), h, state

  loss32, _, _ = jax.jit(lambda: run(model))()
  loss16, h16, state16 = jax.jit(lambda: run(model_bf16))()
  assert h16.dtype == jnp.float32
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(state16))
  assert abs(float(loss16) - float(loss32)) < 1e-2


def test_fine_tune_after_block_freezes_early_blocks(tiny):
  model, variables, x, _ = tiny
  k = 2  # stem, stage 1 and stage 2 frozen.

  @jax.jit
  def grads_and_stats(variables):
    def loss_fn(params):
      h, state = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
          fine_tune_after_block=k, mutable=['batch_stats'])
      return jnp.sum(h * jnp.linspace(-1.0, 1.0, h.shape[-1])), state['batch_stats']
    return jax.grad(loss_fn, has_aux=True)(variables['params'])

  grads, new_stats = grads_and_stats(variables)
  for name in grads:
    stage = resnet_lib.stage_of(name)
    grad_leaves = jax.tree.leaves(grads[name])
    if stage <= k:
      assert all(np.all(np.asarray(g) == 0) for g in grad_leaves), name
    else:
      assert all(np.any(np.asarray(g) != 0) for g in grad_leaves), name
  for name in new_stats:
    stage = resnet_lib.stage_of(name)
    pairs = list(zip(jax.tree.leaves(variables['batch_stats'][name]),
                     jax.tree.leaves(new_stats[name])))
    if stage <= k:
      for old, new in pairs:
        np.testing.assert_array_equal(old, new, err_msg=name)
    else:
      assert all(np.any(np.asarray(old) != np.asarray(new)) for old, new in pairs), name


@pytest.mark.parametrize('kwargs, message', [
    (dict(depth=19), 'depth must be one of'),
    (dict(depth=50, width_multiplier=0.0), 'width_multiplier'),
    (dict(depth=50, width_multiplier=-1.0), 'width_multiplier'),
    (dict(depth=50, width_multiplier=float('nan')), 'width_multiplier'),
    (dict(depth=50, dtype=jnp.float16), 'dtype'),
    (dict(depth=50, sk_ratio=-0.1), 'sk_ratio'),
    (dict(depth=50, stage_projection='first'), 'stage_projection'),
    (dict(depth=50, max_pool_padding='valid'), 'max_pool_padding'),
])
def test_bad_construction_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ResNet(**kwargs)


@pytest.mark.parametrize('k', [-2, 5])
def test_bad_fine_tune_after_block_raises(k):
  with pytest.raises(ValueError, match='fine_tune_after_block'):
    _init_shapes_fine_tune(k)


def _init_shapes_fine_tune(k: int):
  model = ResNet(18, width_multiplier=TINY_WIDTH)
  return jax.eval_shape(
      lambda key: model.init(key, jnp.zeros((1, 16, 16, 3)), train=True,
                             fine_tune_after_block=k),
      jax.random.key(0))
