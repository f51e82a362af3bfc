"""Convolutions lowered as matrix multiplies, for backends whose native convolution is slow.

XLA:CPU runs a 3x3, 64-channel convolution (and its two gradients) at a fraction of the speed
of its matrix multiply, while a matmul of the same FLOPs reaches near the machine's ceiling.
A convolution is a sum of matmuls over the kernel taps, so on CPU it can be written as:

- 'im2col': the kh*kw shifted (strided) views of the padded input are concatenated on the
  channel axis, [B, Ho, Wo, kh*kw*Cin], and multiplied once by the kernel reshaped to
  [kh*kw*Cin, Cout]: one big matmul (K = 9*Cin for 3x3), at the cost of a kh*kw times larger
  patch tensor, which autodiff also keeps for the weight gradient.
- 'xla': `lax.conv_general_dilated`, what `nn.Conv` does (the right choice on TPU/GPU, where the
  convolution units are the fast path).
- 'auto': 'xla' off the CPU; on the CPU, per layer (`cpu_impl`): XLA's native convolution for
  a stride-1 conv whose kernel fits in the map and has at least 8 input channels, 'im2col' for
  strided convs, 1x1 convs, the 1-3 channel stem and maps smaller than the kernel (where the
  dead-tap skipping and the dense matrix below win by up to 10x). Measured per layer on 2 cores
  with the trainer's XLA flags (`simclr_jax.xla_setup`: XLA:CPU's convolutions on Eigen, not
  YNNPACK), docs/benchmarks.md. So one config runs fast on a laptop and natively on an
  accelerator.

Two more CPU-only details under 'auto' (same math, bitwise the same forward values for the
first):

- XLA:CPU's weight gradient of a native convolution needs the input with the batch axis minor
  ([Cin, H, W, B]), so it transposes the activation. XLA fuses the batch norm + ReLU (+
  residual) that produced the activation into that transpose, and a transpose fusion with
  elementwise work runs ~3x slower than a plain transposed copy (~1.0 s of a 3.9 s CIFAR
  ResNet-18 step at N=128). `_unfused` hands the native conv its input through a `lax.cond`
  whose two branches both return it (the predicate is never constant to XLA, `x == x` on one
  element, and either branch gives the same values), a computation boundary fusion cannot
  cross, so the transpose reads the stored activation. The gradient passes straight through.
- A stride-2 conv on 1-3 channels (the ImageNet stem, 7x7/2 on grayscale) runs as a stride-1
  conv on the 2x2 space-to-depth input (`_space_to_depth_conv`: 4x4 kernel, 4 channels, the
  7x7 kernel zero-padded to 8x8 and regrouped, the extra taps multiply zeros and get no
  update): the native convolution then replaces 49 single-channel im2col slices.

The ImageNet stem's 3x3/2 max-pool follows the same switch (`max_pool`): XLA:CPU turns the
gradient of `nn.max_pool` (select-and-scatter) into an index-tracking reduce-window plus a
scatter, ~75 ms of a ~385 ms Fashion-MNIST step (docs/benchmarks.md, training step); im2col uses
a max over the window's strided views with a hand-written gradient instead, routing each output
gradient to the first maximal element of its window in row-major order, as select-and-scatter
does (ties are common after a ReLU), so the gradients are identical.

im2col skips kernel taps whose strided view is all padding (`_live_taps`): on the
1x1 maps of the last stage at 28x28, 8 of a 3x3 conv's 9 taps only multiply zeros. On maps with
fewer pixels than live taps (2x2 under a 3x3 kernel) it multiplies the flattened map by the
conv's full matrix instead (`_dense_conv`): 16 instead of 36 multiplies per Cin*Cout there.

Every form computes the same function with the same parameter: `Conv` is a drop-in for `nn.Conv`
(NHWC input, explicit padding, no bias) whose one parameter is `kernel` [kh, kw, Cin, Cout],
initialised exactly as `nn.Conv` does, so checkpoints move between implementations unchanged.
Gradients come from autodiff of the chosen form.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

CONV_IMPLS = ('xla', 'im2col', 'auto')

Padding = Sequence[tuple[int, int]]


def _check(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Padding) -> None:
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f'conv expects x [B, H, W, C] and kernel [kh, kw, Cin, Cout]; got '
                     f'{x.shape} and {kernel.shape}.')
  if x.shape[-1] != kernel.shape[2]:
    raise ValueError(f'conv input has {x.shape[-1]} channels, kernel expects {kernel.shape[2]}.')
  if len(strides) != 2 or len(padding) != 2:
    raise ValueError(f'conv needs 2 strides and 2 (lo, hi) paddings; got {strides}, {padding}.')


def resolve_impl(impl: str) -> str:
  """'auto' -> 'xla' off the CPU (it stays 'auto', decided per layer by `cpu_impl`, on the
  CPU); any other name unchanged."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv impl must be one of {CONV_IMPLS}, got {impl!r}.')
  if impl == 'auto' and jax.default_backend() != 'cpu':
    return 'xla'
  return impl


