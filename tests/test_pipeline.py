"""Tests for simclr_jax/data/pipeline.py on real Fashion-MNIST (first 1000 training images)."""

import collections
import itertools

import numpy as np
import pytest

from simclr_jax import defaults
from simclr_jax.data import pipeline
from simclr_jax.data import sources

NUM_EXAMPLES = 1000


def _configs(preset='fashion_mnist', **dataset_overrides):
  config = defaults.get_config()
  config.dataset.max_train_examples = NUM_EXAMPLES
  for key, value in dataset_overrides.items():
    config.dataset[key] = value
  config.augment.preset = preset
  return config.dataset, config.augment


def _take(iterator, num):
  return list(itertools.islice(iterator, num))


@pytest.fixture(scope='module')
def train_images():
  return sources.load(_configs()[0], 'train').images


def _bytes_counter(images):
  """Multiset of images (as bytes), so that example identity survives shuffling."""
  return collections.Counter(np.asarray(image).tobytes() for image in images)


def _as_uint8(views):
  return np.round(views * 255).astype(np.uint8)


def test_batch_shapes_and_metadata():
  dataset_config, augment_config = _configs()
  batches = pipeline.pretrain_batches(dataset_config, augment_config, global_batch_size=32,
                                      seed=0)
  batch = next(batches)
  assert batch['views'].shape == (32, 2, 28, 28, 1) and batch['views'].dtype == np.float32
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  assert 0. <= batch['views'].min() and batch['views'].max() <= 1.
  assert not np.array_equal(batch['views'][:, 0], batch['views'][:, 1])
  assert batches.steps_per_epoch == NUM_EXAMPLES // 32
  assert batches.num_classes == 10 and batches.image_shape == (28, 28, 1)


def test_same_seed_same_batches_other_seed_differs():
  dataset_config, augment_config = _configs()
  kwargs = dict(global_batch_size=16, end_step=3)
  first = list(pipeline.pretrain_batches(dataset_config, augment_config, seed=1, **kwargs))
  again = list(pipeline.pretrain_batches(dataset_config, augment_config, seed=1, **kwargs))
  other = list(pipeline.pretrain_batches(dataset_config, augment_config, seed=2, **kwargs))
  assert len(first) == 3
  for a, b, c in zip(first, again, other):
    np.testing.assert_array_equal(a['views'], b['views'])
    np.testing.assert_array_equal(a['label'], b['label'])
    assert not np.array_equal(a['views'], c['views'])


def test_resume_is_bitwise_identical_across_an_epoch_boundary():
  dataset_config, augment_config = _configs()
  # 1000 // 128 = 7 steps per epoch: steps 5..9 cross into epoch 1.
  uninterrupted = _take(pipeline.pretrain_batches(dataset_config, augment_config,
                                                  global_batch_size=128, seed=3), 10)
  resumed = _take(pipeline.pretrain_batches(dataset_config, augment_config,
                                            global_batch_size=128, seed=3, start_step=5), 5)
  for step, batch in enumerate(resumed, start=5):
    np.testing.assert_array_equal(batch['views'], uninterrupted[step]['views'])
    np.testing.assert_array_equal(batch['label'], uninterrupted[step]['label'])


def test_epochs_are_permutations(train_images):
  # Preset 'none' at the native size returns the image itself, so views identify examples.
  dataset_config, augment_config = _configs(preset='none')
  batches = _take(pipeline.pretrain_batches(dataset_config, augment_config,
                                            global_batch_size=100, seed=0), 20)
  epochs = [np.concatenate([_as_uint8(b['views'][:, 0]) for b in batches[e * 10:e * 10 + 10]])
            for e in range(2)]
  for seen in epochs:
    assert _bytes_counter(seen) == _bytes_counter(train_images)
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_hosts_get_disjoint_covering_shards(train_images):
  dataset_config, augment_config = _configs(preset='none')
  shards = []
  for process_index in range(2):
    batches = _take(pipeline.pretrain_batches(
        dataset_config, augment_config, global_batch_size=100, seed=0,
        process_index=process_index, process_count=2), 10)  # one epoch of 500 per host
    assert batches[0]['views'].shape == (50, 2, 28, 28, 1)
    shards.append(np.concatenate([_as_uint8(b['views'][:, 0]) for b in batches]))
  assert _bytes_counter(shards[0]) + _bytes_counter(shards[1]) == _bytes_counter(train_images)
  assert not set(_bytes_counter(shards[0])) & set(_bytes_counter(shards[1]))


