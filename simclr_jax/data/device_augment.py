"""The SimCLR augmentation inside the jitted train step, batched over the per-core batch.

With `config.augment.on_device=True` the input pipeline sends uint8 images (gathered a whole
batch at a time, no per-image graph ops) and the train step builds both views here:

  - random parameters from `jax.random`, a pure function of (run seed, step, the example's
    position in the global batch): the same views after a resume and on any number of devices;
    the same distributions as the tf.data ops of `simclr_jax.data.augment` (first fitting crop of
    10 tries, flip 1/2, jitter 0.8, grayscale 0.2, factors U[1 - 0.8 s, 1 + 0.8 s]), drawn from
    a different random stream, so the views are not the tf.data pipeline's;
  - random resized crop as one bicubic interpolation matrix per view and axis ([S, H], [S, W])
    with TensorFlow's `resize_bicubic` weights (Keys' kernel a = -0.5, half-pixel centres,
    offsets rounded to TF's 1/1024 table, taps outside the crop dropped and the rest
    renormalised): the crop + resize of a batch is two small batched matmuls;
  - flip, brightness / contrast in random order, grayscale: per-image selects.

Given the same parameters, a view equals tf.data's to float32 rounding, and the sampler's
distributions equal the tf.data sampler's (tests/test_device_augment.py). Supported ops:
`SUPPORTED`; colour jitter with saturation and hue on RGB and blur stay in tf.data (`check_ops`
says so). In-memory sources only (all images one size), the crop first.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from simclr_jax.data import augment
from simclr_jax.data import crops

SUPPORTED = ('crop', 'flip', 'brightness_contrast', 'color_jitter', 'grayscale')

# TF's resize_bicubic with half-pixel centres: Keys' cubic with a = -0.5, offsets looked up in a
# table of 1024 steps (resize_bicubic_op.cc); matching both keeps views equal to tf.data's.
_KEYS_A = -0.5
_TABLE_SIZE = 1024
# ITU-R 601 luma, as tf.image.rgb_to_grayscale.
_LUMA = (0.2989, 0.5870, 0.1140)


def check_ops(view_ops: Sequence[Sequence[str]], channels: int) -> None:
  """ValueError naming the fix unless every view's ops can run on the device.

  Args:
    view_ops: op names of each view (`augment.view_ops(config.augment)`).
    channels: image channels (1 or 3).
  """
  for ops in view_ops:
    if not ops or ops[0] != 'crop':
      raise ValueError(f'augment.on_device=True needs each view to start with the crop (it sets '
                       f'the size); got ops {tuple(ops)}. Set --config.augment.on_device=False.')
    for name in ops:
      if name not in SUPPORTED or (name == 'color_jitter' and channels != 1):
        what = ('colour jitter with saturation and hue on RGB images' if name == 'color_jitter'
                else f'op {name!r}')
        raise ValueError(f'augment.on_device=True does not support {what}; on the device: '
                         f'{SUPPORTED} (colour jitter on grey images only). Set '
                         '--config.augment.on_device=False to augment in tf.data.')


# ----------------------------------------------------------------------------------------------
# Parameters: one image at a time (vmapped), each op from its own key.

def crop_window(key: jax.Array, image_hw: tuple[int, int],
                area_range: Sequence[float]) -> jax.Array:
  """int32 [4] (offset_y, offset_x, h, w): `crops.crop_window`'s distribution."""
  height, width = (float(v) for v in image_hw)
  tries = crops.CROP_MAX_TRIES
  k_area, k_ratio, k_offset = jax.random.split(key, 3)
  area = height * width * jax.random.uniform(k_area, (tries,), minval=area_range[0],
                                             maxval=area_range[1])
  low, high = (math.log(r) for r in crops.ASPECT_RANGE)
  ratio = jnp.exp(jax.random.uniform(k_ratio, (tries,), minval=low, maxval=high))
  crop_w = jnp.round(jnp.sqrt(area * ratio))
  crop_h = jnp.round(jnp.sqrt(area / ratio))
  fits = (crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height)
  first = jnp.argmax(fits)
  # Fallback, as crops.crop_window: the largest centred crop with the aspect in range.
  in_ratio = width / height
  fb_w = round(height * crops.ASPECT_RANGE[1]) if in_ratio > crops.ASPECT_RANGE[1] else width
  fb_h = round(width / crops.ASPECT_RANGE[0]) if in_ratio < crops.ASPECT_RANGE[0] else height
  any_fits = jnp.any(fits)
  h = jnp.where(any_fits, crop_h[first], fb_h)
  w = jnp.where(any_fits, crop_w[first], fb_w)
  u = jax.random.uniform(k_offset, (2,))
  off_y = jnp.where(any_fits, jnp.floor(u[0] * (height - h + 1)), jnp.floor((height - h) / 2))
  off_x = jnp.where(any_fits, jnp.floor(u[1] * (width - w + 1)), jnp.floor((width - w) / 2))
  return jnp.stack([off_y, off_x, h, w]).astype(jnp.int32)