# Fewest input channels for which 'auto' uses XLA's native conv on the CPU: with 1-3 channels (the
# stem on grayscale / RGB) the native conv's channel-minor inner loop is mostly empty lanes, and
# im2col (K = kh*kw*Cin) ran 2.3x faster on the CIFAR stem; at 16 channels native won 2.4x.
MIN_NATIVE_CHANNELS = 8


def cpu_impl(h: int, w: int, kh: int, kw: int, strides: Sequence[int], cin: int) -> str:
  """What 'auto' runs on the CPU for one conv layer: 'xla' for a stride-1 conv with a kernel
  larger than 1x1 that fits in the [h, w] map and at least MIN_NATIVE_CHANNELS input channels,
  'space_to_depth' for a stride-2 conv with a kernel larger than 2x2 on fewer channels (the
  stem), 'im2col' otherwise (module docstring)."""
  if tuple(strides) == (2, 2) and kh > 2 and kw > 2 and cin < MIN_NATIVE_CHANNELS:
    return 'space_to_depth'
  native = (tuple(strides) == (1, 1) and kh * kw > 1 and h >= kh and w >= kw
            and cin >= MIN_NATIVE_CHANNELS)
  return 'xla' if native else 'im2col'


def _output_size(h: int, w: int, kh: int, kw: int, strides: Sequence[int],
                 padding: Padding) -> tuple[int, int]:
  """(Ho, Wo) of a window op with these kernel, strides and explicit padding."""
  return ((h + sum(padding[0]) - kh) // strides[0] + 1,
          (w + sum(padding[1]) - kw) // strides[1] + 1)


def _live_taps(h: int, w: int, kh: int, kw: int, strides: Sequence[int],
               padding: Padding) -> list[tuple[int, int]]:
  """Kernel taps (i, j) whose strided view holds at least one input pixel, row-major.

  A tap whose view is all padding multiplies zeros: a 3x3 conv on a 1x1 map (the last stage of
  the ImageNet-stem ResNet on 28x28 Fashion-MNIST) has 1 live tap of 9, a stride-2 3x3 conv from
  2x2 to 1x1 has 4. Dropping the dead ones is exact and skips their matmul work.
  """
  (plo_h, _), (plo_w, _) = padding
  sh, sw = strides
  ho, wo = _output_size(h, w, kh, kw, strides, padding)
  live_rows = [i for i in range(kh) if any(plo_h <= i + sh * p < plo_h + h for p in range(ho))]
  live_cols = [j for j in range(kw) if any(plo_w <= j + sw * q < plo_w + w for q in range(wo))]
  return [(i, j) for i in live_rows for j in live_cols]


def _taps(x: jax.Array, kh: int, kw: int, strides: Sequence[int], padding: Padding,
          pad_value: float = 0.0, taps=None):
  """The kh*kw strided views of the padded input, row-major over (i, j), and the output side.

  View (i, j) is the input pixel that kernel tap (i, j) sees at every output position:
  x_pad[:, i + sh * p, j + sw * q, :] for p < Ho, q < Wo. `taps`: only these (i, j), in order.
  """
  (plo_h, phi_h), (plo_w, phi_w) = padding
  sh, sw = strides
  if plo_h or phi_h or plo_w or phi_w:
    x = jnp.pad(x, ((0, 0), (plo_h, phi_h), (plo_w, phi_w), (0, 0)), constant_values=pad_value)
  b, hp, wp, c = x.shape
  ho, wo = _output_size(hp, wp, kh, kw, strides, ((0, 0), (0, 0)))
  if taps is None:
    taps = [(i, j) for i in range(kh) for j in range(kw)]
  views = [lax.slice(x, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                     (1, sh, sw, 1)) for i, j in taps]
  return views, (b, ho, wo)


def conv2d(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int] = (1, 1),
           padding: Padding = ((0, 0), (0, 0)), impl: str = 'xla',
           precision: Any = None) -> jax.Array:
  """2-D convolution (cross-correlation, as nn.Conv) in NHWC, lowered as `impl` says.

  Args:
    x: input [B, H, W, Cin].
    kernel: [kh, kw, Cin, Cout] (nn.Conv's layout).
    strides: (sh, sw).
    padding: ((lo_h, hi_h), (lo_w, hi_w)) explicit zero padding.
    impl: 'xla' | 'im2col' | 'auto' (module docstring).
    precision: passed to the matmuls / convolution.

  Returns:
    [B, Ho, Wo, Cout], Ho = (H + lo_h + hi_h - kh) // sh + 1 (likewise Wo).
  """
  impl = resolve_impl(impl)
  _check(x, kernel, strides, padding)
  kh, kw, cin, cout = kernel.shape
  if impl == 'auto':
    impl = cpu_impl(x.shape[1], x.shape[2], kh, kw, strides, cin)
    if impl == 'space_to_depth':
      return _space_to_depth_conv(x, kernel, padding, precision)
    if impl == 'xla':
      x = _unfused(x)
  if impl == 'xla':
    return _native_conv(x, kernel, strides, padding, precision)
  taps = _live_taps(x.shape[1], x.shape[2], kh, kw, strides, padding)
  if x.shape[1] * x.shape[2] < len(taps):
    return _dense_conv(x, kernel, strides, padding, taps, precision)
  views, (b, ho, wo) = _taps(x, kh, kw, strides, padding, taps=taps)
  # Channel order (tap, c) matches the kernel rows stacked tap by tap.
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  rows = jnp.concatenate([kernel[i, j] for i, j in taps], axis=0)
  y = jnp.dot(patches.reshape(b * ho * wo, len(taps) * cin), rows, precision=precision)
  return y.reshape(b, ho, wo, cout)


