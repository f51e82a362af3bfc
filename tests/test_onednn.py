"""Tests of simclr_jax.kernels.onednn: oneDNN convolutions as XLA custom calls.

Values and both gradients against a float64 NumPy convolution written here from the definition
(independent of lax and oneDNN), and the build / fallback behaviour.
"""

import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax.kernels import onednn
from simclr_jax.models.resnet import ResNet

# requirements.txt installs oneDNN on Linux x86-64: there the kernels must build, not be skipped.
SUPPORTED = sys.platform == 'linux' and platform.machine() == 'x86_64'
needs_onednn = pytest.mark.skipif(not SUPPORTED, reason='oneDNN wheels are Linux x86-64 only')


def _np_conv(x, w, strides, padding):
  """Float64 cross-correlation, NHWC (*) HWIO, from the definition: y[b, p, q, o] =
  sum_{i, j, c} x_pad[b, s_h p + i, s_w q + j, c] w[i, j, c, o]."""
  (pt, pb), (pl, pr) = padding
  x = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  kh, kw, _, cout = w.shape
  sh, sw = strides
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  y = np.zeros((x.shape[0], ho, wo, cout))
  for i in range(kh):
    for j in range(kw):
      view = x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
      y += view @ w[i, j].astype(np.float64)
  return y


def _np_conv_grads(x, w, dy, strides, padding):
  """Float64 gradients of sum(y * dy) with respect to x and w, from the same definition."""
  (pt, pb), (pl, pr) = padding
  xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  dxp = np.zeros_like(xp)
  dw = np.zeros(w.shape)
  kh, kw = w.shape[:2]
  sh, sw = strides
  _, ho, wo, _ = dy.shape
  dy = dy.astype(np.float64)
  for i in range(kh):
    for j in range(kw):
      rows, cols = slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)
      dw[i, j] = np.einsum('bpqc,bpqo->co', xp[:, rows, cols, :], dy)
      dxp[:, rows, cols, :] += dy @ w[i, j].astype(np.float64).T
  return dxp[:, pt:xp.shape[1] - pb, pl:xp.shape[2] - pr, :], dw


# (kernel, stride, padding ((top, bottom), (left, right)), H, W, Cin, Cout): ResNet's convs
# (3x3 / 1x1, strided, the 7x7/2 stem), odd sizes where the last window stops short, asymmetric
# padding, and a kernel as large as the map.
GEOMETRIES = [
    (3, 1, ((1, 1), (1, 1)), 8, 8, 16, 8),
    (3, 2, ((1, 1), (1, 1)), 9, 9, 8, 12),
    (1, 1, ((0, 0), (0, 0)), 6, 5, 5, 7),
    (1, 2, ((0, 0), (0, 0)), 7, 7, 16, 32),
    (7, 2, ((3, 3), (3, 3)), 16, 16, 3, 8),
    (3, 2, ((0, 1), (1, 0)), 10, 9, 4, 6),
    (3, 1, ((1, 1), (1, 1)), 3, 3, 32, 16),
    (4, 1, ((0, 0), (0, 0)), 4, 4, 8, 4),
]


@needs_onednn
@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_values_and_gradients_match_float64_reference(geometry):
  k, s, padding, h, w, cin, cout = geometry
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, h, w, cin)).astype(np.float32)
  kernel = rng.standard_normal((k, k, cin, cout)).astype(np.float32)
  fn = jax.jit(lambda a, b: onednn.conv2d(a, b, (s, s), padding))
  y, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(kernel))
  y_ref = _np_conv(x, kernel, (s, s), padding)
  assert y.shape == y_ref.shape
  scale = np.abs(y_ref).max()
  np.testing.assert_allclose(y, y_ref, atol=1e-5 * scale, rtol=0)
  dy = rng.standard_normal(y_ref.shape).astype(np.float32)
  dx, dkernel = vjp(jnp.asarray(dy))
  dx_ref, dkernel_ref = _np_conv_grads(x, kernel, dy, (s, s), padding)
  np.testing.assert_allclose(dx, dx_ref, atol=1e-5 * np.abs(dx_ref).max(), rtol=0)
  np.testing.assert_allclose(dkernel, dkernel_ref, atol=1e-5 * np.abs(dkernel_ref).max(), rtol=0)


@needs_onednn
def test_resnet_on_onednn_equals_xla_convolutions():
  """The whole encoder in training mode (batch statistics): same h and the same parameter
  gradients as with XLA's own convolutions, and its HLO runs the custom calls."""
  x = jax.random.uniform(jax.random.key(3), (4, 16, 16, 3))
  ref = ResNet(depth=18, width_multiplier=0.25)
  ours = ResNet(depth=18, width_multiplier=0.25, conv_impl='onednn')
  variables = ref.init(jax.random.key(0), x, train=False)

  def grads(model):
    def f(params):
      h, _ = model.apply({**variables, 'params': params}, x, train=True,
                         mutable=['batch_stats'])
      return jnp.sum(jnp.sin(h)), h
    return jax.jit(jax.grad(f, has_aux=True))

  grads_ref, h_ref = grads(ref)(variables['params'])
  grads_ours, h = grads(ours)(variables['params'])
  np.testing.assert_allclose(h, h_ref, atol=2e-4 * np.abs(h_ref).max())
  for g, g_ref in zip(jax.tree.leaves(grads_ours), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(g, g_ref, atol=2e-3 * (np.abs(g_ref).max() + 1e-6))
  hlo = grads(ours).lower(variables['params']).as_text()
  for name in ('simclr_onednn_conv_fwd', 'simclr_onednn_conv_bwd_data',
               'simclr_onednn_conv_bwd_weights'):
    assert name in hlo
  assert 'simclr_onednn' not in grads(ref).lower(variables['params']).as_text()


def test_missing_onednn_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(onednn, '_state', {'loaded': False, 'error': None})
  monkeypatch.setattr(onednn, '_onednn_root', lambda: None)
  assert not onednn.available()
  assert 'pip install' in onednn.unavailable_reason()
  model = ResNet(depth=18, width_multiplier=0.125, conv_impl='onednn')
  with pytest.raises(onednn.OnednnUnavailableError, match='onednn-devel-cpu-gomp'):
    model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=False)


def test_failed_build_names_the_fix(monkeypatch, tmp_path):
  """A compiler error surfaces as OnednnUnavailableError with the compiler's message and the
  fix, and leaves no half-written library in the cache."""
  (tmp_path / 'include' / 'oneapi' / 'dnnl').mkdir(parents=True)
  (tmp_path / 'include' / 'oneapi' / 'dnnl' / 'dnnl.hpp').write_text('#error not a real oneDNN\n')
  (tmp_path / 'lib').mkdir()
  (tmp_path / 'lib' / 'libdnnl.so').write_text('')
  cache = tmp_path / 'cache'
  monkeypatch.setenv('SIMCLR_JAX_CACHE', str(cache))
  with pytest.raises(onednn.OnednnUnavailableError, match='not a real oneDNN') as error:
    onednn._build(str(tmp_path))
  assert 'pip install' in str(error.value)
  assert list(cache.iterdir()) == []


@needs_onednn
def test_bfloat16_with_explicit_onednn_is_a_clear_error():
  with pytest.raises(ValueError, match='float32'):
    onednn.conv2d(jnp.zeros((1, 4, 4, 8), jnp.bfloat16), jnp.zeros((3, 3, 8, 8), jnp.bfloat16),
                  (1, 1), ((1, 1), (1, 1)))