def bounding_box_crop_window(key: jax.Array, image_hw: tuple[int, int],
                             area_range: Sequence[float]) -> jax.Array:
  """int32 [4] (offset_y, offset_x, h, w): the distribution of
  `crops.bounding_box_crop_window` (TF's sample_distorted_bounding_box as the official SimCLR
  code calls it), its 100 attempts drawn at once and the first that passes taken.

  Per attempt, as TF's `GenerateRandomCrop`: aspect a ~ U(3/4, 4/3); the crop height h uniform
  over the integers [rint(sqrt(min_area / a)), rint(sqrt(max_area / a))] (the top clamped so
  that rint(h * a) <= W and h <= H); w = rint(h * a); one step up if the area is under the
  minimum, one down if over the maximum; the attempt fails if the area or the sides are still
  out of range, or the area is under min_object_covered of the image. Offsets uniform in
  [0, H - h) and [0, W - w) (0 when the side is full). No attempt passing: the whole image.
  """
  height, width = (int(v) for v in image_hw)
  attempts = crops.BBOX_MAX_ATTEMPTS
  k_ratio, k_height, k_offset = jax.random.split(key, 3)
  low, high = crops.ASPECT_RANGE
  ratio = jax.random.uniform(k_ratio, (attempts,), minval=low, maxval=high)
  min_area = jnp.float32(area_range[0] * height * width)
  max_area = jnp.float32(area_range[1] * height * width)
  h_low = jnp.rint(jnp.sqrt(min_area / ratio))
  h_high = jnp.rint(jnp.sqrt(max_area / ratio))
  too_wide = jnp.rint(h_high * ratio) > width
  clamped = jnp.floor((width + 0.5 - 1e-7) / ratio)
  clamped = jnp.where(jnp.rint(clamped * ratio) > width, clamped - 1, clamped)
  h_high = jnp.minimum(jnp.where(too_wide, clamped, h_high), height)
  h_low = jnp.minimum(h_low, h_high)
  # Uniform over the closed integer range [h_low, h_high].
  h = h_low + jnp.floor(jax.random.uniform(k_height, (attempts,)) * (h_high - h_low + 1))
  h = jnp.minimum(h, h_high)
  w = jnp.rint(h * ratio)
  h = jnp.where(w * h < min_area, h + 1, h)
  w = jnp.rint(h * ratio)
  h = jnp.where(w * h > max_area, h - 1, h)
  w = jnp.rint(h * ratio)
  area = w * h
  ok = ((area >= min_area) & (area <= max_area) & (w <= width) & (h <= height) & (w > 0)
        & (h > 0) & (area >= crops.BBOX_MIN_OBJECT_COVERED * height * width))
  first = jnp.argmax(ok)
  any_ok = jnp.any(ok)
  h = jnp.where(any_ok, h[first], height)
  w = jnp.where(any_ok, w[first], width)
  u = jax.random.uniform(k_offset, (2,))
  off_y = jnp.where(h < height, jnp.floor(u[0] * (height - h)), 0)
  off_x = jnp.where(w < width, jnp.floor(u[1] * (width - w)), 0)
  return jnp.stack([off_y, off_x, h, w]).astype(jnp.int32)


CROP_SAMPLERS = {'inception': crop_window, 'tf_bounding_box': bounding_box_crop_window}


def jitter_params(key: jax.Array, strength: float) -> jax.Array:
  """float32 [4]: (apply, brightness, contrast, brightness before contrast), as
  `augment.color_jitter_params` restricted to brightness and contrast."""
  k_apply, k_factors, k_order = jax.random.split(key, 3)
  factors = 1. + augment.JITTER_PER_STRENGTH * strength * jax.random.uniform(
      k_factors, (2,), minval=-1., maxval=1.)
  order = jax.random.uniform(k_order, (2,))  # the smaller runs first, as the host's argsort
  return jnp.stack([jax.random.uniform(k_apply) < augment.COLOR_JITTER_P,
                    jnp.maximum(factors[0], 0.), factors[1], order[0] < order[1]]
                   ).astype(jnp.float32)


def view_params(key: jax.Array, ops: Sequence[str], augment_config,
                image_hw: tuple[int, int]) -> tuple[jax.Array, ...]:
  """The random choices of one view of one image: one array per op, op i from fold_in(key, i)."""
  out = []
  for i, name in enumerate(ops):
    k = jax.random.fold_in(key, i)
    if name == 'crop':
      sampler = CROP_SAMPLERS[augment.crop_sampler(augment_config)]
      out.append(sampler(k, image_hw, augment.crop_area_range(augment_config)))
    elif name == 'flip':
      out.append(jax.random.uniform(k) < augment.FLIP_P)
    elif name == 'grayscale':
      out.append(jax.random.uniform(k) < augment.GRAYSCALE_P)
    else:  # brightness_contrast, color_jitter (grey): check_ops allowed nothing else
      out.append(jitter_params(k, float(augment_config.get('color_strength', 0.5))))
  return tuple(out)


# ----------------------------------------------------------------------------------------------
# Applying them: batched.

