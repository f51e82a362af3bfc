"""Tests of simclr_jax.models.conv: matmul-lowered convolutions equal nn.Conv."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax.models import conv as conv_lib
from simclr_jax.models.resnet import ResNet

# (kernel, stride, padding, H, W, Cin, Cout): every conv shape ResNet uses (CIFAR and ImageNet
# stems, strided 3x3 / 1x1, bottleneck 1x1), plus an odd size where strided views must not
# run past the edge.
SHAPES = [
    (3, 1, 1, 8, 8, 3, 8),
    (3, 2, 1, 9, 9, 4, 6),
    (1, 1, 0, 6, 6, 5, 7),
    (1, 2, 0, 7, 7, 4, 8),
    (7, 2, 3, 16, 16, 3, 8),
    (3, 1, 1, 6, 6, 8, 4),  # 'auto' runs XLA's conv here (stride 1, >= 8 channels)
    # Small maps where some taps see only padding (dropped by the lowerings): the last stages
    # of the ImageNet-stem ResNet on 28x28.
    (3, 1, 1, 1, 1, 4, 6),
    (3, 2, 1, 2, 2, 4, 6),
    (3, 1, 1, 2, 2, 3, 5),  # fewer pixels than taps: the dense-matrix path
    (3, 1, 1, 3, 2, 3, 5),
    # 'auto' runs stride-2 convs on 1-3 channels as space-to-depth + a stride-1 native conv:
    # the Fashion-MNIST stem, and odd kernel / padded sizes where the extra row and column
    # appear.
    (7, 2, 3, 28, 28, 1, 8),
    (5, 2, 2, 11, 11, 2, 4),
    (3, 2, 0, 10, 9, 1, 3),
]
IMPLS = ('im2col', 'auto')


def _reference(kernel_size, stride, pad, cout):
  return nn.Conv(cout, (kernel_size, kernel_size), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False)


def _ours(kernel_size, stride, pad, cout, impl):
  return conv_lib.Conv(cout, (kernel_size, kernel_size), strides=(stride, stride),
                       padding=((pad, pad), (pad, pad)), kernel_init=nn.initializers.lecun_normal(),
                       impl=impl)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('shape', SHAPES)
def test_forward_and_gradient_equal_nn_conv(shape, impl):
  k, s, p, h, w, cin, cout = shape
  x = jax.random.normal(jax.random.key(1), (2, h, w, cin))
  ref, ours = _reference(k, s, p, cout), _ours(k, s, p, cout, impl)
  params = ref.init(jax.random.key(0), x)
  # Same parameter tree and the same initial values (same name, shape and init call).
  ours_params = ours.init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(ours_params)
  np.testing.assert_array_equal(params['params']['kernel'], ours_params['params']['kernel'])

  # Jitted throughout: op by op, the matmul lowerings dispatch (and compile) many small ops.
  y_ref, y = jax.jit(ref.apply)(params, x), jax.jit(ours.apply)(params, x)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)

  # A non-trivial cotangent, so every output position and channel contributes.
  cot = jax.random.normal(jax.random.key(2), y_ref.shape)
  grad = lambda m: jax.jit(jax.grad(lambda prm, xx: jnp.sum(m.apply(prm, xx) * cot),  # pylint: disable=unnecessary-lambda-assignment
                                    argnums=(0, 1)))
  (gp_ref, gx_ref), (gp, gx) = grad(ref)(params, x), grad(ours)(params, x)
  np.testing.assert_allclose(gp['params']['kernel'], gp_ref['params']['kernel'], atol=1e-5,
                             rtol=1e-5)
  np.testing.assert_allclose(gx, gx_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('impl', IMPLS)
def test_resnet_checkpoints_interchangeable(impl):
  """A ResNet with matmul convs has nn.Conv's parameters and computes the same h."""
  x = jax.random.uniform(jax.random.key(3), (4, 16, 16, 1))
  ref = ResNet(depth=18, width_multiplier=0.125)
  ours = ResNet(depth=18, width_multiplier=0.125, conv_impl=impl)
  variables = ref.init(jax.random.key(0), x, train=False)
  ours_variables = ours.init(jax.random.key(0), x, train=False)
  jax.tree.map(np.testing.assert_array_equal, variables, ours_variables)
  h_ref, _ = ref.apply(variables, x, train=True, mutable=['batch_stats'])
  h, _ = ours.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(h, h_ref, atol=1e-5, rtol=1e-5)


