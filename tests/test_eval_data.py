"""Evaluation data: in-memory and streamed splits, per-process shares, data-parallel features.

The streamed split is the ImageNet stand-in (`simclr_jax.data.standin`): real Fashion-MNIST images
as RGB JPEGs of varying size in a prepared TFDS dataset without a registered builder, read as
`sources.load` reads imagenet2012.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from simclr_jax import parallel
from simclr_jax.data import sources
from simclr_jax.data import standin
from simclr_jax.evaluation import data
from simclr_jax.evaluation import features
from simclr_jax.models import build_model
from tests import helpers

NUM_TRAIN, NUM_TEST = 300, 101  # neither divides the batches below


@pytest.fixture(scope='module')
def dataset_config(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  standin.write(data_dir, num_train=NUM_TRAIN, num_test=NUM_TEST, max_side=48)
  return ml_collections.ConfigDict(dict(
      name=standin.NAME, data_dir=data_dir, image_size=16, train_split='train',
      eval_split='test', download=False, max_train_examples=-1, stream_shards=4))


def test_standin_is_streamed_like_imagenet(dataset_config):
  source = sources.load(dataset_config, 'train')
  assert not source.in_memory and source.num_examples == NUM_TRAIN
  image = next(source.as_dataset().as_numpy_iterator())['image']
  assert image.dtype == np.uint8 and image.shape[-1] == 3 and 40 <= image.shape[0] <= 48
  # The images are Fashion-MNIST's, in order: the labels are the first NUM_TRAIN of its own.
  labels = data.load_split(dataset_config, 'train').labels_in_order()
  np.testing.assert_array_equal(labels, helpers.fashion_mnist('train', NUM_TRAIN)[1])


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_batches_see_every_example_once_on_any_process_count(dataset_config, process_count):
  split = data.load_split(dataset_config, 'test')
  batch = 12 * process_count  # 101 examples: the last batch of every process is padded
  seen = []
  steps = set()
  for p in range(process_count):
    batches = list(split.batches(batch, process_index=p, process_count=process_count))
    steps.add(len(batches))
    for b in batches:
      assert b['image'].shape == (12, 16, 16, 3) and b['mask'].dtype == bool
      assert not b['image'][~b['mask']].any()  # padding is zeros
      seen.append(b['label'][b['mask']])
  assert len(steps) == 1  # every process steps the same number of times (collectives)
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)),
                                np.sort(helpers.fashion_mnist('test', NUM_TEST)[1]))


def test_in_memory_batches_keep_the_split_order_across_processes():
  images, labels = helpers.fashion_mnist('test', 50)
  split = data.EvalSplit.from_arrays(images, labels, num_classes=10)
  parts = [list(split.batches(16, process_index=p, process_count=2)) for p in range(2)]
  rows = np.concatenate([np.concatenate([parts[0][k]['label'], parts[1][k]['label']])
                         for k in range(len(parts[0]))])
  mask = np.concatenate([np.concatenate([parts[0][k]['mask'], parts[1][k]['mask']])
                         for k in range(len(parts[0]))])
  np.testing.assert_array_equal(rows[mask], labels)  # global row order = split order


def test_data_parallel_features_equal_single_device(dataset_config):
  split = data.load_split(dataset_config, 'test')
  model = build_model(helpers.tiny_config().model, num_classes=10, image_size=16)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((2, 16, 16, 3)), train=False))(
      jax.random.key(0, impl='rbg'))

  def gathered(num_devices):
    out = list(features.split_features(model, variables, split, batch_size=24, feature='h',
                                       mapper=parallel.Mapper(num_devices=num_devices)))
    mask = np.concatenate([features.to_host(o['mask']) for o in out])
    f = np.concatenate([features.to_host(o['features']) for o in out])
    return f[mask], np.concatenate([features.to_host(o['label']) for o in out])[mask]

  f8, y8 = gathered(8)
  f1, y1 = gathered(1)
  assert f8.shape[0] == NUM_TEST  # each example exactly once, padding dropped
  np.testing.assert_array_equal(y8, y1)
  np.testing.assert_allclose(f8, f1, rtol=1e-5, atol=1e-5)


def test_streamed_label_subset_is_class_balanced_and_read_into_memory(dataset_config):
  split = data.load_split(dataset_config, 'train')
  labels = split.labels_in_order()
  indices = np.flatnonzero(labels < 3)[::4]
  subset = split.subset(indices)
  assert subset.in_memory and subset.num_examples == len(indices)
  np.testing.assert_array_equal(subset.labels, labels[indices])
  train = next(subset.train_batches(8, seed=0))
  assert train['image'].shape == (8, 16, 16, 3) and set(train['label']) <= {0, 1, 2}


def test_streamed_training_batches_are_the_same_on_one_and_two_processes(dataset_config):
  split = data.load_split(dataset_config, 'train')
  take = lambda it: [next(it) for _ in range(3)]  # pylint: disable=unnecessary-lambda-assignment
  one = take(split.train_batches(16, seed=1, start_step=2))
  two = [take(split.train_batches(16, seed=1, start_step=2, process_index=p, process_count=2))
         for p in range(2)]
  for k in range(3):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([two[0][k][key], two[1][k][key]]),
                                    one[k][key])
