"""Labelled evaluation data, in memory or streamed, fed to the devices like pretraining batches.

An `EvalSplit` is one labelled split. Small datasets (Fashion-MNIST, CIFAR) are held in host
memory as preprocessed float32 arrays, on every process; ImageNet-sized ones are streamed with
tf.data from the TFDS shards, each process reading only its own share (`Source.as_dataset`,
`tfds.split_for_jax_process`), so no process ever holds a whole split.

Two ways to read a split, both in host batches of `global_batch_size // process_count` that
`parallel.Mapper.put_batch` assembles into global arrays on the mesh:
- `batches(...)`: every example exactly once, in a fixed order, the last batch padded with zero
  images and `mask == False`; every process yields the same number of batches (processes whose
  share is shorter pad more), so collectives over the mesh stay in step. In-memory splits are
  read as global rows (process p feeds rows [k*B + p*b, k*B + (p+1)*b) of batch k), so gathered
  results come back in the split's order whatever the process count.
- `train_batches(...)`: endless, shuffled, full batches (the SGD protocols), a pure function of
  (seed, step) for in-memory splits, a seeded order per process for streamed ones; both start
  at any step (resume).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import jax
import numpy as np

from simclr_jax.data import augment
from simclr_jax.data import pipeline
from simclr_jax.data import sources

# Streamed training order: shuffle-buffer size in examples (as pretraining's).
SHUFFLE_BUFFER = pipeline.STREAM_SHUFFLE_BUFFER
# A subset of a streamed split up to this size (float32, preprocessed) is read into memory.
MAX_SUBSET_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class EvalSplit:
  """One labelled split.

  Attributes:
    name: dataset name, for messages and result keys.
    num_examples: examples in the split (all processes).
    num_classes: number of labels.
    image_shape: (S, S, C) of the model input.
    images: in memory: float32 [N, S, S, C] in [0, 1] (preprocessed); None when streamed.
    labels: in memory: int32 [N]; None when streamed.
    source: streamed: the `sources.Source` read per process.
    keep: streamed subsets only: bool [N], the examples of the split that belong to the subset
      (indexed in split order).
    stream_shards: streamed: the fixed shards training batches are read in
      (`pipeline.stream_records`), so they are the same on any number of processes.
  """
  name: str
  num_examples: int
  num_classes: int
  image_shape: tuple
  images: Optional[np.ndarray] = None
  labels: Optional[np.ndarray] = None
  source: Optional[sources.Source] = None
  keep: Optional[np.ndarray] = None
  stream_shards: int = pipeline.STREAM_SHARDS

  @property
  def in_memory(self) -> bool:
    return self.images is not None

  @classmethod
  def from_arrays(cls, images: np.ndarray, labels: np.ndarray, *, num_classes: int,
                  name: str = 'arrays') -> 'EvalSplit':
    """An in-memory split of `images` (uint8, or float in [0, 1]) `[N, S, S, C]`."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / 255.0
    return cls(name=name, num_examples=len(images), num_classes=num_classes,
               image_shape=tuple(images.shape[1:]), images=images.astype(np.float32),
               labels=np.asarray(labels, np.int32))

  def subset(self, indices: np.ndarray) -> 'EvalSplit':
    """The examples `indices` (into the split's order) as a split of their own.

    A subset of a streamed split that fits in `MAX_SUBSET_BYTES` as float32 (a label fraction)
    is read into memory: every process reads the split's records, decodes only the kept ones,
    and holds the same arrays. A larger one stays streamed, filtered record by record.
    """
    indices = np.asarray(indices)
    if self.in_memory:
      return dataclasses.replace(self, num_examples=len(indices), images=self.images[indices],
                                 labels=self.labels[indices])
    keep = np.zeros(self.source.num_examples, bool)
    keep[indices] = True
    streamed = dataclasses.replace(self, num_examples=len(indices), keep=keep)
    if len(indices) * np.prod(self.image_shape) * 4 > MAX_SUBSET_BYTES:
      return streamed
    parts = list(streamed._stream(0, 1).batch(1024).as_numpy_iterator())
    return dataclasses.replace(
        streamed, keep=None, source=None,
        images=np.concatenate([p['image'] for p in parts]).astype(np.float32),
        labels=np.concatenate([p['label'] for p in parts]).astype(np.int32))

  # --------------------------------------------------------------------------------------------
  def num_steps(self, global_batch_size: int, process_count: Optional[int] = None) -> int:
    """Batches `batches(global_batch_size)` yields on every process."""
    process_count = process_count or jax.process_count()
    host_batch = pipeline.host_batch_size(global_batch_size, process_count)
    if self.in_memory:
      return math.ceil(self.num_examples / global_batch_size)
    # The longest per-process share (shares differ by at most one example).
    return math.ceil(math.ceil(self.num_examples / process_count) / host_batch)

  def batches(self, global_batch_size: int, *, process_index: Optional[int] = None,
              process_count: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
    """This process's host batches over the whole split, each example once (see the module doc).

    Yields:
      {'image': float32 [b, S, S, C], 'label': int32 [b], 'mask': bool [b]},
      b = global_batch_size // process_count; masked rows are padding (zero image, label 0).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = process_count or jax.process_count()
    host_batch = pipeline.host_batch_size(global_batch_size, process_count)
    steps = self.num_steps(global_batch_size, process_count)
    if self.in_memory:
      for k in range(steps):
        rows = k * global_batch_size + process_index * host_batch + np.arange(host_batch)
        mask = rows < self.num_examples
        rows = np.where(mask, rows, 0)
        image = np.where(mask[:, None, None, None], self.images[rows], 0).astype(np.float32)
        yield {'image': image, 'label': np.where(mask, self.labels[rows], 0).astype(np.int32),
               'mask': mask}
      return
    count = 0
    for batch in self._stream(process_index, process_count).batch(host_batch).as_numpy_iterator():
      n = len(batch['label'])
      yield _pad(batch, host_batch, n)
      count += 1
    for _ in range(steps - count):
      yield _pad({'image': np.zeros((0,) + self.image_shape, np.float32),
                  'label': np.zeros((0,), np.int32)}, host_batch, 0)

  def train_batches(self, global_batch_size: int, *, seed: int, start_step: int = 0,
                    process_index: Optional[int] = None, process_count: Optional[int] = None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled full host batches {'image', 'label'} from `start_step` on.

    In memory: global batch s is the s-th slice of consecutive per-epoch permutations of the
    split (seeded by `seed`), batches straddling epoch ends so that every batch is full even for
    a split smaller than one batch; process p takes its rows of it. Streamed: this process's
    shards of the split in a seeded shuffle-buffer order (`pipeline.stream_records`: the same
    global batches on any number of processes); a resumed run skips the records of the steps
    already done before decoding them.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = process_count or jax.process_count()
    host_batch = pipeline.host_batch_size(global_batch_size, process_count)
    if self.in_memory:
      rows = slice(process_index * host_batch, (process_index + 1) * host_batch)
      for step, indices in enumerate(_epoch_batches(self.num_examples, global_batch_size, seed)):
        if step >= start_step:
          yield {'image': self.images[indices[rows]], 'label': self.labels[indices[rows]]}
      return
    records = pipeline.stream_records(
        self.source, global_batch_size=global_batch_size, num_shards=self.stream_shards,
        seed=seed, start_step=start_step, process_index=process_index,
        process_count=process_count, keep=self.keep, shuffle_buffer=SHUFFLE_BUFFER)
    ds = records.unbatch().map(self._decode_and_preprocess, num_parallel_calls=_autotune(),
                               deterministic=True)
    yield from ds.batch(host_batch, drop_remainder=True).prefetch(_autotune()).as_numpy_iterator()

  # --------------------------------------------------------------------------------------------
  def _decode_and_preprocess(self, x):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    image = x['image']
    if image.dtype == tf.string:
      image = tf.io.decode_image(image, channels=self.image_shape[-1], expand_animations=False)
    return {'image': augment.eval_preprocess(image, self.image_shape[0]), 'label': x['label']}

  def _stream(self, process_index: int, process_count: int, decode: bool = True):
    """This process's share of a streamed split (of the subset, if one was taken), in order."""
    ds = self.source.as_dataset(process_index, process_count, decode=False)
    if self.keep is not None:
      offsets = share_offsets(self.source.num_examples, process_count) + [len(self.keep)]
      ds = pipeline.keep_only(ds, self.keep[offsets[process_index]:offsets[process_index + 1]])
    if decode:
      ds = ds.map(self._decode_and_preprocess, num_parallel_calls=_autotune(), deterministic=True)
    return ds

  def labels_in_order(self) -> np.ndarray:
    """All labels of the split in its order, without decoding an image: in memory, `labels`;
    streamed, each process reads its own share's labels and they are gathered (int32, 5 MB for
    ImageNet's 1.28M)."""
    if self.in_memory:
      return self.labels
    own = np.fromiter((x['label'] for x in self.source.as_dataset(
        jax.process_index(), jax.process_count(), decode=False).as_numpy_iterator()), np.int32)
    if jax.process_count() == 1:
      return own
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    longest = math.ceil(self.source.num_examples / jax.process_count())
    padded = np.full(longest, -1, np.int32)
    padded[:len(own)] = own
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return gathered[gathered >= 0]


def share_offsets(num_examples: int, process_count: int) -> list[int]:
  """Where each process's share of a streamed split starts, in split order: the shares of
  `tfds.split_for_jax_process` (even, contiguous, the first `N % P` one example longer)."""
  sizes = [num_examples // process_count + (p < num_examples % process_count)
           for p in range(process_count)]
  return [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])]