def _native_conv(x, kernel, strides, padding, precision):
  """XLA's own convolution, NHWC / HWIO, explicit padding (what nn.Conv runs)."""
  return lax.conv_general_dilated(x, kernel, tuple(strides), tuple(tuple(p) for p in padding),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)


@jax.custom_vjp
def _unfused(x: jax.Array) -> jax.Array:
  """x itself, through a computation boundary XLA's fusion cannot cross (module docstring).

  Both branches return x (the second adds 0.0: the same values, and branches XLA does not merge);
  the predicate depends on x, so XLA cannot drop the cond. The VJP is the identity.
  """
  same = x[(0,) * x.ndim] == x[(0,) * x.ndim]
  return lax.cond(same, lambda a: a, lambda a: a + 0.0, x)


def _unfused_fwd(x):
  return _unfused(x), None


def _unfused_bwd(_, g):
  return (g,)


_unfused.defvjp(_unfused_fwd, _unfused_bwd)


def _space_to_depth_conv(x, kernel, padding, precision):
  """A stride-2 conv as a stride-1 native conv on the 2x2 space-to-depth of the padded input.

  Output pixel (p, q) of the stride-2 conv reads padded rows 2p + i, i < kh. With i = 2a + d
  (d in {0, 1}) that is row p + a of the space-to-depth map at sub-row d, so the kernel becomes
  [ceil(kh/2), ceil(kw/2), 4 * Cin, Cout], channel order (d_row, d_col, c), with zeros where
  2a + d >= kh. The padded input is padded once more by one row / column where its size is odd;
  the extra output row / column this can add is sliced off.
  """
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  ho, wo = _output_size(h, w, kh, kw, (2, 2), padding)
  (plo_h, phi_h), (plo_w, phi_w) = padding
  eh, ew = (h + plo_h + phi_h) % 2, (w + plo_w + phi_w) % 2
  x = jnp.pad(x, ((0, 0), (plo_h, phi_h + eh), (plo_w, phi_w + ew), (0, 0)))
  hs, ws = x.shape[1] // 2, x.shape[2] // 2
  x = x.reshape(b, hs, 2, ws, 2, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, hs, ws, 4 * cin)
  ah, aw = (kh + 1) // 2, (kw + 1) // 2
  k = jnp.pad(kernel, ((0, 2 * ah - kh), (0, 2 * aw - kw), (0, 0), (0, 0)))
  k = k.reshape(ah, 2, aw, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(ah, aw, 4 * cin, cout)
  y = _native_conv(_unfused(x), k, (1, 1), ((0, 0), (0, 0)), precision)
  return y[:, :ho, :wo, :]


def _dense_conv(x, kernel, strides, padding, taps, precision):
  """A conv on a tiny map as one matmul by its full [H*W*Cin, Ho*Wo*Cout] matrix.

  Each output position sums len(taps) input positions, but when the whole map has fewer pixels
  than that (H*W < live taps: a 3x3 conv on the 2x2 maps of stage 3 at 28x28) the matrix that
  maps the flattened map to the flattened output does fewer multiplies (H*W*Ho*Wo vs
  Ho*Wo*taps per Cin*Cout) and needs no patch tensor. Its blocks are kernel taps, placed by a
  constant 0/1 selection tensor (one tap per block, so the entries are exactly the kernel's).
  """
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  (plo_h, _), (plo_w, _) = padding
  sh, sw = strides
  ho, wo = _output_size(h, w, kh, kw, strides, padding)
  select = np.zeros((h, w, ho, wo, kh, kw), np.float32)
  for p in range(ho):
    for q in range(wo):
      for i, j in taps:
        r, c = sh * p + i - plo_h, sw * q + j - plo_w
        if 0 <= r < h and 0 <= c < w:
          select[r, c, p, q, i, j] = 1.0
  matrix = jnp.einsum('rcpqij,ijko->rckpqo', jnp.asarray(select, kernel.dtype), kernel,
                      precision=precision).reshape(h * w * cin, ho * wo * cout)
  y = jnp.dot(x.reshape(b, h * w * cin), matrix, precision=precision)
  return y.reshape(b, ho, wo, cout)


class Conv(nn.Module):
  """Bias-free 2-D convolution, a drop-in for `nn.Conv(..., use_bias=False)`.

  Same parameter (`kernel` [kh, kw, Cin, Cout], float `param_dtype`) and the same
  initialisation call as nn.Conv, so a model built with any `impl` has an identical parameter
  tree and identical initial values.

  Attributes:
    features: Cout.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: ((lo_h, hi_h), (lo_w, hi_w)).
    kernel_init: initialiser of the kernel.
    dtype: compute dtype (input and kernel are cast to it).
    param_dtype: dtype of the stored kernel.
    impl: one of CONV_IMPLS.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Padding = ((0, 0), (0, 0))
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  impl: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, Cin] -> [B, Ho, Wo, features]."""
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x.shape[-1], self.features),
                        self.param_dtype)
    return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), strides=self.strides,
                  padding=self.padding, impl=self.impl)


