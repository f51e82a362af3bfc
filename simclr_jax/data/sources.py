"""Where images come from: TFDS, the Debian Fashion-MNIST IDX files, or a folder of images.

`load(dataset_config, split)` returns a `Source`. Datasets that fit in host memory (MNIST-like,
CIFAR, STL-10, image folders) come back as uint8 arrays; ImageNet-sized ones come back as a
streaming `tf.data` source (`Source.as_dataset()`), since 1.28M JPEGs do not fit in RAM.

Offline first: nothing here touches the network unless `dataset_config.download` is True and no
local copy was found. For 'fashion_mnist' the IDX files (in `data_dir`, else those of the Debian
package `dataset-fashion-mnist`) win over TFDS because reading them takes well under a second.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import os
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np

from simclr_jax.data import image_folder

# Debian's `dataset-fashion-mnist` installs the four IDX files here.
DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')

# TFDS datasets whose images have no fixed shape or do not fit in memory: they are streamed.
STREAMING_DATASETS = ('imagenet2012', 'imagenet2012_subset', 'imagenet2012_real',
                      'imagenet_v2', 'imagenet_a', 'imagenet_r', 'imagenet_sketch')

# Above this many uint8 bytes a fixed-shape TFDS split is streamed rather than loaded.
MAX_IN_MEMORY_BYTES = 4 << 30



@dataclasses.dataclass(frozen=True)
class Source:
  """One split of one dataset.

  Attributes:
    name: dataset name, e.g. 'fashion_mnist' or 'image_folder'.
    num_classes: number of labels.
    images: uint8 [N, H, W, C], or None for a streaming source.
    labels: int32 [N], or None for a streaming source.
    class_names: label -> name, when known.
    num_examples: N (also known for streaming sources).
    stream: streaming sources only: `stream(process_index, process_count, decode,
      drop_remainder)` returns a `tf.data.Dataset` of `{'image': uint8 [H, W, C] (or encoded
      bytes if not decode), 'label': int32 []}` for this process's shard, in a fixed order.
  """
  name: str
  num_classes: int
  images: Optional[np.ndarray]
  labels: Optional[np.ndarray]
  num_examples: int
  class_names: Optional[tuple[str, ...]] = None
  stream: Optional[Callable[..., Any]] = None

  @property
  def in_memory(self) -> bool:
    return self.images is not None

  def as_dataset(self, process_index: int = 0, process_count: int = 1, decode: bool = True,
                 drop_remainder: bool = False):
    """The split as a `tf.data.Dataset` of {'image': uint8 [H,W,C], 'label': int32 []}.

    Args:
      process_index: this process's shard (streaming sources shard by files; in-memory sources
        take every `process_count`-th example).
      process_count: number of shards.
      decode: streaming sources only; False leaves 'image' as encoded bytes (cheap skipping).
      drop_remainder: give every shard the same number of examples (training); False keeps
        every example (evaluation).

    Returns:
      A finite dataset in a fixed order.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self.stream is not None:
      return self.stream(process_index, process_count, decode, drop_remainder)
    stop = (len(self.images) // process_count * process_count) if drop_remainder else None
    return tf.data.Dataset.from_tensor_slices(
        {'image': self.images[process_index:stop:process_count],
         'label': self.labels[process_index:stop:process_count]})


def _fix_hint(name: str) -> str:
  fixes = []
  if name == 'fashion_mnist':
    fixes.append('install the Debian package (`apt-get install -y dataset-fashion-mnist`)')
  fixes.append('point `--config.dataset.data_dir` at a directory holding a local copy'
               + (' (IDX files or a prepared TFDS dataset)' if name == 'fashion_mnist' else
                  ' (a prepared TFDS dataset)'))
  fixes.append('or allow downloading with `--config.dataset.download=True` (needs internet)')
  return '; '.join(fixes)


# ----------------------------------------------------------------------------------------------
# Split strings: 'train', 'train[:1000]', 'test[10%:]', 'train[-500:]'.

_SPLIT_RE = re.compile(r'^(?P<base>[\w-]+)(\[(?P<start>-?\d*%?):(?P<stop>-?\d*%?)\])?$')


def parse_split(split: str) -> tuple[str, Optional[str], Optional[str]]:
  """Splits a TFDS-style split string into (base, start, stop); start/stop may end in '%'.

  Only one contiguous slice is supported (no '+' unions), which covers what configs need.
  """
  match = _SPLIT_RE.match(split.replace(' ', ''))
  if match is None:
    raise ValueError(f'Unsupported split {split!r}: use e.g. "train", "train[:1000]", '
                     '"test[10%:]".')
  return match['base'], match['start'] or None, match['stop'] or None


def _bound(value: Optional[str], n: int) -> Optional[int]:
  if value is None:
    return None
  if value.endswith('%'):
    # TFDS rounds percent boundaries to the closest example.
    return int(round(int(value[:-1]) * n / 100))
  return int(value)


def slice_for_split(split: str, n: int) -> slice:
  """The python slice that `split` selects out of its base split of `n` examples."""
  _, start, stop = parse_split(split)
  return slice(_bound(start, n), _bound(stop, n))


def _truncate_train(dataset_config, split: str, images, labels):
  max_n = dataset_config.get('max_train_examples', -1)
  train_base = parse_split(dataset_config.get('train_split', 'train'))[0]
  if max_n is not None and max_n > 0 and parse_split(split)[0] == train_base:
    return images[:max_n], labels[:max_n]
  return images, labels


# ----------------------------------------------------------------------------------------------
# IDX files (MNIST format: big-endian header, then raw uint8).

@functools.lru_cache(maxsize=8)
def read_idx(path: str) -> np.ndarray:
  """Reads an (optionally gzipped) IDX file into a read-only numpy array.

  Cached, so repeated loads (tests, train + eval) parse each file once; read-only because the
  cached array is shared.
  """
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f'{path} is not an unsigned-byte IDX file.')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f'{path} is truncated: header says {shape}, found {array.size} bytes.')
  array = array.reshape(shape)
  array.flags.writeable = False
  return array