def test_live_taps_drop_exactly_the_all_padding_taps():
  pad1 = ((1, 1), (1, 1))
  assert conv_lib._live_taps(1, 1, 3, 3, (1, 1), pad1) == [(1, 1)]  # pylint: disable=protected-access
  assert conv_lib._live_taps(2, 2, 3, 3, (2, 2), pad1) == [(1, 1), (1, 2), (2, 1), (2, 2)]  # pylint: disable=protected-access
  assert len(conv_lib._live_taps(2, 2, 3, 3, (1, 1), pad1)) == 9  # pylint: disable=protected-access
  assert len(conv_lib._live_taps(7, 7, 3, 3, (2, 2), pad1)) == 9  # pylint: disable=protected-access


# (window, stride, padding, H, W): the ImageNet stem's 3x3/2 pad 1 on even and odd sides, a
# window that does not tile the input, and a plain 2x2/2.
POOL_SHAPES = [(3, 2, 1, 14, 14), (3, 2, 1, 7, 9), (3, 1, 1, 5, 5), (2, 2, 0, 6, 6)]


@pytest.mark.parametrize('shape', POOL_SHAPES)
def test_max_pool_values_and_gradient_equal_nn_max_pool(shape):
  """Same values and gradient routing, with ties: after a ReLU many windows are all zeros, and the gradient must
  go to the same (first, row-major) element as XLA's select-and-scatter sends it."""
  k, s, p, h, w = shape
  x = jax.nn.relu(jax.random.normal(jax.random.key(4), (3, h, w, 5)))
  x = x.at[0, :3, :3, 0].set(0.5)  # a window whose maximum is tied among all its elements
  pool = lambda xx, impl: conv_lib.max_pool(xx, (k, k), strides=(s, s),  # pylint: disable=unnecessary-lambda-assignment
                                            padding=((p, p), (p, p)), impl=impl)
  y_ref = nn.max_pool(x, (k, k), strides=(s, s), padding=((p, p), (p, p)))
  y = jax.jit(pool, static_argnums=1)(x, 'im2col')
  np.testing.assert_array_equal(y, y_ref)
  cot = jax.random.normal(jax.random.key(5), y_ref.shape)
  grad = lambda impl: jax.jit(jax.grad(lambda xx: jnp.sum(pool(xx, impl) * cot)))(x)  # pylint: disable=unnecessary-lambda-assignment
  g_ref = grad('xla')
  assert float(jnp.abs(g_ref).sum()) > 0
  for impl in ('im2col', 'auto'):
    g = grad(impl)
    # Routed to the same elements; values equal up to the order in which overlapping windows'
    # contributions are summed (float32 rounding).
    np.testing.assert_array_equal(g != 0, g_ref != 0)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)


def test_auto_impl_picks_per_layer_on_cpu():
  assert jax.default_backend() == 'cpu'
  assert conv_lib.resolve_impl('auto') == 'auto'  # decided per layer by cpu_impl
  assert conv_lib.resolve_impl('xla') == 'xla'
  assert conv_lib.cpu_impl(32, 32, 3, 3, (1, 1), 64) == 'xla'  # stride 1, the kernel fits
  assert conv_lib.cpu_impl(3, 3, 3, 3, (1, 1), 8) == 'xla'
  assert conv_lib.cpu_impl(32, 32, 3, 3, (1, 1), 3) == 'im2col'  # the CIFAR stem on RGB
  assert conv_lib.cpu_impl(2, 2, 3, 3, (1, 1), 64) == 'im2col'  # map smaller than the kernel
  assert conv_lib.cpu_impl(1, 1, 3, 3, (1, 1), 64) == 'im2col'
  assert conv_lib.cpu_impl(32, 32, 3, 3, (2, 2), 64) == 'im2col'  # strided
  assert conv_lib.cpu_impl(28, 28, 7, 7, (2, 2), 1) == 'space_to_depth'  # the ImageNet stem
  assert conv_lib.cpu_impl(32, 32, 3, 3, (2, 2), 3) == 'space_to_depth'
  assert conv_lib.cpu_impl(32, 32, 2, 2, (2, 2), 3) == 'im2col'  # already one tap per 2x2 block
  assert conv_lib.cpu_impl(16, 16, 1, 1, (1, 1), 64) == 'im2col'  # a 1x1 conv is a plain matmul


