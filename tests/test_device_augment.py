"""simclr_jax/data/device_augment.py against tf.data's augmentation, on real Fashion-MNIST.

Two independent checks: (1) given the parameters tf.data samples (same seeds, same functions as
`augment.augment`), the device's view equals tf.data's to float32 rounding; (2) the device's own
sampler draws from the same distributions as tf.data's (two-sample KS statistics and rates).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from simclr_jax import defaults
from simclr_jax.data import augment
from simclr_jax.data import crops
from simclr_jax.data import device_augment
from simclr_jax.data import pipeline
from simclr_jax.data import sources
from simclr_jax.data import stateless
from tests import test_pipeline

NUM_DRAWS = 4000
# Two-sample KS statistic of NUM_DRAWS vs NUM_DRAWS: 0.043 is the alpha = 0.001 critical value.
KS_CRITICAL = 1.95 * np.sqrt(2 / NUM_DRAWS)
RATE_TOLERANCE = 0.03  # ~4 sd of a rate over NUM_DRAWS draws


def _augment_config(**overrides):
  config = defaults.get_config().augment
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture(scope='module')
def grey_images():
  """64 real Fashion-MNIST test images, uint8 [64, 28, 28, 1]."""
  return sources.load(defaults.get_config().dataset, 'test[:192]').images[:64]


@pytest.fixture(scope='module')
def rgb_images():
  """64 colour images, each three different real Fashion-MNIST images as R, G, B."""
  images = sources.load(defaults.get_config().dataset, 'test[:192]').images
  return np.concatenate([images[0:64], images[64:128], images[128:192]], axis=-1)


def _tf_params(seed, ops, config, image_hw):
  """What `augment.augment(image, seed, ops, ...)` samples, in `apply_view`'s layout."""
  out = []
  for i, name in enumerate(ops):
    s = stateless.fold_in(seed, i)
    if name == 'crop':
      out.append(crops.crop_window(image_hw, s, augment.crop_area_range(config)))
    elif name == 'flip':
      out.append(stateless.bernoulli(s, augment.FLIP_P))
    elif name == 'grayscale':
      out.append(stateless.bernoulli(s, augment.GRAYSCALE_P))
    else:
      p = augment.color_jitter_params(s, float(config.color_strength))
      position = tf.argsort(p['order'])  # position[k]: when op k runs
      out.append(tf.stack([tf.cast(p['apply'], tf.float32), p['brightness'], p['contrast'],
                           tf.cast(position[0] < position[1], tf.float32)]))
  return tuple(out)


@pytest.mark.parametrize('ops,rgb', [
    (('crop', 'flip', 'brightness_contrast'), False),  # the Fashion-MNIST preset
    (('crop', 'flip', 'color_jitter'), False),  # grey: saturation and hue are no-ops
    (('crop', 'grayscale', 'brightness_contrast', 'flip'), True),
])
def test_view_equals_tf_data_given_its_parameters(ops, rgb, grey_images, rgb_images):
  images = rgb_images if rgb else grey_images
  config = _augment_config(ops=ops, crop_area_min=0.08, color_strength=1.0)
  seeds = [stateless.fold_in((3, 1), i) for i in range(len(images))]
  host = np.stack([augment.augment(x, s, ops, config, 28).numpy()
                   for x, s in zip(images, seeds)])
  params = [np.stack(p) for p in zip(*[
      [t.numpy() for t in _tf_params(s, ops, config, (28, 28))] for s in seeds])]
  windows = params[0]
  assert len(np.unique(windows[:, 2:], axis=0)) > 40  # many crop sizes, not one lucky case
  device = jax.jit(lambda x, p: device_augment.apply_view(x, ops, p, 28))(images, params)
  np.testing.assert_allclose(np.asarray(device), host, atol=2e-6, rtol=0)


def test_resize_matrix_equals_tf_resize_on_every_window_size():
  """Every crop length 1..28 at every offset: matrix rows against tf.image.resize of a basis."""
  for length in range(1, 29):
    basis = np.eye(length, dtype=np.float32)  # column j: the j-th unit impulse
    tf_rows = tf.image.resize(basis[None, :, :, None], (28, length), 'bicubic').numpy()[0, :, :, 0]
    for offset in (0, 28 - length):
      m = np.asarray(device_augment.resize_matrix(jnp.int32(offset), jnp.int32(length), 28, 28))
      np.testing.assert_allclose(m[:, offset:offset + length], tf_rows, atol=1e-6)
      assert not m[:, :offset].any() and not m[:, offset + length:].any()


def _ks(a, b):
  """Two-sample Kolmogorov-Smirnov statistic."""
  grid = np.union1d(a, b)
  cdf = lambda x: np.searchsorted(np.sort(x), grid, side='right') / len(x)  # pylint: disable=unnecessary-lambda-assignment
  return np.max(np.abs(cdf(a) - cdf(b)))


