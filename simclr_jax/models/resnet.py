"""ResNet v1.5 encoder f(.) for SimCLR, in Flax linen, with SimCLRv2's selective kernels.

ResNet v1.5 puts the stride of a bottleneck block on its 3x3 convolution (not the first 1x1), as
in torchvision and the official SimCLR code. The network ends at the global average pool: it
returns the representation h, with no classifier. With the ImageNet stem on RGB input the
parameter counts are the standard ones without the final fully connected layer (ResNet-50 1x:
23,508,032; ResNet-18: 11,176,512).

SimCLRv2's selective-kernel nets (`sk_ratio` > 0, the released models use 0.0625) follow the
official code's definition: a ResNet-D stem (three 3x3 convs) and ResNet-D projection shortcuts
(2x2 average pool, then a stride-1 1x1 conv) in every depth, and in bottleneck blocks the 3x3
conv replaced by a selective-kernel conv (`SelectiveKernelConv`). `stage_projection='always'`
and `max_pool_padding='same'` give the official code's two other layout choices (a projection
shortcut in the first block of every stage; TensorFlow's SAME max-pool), so that its
checkpoints load with equal outputs (simclr_jax/convert.py).
"""

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models import conv as conv_lib

# depth -> (block kind, blocks per stage).
STAGE_SIZES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
# Side at or below which `cifar_stem=None` picks the CIFAR stem: a 7x7/2 conv plus a max-pool
# would throw away most of a 32x32 (or 28x28) image before the first block.
CIFAR_STEM_MAX_SIDE = 32
NUM_STAGES = 4
STAGE_PROJECTIONS = ('needed', 'always')
MAX_POOL_PADDINGS = ('symmetric', 'same')
# Smallest width of a selective-kernel conv's mixing layer (the official `min_dim`).
SK_MIN_DIM = 32

# He initialisation (fan-out, as torchvision): the convolutions are followed by BN and ReLU.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def scaled_width(channels: int, width_multiplier: float) -> int:
  """Channels of a layer of the 1x network scaled by `width_multiplier`, at least 1."""
  return max(1, int(channels * width_multiplier))


