"""The random resized crop: where the window falls (two samplers) and the bicubic resize.

- `crop_window` ('inception'): area uniform in a range, aspect ratio log-uniform in (3/4, 4/3),
  the first of 10 candidates that fits, else the largest centred crop (torchvision's
  RandomResizedCrop).
- `bounding_box_crop_window` ('tf_bounding_box'): TensorFlow's own
  `sample_distorted_bounding_box` with the official SimCLR code's arguments (docs/parity.md).

`config.augment.crop_sampler` picks one; `simclr_jax/data/device_augment.py` draws from the same
distributions inside the train step.
"""

import math
from typing import Sequence

import tensorflow as tf

from simclr_jax.data import stateless

# Inception / SimCLR crop: the crop's aspect ratio is log-uniform in [3/4, 4/3].
ASPECT_RANGE = (3. / 4., 4. / 3.)
CROP_MAX_TRIES = 10
# The official SimCLR crop (`bounding_box_crop_window`).
BBOX_MIN_OBJECT_COVERED = 0.1
BBOX_MAX_ATTEMPTS = 100


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bicubic resize to [size, size, C], clipped: bicubic overshoots [0, 1] at edges."""
  image = tf.image.resize(image, (size, size), method='bicubic')
  return tf.clip_by_value(image, 0., 1.)


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
  target_area = area * stateless.uniform(stateless.fold_in(seed, 1), (max_tries,),
                                         area_range[0], area_range[1])
  log_ratio = stateless.uniform(stateless.fold_in(seed, 2), (max_tries,),
                                math.log(aspect_range[0]), math.log(aspect_range[1]))
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
  u = stateless.uniform(stateless.fold_in(seed, 3), (2,))
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
      image_size, tf.constant([[[0., 0., 1., 1.]]]),
      seed=tf.cast(stateless.as_seed(seed), tf.int64),
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