@pytest.mark.parametrize('image_hw', [(28, 28), (20, 40)])  # (20, 40): the fallback crop too
def test_sampler_distributions_equal_tf_data(image_hw):
  ops = ('crop', 'flip', 'brightness_contrast', 'grayscale')
  config = _augment_config(ops=ops, crop_area_min=0.08, color_strength=0.5)
  ds = tf.data.Dataset.range(NUM_DRAWS).map(
      lambda i: _tf_params(stateless.fold_in((7, 11), i), ops, config, image_hw))
  tf_draws = [t.numpy() for t in next(iter(ds.batch(NUM_DRAWS)))]
  keys = jax.random.split(jax.random.key(5), NUM_DRAWS)
  jax_draws = [np.asarray(x) for x in jax.vmap(
      lambda k: device_augment.view_params(k, ops, config, image_hw))(keys)]
  for column, what in enumerate(('offset_y', 'offset_x', 'h', 'w')):
    stat = _ks(jax_draws[0][:, column], tf_draws[0][:, column])
    assert stat < KS_CRITICAL, (what, stat)
  for index, what in ((1, 'flip'), (3, 'grayscale')):
    assert abs(jax_draws[index].mean() - tf_draws[index].mean()) < RATE_TOLERANCE, what
  for column, what in enumerate(('apply', 'brightness', 'contrast', 'brightness_first')):
    stat = _ks(jax_draws[2][:, column], tf_draws[2][:, column])
    assert stat < KS_CRITICAL, (what, stat)
  assert jax_draws[0][:, 2:].min() >= 1 and (jax_draws[0][:, 2] <= image_hw[0]).all()
  assert (jax_draws[0][:, 0] + jax_draws[0][:, 2] <= image_hw[0]).all()
  assert (jax_draws[0][:, 1] + jax_draws[0][:, 3] <= image_hw[1]).all()


def test_views_depend_on_global_position_not_on_the_split(grey_images):
  """What makes 8 devices == 1: each image's views come from (key, its global position)."""
  config = defaults.get_config().augment
  positions = np.arange(64, dtype=np.int32)
  key = jax.random.key(1)
  views = jax.jit(lambda x, p: device_augment.views(x, p, key, config, 28))
  whole = np.asarray(views(grey_images, positions))
  halves = np.concatenate([views(grey_images[:32], positions[:32]),
                           views(grey_images[32:], positions[32:])])
  # Same numbers drawn; only the batched matmul's rounding may differ with the batch size.
  np.testing.assert_allclose(whole, halves, atol=1e-6, rtol=0)
  assert whole.shape == (64, 2, 28, 28, 1)
  assert not np.array_equal(whole[:, 0], whole[:, 1])  # two different views


def test_unsupported_ops_are_errors_that_name_the_fix():
  with pytest.raises(ValueError, match='on_device=False'):
    device_augment.check_ops([('crop', 'blur')], channels=3)
  with pytest.raises(ValueError, match='saturation and hue'):
    device_augment.check_ops([('crop', 'color_jitter')], channels=3)
  with pytest.raises(ValueError, match='start with the crop'):
    device_augment.check_ops([('flip', 'crop')], channels=1)
  device_augment.check_ops([('crop', 'color_jitter')], channels=1)  # grey: fine


def test_pipeline_sends_the_same_images_as_the_host_path(train_images):
  dataset_config, augment_config = test_pipeline._configs()  # pylint: disable=protected-access
  source = sources.load(dataset_config, 'train')
  kwargs = dict(image_size=28, global_batch_size=50, seed=4)
  host = test_pipeline._take(pipeline.batches_from_source(source, augment_config, **kwargs), 25)  # pylint: disable=protected-access
  device = test_pipeline._take(pipeline.batches_from_source(  # pylint: disable=protected-access
      source, augment_config, device_augment=True, start_step=18, **kwargs), 3)
  for step, batch in enumerate(device, start=18):  # across the epoch boundary at step 20
    np.testing.assert_array_equal(batch['label'], host[step]['label'])
    np.testing.assert_array_equal(batch['position'], np.arange(50))
    assert batch['image'].dtype == np.uint8
  epoch = np.concatenate([b['image'] for b in test_pipeline._take(  # pylint: disable=protected-access
      pipeline.batches_from_source(source, augment_config, device_augment=True, **kwargs), 20)])
  assert test_pipeline._bytes_counter(epoch) == test_pipeline._bytes_counter(train_images)  # pylint: disable=protected-access
  with pytest.raises(ValueError, match='on_device=False'):
    pipeline.batches_from_source(source, _augment_config(preset='imagenet'),
                                 device_augment=True, **kwargs)


train_images = test_pipeline.train_images
