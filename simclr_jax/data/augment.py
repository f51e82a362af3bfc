"""SimCLR augmentations: one small function per op, on ONE image, with an explicit seed.

Every op takes an image `[H, W, C]` float32 in [0, 1] and a stateless seed (int tensor of shape
[2]) and returns an image in [0, 1] with the same number of channels. All randomness comes from
`tf.random.stateless_*` (simclr_jax/data/stateless.py), so an op is a pure function of (image,
seed): the same in eager mode and inside `tf.data.Dataset.map`, and the same after a resume. The
random resized crop is in simclr_jax/data/crops.py. Each op with random parameters has a
`*_params(seed, ...)` helper returning what it sampled, so tests can check the distributions.

Grey images (C = 1): brightness and contrast apply; saturation and hue are no-ops (a grey pixel
has no chroma); random grayscale is the identity. Outputs keep C = 1.

References: Chen et al. 2020 (SimCLR), appendix A; google-research/simclr `data_util.py`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from simclr_jax.data import crops
from simclr_jax.data import stateless

# Ordered op names per preset (the paper's composition). Colour strength comes from
# augment_config.color_strength; the paper uses s=1.0 on ImageNet and s=0.5 on CIFAR-10.
PRESETS: dict[str, tuple[str, ...]] = {
    'imagenet': ('crop', 'flip', 'color_jitter', 'grayscale', 'blur'),
    'cifar': ('crop', 'flip', 'color_jitter', 'grayscale'),
    'fashion_mnist': ('crop', 'flip', 'brightness_contrast'),
    'none': (),
}
PAPER_COLOR_STRENGTH = {'imagenet': 1.0, 'cifar': 0.5, 'fashion_mnist': 0.5, 'none': 0.0}

BLUR_SIGMA_RANGE = (0.1, 2.0)
FLIP_P = 0.5
GRAYSCALE_P = 0.2
COLOR_JITTER_P = 0.8
JITTER_PER_STRENGTH = 0.8  # brightness / contrast / saturation factors in 1 +- 0.8 s


def to_float(image) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1]; float input is passed through as float32."""
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.uint8:
    return tf.cast(image, tf.float32) / 255.
  return tf.cast(image, tf.float32)