def _pad(batch: dict, size: int, n: int) -> dict:
  mask = np.arange(size) < n
  image = np.zeros((size,) + batch['image'].shape[1:], np.float32)
  image[:n] = batch['image']
  label = np.zeros((size,), np.int32)
  label[:n] = batch['label']
  return {'image': image, 'label': label, 'mask': mask}


def _epoch_batches(num_examples: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
  """Endless index batches from consecutive per-epoch permutations (seeded), straddling epoch
  ends, so every batch is full even when the split is smaller than a batch."""
  rng = np.random.default_rng(seed)
  buffer = np.zeros((0,), np.int64)
  while True:
    while buffer.shape[0] < batch_size:
      buffer = np.concatenate([buffer, rng.permutation(num_examples)])
    yield buffer[:batch_size]
    buffer = buffer[batch_size:]


def _autotune():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.data.AUTOTUNE


def load_split(dataset_config, split: str) -> EvalSplit:
  """One split of `config.dataset`: preprocessed arrays when the source is in memory, a
  streamed split otherwise."""
  source = sources.load(dataset_config, split)
  image_size = int(dataset_config.image_size)
  shape = (image_size, image_size, sources.image_shape(source, image_size)[-1])
  if source.in_memory:
    images, labels = pipeline.eval_arrays(dataset_config, split, source=source)
    return EvalSplit(name=source.name, num_examples=len(labels), num_classes=source.num_classes,
                     image_shape=shape, images=images, labels=labels)
  return EvalSplit(name=source.name, num_examples=source.num_examples,
                   num_classes=source.num_classes, image_shape=shape, source=source,
                   stream_shards=dataset_config.get('stream_shards', pipeline.STREAM_SHARDS))


@dataclasses.dataclass(frozen=True)
class EvalData:
  """The training and test splits every protocol reads."""
  train: EvalSplit
  test: EvalSplit

  @property
  def num_classes(self) -> int:
    return max(self.train.num_classes, self.test.num_classes)

  @property
  def in_memory(self) -> bool:
    return self.train.in_memory and self.test.in_memory

  def arrays(self):
    """(train_x, train_y, test_x, test_y, num_classes) of in-memory data (the fast protocols)."""
    if not self.in_memory:
      raise ValueError(f'{self.train.name} is streamed: this protocol needs the data in memory; '
                       'use the streamed protocols (linear_sgd, knn, finetune).')
    return (self.train.images, self.train.labels, self.test.images, self.test.labels,
            self.num_classes)


def load(dataset_config) -> EvalData:
  """`config.dataset`'s training and evaluation splits."""
  return EvalData(train=load_split(dataset_config, dataset_config.train_split),
                  test=load_split(dataset_config, dataset_config.eval_split))
