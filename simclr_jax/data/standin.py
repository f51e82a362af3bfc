"""A streamed stand-in for ImageNet, built from real Fashion-MNIST images.

ImageNet reaches simclr_jax as a prepared TFDS dataset: JPEG records of no fixed shape, which
`sources.load` streams per process (never loads). This module writes a dataset of the same kind
from real images, so the ImageNet code path (streamed pretraining input, streamed evaluation,
per-process shards) runs end to end on a machine without ImageNet:

  python -m simclr_jax.data.standin --data_dir=/tmp/tfds --num_train=4096 --num_test=1000
  python -m simclr_jax.main --config=configs/imagenet.py --workdir=/tmp/in_standin \\
    --config.dataset.name=fashion_mnist_stream --config.dataset.data_dir=/tmp/tfds ...

Each Fashion-MNIST image becomes an RGB JPEG of its own size (sides drawn in
`[min_side, max_side]`, so the aspect ratio varies too), resized bilinearly from the 28x28
original. The dataset has no registered builder: TFDS reads it from `data_dir` by name, as it
reads a prepared `imagenet2012`. It is a stand-in, not ImageNet: ten classes of grey clothes.
"""

import os

from absl import app
from absl import flags
import numpy as np

NAME = 'fashion_mnist_stream'
VERSION = '1.0.0'


def _examples(images: np.ndarray, labels: np.ndarray, *, min_side: int, max_side: int,
              seed: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for image, label in zip(images, labels):
    height, width = (int(s) for s in rng.integers(min_side, max_side + 1, size=2))
    resized = tf.image.resize(image.astype(np.float32), (height, width), 'bilinear')
    rgb = np.repeat(np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8), 3, axis=-1)
    yield {'image': rgb, 'label': int(label)}


def write(data_dir: str, *, num_train: int, num_test: int, min_side: int = 40,
          max_side: int = 96, seed: int = 0) -> str:
  """Writes the stand-in under `data_dir` (once: an existing copy is kept) and returns its path.

  Args:
    data_dir: the TFDS data_dir to write into (`--config.dataset.data_dir`).
    num_train: images of the 'train' split (the first of Fashion-MNIST's training set).
    num_test: images of the 'test' split (the first of its test set).
    min_side, max_side: range of each image's height and width in pixels.
    seed: draws the sizes.

  Returns:
    The dataset's folder.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  folder = os.path.join(data_dir, NAME, VERSION)
  if os.path.exists(os.path.join(folder, 'dataset_info.json')):
    return folder
  dataset_config = ml_collections.ConfigDict({'name': 'fashion_mnist'})
  splits = {}
  for split, n, salt in (('train', num_train, 0), ('test', num_test, 1)):
    source = sources.load(dataset_config, f'{split}[:{n}]')
    examples = list(_examples(source.images, source.labels, min_side=min_side,
                              max_side=max_side, seed=seed * 2 + salt))
    splits[split] = tf.data.Dataset.from_generator(
        lambda examples=examples: iter(examples), output_signature={
            'image': tf.TensorSpec((None, None, 3), tf.uint8),
            'label': tf.TensorSpec((), tf.int64)})
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
      'label': tfds.features.ClassLabel(names=list(sources.FASHION_MNIST_CLASSES)),
  })
  tfds.dataset_builders.store_as_tfds_dataset(
      name=NAME, version=VERSION, features=features, split_datasets=splits, data_dir=data_dir,
      description='Fashion-MNIST as RGB JPEGs of varying size: a streamed stand-in for '
      'ImageNet (simclr_jax.data.standin).', disable_shuffling=True)
  return folder


_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir to write into.', required=True)
_NUM_TRAIN = flags.DEFINE_integer('num_train', 4096, 'Training images.')
_NUM_TEST = flags.DEFINE_integer('num_test', 1000, 'Test images.')


def main(argv):
  del argv
  print(write(_DATA_DIR.value, num_train=_NUM_TRAIN.value, num_test=_NUM_TEST.value))


if __name__ == '__main__':
  app.run(main)