def _idx_paths(directory: str, base: str, subdirs: Sequence[str] = ()
               ) -> Optional[tuple[str, str]]:
  """(images, labels) IDX paths for split `base` in `directory` (or a subdir), or None."""
  prefix = {'train': 'train', 'test': 't10k'}.get(base)
  if prefix is None or not directory:
    return None
  for root in [directory] + [os.path.join(directory, d) for d in subdirs]:
    for ext in ('.gz', ''):
      images = os.path.join(root, f'{prefix}-images-idx3-ubyte{ext}')
      labels = os.path.join(root, f'{prefix}-labels-idx1-ubyte{ext}')
      if os.path.isfile(images) and os.path.isfile(labels):
        return images, labels
  return None


def find_idx_files(name: str, data_dir: Optional[str], base: str) -> Optional[tuple[str, str]]:
  """Looks for MNIST-format IDX files: `data_dir` first, then the Debian package's directory."""
  dirs = [data_dir] if data_dir else []
  if name == 'fashion_mnist':
    dirs.append(DEBIAN_FASHION_MNIST_DIR)
  # MNIST and Fashion-MNIST share file names, so only a dataset-named subdir is searched.
  subdirs = {'fashion_mnist': ('fashion-mnist', 'fashion_mnist'), 'mnist': ('mnist',)}[name]
  for directory in dirs:
    paths = _idx_paths(directory, base, subdirs)
    if paths is not None:
      return paths
  return None


def _load_idx(name: str, paths: tuple[str, str], split: str, dataset_config) -> Source:
  images = read_idx(paths[0])
  labels = read_idx(paths[1])
  if images.ndim != 3 or labels.shape != images.shape[:1]:
    raise ValueError(f'IDX files {paths} disagree: images {images.shape}, labels {labels.shape}.')
  sl = slice_for_split(split, len(images))
  images = images[sl][..., None]  # [N, 28, 28, 1]
  labels = labels[sl].astype(np.int32)
  images, labels = _truncate_train(dataset_config, split, images, labels)
  logging.info('Loaded %s %s from IDX files %s: %d images.', name, split, paths[0], len(images))
  return Source(name=name, num_classes=10, images=images, labels=labels,
                num_examples=len(images),
                class_names=FASHION_MNIST_CLASSES if name == 'fashion_mnist' else None)


# ----------------------------------------------------------------------------------------------
# scikit-learn's bundled handwritten digits: real, offline, tiny (an offline transfer target).