def ensure_size(image: tf.Tensor, size: int) -> tf.Tensor:
  """Resizes to [size, size, C] unless the image already has that shape."""
  h, w = image.shape[0], image.shape[1]
  if h == size and w == size:
    return image
  if h is not None and w is not None:
    return crops.resize(image, size)
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
  out = tf.cond(same, lambda: image, lambda: crops.resize(image, size))
  return tf.ensure_shape(out, (size, size, image.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Flip, grayscale.

def random_flip(image: tf.Tensor, seed, p: float = FLIP_P) -> tf.Tensor:
  """Left-right flip with probability p. image: [H, W, C] -> [H, W, C]."""
  return stateless.apply_with_prob(seed, p, lambda: tf.reverse(image, axis=[1]), image)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma (ITU-R 601), repeated over the input's channels; identity for C = 1."""
  if image.shape[-1] == 1:
    return image
  grey = tf.image.rgb_to_grayscale(image)
  return tf.tile(grey, [1, 1, image.shape[-1]])


def random_grayscale(image: tf.Tensor, seed, p: float = GRAYSCALE_P) -> tf.Tensor:
  """Converts to grey (keeping C channels) with probability p; identity on grey images."""
  if image.shape[-1] == 1:
    return image
  return stateless.apply_with_prob(seed, p, lambda: to_grayscale(image), image)


# ----------------------------------------------------------------------------------------------
# Colour jitter.

def color_jitter_params(seed, strength: float,
                        p: float = COLOR_JITTER_P) -> dict[str, tf.Tensor]:
  """The random choices of `color_jitter`.

  Args:
    seed: [2] stateless seed.
    strength: s; brightness/contrast/saturation factors are U[1 - 0.8s, 1 + 0.8s] (brightness
      floored at 0), the hue shift is U[-0.2s, 0.2s] (in turns of the hue circle).
    p: probability of applying the jitter at all.

  Returns:
    dict with 'apply' (bool), 'brightness', 'contrast', 'saturation', 'hue' (float32 scalars)
    and 'order' (int32 [4], a permutation of 0=brightness, 1=contrast, 2=saturation, 3=hue).
  """
  bcs = JITTER_PER_STRENGTH * strength
  hue = 0.2 * strength
  factors = stateless.uniform(stateless.fold_in(seed, 1), (3,), -1., 1.) * bcs + 1.
  order = tf.cast(tf.argsort(stateless.uniform(stateless.fold_in(seed, 3), (4,))), tf.int32)
  return {
      'apply': stateless.bernoulli(seed, p),
      'brightness': tf.maximum(factors[0], 0.),
      'contrast': factors[1],
      'saturation': factors[2],
      'hue': (stateless.uniform(stateless.fold_in(seed, 2), (), -hue, hue) if hue > 0
              else tf.constant(0.)),
      'order': order,
  }


def color_jitter(image: tf.Tensor, seed, strength: float, p: float = COLOR_JITTER_P,
                 saturation_and_hue: bool = True) -> tf.Tensor:
  """SimCLR colour distortion: brightness, contrast, saturation, hue in random order, with prob p.

  Brightness is multiplicative (SimCLR v2's choice); every step is clipped to [0, 1]. On grey
  images (C = 1), or with saturation_and_hue=False, only brightness and contrast apply.

  Args:
    image: [H, W, C] float32 in [0, 1], C in {1, 3}.
    seed: [2] stateless seed.
    strength: s, see `color_jitter_params`.
    p: probability of applying the distortion.
    saturation_and_hue: False keeps saturation and hue fixed (the Fashion-MNIST preset).

  Returns:
    [H, W, C] float32 in [0, 1].
  """
  params = color_jitter_params(seed, strength, p)
  chroma = saturation_and_hue and image.shape[-1] == 3

  def brightness(x):
    return tf.clip_by_value(x * params['brightness'], 0., 1.)

  def contrast(x):
    return tf.clip_by_value(tf.image.adjust_contrast(x, params['contrast']), 0., 1.)

  def saturation(x):
    if not chroma:
      return x
    return tf.clip_by_value(tf.image.adjust_saturation(x, params['saturation']), 0., 1.)

  def hue(x):
    if not chroma:
      return x
    return tf.clip_by_value(tf.image.adjust_hue(x, params['hue']), 0., 1.)

  def jitter():
    x = image
    for i in range(4):
      x = tf.switch_case(params['order'][i], [lambda x=x, f=f: f(x)
                                              for f in (brightness, contrast, saturation, hue)])
    return tf.ensure_shape(x, image.shape)

  return tf.cond(params['apply'], jitter, lambda: image)


# ----------------------------------------------------------------------------------------------
# Blur.

def blur_params(seed, p: float = 0.5,
                sigma_range: Sequence[float] = BLUR_SIGMA_RANGE) -> dict[str, tf.Tensor]:
  """The random choices of `gaussian_blur`: {'apply': bool, 'sigma': float32}."""
  return {'apply': stateless.bernoulli(seed, p),
          'sigma': stateless.uniform(stateless.fold_in(seed, 1), (), sigma_range[0],
                                     sigma_range[1])}


def blur_radius(side) -> tf.Tensor:
  """Kernel radius: the kernel is ~10% of the side, odd (SimCLR: k = side // 10, r = k // 2)."""
  return tf.maximum(tf.cast(side, tf.int32) // 10 // 2, 1)


def blur(image: tf.Tensor, sigma, radius) -> tf.Tensor:
  """Separable Gaussian blur with reflect padding (no dark border from zero padding).

  Args:
    image: [H, W, C] float32.
    sigma: standard deviation in pixels.
    radius: kernel half-width; the kernel has 2 * radius + 1 taps.

  Returns:
    [H, W, C] float32 in [0, 1].
  """
  channels = image.shape[-1]
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  kernel = tf.exp(-x ** 2 / (2. * tf.cast(sigma, tf.float32) ** 2))
  kernel /= tf.reduce_sum(kernel)
  k_h = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
  k_w = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
  padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], 'REFLECT')
  out = tf.nn.depthwise_conv2d(padded, k_h, [1, 1, 1, 1], 'VALID')
  out = tf.nn.depthwise_conv2d(out, k_w, [1, 1, 1, 1], 'VALID')
  # Clipped because float rounding in the normalised kernel can exceed 1 by an ulp.
  return tf.ensure_shape(tf.clip_by_value(out[0], 0., 1.), image.shape)


def gaussian_blur(image: tf.Tensor, seed, p: float = 0.5,
                  sigma_range: Sequence[float] = BLUR_SIGMA_RANGE) -> tf.Tensor:
  """Gaussian blur with prob p, sigma ~ U[sigma_range], kernel ~10% of the image side.

  Args:
    image: [H, W, C] float32 in [0, 1].
    seed: [2] stateless seed.
    p: probability of blurring.
    sigma_range: (min, max) of sigma in pixels.

  Returns:
    [H, W, C] float32 in [0, 1].
  """
  params = blur_params(seed, p, sigma_range)
  side = image.shape[0] if image.shape[0] is not None else tf.shape(image)[0]
  radius = blur_radius(side)
  return tf.cond(params['apply'], lambda: blur(image, params['sigma'], radius), lambda: image)


# ----------------------------------------------------------------------------------------------
# Ops for the augmentation studies (paper Fig. 4/5): cutout, rotate, sobel, noise.

def cutout(image: tf.Tensor, seed, size_fraction: float = 0.5, fill: float = 0.5,
           p: float = 1.0) -> tf.Tensor:
  """Fills a square of side `size_fraction * H` at a uniform random centre with `fill`.

  The square may hang over the border (DeVries & Taylor 2017). `fill` 0.5 is mid-grey, roughly
  the mean of a [0, 1] image.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  half = tf.cast(tf.round(size_fraction * tf.cast(h, tf.float32) / 2.), tf.int32)
  centre = tf.cast(stateless.uniform(stateless.fold_in(seed, 1), (2,))
                   * tf.cast(tf.stack([h, w]), tf.float32),
                   tf.int32)
  rows = tf.range(h)[:, None]
  cols = tf.range(w)[None, :]
  mask = ((rows >= centre[0] - half) & (rows < centre[0] + half) &
          (cols >= centre[1] - half) & (cols < centre[1] + half))[..., None]
  return stateless.apply_with_prob(seed, p,
                                   lambda: tf.where(mask, tf.cast(fill, image.dtype), image),
                          image)


def rotate_params(seed) -> tf.Tensor:
  """Number of quarter turns, uniform in {1, 2, 3} (the paper's {90, 180, 270} degrees)."""
  return tf.random.stateless_uniform((), stateless.as_seed(stateless.fold_in(seed, 1)), 1, 4,
                                     dtype=tf.int32)


def rotate(image: tf.Tensor, seed, p: float = 1.0) -> tf.Tensor:
  """Rotates by 90, 180 or 270 degrees. Needs a square image (apply after 'crop')."""
  k = rotate_params(seed)
  return stateless.apply_with_prob(seed, p, lambda: tf.image.rot90(image, k), image)


def sobel(image: tf.Tensor, seed=None) -> tf.Tensor:
  """Sobel edge magnitude of the luma, scaled to max 1 per image, on every channel.

  Deterministic; `seed` is accepted so all ops share one signature.
  """
  del seed
  image = tf.convert_to_tensor(image, tf.float32)
  grey = image if image.shape[-1] == 1 else tf.image.rgb_to_grayscale(image)
  edges = tf.image.sobel_edges(grey[None])[0]  # [H, W, 1, 2]
  magnitude = tf.sqrt(tf.reduce_sum(tf.square(edges), axis=-1) + 1e-12)  # [H, W, 1]
  magnitude /= tf.maximum(tf.reduce_max(magnitude), 1e-6)
  return tf.tile(magnitude, [1, 1, image.shape[-1]])


def gaussian_noise(image: tf.Tensor, seed, max_std: float = 0.1, p: float = 1.0) -> tf.Tensor:
  """Adds N(0, std^2) pixel noise, std ~ U[0, max_std], then clips to [0, 1]."""
  std = stateless.uniform(stateless.fold_in(seed, 1), (), 0., max_std)
  noise = tf.random.stateless_normal(tf.shape(image),
                                     stateless.as_seed(stateless.fold_in(seed, 2))) * std
  return stateless.apply_with_prob(seed, p, lambda: tf.clip_by_value(image + noise, 0., 1.), image)


# ----------------------------------------------------------------------------------------------
# Composition.

def crop_sampler(cfg) -> str:
  """config.augment.crop_sampler ('inception' for configs saved before the field existed)."""
  return cfg.get('crop_sampler', 'inception')


def crop_area_range(cfg) -> tuple[float, float]:
  """(min, max) crop area fraction from `config.augment`."""
  return (float(cfg.get('crop_area_min', 0.08)), float(cfg.get('crop_area_max', 1.0)))


# name -> fn(image, seed, augment_config, image_size); 'crop' is the only op that sets the size.
OPS: dict[str, Callable[..., tf.Tensor]] = {
    'crop': lambda x, s, c, n: crops.random_resized_crop(x, s, n, crop_area_range(c),
                                                   sampler=crop_sampler(c)),
    'flip': lambda x, s, c, n: random_flip(x, s),
    'color_jitter': lambda x, s, c, n: color_jitter(x, s, float(c.get('color_strength', 0.5))),
    'brightness_contrast': lambda x, s, c, n: color_jitter(
        x, s, float(c.get('color_strength', 0.5)), saturation_and_hue=False),
    'grayscale': lambda x, s, c, n: random_grayscale(x, s),
    'blur': lambda x, s, c, n: gaussian_blur(x, s),
    'cutout': lambda x, s, c, n: cutout(x, s),
    'rotate': lambda x, s, c, n: rotate(x, s),
    'sobel': lambda x, s, c, n: sobel(x, s),
    'noise': lambda x, s, c, n: gaussian_noise(x, s),
}


def view_ops(augment_config) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """The ordered op names of view 1 and view 2.

  `augment_config.ops` (empty: the preset's ops, plus 'blur' when augment_config.blur) gives
  view 1; `augment_config.ops_view2` (empty: same as view 1) gives view 2, so an op can be put
  on one branch only.
  """
  ops = tuple(augment_config.get('ops', ()) or ())
  if not ops:
    preset = augment_config.get('preset', 'none')
    if preset not in PRESETS:
      raise ValueError(f'Unknown augment preset {preset!r}; choose one of {sorted(PRESETS)}.')
    ops = PRESETS[preset]
    if augment_config.get('blur', False) and 'blur' not in ops:
      ops += ('blur',)
  ops2 = tuple(augment_config.get('ops_view2', ()) or ()) or ops
  for name in ops + ops2:
    if name not in OPS:
      raise ValueError(f'Unknown augment op {name!r}; choose from {sorted(OPS)}.')
  return ops, ops2


def augment(image, seed, ops: Sequence[str], augment_config, image_size: int) -> tf.Tensor:
  """Applies `ops` in order, op i with seed `stateless.fold_in(seed, i)`; output
  [image_size, image_size, C].

  Args:
    image: [H, W, C] uint8 or float32 in [0, 1].
    seed: [2] stateless seed.
    ops: op names (keys of OPS).
    augment_config: `config.augment` (color_strength, crop_area_min/max).
    image_size: output side.

  Returns:
    [image_size, image_size, C] float32 in [0, 1].
  """
  x = to_float(image)
  if 'crop' not in ops:
    x = ensure_size(x, image_size)
  for i, name in enumerate(ops):
    x = OPS[name](x, stateless.fold_in(seed, i), augment_config, image_size)
  return ensure_size(x, image_size)


def two_views(image, seed, augment_config, image_size: int) -> tf.Tensor:
  """Two independently augmented views of one image.

  Args:
    image: [H, W, C] uint8 or float32 in [0, 1].
    seed: [2] stateless seed; view v uses stateless.fold_in(seed, v).
    augment_config: `config.augment`.
    image_size: output side.

  Returns:
    [2, image_size, image_size, C] float32 in [0, 1].
  """
  ops1, ops2 = view_ops(augment_config)
  return tf.stack([augment(image, stateless.fold_in(seed, 0), ops1, augment_config, image_size),
                   augment(image, stateless.fold_in(seed, 1), ops2, augment_config, image_size)])


def eval_preprocess(image, image_size: int) -> tf.Tensor:
  """Deterministic evaluation transform.

  Images larger than 64 px get the standard ImageNet treatment: centre crop of 87.5% of the
  shorter side (224 of 256), resized to image_size. Small images (CIFAR, Fashion-MNIST) are only
  resized, and only when their size differs.

  Args:
    image: [H, W, C] or [N, H, W, C], uint8 or float32 in [0, 1].
    image_size: output side.

  Returns:
    [..., image_size, image_size, C] float32 in [0, 1].
  """
  x = to_float(image)
  batched = x.shape.rank == 4
  if not batched:
    x = x[None]
  h, w = x.shape[1], x.shape[2]
  if h is None or w is None:
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    large = tf.minimum(h, w) > 64
  else:
    large = min(h, w) > 64

  def crop_resize():
    side = tf.cast(tf.round(0.875 * tf.cast(tf.minimum(h, w), tf.float32)), tf.int32)
    off_y, off_x = (h - side) // 2, (w - side) // 2
    crop = x[:, off_y:off_y + side, off_x:off_x + side]
    return tf.clip_by_value(tf.image.resize(crop, (image_size, image_size), 'bicubic'), 0., 1.)

  def plain_resize():
    if x.shape[1] == image_size and x.shape[2] == image_size:
      return x
    return tf.clip_by_value(tf.image.resize(x, (image_size, image_size), 'bicubic'), 0., 1.)

  if isinstance(large, bool):
    out = crop_resize() if large else plain_resize()
  else:
    out = tf.cond(large, crop_resize, plain_resize)
  out = tf.ensure_shape(out, (None, image_size, image_size, x.shape[-1]))
  return out if batched else out[0]
