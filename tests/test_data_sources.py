"""Tests for simclr_jax/data/sources.py on the real Fashion-MNIST IDX files (Debian package)."""

import logging
import os

import numpy as np
import pytest

from simclr_jax import defaults
from simclr_jax.data import sources

pytestmark = pytest.mark.skipif(
    sources.find_idx_files('fashion_mnist', None, 'train') is None,
    reason='needs `apt-get install -y dataset-fashion-mnist`')


def _dataset_config(**overrides):
  config = defaults.get_config().dataset
  for key, value in overrides.items():
    config[key] = value
  return config


def test_idx_full_splits():
  train = sources.load(_dataset_config(), 'train')
  test = sources.load(_dataset_config(), 'test')
  assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
  assert test.images.shape == (10000, 28, 28, 1)
  assert train.labels.dtype == np.int32 and train.labels.shape == (60000,)
  # Fashion-MNIST is balanced: 6000 / 1000 images per class.
  np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
  assert train.num_classes == 10 and train.name == 'fashion_mnist'
  assert train.class_names[9] == 'Ankle boot'
  # Real images, not blank: every image has ink.
  assert (test.images.reshape(10000, -1).max(axis=1) > 100).all()


def test_idx_slices():
  full = sources.load(_dataset_config(), 'train')
  head = sources.load(_dataset_config(), 'train[:1000]')
  np.testing.assert_array_equal(head.images, full.images[:1000])
  np.testing.assert_array_equal(head.labels, full.labels[:1000])
  tail = sources.load(_dataset_config(), 'test[-500:]')
  assert tail.num_examples == 500
  middle = sources.load(_dataset_config(), 'test[10%:20%]')
  np.testing.assert_array_equal(middle.labels,
                                sources.load(_dataset_config(), 'test').labels[1000:2000])


def test_max_train_examples_truncates_train_only():
  config = _dataset_config(max_train_examples=300)
  assert sources.load(config, 'train').num_examples == 300
  assert sources.load(config, 'test').num_examples == 10000


def test_data_dir_with_idx_files_wins(tmp_path):
  for split in ('train', 't10k'):
    for kind in ('images-idx3', 'labels-idx1'):
      name = f'{split}-{kind}-ubyte.gz'
      os.symlink(os.path.join(sources.DEBIAN_FASHION_MNIST_DIR, name), tmp_path / name)
  paths = sources.find_idx_files('fashion_mnist', str(tmp_path), 'test')
  assert paths[0].startswith(str(tmp_path))
  assert sources.load(_dataset_config(data_dir=str(tmp_path)), 'test').num_examples == 10000


def test_split_string_errors():
  with pytest.raises(ValueError, match='Unsupported split'):
    sources.load(_dataset_config(), 'train[::2]')


def test_unknown_dataset_names_the_fix():
  with pytest.raises(ValueError, match='Unknown dataset .*image_folder'):
    sources.load(_dataset_config(name='no_such_dataset_xyz'), 'train')


def test_offline_without_copy_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, 'DEBIAN_FASHION_MNIST_DIR', str(tmp_path / 'absent'))
  config = _dataset_config(data_dir=str(tmp_path), download=False)
  with pytest.raises(ValueError) as error:
    sources.load(config, 'train')
  message = str(error.value)
  assert 'apt-get install -y dataset-fashion-mnist' in message
  assert '--config.dataset.data_dir' in message and 'download' in message


# ---------------------------------------------------------------------------------------------
# Image folders, written from real Fashion-MNIST test images.

_CLASSES = {0: 'tshirt', 1: 'trouser', 9: 'boot'}


def _write_folder(root, per_class=4):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  test = sources.load(_dataset_config(), 'test')
  written = {}
  for label, name in _CLASSES.items():
    os.makedirs(root / name)
    for k, i in enumerate(np.flatnonzero(test.labels == label)[:per_class]):
      Image.fromarray(test.images[i, :, :, 0]).save(root / name / f'{k}.png')
      written[(name, k)] = test.images[i, :, :, 0]
  return written


def _folder_config(root, **overrides):
  return _dataset_config(name='image_folder', folder=str(root), **overrides)


def test_image_folder_loads_sorted_classes(tmp_path):
  written = _write_folder(tmp_path)
  source = sources.load(_folder_config(tmp_path, image_size=28), 'train')
  assert source.class_names == ('boot', 'trouser', 'tshirt')  # sorted folder names -> labels
  assert source.images.shape == (12, 28, 28, 1)  # grey PNGs stay one channel
  np.testing.assert_array_equal(source.labels, np.repeat([0, 1, 2], 4))
  # Same size: PNG round trip is lossless.
  np.testing.assert_array_equal(source.images[0, :, :, 0], written[('boot', 0)])
  resized = sources.load(_folder_config(tmp_path, image_size=32), 'train')
  assert resized.images.shape == (12, 32, 32, 1)


def test_image_folder_slices_are_disjoint_and_cover(tmp_path):
  _write_folder(tmp_path)
  head = sources.load(_folder_config(tmp_path, image_size=28), 'train[:75%]')
  tail = sources.load(_folder_config(tmp_path, image_size=28), 'train[75%:]')
  assert head.num_examples == 9 and tail.num_examples == 3
  both = np.concatenate([head.images, tail.images]).reshape(12, -1)
  assert len({row.tobytes() for row in both}) == 12


def test_image_folder_skips_and_counts_truncated(tmp_path, caplog):
  _write_folder(tmp_path)
  good = (tmp_path / 'boot' / '0.png').read_bytes()
  (tmp_path / 'boot' / 'truncated.png').write_bytes(good[:len(good) // 2])
  with caplog.at_level(logging.WARNING):
    source = sources.load(_folder_config(tmp_path, image_size=28), 'train')
  assert source.num_examples == 12
  assert 'Skipped 1 unreadable' in caplog.text and 'truncated.png' in caplog.text
  with pytest.raises(ValueError, match='truncated.png'):
    sources.load(_folder_config(tmp_path, image_size=28, strict=True), 'train')


def test_image_folder_empty_class_and_missing_root(tmp_path):
  _write_folder(tmp_path)
  os.makedirs(tmp_path / 'empty_class')
  with pytest.raises(ValueError, match='empty_class'):
    sources.load(_folder_config(tmp_path), 'train')
  with pytest.raises(ValueError, match='dataset.folder'):
    sources.load(_folder_config(tmp_path / 'nope'), 'train')