def _keys_weights(t: jax.Array) -> jax.Array:
  """Kernel weights of taps -1, 0, 1, 2 at fractional offset t in [0, 1]: [..., 4]."""
  a = _KEYS_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return jnp.stack([far(1 + t), near(t), near(1 - t), far(2 - t)], axis=-1)


def resize_matrix(offset: jax.Array, length: jax.Array, in_size: int, out_size: int
                  ) -> jax.Array:
  """[out_size, in_size] float32: row o holds the weights of output pixel o over the input axis.

  Resizes the window [offset, offset + length) of an axis of `in_size` pixels to `out_size`, as
  `tf.image.resize(crop, ..., 'bicubic')` of that window does (see the module docstring).
  """
  scale = length.astype(jnp.float32) / jnp.float32(out_size)
  pos = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
  base = jnp.floor(pos)
  t = jnp.round((pos - base) * _TABLE_SIZE) / _TABLE_SIZE  # lrintf: ties to even, as jnp.round
  taps = base.astype(jnp.int32)[:, None] + jnp.arange(-1, 3)[None, :]  # [out, 4], crop coords
  inside = (taps >= 0) & (taps < length)
  weights = jnp.where(inside, _keys_weights(t), 0.)
  weights = weights / jnp.sum(weights, axis=1, keepdims=True)
  hits = (taps + offset)[:, :, None] == jnp.arange(in_size)[None, None, :]  # [out, 4, in]
  return jnp.sum(jnp.where(hits & inside[:, :, None], weights[:, :, None], 0.), axis=1)


def _crop(x: jax.Array, window: jax.Array, size: int) -> jax.Array:
  """x [n, H, W, C], window int32 [n, 4] (offset_y, offset_x, h, w) -> [n, size, size, C]."""
  rows = jax.vmap(lambda o, l: resize_matrix(o, l, x.shape[1], size))(window[:, 0], window[:, 2])
  cols = jax.vmap(lambda o, l: resize_matrix(o, l, x.shape[2], size))(window[:, 1], window[:, 3])
  out = jnp.einsum('nsh,nhwc,ntw->nstc', rows, x, cols, precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(out, 0., 1.)


def _select(flag: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """Per image: a where flag [n] is true, else b."""
  return jnp.where(flag[:, None, None, None], a, b)


def _brightness_contrast(x: jax.Array, jitter: jax.Array) -> jax.Array:
  """jitter float32 [n, 4]: (apply, brightness, contrast, brightness first), each step clipped."""
  brightness, contrast = jitter[:, 1, None, None, None], jitter[:, 2, None, None, None]

  def b(y):
    return jnp.clip(y * brightness, 0., 1.)

  def c(y):
    mean = jnp.mean(y, axis=(1, 2), keepdims=True)
    return jnp.clip((y - mean) * contrast + mean, 0., 1.)

  return _select(jitter[:, 0] > 0.5, _select(jitter[:, 3] > 0.5, c(b(x)), b(c(x))), x)


def _grayscale(x: jax.Array, apply: jax.Array) -> jax.Array:
  if x.shape[-1] == 1:
    return x
  grey = jnp.tensordot(x, jnp.asarray(_LUMA, x.dtype), axes=[[3], [0]])[..., None]
  return _select(apply, jnp.broadcast_to(grey, x.shape), x)


def apply_view(images: jax.Array, ops: Sequence[str], params: Sequence[jax.Array], size: int
               ) -> jax.Array:
  """One view of each image from given parameters.

  Args:
    images: uint8 [n, H, W, C] (or float32 in [0, 1]).
    ops: op names, the crop first (`check_ops`).
    params: per op an array with leading axis n, as `view_params` (vmapped) returns.
    size: output side.

  Returns:
    float32 [n, size, size, C] in [0, 1].
  """
  x = images.astype(jnp.float32) / 255. if images.dtype == jnp.uint8 else images
  for name, value in zip(ops, params):
    if name == 'crop':
      x = _crop(x, value, size)
    elif name == 'flip':
      x = _select(value, x[:, :, ::-1], x)
    elif name == 'grayscale':
      x = _grayscale(x, value)
    else:
      x = _brightness_contrast(x, value)
  return x


def views(images: jax.Array, positions: jax.Array, key: jax.Array, augment_config,
          size: int) -> jax.Array:
  """Both views of a batch: what tf.data's 'views' would hold, drawn on the device.

  Args:
    images: uint8 [n, H, W, C].
    positions: int32 [n], each image's position in the global batch (its random stream).
    key: the step's augmentation key (the same on every core).
    augment_config: `config.augment`.
    size: output side.

  Returns:
    float32 [n, 2, size, size, C] in [0, 1].
  """
  image_hw = images.shape[1:3]
  out = []
  for v, ops in enumerate(augment.view_ops(augment_config)):
    keys = jax.vmap(lambda p, v=v: jax.random.fold_in(jax.random.fold_in(key, p), v))(positions)
    params = jax.vmap(lambda k, ops=ops: view_params(k, ops, augment_config, image_hw))(keys)
    out.append(apply_view(images, ops, params, size))
  return jnp.stack(out, axis=1)
