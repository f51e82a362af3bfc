r"""Input pipeline throughput: augmented views per second on this host's CPUs.

  TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/input_pipeline.py [--seconds=10] \
      [--train_views_per_s=1234]

Measures `pipeline.batches_from_source` end to end (index shuffle, gather, two views, batch,
prefetch, numpy copy) for
  - 32x32 RGB with the 'cifar' preset (s=0.5, no blur): CIFAR-10 if a prepared TFDS copy is
    found offline, else real Fashion-MNIST images resized to 32x32 and repeated to 3 channels
    (same pixel count and ops, so the same cost);
  - 224x224 RGB with the 'imagenet' preset (s=1.0, blur): real Fashion-MNIST images resized to
    224x224x3 (ImageNet's JPEG decoding is not included).
`train_views_per_s_32` is the train step's consumption rate, passed in from the train-step
benchmark, so the JSON shows whether input keeps up (input rate should exceed it).

Prints a short table, then one JSON line (last line of stdout).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

# pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import defaults
from simclr_jax.data import augment
from simclr_jax.data import pipeline
from simclr_jax.data import sources
import tensorflow as tf
# pylint: enable=g-import-not-at-top,wrong-import-position

_SECONDS = flags.DEFINE_float('seconds', 10., 'Timed seconds per measurement (after warmup).')
_BATCH_32 = flags.DEFINE_integer('batch_size_32', 256, 'Images per batch at 32x32.')
_BATCH_224 = flags.DEFINE_integer('batch_size_224', 32, 'Images per batch at 224x224.')
_NUM_IMAGES_224 = flags.DEFINE_integer('num_images_224', 512, 'Distinct 224x224 images held.')
_TRAIN_VIEWS = flags.DEFINE_float('train_views_per_s', None,
                                  'Train-step views/s at 32x32 (from the train-step benchmark).')


def _fashion_rgb(num: int, size: int) -> np.ndarray:
  """Real Fashion-MNIST train images, bicubic-resized to size x size, repeated to RGB; uint8."""
  config = defaults.get_config().dataset
  images = sources.load(config, f'train[:{num}]').images
  out = tf.image.resize(tf.cast(images, tf.float32), (size, size), 'bicubic')
  out = tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
  return np.repeat(out.numpy(), 3, axis=-1)


def _source_32() -> tuple[sources.Source, str]:
  config = defaults.get_config().dataset
  config.name, config.download, config.max_train_examples = 'cifar10', False, 10000
  try:
    return sources.load(config, 'train'), 'cifar10'
  except ValueError:
    images = _fashion_rgb(10000, 32)
    return (sources.Source('fashion_mnist_rgb32', 10, images, np.zeros(len(images), np.int32),
                           len(images)),
            'fashion_mnist resized to 32x32x3 (CIFAR-10 not available offline)')


def _views_per_s(source: sources.Source, preset: str, image_size: int, batch_size: int,
                 seconds: float) -> float:
  config = defaults.get_config().augment
  config.preset = preset
  config.color_strength = augment.PAPER_COLOR_STRENGTH[preset]
  batches = pipeline.batches_from_source(source, config, image_size=image_size,
                                         global_batch_size=batch_size, seed=0)
  for _ in range(3):  # Warmup: tracing, AUTOTUNE ramp-up, prefetch fill.
    next(batches)
  start, num = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    num += next(batches)['views'].shape[0] * 2
  return num / (time.perf_counter() - start)


def main(argv):
  del argv
  source_32, name_32 = _source_32()
  rate_32 = _views_per_s(source_32, 'cifar', 32, _BATCH_32.value, _SECONDS.value)
  images_224 = _fashion_rgb(_NUM_IMAGES_224.value, 224)
  source_224 = sources.Source('fashion_mnist_rgb224', 10, images_224,
                              np.zeros(len(images_224), np.int32), len(images_224))
  rate_224 = _views_per_s(source_224, 'imagenet', 224, _BATCH_224.value, _SECONDS.value)
  result = {
      'views_per_s_32': round(rate_32, 1),
      'views_per_s_224': round(rate_224, 1),
      'train_views_per_s_32': _TRAIN_VIEWS.value,
      'source_32': name_32,
      'source_224': 'fashion_mnist resized to 224x224x3, imagenet preset with blur',
      'cpu_count': os.cpu_count(),
      'batch_size_32': _BATCH_32.value,
      'batch_size_224': _BATCH_224.value,
  }
  print(f'{"setting":<34} {"views/s":>10}')
  print(f'{"32x32 cifar preset":<34} {rate_32:>10.1f}')
  print(f'{"224x224 imagenet preset + blur":<34} {rate_224:>10.1f}')
  train = 'n/a' if _TRAIN_VIEWS.value is None else f'{_TRAIN_VIEWS.value:.1f}'
  print(f'{"train step consumes (32x32)":<34} {train:>10}')
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