SKLEARN_DIGITS = 'sklearn_digits'
_DIGITS_TEST_SIZE = 500  # of 1797 images; the split is a fixed permutation (seed 0)


def _load_sklearn_digits(split: str, dataset_config) -> Source:
  """The 1797 8x8 grey digits (UCI, shipped with scikit-learn), as uint8 [N, 8, 8, 1].

  'train' is 1297 images and 'test' 500, from one fixed permutation; eval preprocessing resizes
  them to `image_size`.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  order = np.random.default_rng(0).permutation(len(digits.images))
  parts = {'train': order[_DIGITS_TEST_SIZE:], 'test': order[:_DIGITS_TEST_SIZE]}
  base, _, _ = parse_split(split)
  if base not in parts:
    raise ValueError(f"sklearn_digits has the splits 'train' and 'test', not {split!r}")
  idx = parts[base][slice_for_split(split, len(parts[base]))]
  # Pixel values are 0..16.
  images = np.round(digits.images[idx] * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target[idx].astype(np.int32)
  images, labels = _truncate_train(dataset_config, split, images, labels)
  return Source(name=SKLEARN_DIGITS, num_classes=10, images=images, labels=labels,
                num_examples=len(images), class_names=tuple(str(d) for d in range(10)))


# ----------------------------------------------------------------------------------------------
# TFDS.

def _tfds_builder(name: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    if data_dir:
      # A dataset prepared under data_dir needs no registered builder class (e.g. the streamed
      # stand-in of simclr_jax.data.standin): TFDS reads its dataset_info.json.
      try:
        return tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
      except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError):
        pass
    raise ValueError(
        f'Unknown dataset {name!r}: set `--config.dataset.name` to a TFDS name (e.g. '
        "'fashion_mnist', 'cifar10', 'cifar100', 'stl10', 'imagenet2012'), or to 'image_folder' "
        'with `--config.dataset.folder=/path/to/root`.') from e


def _ensure_prepared(builder, name: str, dataset_config) -> None:
  """Checks for a local prepared copy; downloads only when allowed (offline tfds retries ~4 min)."""
  if builder.is_prepared():
    return
  if not dataset_config.get('download', False):
    raise ValueError(f'No local copy of {name!r} under data_dir={builder.data_dir!r} and '
                     f'downloading is off. To fix: {_fix_hint(name)}.')
  logging.info('Downloading and preparing %s into %s.', name, builder.data_dir)
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Could not download {name!r} ({type(e).__name__}: {e}). '
                     f'To fix: {_fix_hint(name)}.') from e


def _is_streaming(name: str, builder, split: str) -> bool:
  if name.split('/')[0] in STREAMING_DATASETS:
    return True
  shape = builder.info.features['image'].shape
  if None in shape:
    return True
  num = builder.info.splits[split].num_examples
  return num * int(np.prod(shape)) > MAX_IN_MEMORY_BYTES


def _load_tfds(name: str, split: str, dataset_config) -> Source:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _tfds_builder(name, dataset_config.get('data_dir'))
  _ensure_prepared(builder, name, dataset_config)
  label_feature = builder.info.features['label']
  num_classes = label_feature.num_classes
  class_names = tuple(label_feature.names) if label_feature.names else None
  max_n = dataset_config.get('max_train_examples', -1)
  truncate = (max_n is not None and max_n > 0 and parse_split(split)[0] ==
              parse_split(dataset_config.get('train_split', 'train'))[0])

  if _is_streaming(name, builder, split):
    num_examples = builder.info.splits[split].num_examples
    if truncate:
      num_examples = min(num_examples, max_n)

    def stream(process_index: int, process_count: int, decode: bool,
               drop_remainder: bool) -> tf.data.Dataset:
      # Truncation is on the whole split, so it happens before the per-process sharding.
      full = split
      if truncate:
        base, start, _ = parse_split(split)
        start_i = _bound(start, builder.info.splits[base].num_examples) or 0
        full = f'{base}[{start_i}:{start_i + num_examples}]'
      host_split = tfds.split_for_jax_process(full, process_index=process_index,
                                              process_count=process_count,
                                              drop_remainder=drop_remainder)
      decoders = None if decode else {'image': tfds.decode.SkipDecoding()}
      ds = builder.as_dataset(split=host_split, shuffle_files=False, decoders=decoders,
                              read_config=tfds.ReadConfig(interleave_cycle_length=1))
      return ds.map(lambda x: {'image': x['image'], 'label': tf.cast(x['label'], tf.int32)})

    logging.info('Streaming %s %s (%d images) from %s.', name, split, num_examples,
                 builder.data_dir)
    return Source(name=name, num_classes=num_classes, images=None, labels=None,
                  num_examples=num_examples, class_names=class_names, stream=stream)

  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
  images = data['image']
  if images.ndim == 3:
    images = images[..., None]
  labels = data['label'].astype(np.int32)
  images, labels = _truncate_train(dataset_config, split, images, labels)
  logging.info('Loaded %s %s from TFDS (%s): %d images.', name, split, builder.data_dir,
               len(images))
  return Source(name=name, num_classes=num_classes, images=images.astype(np.uint8),
                labels=labels, num_examples=len(images), class_names=class_names)


# ----------------------------------------------------------------------------------------------
# Image folders (read by simclr_jax/data/image_folder.py).

def _load_image_folder(split: str, dataset_config) -> Source:
  root = dataset_config.get('folder', '')
  if not root or not os.path.isdir(root):
    raise ValueError(f'Image folder {root!r} does not exist: set `--config.dataset.folder` to a '
                     'directory with one subfolder of images per class.')
  base = parse_split(split)[0]
  # A root with split subfolders (root/train/<class>/...) is used per split; otherwise the root
  # itself holds the classes and every split slices it.
  if (os.path.isdir(os.path.join(root, base))
      and image_folder.class_folders(os.path.join(root, base))):
    root = os.path.join(root, base)
  images, labels, classes = image_folder.read(
      root, image_size=int(dataset_config.get('image_size', 224)),
      strict=bool(dataset_config.get('strict', False)),
      select=None if split == base else functools.partial(slice_for_split, split))
  images, labels = _truncate_train(dataset_config, split, images, labels)
  logging.info('Loaded image folder %s (%s): %d images, %d classes.', root, split, len(images),
               len(classes))
  return Source(name='image_folder', num_classes=len(classes), images=images, labels=labels,
                num_examples=len(images), class_names=tuple(classes))


# ----------------------------------------------------------------------------------------------

def load(dataset_config, split: str) -> Source:
  """Loads one split of the configured dataset.

  Args:
    dataset_config: `config.dataset` (fields name, data_dir, folder, image_size, download,
      strict, max_train_examples, train_split, rgb: grayscale in-memory images as three equal
      channels).
    split: 'train', 'test', or a TFDS-style slice such as 'train[:1000]'.

  Returns:
    A `Source`; in-memory sources have images uint8 [N, H, W, C] and labels int32 [N].

  Raises:
    ValueError: unknown dataset, missing files, or no local copy while offline; the message
      says how to fix it.
  """
  source = _load(dataset_config, split)
  if dataset_config.get('rgb', False) and source.images is not None and (
      source.images.shape[-1] == 1):
    source = dataclasses.replace(source, images=np.repeat(source.images, 3, axis=-1))
  return source


def _load(dataset_config, split: str) -> Source:
  name = dataset_config.name
  if name == 'image_folder':
    return _load_image_folder(split, dataset_config)
  if name == SKLEARN_DIGITS:
    return _load_sklearn_digits(split, dataset_config)
  data_dir = dataset_config.get('data_dir')
  if name in ('fashion_mnist', 'mnist'):
    paths = find_idx_files(name, data_dir, parse_split(split)[0])
    if paths is not None:
      return _load_idx(name, paths, split, dataset_config)
  return _load_tfds(name, split, dataset_config)


def image_shape(source: Source, image_size: Optional[int] = None) -> tuple[int, int, int]:
  """(H, W, C) of the images a source yields (streaming sources: image_size, 3 channels)."""
  if source.images is not None:
    return tuple(source.images.shape[1:])
  return (image_size, image_size, 3)


__all__: Sequence[str] = ('Source', 'load', 'parse_split', 'slice_for_split', 'read_idx',
                          'find_idx_files', 'image_shape', 'FASHION_MNIST_CLASSES')
