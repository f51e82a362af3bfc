"""Tests of simclr_jax.models.conv: matmul-lowered convolutions equal nn.Conv."""

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
]
IMPLS = ('im2col', 'shifted_matmul')


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

  y_ref, y = ref.apply(params, x), ours.apply(params, x)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)

  # A non-trivial cotangent, so every output position and channel contributes.
  cot = jax.random.normal(jax.random.key(2), y_ref.shape)
  grad = lambda m: jax.grad(lambda prm, xx: jnp.sum(m.apply(prm, xx) * cot), argnums=(0, 1))
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


def test_rejects_unknown_impl():
  with pytest.raises(ValueError, match='conv_impl'):
    ResNet(depth=18, conv_impl='winograd')
  with pytest.raises(ValueError, match='impl'):
    conv_lib.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), impl='fft')


def test_build_model_reads_conv_impl():
  from configs import base  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import build_model  # pylint: disable=g-import-not-at-top
  c = base.get_config()
  assert c.model.conv_impl == 'xla'  # Off by default: TPU/GPU want their native convolution.
  c.model.conv_impl = 'im2col'
  assert build_model(c.model, num_classes=10, image_size=32).encoder.conv_impl == 'im2col'
  del c.model['conv_impl']  # A config saved before the field existed still builds.
  assert build_model(c.model, num_classes=10, image_size=32).encoder.conv_impl == 'xla'