def max_pool(x: jax.Array, window: Sequence[int], *, strides: Sequence[int],
             padding: Padding, impl: str = 'xla') -> jax.Array:
  """Max-pool over (H, W) of NHWC `x` with -inf padding: `nn.max_pool` for impl 'xla' (and
  'auto' off the CPU), else the strided-view form with its own gradient (module docstring).
  Same values and gradients."""
  padding = tuple(tuple(p) for p in padding)
  if resolve_impl(impl) == 'xla':
    return nn.max_pool(x, tuple(window), strides=tuple(strides), padding=padding)
  return _max_pool_views(x, tuple(window), tuple(strides), padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_views(x, window, strides, padding):
  views, _ = _taps(x, *window, strides, padding, pad_value=-jnp.inf)
  return functools.reduce(jnp.maximum, views)


def _max_pool_views_fwd(x, window, strides, padding):
  y = _max_pool_views(x, window, strides, padding)
  return y, (x, y)


def _max_pool_views_bwd(window, strides, padding, residuals, g):
  x, y = residuals
  views, (_, ho, wo) = _taps(x, *window, strides, padding, pad_value=-jnp.inf)
  (plo_h, phi_h), (plo_w, phi_w) = padding
  sh, sw = strides
  hp, wp = x.shape[1] + plo_h + phi_h, x.shape[2] + plo_w + phi_w
  taken = jnp.zeros(y.shape, bool)
  grad_padded = jnp.zeros((x.shape[0], hp, wp, x.shape[3]), g.dtype)
  zero = jnp.zeros((), g.dtype)
  for t, view in enumerate(views):
    i, j = divmod(t, window[1])
    first = (view == y) & ~taken  # first maximal tap of each window, row-major
    taken = taken | first
    # Scatter back to the strided positions i + sh * p, j + sw * q by interior padding.
    grad_padded = grad_padded + lax.pad(
        jnp.where(first, g, zero), zero,
        ((0, 0, 0), (i, hp - i - sh * (ho - 1) - 1, sh - 1),
         (j, wp - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
  return (grad_padded[:, plo_h:hp - phi_h, plo_w:wp - phi_w, :],)


_max_pool_views.defvjp(_max_pool_views_fwd, _max_pool_views_bwd)


__all__ = ('Conv', 'conv2d', 'cpu_impl', 'max_pool', 'resolve_impl', 'CONV_IMPLS')