def test_unfused_is_the_identity_and_survives_compilation():
  """`_unfused` returns its input (NaN included: then the other branch runs), passes the
  gradient through unchanged, and XLA keeps its cond: the boundary that stops XLA:CPU from
  fusing the activation's batch norm + ReLU into the weight gradient's transpose."""
  x = jax.random.normal(jax.random.key(6), (2, 5, 5, 8))
  np.testing.assert_array_equal(conv_lib._unfused(x), x)  # pylint: disable=protected-access
  x_nan = x.at[0, 0, 0, 0].set(jnp.nan)
  np.testing.assert_array_equal(conv_lib._unfused(x_nan), x_nan)  # pylint: disable=protected-access
  cot = jax.random.normal(jax.random.key(7), x.shape)
  g = jax.grad(lambda xx: jnp.sum(conv_lib._unfused(xx * 2.0) * cot))(x)  # pylint: disable=protected-access
  np.testing.assert_array_equal(g, 2.0 * cot)
  kernel = jax.random.normal(jax.random.key(8), (3, 3, 8, 4))

  def loss(xx, kk):
    y = conv_lib.conv2d(jax.nn.relu(xx * 1.5 + 0.1), kk, padding=((1, 1), (1, 1)), impl='auto')
    return jnp.sum(y * y)

  hlo = jax.jit(jax.grad(loss, argnums=1)).lower(x, kernel).compile().as_text()
  assert 'conditional(' in hlo


@pytest.mark.parametrize('impl', IMPLS + ('auto',))
def test_resnet_imagenet_stem_gradients_equal(impl):
  """The whole encoder with the ImageNet stem (7x7/2 conv + max-pool): same h and gradients."""
  x = jax.random.uniform(jax.random.key(6), (4, 28, 28, 1))
  ref = ResNet(depth=18, width_multiplier=0.125, cifar_stem=False)
  ours = ResNet(depth=18, width_multiplier=0.125, cifar_stem=False, conv_impl=impl)
  variables = ref.init(jax.random.key(0), x, train=False)

  def loss(model, params, xx):
    h, _ = model.apply({**variables, 'params': params}, xx, train=True, mutable=['batch_stats'])
    return jnp.sum(h * jnp.arange(h.shape[-1]))

  # Jitted: op by op, the im2col encoder's gradient dispatches (and compiles) hundreds of ops.
  grads = lambda model: jax.jit(jax.grad(functools.partial(loss, model), argnums=(0, 1)))  # pylint: disable=unnecessary-lambda-assignment
  g_ref = grads(ref)(variables['params'], x)
  g = grads(ours)(variables['params'], x)
  # Float32 summation order differs (matmuls vs convolutions), and some leaves (BN offsets
  # followed by another BN) have true gradients ~0 made of cancelling terms: tolerance relative
  # to each leaf's largest entry.
  def close(a, b):
    np.testing.assert_allclose(a, b, atol=1e-4 * float(np.abs(b).max()) + 1e-6)
  jax.tree.map(close, g, g_ref)


def test_rejects_unknown_impl():
  with pytest.raises(ValueError, match='conv_impl'):
    ResNet(depth=18, conv_impl='winograd')
  with pytest.raises(ValueError, match='impl'):
    conv_lib.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), impl='fft')


def test_build_model_reads_conv_impl():
  from simclr_jax import defaults  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import build_model  # pylint: disable=g-import-not-at-top
  c = defaults.get_config()
  assert c.model.conv_impl == 'auto'  # XLA's own convolution on TPU/GPU, per layer on the CPU.
  c.model.conv_impl = 'im2col'
  assert build_model(c.model, num_classes=10, image_size=32).encoder.conv_impl == 'im2col'
  del c.model['conv_impl']  # A config saved before the field existed still builds.
  assert build_model(c.model, num_classes=10, image_size=32).encoder.conv_impl == 'xla'
