"""SimCLR augmentations: one small function per op, on ONE image, with an explicit seed.

Every op takes an image `[H, W, C]` float32 in [0, 1] and a stateless seed (int tensor of shape
[2]) and returns an image in [0, 1] with the same number of channels. All randomness comes from
`tf.random.stateless_*`, so an op is a pure function of (image, seed): the same in eager mode and
inside `tf.data.Dataset.map`, and the same after a resume. Each op with random parameters has a
`*_params(seed, ...)` helper returning what it sampled, so tests can check the distributions.

Grey images (C = 1): brightness and contrast apply; saturation and hue are no-ops (a grey pixel
has no chroma); random grayscale is the identity. Outputs keep C = 1.

References: Chen et al. 2020 (SimCLR), appendix A; google-research/simclr `data_util.py`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

# Ordered op names per preset (the paper's composition). Colour strength comes from
# augment_config.color_strength; the paper uses s=1.0 on ImageNet and s=0.5 on CIFAR-10.
PRESETS: dict[str, tuple[str, ...]] = {
    'imagenet': ('crop', 'flip', 'color_jitter', 'grayscale', 'blur'),
    'cifar': ('crop', 'flip', 'color_jitter', 'grayscale'),
    'fashion_mnist': ('crop', 'flip', 'brightness_contrast'),
    'none': (),
}
PAPER_COLOR_STRENGTH = {'imagenet': 1.0, 'cifar': 0.5, 'fashion_mnist': 0.5, 'none': 0.0}

# Inception / SimCLR crop: ratio of the crop's aspect is log-uniform in [3/4, 4/3].
ASPECT_RANGE = (3. / 4., 4. / 3.)
CROP_MAX_TRIES = 10
# The official SimCLR crop (`bounding_box_crop_window`).
BBOX_MIN_OBJECT_COVERED = 0.1
BBOX_MAX_ATTEMPTS = 100
BLUR_SIGMA_RANGE = (0.1, 2.0)
FLIP_P = 0.5
GRAYSCALE_P = 0.2
COLOR_JITTER_P = 0.8
JITTER_PER_STRENGTH = 0.8  # brightness / contrast / saturation factors in 1 +- 0.8 s


def as_seed(seed) -> tf.Tensor:
  """A stateless seed as an int64 tensor of shape [2] (one dtype, so eager == graph)."""
  return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def fold_in(seed, data) -> tf.Tensor:
  """A new seed [2] from `seed` and an integer; distinct `data` give independent streams."""
  return tf.random.experimental.stateless_fold_in(as_seed(seed), tf.cast(data, tf.int64))


def _uniform(seed, shape=(), minval=0., maxval=1.) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, as_seed(seed), minval=minval, maxval=maxval)


def bernoulli(seed, p: float) -> tf.Tensor:
  """A bool scalar that is True with probability p."""
  return _uniform(fold_in(seed, 0)) < p


def _apply_with_prob(seed, p: float, fn: Callable[[], tf.Tensor], image: tf.Tensor) -> tf.Tensor:
  return tf.cond(bernoulli(seed, p), fn, lambda: image)


def to_float(image) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1]; float input is passed through as float32."""
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.uint8:
    return tf.cast(image, tf.float32) / 255.
  return tf.cast(image, tf.float32)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bicubic resize to [size, size, C], clipped: bicubic overshoots [0, 1] at edges."""
  image = tf.image.resize(image, (size, size), method='bicubic')
  return tf.clip_by_value(image, 0., 1.)


def ensure_size(image: tf.Tensor, size: int) -> tf.Tensor:
  """Resizes to [size, size, C] unless the image already has that shape."""
  h, w = image.shape[0], image.shape[1]
  if h == size and w == size:
    return image
  if h is not None and w is not None:
    return resize(image, size)
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
  out = tf.cond(same, lambda: image, lambda: resize(image, size))
  return tf.ensure_shape(out, (size, size, image.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Random resized crop.

def crop_window(image_hw, seed, area_range: Sequence[float] = (0.08, 1.0),
                aspect_range: Sequence[float] = ASPECT_RANGE,
                max_tries: int = CROP_MAX_TRIES) -> tf.Tensor:
  """Samples an Inception-style crop window.

  Draws `max_tries` candidates (area fraction uniform in `area_range`, aspect ratio w/h
  log-uniform in `aspect_range`) and takes the first that fits; if none fits, falls back to the
  largest centred crop whose aspect is within range (the whole image when it is square), as in
  the Inception / torchvision implementation.

  Args:
    image_hw: (H, W), ints or int tensors.
    seed: [2] stateless seed.
    area_range: (min, max) fraction of the image area.
    aspect_range: (min, max) aspect ratio w/h.
    max_tries: number of candidates.

  Returns:
    int32 [4]: (offset_y, offset_x, crop_h, crop_w).
  """
  height = tf.cast(image_hw[0], tf.float32)
  width = tf.cast(image_hw[1], tf.float32)
  area = height * width
  target_area = area * _uniform(fold_in(seed, 1), (max_tries,), area_range[0], area_range[1])
  log_ratio = _uniform(fold_in(seed, 2), (max_tries,), math.log(aspect_range[0]),
                       math.log(aspect_range[1]))
  ratio = tf.exp(log_ratio)
  crop_w = tf.round(tf.sqrt(target_area * ratio))
  crop_h = tf.round(tf.sqrt(target_area / ratio))
  fits = (crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height)

  # Fallback: centred crop with the aspect clamped into range.
  in_ratio = width / height
  fb_w = tf.where(in_ratio < aspect_range[0], width,
                  tf.where(in_ratio > aspect_range[1], tf.round(height * aspect_range[1]), width))
  fb_h = tf.where(in_ratio < aspect_range[0], tf.round(width / aspect_range[0]),
                  tf.where(in_ratio > aspect_range[1], height, height))

  first = tf.argmax(tf.cast(fits, tf.int32))  # index of the first fitting candidate
  any_fits = tf.reduce_any(fits)
  h = tf.where(any_fits, tf.gather(crop_h, first), fb_h)
  w = tf.where(any_fits, tf.gather(crop_w, first), fb_w)
  u = _uniform(fold_in(seed, 3), (2,))
  # Offsets uniform over valid positions; the fallback is centred.
  off_y = tf.where(any_fits, tf.floor(u[0] * (height - h + 1)), tf.floor((height - h) / 2))
  off_x = tf.where(any_fits, tf.floor(u[1] * (width - w + 1)), tf.floor((width - w) / 2))
  return tf.cast(tf.stack([off_y, off_x, h, w]), tf.int32)


def bounding_box_crop_window(image_hw, seed, area_range: Sequence[float] = (0.08, 1.0),
                             aspect_range: Sequence[float] = ASPECT_RANGE,
                             min_object_covered: float = BBOX_MIN_OBJECT_COVERED,
                             max_attempts: int = BBOX_MAX_ATTEMPTS) -> tf.Tensor:
  """The official SimCLR crop window: TensorFlow's own `sample_distorted_bounding_box`.

  The official code (`data_util.crop_and_resize`) crops with `min_object_covered=0.1`, aspect
  ratios uniform (not log-uniform) in (3/4, 4/3) x the output's, areas (0.08, 1) and 100
  attempts, with the whole image as the one bounding box. TF's sampler is not area-uniform:
  per attempt it draws the aspect ratio, then the crop's *height* uniformly among the integers
  between those of the smallest and largest allowed area (so the area grows as the square of a
  uniform variable: smaller crops than an area-uniform draw), the offsets uniformly in
  [0, H - h) and [0, W - w); an attempt whose area is under 10 % of the image fails the
  min_object_covered test; after 100 failed attempts the crop is the whole image. Here it is
  TF's stateless op, so it is that distribution exactly, seeded by `seed`.

  Args:
    image_hw: (H, W), ints or int tensors.
    seed: [2] stateless seed.
    area_range: (min, max) fraction of the image area.
    aspect_range: (min, max) aspect ratio w/h, sampled uniformly.
    min_object_covered: the least fraction of the image the crop must cover.
    max_attempts: attempts before the whole image is taken.

  Returns:
    int32 [4]: (offset_y, offset_x, crop_h, crop_w).
  """
  image_size = tf.stack([tf.cast(image_hw[0], tf.int32), tf.cast(image_hw[1], tf.int32), 1])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_size, tf.constant([[[0., 0., 1., 1.]]]), seed=tf.cast(as_seed(seed), tf.int64),
      min_object_covered=min_object_covered, aspect_ratio_range=tuple(aspect_range),
      area_range=tuple(area_range), max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


CROP_SAMPLERS = {'inception': crop_window, 'tf_bounding_box': bounding_box_crop_window}


def random_resized_crop(image: tf.Tensor, seed, size: int,
                        area_range: Sequence[float] = (0.08, 1.0),
                        aspect_range: Sequence[float] = ASPECT_RANGE,
                        sampler: str = 'inception') -> tf.Tensor:
  """Crops a random window and resizes it bicubically to [size, size, C].

  Args:
    image: [H, W, C] float32 in [0, 1].
    seed: [2] stateless seed.
    size: output side.
    area_range: crop area as a fraction of the image, (min, max).
    aspect_range: crop aspect ratio w/h, (min, max).
    sampler: 'inception' (`crop_window`: area-uniform, log-uniform aspect, torchvision's
      RandomResizedCrop) or 'tf_bounding_box' (`bounding_box_crop_window`: the official SimCLR
      code's); `config.augment.crop_sampler`.

  Returns:
    [size, size, C] float32 in [0, 1].
  """
  shape = tf.shape(image)
  if sampler not in CROP_SAMPLERS:
    raise ValueError(f'config.augment.crop_sampler must be one of {sorted(CROP_SAMPLERS)}, got '
                     f'{sampler!r}')
  window = CROP_SAMPLERS[sampler]((shape[0], shape[1]), seed, area_range, aspect_range)
  crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
  out = resize(crop, size)
  return tf.ensure_shape(out, (size, size, image.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Flip, grayscale.

def random_flip(image: tf.Tensor, seed, p: float = FLIP_P) -> tf.Tensor:
  """Left-right flip with probability p. image: [H, W, C] -> [H, W, C]."""
  return _apply_with_prob(seed, p, lambda: tf.reverse(image, axis=[1]), image)


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
  return _apply_with_prob(seed, p, lambda: to_grayscale(image), image)


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
  factors = _uniform(fold_in(seed, 1), (3,), -1., 1.) * bcs + 1.
  order = tf.cast(tf.argsort(_uniform(fold_in(seed, 3), (4,))), tf.int32)
  return {
      'apply': bernoulli(seed, p),
      'brightness': tf.maximum(factors[0], 0.),
      'contrast': factors[1],
      'saturation': factors[2],
      'hue': _uniform(fold_in(seed, 2), (), -hue, hue) if hue > 0 else tf.constant(0.),
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
  return {'apply': bernoulli(seed, p),
          'sigma': _uniform(fold_in(seed, 1), (), sigma_range[0], sigma_range[1])}


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
  centre = tf.cast(_uniform(fold_in(seed, 1), (2,)) * tf.cast(tf.stack([h, w]), tf.float32),
                   tf.int32)
  rows = tf.range(h)[:, None]
  cols = tf.range(w)[None, :]
  mask = ((rows >= centre[0] - half) & (rows < centre[0] + half) &
          (cols >= centre[1] - half) & (cols < centre[1] + half))[..., None]
  return _apply_with_prob(seed, p, lambda: tf.where(mask, tf.cast(fill, image.dtype), image),
                          image)


def rotate_params(seed) -> tf.Tensor:
  """Number of quarter turns, uniform in {1, 2, 3} (the paper's {90, 180, 270} degrees)."""
  return tf.random.stateless_uniform((), as_seed(fold_in(seed, 1)), 1, 4, dtype=tf.int32)


def rotate(image: tf.Tensor, seed, p: float = 1.0) -> tf.Tensor:
  """Rotates by 90, 180 or 270 degrees. Needs a square image (apply after 'crop')."""
  k = rotate_params(seed)
  return _apply_with_prob(seed, p, lambda: tf.image.rot90(image, k), image)


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
  std = _uniform(fold_in(seed, 1), (), 0., max_std)
  noise = tf.random.stateless_normal(tf.shape(image), as_seed(fold_in(seed, 2))) * std
  return _apply_with_prob(seed, p, lambda: tf.clip_by_value(image + noise, 0., 1.), image)


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
    'crop': lambda x, s, c, n: random_resized_crop(x, s, n, crop_area_range(c),
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
  """Applies `ops` in order, op i with seed fold_in(seed, i); output [image_size, image_size, C].

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
    x = OPS[name](x, fold_in(seed, i), augment_config, image_size)
  return ensure_size(x, image_size)


def two_views(image, seed, augment_config, image_size: int) -> tf.Tensor:
  """Two independently augmented views of one image.

  Args:
    image: [H, W, C] uint8 or float32 in [0, 1].
    seed: [2] stateless seed; view v uses fold_in(seed, v).
    augment_config: `config.augment`.
    image_size: output side.

  Returns:
    [2, image_size, image_size, C] float32 in [0, 1].
  """
  ops1, ops2 = view_ops(augment_config)
  return tf.stack([augment(image, fold_in(seed, 0), ops1, augment_config, image_size),
                   augment(image, fold_in(seed, 1), ops2, augment_config, image_size)])


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