def test_batch_size_errors():
  dataset_config, augment_config = _configs()
  with pytest.raises(ValueError, match='multiple of the process count'):
    pipeline.pretrain_batches(dataset_config, augment_config, global_batch_size=33, seed=0,
                              process_count=2)
  with pytest.raises(ValueError, match='fewer than one global batch'):
    pipeline.pretrain_batches(dataset_config, augment_config, global_batch_size=2048, seed=0)


def test_steps_per_epoch():
  assert pipeline.steps_per_epoch(60000, 256) == 234
  assert pipeline.steps_per_epoch(511, 256) == 1
  assert pipeline.steps_per_epoch(255, 256) == 1


def test_eval_arrays():
  dataset_config, _ = _configs()
  images, labels = pipeline.eval_arrays(dataset_config, 'test[:300]')
  source = sources.load(dataset_config, 'test[:300]')
  assert images.shape == (300, 28, 28, 1) and images.dtype == np.float32
  np.testing.assert_allclose(images, source.images / 255., atol=1e-6)
  np.testing.assert_array_equal(labels, source.labels)
  dataset_config.image_size = 32
  assert pipeline.eval_arrays(dataset_config, 'test[:10]')[0].shape == (10, 32, 32, 1)


def _png_stream_source(images, labels):
  """A streaming Source over real images stored as PNG bytes, like TFDS ImageNet records."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  encoded = [tf.io.encode_png(image).numpy() for image in images]

  def stream(process_index, process_count, decode, drop_remainder):
    del decode, drop_remainder  # Already encoded; shards below are equal-sized.
    return tf.data.Dataset.from_tensor_slices(
        {'image': encoded[process_index::process_count],
         'label': labels[process_index::process_count]})

  return sources.Source('png_stream', 10, None, None, len(images), stream=stream)


def test_streaming_path_resumes_bitwise(train_images):
  labels = sources.load(_configs()[0], 'train').labels
  source = _png_stream_source(train_images[:200], labels[:200])
  _, augment_config = _configs(preset='cifar')
  kwargs = dict(image_size=24, global_batch_size=40, seed=5, stream_shards=8)  # 5 steps/epoch
  uninterrupted = _take(pipeline.batches_from_source(source, augment_config, **kwargs), 8)
  resumed = _take(pipeline.batches_from_source(source, augment_config, start_step=4, **kwargs), 4)
  assert uninterrupted[0]['views'].shape == (40, 2, 24, 24, 3)  # decoded to RGB
  for step, batch in enumerate(resumed, start=4):
    np.testing.assert_array_equal(batch['views'], uninterrupted[step]['views'])
    np.testing.assert_array_equal(batch['label'], uninterrupted[step]['label'])
  first_epoch = np.concatenate([b['label'] for b in uninterrupted[:5]])
  np.testing.assert_array_equal(np.sort(first_epoch), np.sort(labels[:200]))


def test_streaming_batches_are_the_same_on_any_number_of_processes(train_images):
  """Process p of 2 reads only its block of stream shards, and its host batches laid beside the
  other's are, row by row, the global batch one process reads (views and labels)."""
  labels = sources.load(_configs()[0], 'train').labels
  source = _png_stream_source(train_images[:160], labels[:160])
  _, augment_config = _configs(preset='cifar')
  kwargs = dict(image_size=16, global_batch_size=32, seed=3, stream_shards=4, start_step=2)
  one = _take(pipeline.batches_from_source(source, augment_config, **kwargs), 3)
  two = [_take(pipeline.batches_from_source(source, augment_config, process_index=p,
                                            process_count=2, **kwargs), 3) for p in range(2)]
  for step in range(3):
    for key in ('views', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([two[0][step][key], two[1][step][key]]), one[step][key])
  with pytest.raises(ValueError, match='stream_shards'):
    pipeline.batches_from_source(source, augment_config, **{**kwargs, 'stream_shards': 3})
