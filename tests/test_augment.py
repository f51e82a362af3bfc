"""Tests for simclr_jax/data/augment.py on real Fashion-MNIST images."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_jax import defaults
from simclr_jax.data import augment
from simclr_jax.data import crops
from simclr_jax.data import sources
from simclr_jax.data import stateless

NUM_DRAWS = 1000
# Binomial rates over NUM_DRAWS draws: sd <= 0.016, so +-0.06 is ~4 sd.
RATE_TOLERANCE = 0.06


@pytest.fixture(scope='module')
def grey_image():
  """A real Fashion-MNIST test image, float32 [28, 28, 1] (a shirt: not left-right symmetric)."""
  test = sources.load(defaults.get_config().dataset, 'test[:100]')
  return test.images[1].astype(np.float32) / 255.


@pytest.fixture(scope='module')
def rgb_image():
  """A colour image made of three different real Fashion-MNIST images as R, G, B: [28, 28, 3]."""
  test = sources.load(defaults.get_config().dataset, 'test[:100]')
  return np.concatenate([test.images[i] for i in (1, 2, 3)], axis=-1).astype(np.float32) / 255.


def _many(fn, num=NUM_DRAWS, seed=(7, 11)):
  """fn(seed) for `num` seeds fold_in(seed, i), evaluated in one tf.data pass."""
  ds = tf.data.Dataset.range(num).map(lambda i: fn(stateless.fold_in(seed, i))).batch(num)
  return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


def _augment_config(**overrides):
  config = defaults.get_config().augment
  for key, value in overrides.items():
    config[key] = value
  return config


# ---------------------------------------------------------------------------------------------
# Distributions of the sampled parameters.

def test_flip_rate(grey_image):
  assert not np.array_equal(grey_image, grey_image[:, ::-1])
  out = _many(lambda s: augment.random_flip(grey_image, s))
  flipped = np.all(out == grey_image[None, :, ::-1], axis=(1, 2, 3))
  kept = np.all(out == grey_image[None], axis=(1, 2, 3))
  assert np.all(flipped ^ kept)
  assert abs(flipped.mean() - 0.5) < RATE_TOLERANCE


def test_grayscale_rate(rgb_image):
  out = _many(lambda s: augment.random_grayscale(rgb_image, s))
  grey = np.all(out[..., :1] == out, axis=(1, 2, 3))
  assert abs(grey.mean() - 0.2) < RATE_TOLERANCE
  np.testing.assert_array_equal(out[~grey], np.broadcast_to(rgb_image, out[~grey].shape))


def test_color_jitter_rate_and_ranges(rgb_image):
  strength = 0.5
  out = _many(lambda s: augment.color_jitter(rgb_image, s, strength))
  changed = np.any(out != rgb_image[None], axis=(1, 2, 3))
  assert abs(changed.mean() - 0.8) < RATE_TOLERANCE
  assert out.min() >= 0. and out.max() <= 1.
  params = _many(lambda s: augment.color_jitter_params(s, strength))
  assert abs(params['apply'].mean() - 0.8) < RATE_TOLERANCE
  for key in ('brightness', 'contrast', 'saturation'):
    assert params[key].min() >= 1 - 0.8 * strength and params[key].max() <= 1 + 0.8 * strength
    # Uniform: the spread covers most of the range.
    assert np.ptp(params[key]) > 1.5 * 0.8 * strength
  assert np.abs(params['hue']).max() <= 0.2 * strength
  np.testing.assert_array_equal(np.sort(params['order'], axis=1), np.tile(np.arange(4), (1000, 1)))
  assert len({tuple(o) for o in params['order']}) == 24  # every order occurs


def _brightness_contrast64(image, params):
  """Float64 NumPy reference of the grey / no-chroma jitter: brightness and contrast in the order
  `params['order']` puts them, each clipped to [0, 1]."""
  x = image.astype(np.float64)
  if not params['apply']:
    return x
  for op in params['order']:
    if op == 0:
      x = np.clip(x * params['brightness'], 0, 1)
    elif op == 1:
      mean = x.mean(axis=(0, 1), keepdims=True)
      x = np.clip((x - mean) * params['contrast'] + mean, 0, 1)
  return x


@pytest.mark.parametrize('image_name, chroma', [('grey_image', True), ('rgb_image', False)])
def test_brightness_contrast_jitter_matches_float64_reference(image_name, chroma, request):
  image = request.getfixturevalue(image_name)
  strength = 1.0
  out = _many(lambda s: augment.color_jitter(image, s, strength, saturation_and_hue=chroma),
              num=200)
  params = _many(lambda s: augment.color_jitter_params(s, strength), num=200)
  brightness_first = 0
  for i in range(200):
    p = {k: v[i] for k, v in params.items()}
    np.testing.assert_allclose(out[i], _brightness_contrast64(image, p), atol=2e-6)
    brightness_first += p['apply'] and list(p['order']).index(0) < list(p['order']).index(1)
  # Both orders occur (they give different images: the clip after brightness is not linear).
  assert 40 < brightness_first < 120


def test_crop_window_area_and_aspect():
  height, width = 224, 224
  windows = _many(lambda s: crops.crop_window((height, width), s))
  off_y, off_x, h, w = windows.T
  assert (off_y >= 0).all() and (off_x >= 0).all()
  assert (off_y + h <= height).all() and (off_x + w <= width).all()
  area = h * w / (height * width)
  # Rounding each side to whole pixels moves the area by < 1 pixel-row; allow 2%.
  assert area.min() >= 0.08 * 0.98 and area.max() <= 1.0
  aspect = w / h
  assert aspect.min() >= 0.75 * 0.97 and aspect.max() <= 4 / 3 * 1.03
  # Area is uniform on [0.08, 1] for accepted candidates, mean a little under 0.54.
  assert 0.45 < area.mean() < 0.58
  # log-aspect is symmetric around 0.
  assert abs(np.log(aspect).mean()) < 0.03


def test_crop_window_fallback_is_centred():
  # A 10x100 strip fits no candidate with area >= 90% and aspect <= 4/3: the fallback is the
  # centred crop with the widest allowed aspect, 10 x 13.
  window = crops.crop_window((10, 100), [1, 2], area_range=(0.9, 1.0)).numpy()
  np.testing.assert_array_equal(window, [0, (100 - 13) // 2, 10, 13])


def test_random_resized_crop_uses_its_window(rgb_image):
  seed = tf.constant([3, 4])
  window = crops.crop_window((28, 28), seed).numpy()
  expected = crops.resize(rgb_image[window[0]:window[0] + window[2],
                                      window[1]:window[1] + window[3]], 20)
  np.testing.assert_array_equal(crops.random_resized_crop(rgb_image, seed, 20), expected)


def test_blur_params_and_rate(grey_image):
  params = _many(lambda s: augment.blur_params(s))
  assert abs(params['apply'].mean() - 0.5) < RATE_TOLERANCE
  assert params['sigma'].min() >= 0.1 and params['sigma'].max() <= 2.0
  assert np.ptp(params['sigma']) > 1.7
  assert augment.blur_radius(224).numpy() == 11  # 23-tap kernel, ~10% of 224
  assert augment.blur_radius(32).numpy() == 1


def test_blur_matches_float64_reference(rgb_image):
  sigma, radius = 1.3, 3
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
  kernel /= kernel.sum()
  padded = np.pad(rgb_image.astype(np.float64), ((radius,) * 2, (radius,) * 2, (0, 0)), 'reflect')
  rows = sum(kernel[i] * padded[i:i + 28] for i in range(2 * radius + 1))
  expected = sum(kernel[i] * rows[:, i:i + 28] for i in range(2 * radius + 1))
  np.testing.assert_allclose(augment.blur(rgb_image, sigma, radius), expected, atol=1e-5)


def test_rotate_quarter_turns(grey_image):
  turns = _many(augment.rotate_params)
  np.testing.assert_array_equal(np.unique(turns), [1, 2, 3])
  for k in (1, 2, 3):
    assert abs((turns == k).mean() - 1 / 3) < RATE_TOLERANCE
  seed = tf.constant([5, 6])
  np.testing.assert_array_equal(augment.rotate(grey_image, seed),
                                np.rot90(grey_image, augment.rotate_params(seed).numpy()))


# ---------------------------------------------------------------------------------------------
# Every op: range, channels, eager == tf.data.

@pytest.mark.parametrize('name', sorted(augment.OPS))
@pytest.mark.parametrize('channels', [1, 3])
def test_op_range_channels_and_eager_equals_graph(name, channels, grey_image, rgb_image):
  image = grey_image if channels == 1 else rgb_image
  config = _augment_config(color_strength=1.0)
  seed = tf.constant([12, 34])
  op = augment.OPS[name]
  eager = op(tf.constant(image), seed, config, 24 if name == 'crop' else 28).numpy()
  graph = next(iter(tf.data.Dataset.from_tensors(image).map(
      lambda x: op(x, seed, config, 24 if name == 'crop' else 28)))).numpy()
  np.testing.assert_array_equal(eager, graph)
  assert eager.shape[-1] == channels
  assert eager.min() >= 0. and eager.max() <= 1.


def test_grey_image_colour_ops(grey_image):
  seed = tf.constant([1, 1])
  np.testing.assert_array_equal(augment.random_grayscale(grey_image, seed, p=1.), grey_image)
  # On grey images saturation/hue are no-ops, so full jitter == brightness/contrast jitter.
  np.testing.assert_array_equal(augment.color_jitter(grey_image, seed, 1.0, p=1.),
                                augment.color_jitter(grey_image, seed, 1.0, p=1.,
                                                     saturation_and_hue=False))
  assert not np.array_equal(augment.color_jitter(grey_image, seed, 1.0, p=1.), grey_image)


# ---------------------------------------------------------------------------------------------
# Two views.

@pytest.mark.parametrize('preset', sorted(augment.PRESETS))
def test_two_views_presets(preset, grey_image, rgb_image):
  config = _augment_config(preset=preset, color_strength=augment.PAPER_COLOR_STRENGTH[preset])
  for image in (grey_image, rgb_image):
    views = augment.two_views(image, [0, 1], config, 32).numpy()
    assert views.shape == (2, 32, 32, image.shape[-1]) and views.dtype == np.float32
    assert views.min() >= 0. and views.max() <= 1.
    np.testing.assert_array_equal(views, augment.two_views(image, [0, 1], config, 32))
    if preset != 'none':
      assert not np.array_equal(views[0], views[1])
      assert not np.array_equal(views, augment.two_views(image, [0, 2], config, 32))


def test_two_views_uint8_input_and_tf_data(grey_image):
  config = _augment_config(preset='fashion_mnist')
  uint8 = np.round(grey_image * 255).astype(np.uint8)
  eager = augment.two_views(uint8, [9, 9], config, 28)
  graph = next(iter(tf.data.Dataset.from_tensors(uint8).map(
      lambda x: augment.two_views(x, tf.constant([9, 9]), config, 28))))
  np.testing.assert_array_equal(eager, graph)
  np.testing.assert_allclose(
      augment.two_views(uint8, [0, 0], _augment_config(preset='none'), 28)[0], grey_image,
      atol=1e-6)


def test_ops_view2_applies_to_one_branch(grey_image):
  config = _augment_config(ops=('flip',), ops_view2=('sobel',))
  seed = tf.constant([4, 2])
  views = augment.two_views(grey_image, seed, config, 28).numpy()
  np.testing.assert_array_equal(
      views[0], augment.random_flip(grey_image, stateless.fold_in(stateless.fold_in(seed, 0), 0)))
  np.testing.assert_array_equal(views[1], augment.sobel(grey_image))


def test_preset_blur_flag_and_errors():
  assert augment.view_ops(_augment_config(preset='cifar', blur=True))[0][-1] == 'blur'
  assert 'blur' in augment.view_ops(_augment_config(preset='imagenet'))[0]
  with pytest.raises(ValueError, match='preset'):
    augment.view_ops(_augment_config(preset='nope'))
  with pytest.raises(ValueError, match='op'):
    augment.view_ops(_augment_config(ops=('crop', 'warp')))


# ---------------------------------------------------------------------------------------------
# Evaluation transform.

def test_eval_preprocess(grey_image, rgb_image):
  uint8 = np.round(grey_image * 255).astype(np.uint8)
  np.testing.assert_allclose(augment.eval_preprocess(uint8, 28), grey_image, atol=1e-6)
  assert augment.eval_preprocess(uint8, 32).shape == (32, 32, 1)
  # > 64 px: centre crop of 87.5% (224 of 256), here resized to its own size (exact).
  large = tf.image.resize(rgb_image, (256, 256), 'nearest').numpy()
  np.testing.assert_allclose(augment.eval_preprocess(large, 224), large[16:240, 16:240],
                             atol=1e-5)
  batch = augment.eval_preprocess(np.stack([large, large]), 112)
  assert batch.shape == (2, 112, 112, 3)
  assert 0. <= float(tf.reduce_min(batch)) and float(tf.reduce_max(batch)) <= 1.