def representation_dim(depth: int, width_multiplier: float = 1.0) -> int:
  """Width D of h: 512 * w for the basic-block nets (18, 34), 2048 * w for the bottleneck ones."""
  kind, _ = STAGE_SIZES[depth]
  expansion = 1 if kind == 'basic' else 4
  return scaled_width(64 * 2 ** (NUM_STAGES - 1), width_multiplier) * expansion


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str,
          impl: str = 'xla') -> nn.Module:
  # Symmetric explicit padding (k - 1) // 2, as torchvision and TF's fixed_padding: 'SAME' pads
  # a stride-2 conv asymmetrically, which shifts the features by half a pixel.
  pad = (kernel - 1) // 2
  if conv_lib.resolve_impl(impl) == 'xla':
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,  # BN follows and has its own offset.
        kernel_init=_conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name)
  # Matmul-lowered convs (CPU): nn.Conv's parameter tree and init, so checkpoints move between
  # implementations unchanged.
  return conv_lib.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      kernel_init=_conv_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      impl=impl,
      name=name)


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
  """TensorFlow's SAME padding (lo, hi) of one spatial dimension: the extra pixel goes last."""
  out = -(-size // stride)
  total = max((out - 1) * stride + window - size, 0)
  return total // 2, total - total // 2


def _add_shortcut(block: nn.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """relu(shortcut(x) + y).

  The shortcut is the identity unless the block projects: where the shape changes, or in every
  first block of a stage with `block.projection`. A projection is a strided 1x1 conv + BN, or
  with `block.resnet_d` (selective-kernel nets) a 2x2 average pool with the stride, then a
  stride-1 1x1 conv + BN: the pool pads one zero row/column at the end and counts it when
  strided (the official code's fixed padding), and averages only real pixels at stride 1
  (TensorFlow's SAME). Called from a block's compact __call__, so the submodules are the
  block's own ('proj_conv', 'proj_bn').
  """
  if x.shape != y.shape or block.projection:
    stride = block.stride
    if block.resnet_d:
      pad = ((0, 1), (0, 1))
      if stride > 1:
        x = nn.avg_pool(x, (2, 2), strides=(stride, stride), padding=pad, count_include_pad=True)
      else:
        x = nn.avg_pool(x, (2, 2), strides=(1, 1), padding=pad, count_include_pad=False)
      stride = 1
    x = _conv(y.shape[-1], 1, stride, block.dtype, 'proj_conv', block.conv_impl)(x)
    x = block.norm(name='proj_bn')(x)
  return nn.relu(x + y)


class SelectiveKernelConv(nn.Module):
  """SimCLRv2's selective-kernel conv (Li et al. 2019, as the official SimCLR code defines it).

  One 3x3 conv to 2 * filters channels + BN + ReLU, read as two streams of `filters` channels
  (first and second half); their sum's global mean goes through a Dense to
  max(int(filters * sk_ratio), SK_MIN_DIM) + BN + ReLU and a Dense to 2 * filters, whose two
  halves, softmaxed across the streams, weight each stream per channel. Parameters: `conv`,
  `bn`, `mix_dense_1`, `mix_bn`, `mix_dense_2` (the Dense kernels are the official 1x1 convs').

  Attributes:
    filters: output channels.
    stride: stride of the 3x3 conv.
    sk_ratio: width of the mixing layer relative to `filters`.
    norm: partially applied nn.BatchNorm.
    dtype: compute dtype.
    conv_impl: how convolutions are lowered (simclr_jax.models.conv.CONV_IMPLS).
  """
  filters: int
  stride: int
  sk_ratio: float
  norm: Any
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H / stride, W / stride, filters]."""
    y = _conv(2 * self.filters, 3, self.stride, self.dtype, 'conv', self.conv_impl)(x)
    y = nn.relu(self.norm(name='bn')(y))
    streams = jnp.stack(jnp.split(y, 2, axis=-1))  # [2, B, H, W, filters]
    pooled = jnp.mean(jnp.sum(streams, axis=0).astype(jnp.float32), axis=(1, 2))
    mid = max(int(self.filters * self.sk_ratio), SK_MIN_DIM)
    dense = functools.partial(nn.Dense, use_bias=False, kernel_init=_conv_init, dtype=self.dtype,
                              param_dtype=jnp.float32)
    m = nn.relu(self.norm(name='mix_bn')(dense(mid, name='mix_dense_1')(pooled)))
    m = dense(2 * self.filters, name='mix_dense_2')(m)
    weights = jax.nn.softmax(jnp.stack(jnp.split(m.astype(jnp.float32), 2, axis=-1)), axis=0)
    return jnp.sum(streams * weights[:, :, None, None, :].astype(streams.dtype), axis=0)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). Output has `filters` channels.

  Attributes:
    filters: channels of both convs.
    stride: stride of the first conv (and of the projection shortcut).
    norm: partially applied nn.BatchNorm (train/eval mode, momentum, axis_name already bound).
    dtype: compute dtype.
    conv_impl: how convolutions are lowered (simclr_jax.models.conv.CONV_IMPLS).
    projection: project the shortcut even where the shape is unchanged (see _add_shortcut).
    resnet_d: ResNet-D projection shortcut (selective-kernel nets).
  """
  filters: int
  stride: int
  norm: Any
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  projection: bool = False
  resnet_d: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H / stride, W / stride, filters]."""
    residual = x
    y = _conv(self.filters, 3, self.stride, self.dtype, 'conv1', self.conv_impl)(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv(self.filters, 3, 1, self.dtype, 'conv2', self.conv_impl)(y)
    # Zero gamma: every block starts as the identity, which helps large-batch training
    # (Goyal et al. 2017), as in the official SimCLR code.
    y = self.norm(name='bn2', scale_init=nn.initializers.zeros)(y)
    return _add_shortcut(self, residual, y)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 convs (ResNet-50+). Output has 4 * `filters` channels.

  Attributes:
    filters: channels of the inner convs.
    stride: stride of the 3x3 conv (and of the projection shortcut).
    norm: partially applied nn.BatchNorm.
    dtype: compute dtype.
    conv_impl: how convolutions are lowered (simclr_jax.models.conv.CONV_IMPLS).
    projection: project the shortcut even where the shape is unchanged (see _add_shortcut).
    resnet_d: ResNet-D projection shortcut (selective-kernel nets).
    sk_ratio: > 0: the 3x3 conv is a SelectiveKernelConv (`conv2_sk`) with this ratio.
  """
  filters: int
  stride: int
  norm: Any
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  projection: bool = False
  resnet_d: bool = False
  sk_ratio: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H / stride, W / stride, 4 * filters]."""
    residual = x
    y = _conv(self.filters, 1, 1, self.dtype, 'conv1', self.conv_impl)(x)
    y = nn.relu(self.norm(name='bn1')(y))
    if self.sk_ratio > 0:
      y = SelectiveKernelConv(self.filters, self.stride, self.sk_ratio, self.norm, self.dtype,
                              self.conv_impl, name='conv2_sk')(y)
    else:
      y = _conv(self.filters, 3, self.stride, self.dtype, 'conv2', self.conv_impl)(y)
      y = nn.relu(self.norm(name='bn2')(y))
    y = _conv(4 * self.filters, 1, 1, self.dtype, 'conv3', self.conv_impl)(y)
    y = self.norm(name='bn3', scale_init=nn.initializers.zeros)(y)  # Identity at init.
    return _add_shortcut(self, residual, y)


class ResNet(nn.Module):
  """ResNet v1.5 encoder returning the pooled representation h.

  Submodule names: the stem is `stem_conv` / `stem_bn`; block j (from 1) of stage i (1..4) is
  `stage{i}_block{j}`. "Block" 0 in `fine_tune_after_block` is the stem, blocks 1..4 the stages.

  Attributes:
    depth: 18, 34 (basic blocks) or 50, 101, 152, 200 (bottleneck blocks).
    width_multiplier: channel multiplier (> 0), e.g. 0.25, 1, 2, 4; channels int(64 * w) etc.
    cifar_stem: True: 3x3 stride-1 conv, no max-pool. False: 7x7 stride-2 conv and a 3x3
      stride-2 max-pool. None: CIFAR stem when the input side is <= 32.
    stem_max_pool: False drops the ImageNet stem's max-pool (stage 1 at half the input side
      instead of a quarter: 14 px for 28 px images); no effect on the CIFAR stem. No parameters.
    sk_ratio: 0 (plain ResNet) or > 0: SimCLRv2's selective-kernel net (module docstring); the
      ImageNet stem becomes three 3x3 convs (`stem_conv_a`, `stem_conv_b`, `stem_conv`, each
      with its BN), the CIFAR stem is unchanged.
    stage_projection: 'needed' (a projection shortcut only where the shape changes, as
      torchvision) or 'always' (in the first block of every stage, as the official SimCLR code:
      adds a 1x1 conv + BN to stage 1 of ResNet-18/34).
    max_pool_padding: the ImageNet stem's max-pool pads 'symmetric' (1 on each side, as
      torchvision) or 'same' (TensorFlow's SAME, as the official SimCLR code: on an even side 0
      before and 1 after, which moves every window by one pixel).
    dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters are always float32.
    axis_name: mapped axis over which BN averages batch statistics (cross-replica BN), or None.
    bn_momentum: decay of the BN running statistics.
    bn_epsilon: BN variance epsilon.
    conv_impl: 'xla' (nn.Conv, the default; right for TPU/GPU), 'im2col' (convolutions as one
      matmul each and the stem's max-pool gradient over strided views, for CPUs where XLA's
      convolution is slow) or 'auto' (xla off the CPU; on the CPU per layer, conv.cpu_impl).
      Same parameters.
  """
  depth: int
  width_multiplier: float = 1.0
  cifar_stem: Optional[bool] = None
  stem_max_pool: bool = True
  sk_ratio: float = 0.0
  stage_projection: str = 'needed'
  max_pool_padding: str = 'symmetric'
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  conv_impl: str = 'xla'

  def __post_init__(self) -> None:
    # Fail at construction, before anything is traced or compiled.
    if self.depth not in STAGE_SIZES:
      raise ValueError(
          f'ResNet depth must be one of {sorted(STAGE_SIZES)}, got {self.depth!r}.')
    w = self.width_multiplier
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
      raise ValueError(
          'ResNet width_multiplier must be a finite number > 0 (e.g. 0.25, 1, 2, 4), '
          f'got {w!r}.')
    if jnp.dtype(self.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
      raise ValueError(f'ResNet dtype must be float32 or bfloat16, got {self.dtype!r}.')
    if not 0 <= self.sk_ratio < 1:
      raise ValueError(f'ResNet sk_ratio must be in [0, 1) (SimCLRv2: 0.0625), got '
                       f'{self.sk_ratio!r}.')
    if self.stage_projection not in STAGE_PROJECTIONS:
      raise ValueError(f'ResNet stage_projection must be one of {STAGE_PROJECTIONS}, got '
                       f'{self.stage_projection!r}.')
    if self.max_pool_padding not in MAX_POOL_PADDINGS:
      raise ValueError(f'ResNet max_pool_padding must be one of {MAX_POOL_PADDINGS}, got '
                       f'{self.max_pool_padding!r}.')
    if self.conv_impl not in conv_lib.CONV_IMPLS:
      raise ValueError(
          f'ResNet conv_impl must be one of {conv_lib.CONV_IMPLS}, got {self.conv_impl!r}.')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, fine_tune_after_block: int = -1) -> jax.Array:
    """Encodes images into representations.

    Args:
      x: images [B, H, W, C], float in [0, 1]; any number of channels C.
      train: use batch statistics in BN and update the running ones (`batch_stats` must then be
        mutable), except in frozen blocks.
      fine_tune_after_block: k in -1..4. Blocks <= k (0 = stem, 1..4 = stages) run BN with
        running statistics and their output is passed through stop_gradient, so they neither
        learn nor change their BN statistics. -1 trains everything.

    Returns:
      h: [B, D] float32, D = representation_dim(depth, width_multiplier).
    """
    if not -1 <= fine_tune_after_block <= NUM_STAGES:
      raise ValueError(
          f'fine_tune_after_block must be in -1..{NUM_STAGES} (0 = stem, 1..4 = stages), '
          f'got {fine_tune_after_block!r}.')
    if x.ndim != 4:
      raise ValueError(f'ResNet expects images [B, H, W, C], got shape {x.shape}.')

    def norm_for(block: int) -> Any:
      frozen = block <= fine_tune_after_block
      return functools.partial(
          nn.BatchNorm,
          use_running_average=not train or frozen,
          momentum=self.bn_momentum,
          epsilon=self.bn_epsilon,
          axis_name=self.axis_name,
          dtype=self.dtype,
          param_dtype=jnp.float32)

    def maybe_freeze(y: jax.Array, block: int) -> jax.Array:
      return jax.lax.stop_gradient(y) if block <= fine_tune_after_block else y

    cifar_stem = self.cifar_stem
    if cifar_stem is None:
      cifar_stem = max(x.shape[1], x.shape[2]) <= CIFAR_STEM_MAX_SIDE
    width = functools.partial(scaled_width, width_multiplier=self.width_multiplier)

    y = x.astype(self.dtype)
    if cifar_stem:
      y = _conv(width(64), 3, 1, self.dtype, 'stem_conv', self.conv_impl)(y)
      y = nn.relu(norm_for(0)(name='stem_bn')(y))
    else:
      stem_norm = norm_for(0)
      if self.sk_ratio > 0:
        y = _conv(width(32), 3, 2, self.dtype, 'stem_conv_a', self.conv_impl)(y)
        y = nn.relu(stem_norm(name='stem_bn_a')(y))
        y = _conv(width(32), 3, 1, self.dtype, 'stem_conv_b', self.conv_impl)(y)
        y = nn.relu(stem_norm(name='stem_bn_b')(y))
        y = _conv(width(64), 3, 1, self.dtype, 'stem_conv', self.conv_impl)(y)
      else:
        y = _conv(width(64), 7, 2, self.dtype, 'stem_conv', self.conv_impl)(y)
      y = nn.relu(stem_norm(name='stem_bn')(y))
      if self.stem_max_pool:
        if self.max_pool_padding == 'same':
          padding = (same_padding(y.shape[1], 3, 2), same_padding(y.shape[2], 3, 2))
        else:
          padding = ((1, 1), (1, 1))
        y = conv_lib.max_pool(y, (3, 3), strides=(2, 2), padding=padding, impl=self.conv_impl)
    y = maybe_freeze(y, 0)

    kind, stage_sizes = STAGE_SIZES[self.depth]
    block_cls = BasicBlock if kind == 'basic' else functools.partial(
        BottleneckBlock, sk_ratio=self.sk_ratio)
    for stage, num_blocks in enumerate(stage_sizes, start=1):
      for j in range(num_blocks):
        y = block_cls(
            projection=j == 0 and self.stage_projection == 'always',
            resnet_d=self.sk_ratio > 0,
            filters=width(64 * 2 ** (stage - 1)),
            # Stage 1 keeps the resolution (the stem already reduced it).
            stride=2 if stage > 1 and j == 0 else 1,
            norm=norm_for(stage),
            dtype=self.dtype,
            conv_impl=self.conv_impl,
            name=f'stage{stage}_block{j + 1}')(y)
      y = maybe_freeze(y, stage)

    # Pool in float32: the mean over many bf16 values loses precision.
    return jnp.mean(y.astype(jnp.float32), axis=(1, 2))


def stage_of(module_name: str) -> int:
  """Block index (0 = stem, 1..4 = stages) of a top-level ResNet submodule name."""
  if module_name.startswith('stem_'):
    return 0
  if module_name.startswith('stage'):
    return int(module_name[len('stage')])
  raise ValueError(f'Not a ResNet submodule name: {module_name!r}.')


__all__ = (
    'ResNet', 'BasicBlock', 'BottleneckBlock', 'STAGE_SIZES', 'representation_dim', 'stage_of')
