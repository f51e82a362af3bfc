"""Input pipelines: two-view pretraining batches and preprocessed evaluation arrays.

Determinism (in-memory sources): the batch of step s is a pure function of (seed, s).
  - Each process owns the strided shard `process_index::process_count` of the split (strided,
    not contiguous, so that class-sorted sources such as image folders give every host every
    class), truncated so all shards have N_host = N // process_count examples.
  - An epoch has steps_per_epoch = N_host // B_host steps (remainder dropped). Example j of
    step s is shard item `index_shuffle((s % spe) * B_host + j, seed=(seed, epoch), N_host - 1)`
    with epoch = s // spe: a stateless permutation per epoch, evaluated only where needed, so
    starting at any step costs nothing.
  - Its augmentation seed is fold_in(fold_in((seed, 1), s), process_index * B_host + j).
  So `pretrain_batches(..., start_step=s)` yields exactly the batches an uninterrupted iterator
  yields from step s on.

With device_augment (`config.augment.on_device`), in-memory sources only: the same images in the
same order, gathered a batch at a time, each with its position p * B_host + j; the train step
draws the views from (seed, s, position) (`simclr_jax.data.device_augment`).

Streaming sources (ImageNet) follow the same seeds but read records in a seeded shuffle-buffer
order per epoch and fixed shard of the split (`stream_records`), so the global batch of a step is
the same on any number of processes; resuming skips the already-seen records of the current
epoch without decoding.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import tensorflow as tf

from simclr_jax.data import augment
from simclr_jax.data import device_augment as device_augment_lib
from simclr_jax.data import sources
from simclr_jax.data import stateless

# Salts that keep the permutation and augmentation streams of one seed independent.
_PERMUTATION_SALT = 0
_AUGMENT_SALT = 1
# Streaming sources: shuffle-buffer size (examples), a trade of RAM for randomness.
STREAM_SHUFFLE_BUFFER = 50_000
# Streaming sources: fixed shards of the split (config.dataset.stream_shards), see stream_records.
STREAM_SHARDS = 64


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per epoch (the remainder is dropped), at least 1: the unit of every
  schedule's epochs (a split smaller than one batch is refused by `pretrain_batches`)."""
  return max(1, num_examples // global_batch_size)


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  """global_batch_size // process_count; ValueError if it does not divide."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'Global batch size {global_batch_size} must be a positive multiple of the '
                     f'process count {process_count}.')
  return global_batch_size // process_count


class Batches:
  """Iterator of host batches {'views': f32 [B_host, 2, H, W, C], 'label': int32 [B_host]}
  (with device_augment: {'image': uint8, 'label', 'position'}).

  Attributes:
    num_examples: examples in the split (all hosts).
    num_classes: number of labels.
    steps_per_epoch: global steps per epoch.
    image_shape: (H, W, C) of each view.
  """

  def __init__(self, dataset: tf.data.Dataset, *, num_examples: int, num_classes: int,
               steps_per_epoch_: int, image_shape: tuple[int, int, int]):
    self.dataset = dataset
    self.num_examples = num_examples
    self.num_classes = num_classes
    self.steps_per_epoch = steps_per_epoch_
    self.image_shape = image_shape
    self._iterator = dataset.as_numpy_iterator()

  def __iter__(self) -> 'Batches':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)


def _seed_pair(seed: int, salt: int) -> tf.Tensor:
  return tf.constant([seed, salt], tf.int64)


def _example_seed(seed: int, step, position) -> tf.Tensor:
  """Augmentation seed [2] of one example, from (seed, step, global position in the batch)."""
  return stateless.fold_in(stateless.fold_in(_seed_pair(seed, _AUGMENT_SALT), step), position)


def _in_memory_dataset(source: sources.Source, augment_config, *, image_size: int,
                       host_batch: int, seed: int, start_step: int, end_step: Optional[int],
                       process_index: int, process_count: int,
                       device_augment: bool = False) -> tf.data.Dataset:
  n_host = source.num_examples // process_count
  shard = np.arange(process_index, n_host * process_count, process_count)
  images = tf.constant(source.images[shard])  # uint8 [N_host, H, W, C]
  labels = tf.constant(source.labels[shard])
  spe = n_host // host_batch
  permutation_seed = _seed_pair(seed, _PERMUTATION_SALT)

  def step_indices(step):
    epoch = step // spe
    positions = (step % spe) * host_batch + tf.range(host_batch, dtype=tf.int64)
    index = tf.random.experimental.index_shuffle(
        positions, stateless.fold_in(permutation_seed, epoch), n_host - 1)
    return {'step': tf.fill([host_batch], step),
            'position': tf.range(host_batch, dtype=tf.int64) + process_index * host_batch,
            'index': index}

  def example(x):
    image = tf.gather(images, x['index'])
    views = augment.two_views(image, _example_seed(seed, x['step'], x['position']),
                              augment_config, image_size)
    return {'views': views, 'label': tf.gather(labels, x['index'])}

  def images_only(step):  # a whole batch per call: the train step augments
    x = step_indices(step)
    return {'image': tf.gather(images, x['index']), 'label': tf.gather(labels, x['index']),
            'position': tf.cast(x['position'], tf.int32)}

  steps = (tf.data.Dataset.counter(start_step) if end_step is None else
           tf.data.Dataset.range(start_step, end_step))
  if device_augment:
    return steps.map(images_only, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = steps.map(step_indices).unbatch()
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(host_batch, drop_remainder=True)


def keep_only(records: tf.data.Dataset, keep: np.ndarray) -> tf.data.Dataset:
  """The records whose position in `records` is True in `keep` (bool [n])."""
  kept = tf.constant(keep)

  def kept_at(index, record):
    del record
    return tf.gather(kept, index)

  def record_of(index, record):
    del index
    return record

  return records.enumerate().filter(kept_at).map(record_of)


def owned_shards(num_shards: int, process_index: int, process_count: int) -> range:
  """The stream shards process p reads: a contiguous block, so the host batches of processes
  0..P-1, laid side by side, are the global batch one process would read."""
  if num_shards % process_count:
    raise ValueError(f'{num_shards} stream shards do not divide over {process_count} processes: '
                     'set --config.dataset.stream_shards to a multiple of the process count.')
  per_process = num_shards // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


def stream_records(source: sources.Source, *, global_batch_size: int, num_shards: int,
                   seed: int, start_step: int, process_index: int, process_count: int,
                   examples_per_epoch: Optional[int] = None, keep: Optional[np.ndarray] = None,
                   shuffle_buffer: int = STREAM_SHUFFLE_BUFFER) -> tf.data.Dataset:
  """This process's host batches of undecoded records of a streamed source, from `start_step`.

  The split is cut into `num_shards` fixed contiguous shards, independent of the process count;
  global batch s takes `global_batch_size / num_shards` consecutive records of each shard's
  seeded order, in shard order, and process p reads only its block of shards
  (`owned_shards`). So the global batch of step s, row by row, is the same on any number of
  processes (1 x 8 devices == 2 x 4 devices), and each process reads only its share.

  Args:
    source: a streaming `Source`.
    global_batch_size: records per step over all processes.
    num_shards: `config.dataset.stream_shards`; divides the batch, and is divided by the
      process count.
    seed: the order is a pure function of (seed, shard, epoch).
    start_step: first step (resume: the records of earlier steps are skipped undecoded).
    process_index, process_count: this process.
    examples_per_epoch: per shard; an epoch is a fresh shuffle of the shard truncated to whole
      steps (pretraining). None: epochs of the whole (kept part of the) shard back to back,
      batches straddling them (small labelled subsets).
    keep: bool [N] over the split's order: only these records (a label subset).
    shuffle_buffer: records shuffled together, over all of a process's shards.

  Returns:
    Endless dataset of {'image': string [B_host], 'label': int32 [B_host]}.
  """
  if global_batch_size % num_shards:
    raise ValueError(f'global batch {global_batch_size} is not a multiple of the '
                     f'{num_shards} stream shards: set --config.dataset.stream_shards to a '
                     'divisor of the batch size.')
  per_shard = global_batch_size // num_shards
  shard_size = source.num_examples // num_shards
  owned = owned_shards(num_shards, process_index, process_count)
  buffer = max(1, shuffle_buffer // len(owned))

  def shard_batches(shard):
    records = source.as_dataset(shard, num_shards, decode=False, drop_remainder=True)
    if keep is not None:
      kept = keep[shard * shard_size:(shard + 1) * shard_size]
      if not kept.any():  # an empty shard would make the epochs below loop forever
        raise ValueError(f'stream shard {shard} of {num_shards} holds none of the subset\'s '
                         f'{int(keep.sum())} examples: lower --config.dataset.stream_shards.')
      records = keep_only(records, kept)

    def epoch(e):
      order = records.shuffle(buffer, seed=seed * 1_000_003 + e * 4099 + shard,
                              reshuffle_each_iteration=False)
      return order if examples_per_epoch is None else order.take(examples_per_epoch)

    first_epoch = 0
    skip = start_step * per_shard
    if examples_per_epoch is not None:
      steps_per_epoch_ = examples_per_epoch // per_shard
      first_epoch = start_step // steps_per_epoch_
      skip = (start_step - first_epoch * steps_per_epoch_) * per_shard
    ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch).skip(skip)
    return ds.batch(per_shard, drop_remainder=True)

  zipped = tf.data.Dataset.zip(tuple(shard_batches(shard) for shard in owned))
  return zipped.map(lambda *parts: {k: tf.concat([p[k] for p in parts], axis=0)
                                    for k in ('image', 'label')})


def _streaming_dataset(source: sources.Source, augment_config, *, image_size: int,
                       host_batch: int, seed: int, start_step: int, end_step: Optional[int],
                       process_index: int, process_count: int,
                       num_shards: int) -> tf.data.Dataset:
  """Streamed two-view batches (`stream_records`), the same on any number of processes."""
  global_batch = host_batch * process_count
  per_shard_epoch = source.num_examples // num_shards // (global_batch // num_shards) * (
      global_batch // num_shards)
  records = stream_records(source, global_batch_size=global_batch, num_shards=num_shards,
                           seed=seed, start_step=start_step, process_index=process_index,
                           process_count=process_count, examples_per_epoch=per_shard_epoch)
  ds = records.unbatch().enumerate(start_step * host_batch)

  def example(k, x):
    step, j = k // host_batch, k % host_batch
    image = tf.io.decode_image(x['image'], channels=3, expand_animations=False)
    views = augment.two_views(image, _example_seed(seed, step, process_index * host_batch + j),
                              augment_config, image_size)
    return {'views': views, 'label': tf.cast(x['label'], tf.int32)}

  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(host_batch, drop_remainder=True)
  if end_step is not None:
    ds = ds.take(end_step - start_step)
  return ds


def pretrain_batches(dataset_config, augment_config, *, global_batch_size: int, seed: int,
                     start_step: int = 0, process_index: int = 0, process_count: int = 1,
                     end_step: Optional[int] = None, device_augment: bool = False,
                     stream_shards: int = STREAM_SHARDS) -> Batches:
  """Endless (or up to end_step) iterator of this host's two-view pretraining batches.

  Args:
    dataset_config: `config.dataset`.
    augment_config: `config.augment`.
    global_batch_size: images per step over all processes.
    seed: run seed; batch s is a pure function of (seed, s).
    start_step: first step to yield (resume).
    process_index: this process.
    process_count: number of processes; each reads a disjoint shard.
    end_step: stop before this step; None: never stop.
    device_augment: yield the images instead of the views; the train step augments them
      (`config.augment.on_device`, `simclr_jax.data.device_augment`).
    stream_shards: streaming sources: the fixed shards the split is read in
      (`config.dataset.stream_shards`, see `stream_records`).

  Returns:
    A `Batches` iterator of {'views': float32 [B_host, 2, H, W, C] in [0, 1],
    'label': int32 [B_host]}, B_host = global_batch_size // process_count, H = W =
    dataset_config.image_size. With device_augment: {'image': uint8 [B_host, H0, W0, C] (the
    source's size), 'label', 'position': int32 [B_host] (place in the global batch)}.

  Raises:
    ValueError: batch size not divisible by process_count, dataset smaller than one batch, or
      device_augment with ops it does not support or a streaming source.
  """
  host_batch_size(global_batch_size, process_count)  # Fail before loading anything.
  augment.view_ops(augment_config)  # Likewise for an unknown op or preset.
  source = sources.load(dataset_config, dataset_config.get('train_split', 'train'))
  return batches_from_source(source, augment_config, image_size=int(dataset_config.image_size),
                             global_batch_size=global_batch_size, seed=seed,
                             start_step=start_step, process_index=process_index,
                             process_count=process_count, end_step=end_step,
                             device_augment=device_augment, stream_shards=stream_shards)


def batches_from_source(source: sources.Source, augment_config, *, image_size: int,
                        global_batch_size: int, seed: int, start_step: int = 0,
                        process_index: int = 0, process_count: int = 1,
                        end_step: Optional[int] = None, device_augment: bool = False,
                        stream_shards: int = STREAM_SHARDS) -> Batches:
  """`pretrain_batches` on an already loaded `Source` (benchmarks, custom arrays).

  Args and Returns: as `pretrain_batches`, with `image_size` the side of the views.
  """
  host_batch = host_batch_size(global_batch_size, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  if source.num_examples < global_batch_size:
    raise ValueError(f'The training split has {source.num_examples} examples, fewer than one '
                     f'global batch of {global_batch_size}: lower `--config.batch_size` or raise '
                     '`--config.dataset.max_train_examples`.')
  ops = augment.view_ops(augment_config)
  channels = sources.image_shape(source, image_size)[-1]
  kwargs = dict(image_size=image_size, host_batch=host_batch, seed=seed, start_step=start_step,
                end_step=end_step, process_index=process_index, process_count=process_count)
  if device_augment:
    if not source.in_memory:
      raise ValueError(f'augment.on_device=True needs an in-memory source of same-size images; '
                       f'{source.name} is streamed: set --config.augment.on_device=False.')
    device_augment_lib.check_ops(ops, channels)
    ds = _in_memory_dataset(source, augment_config, device_augment=True, **kwargs)
  else:
    if source.in_memory:
      ds = _in_memory_dataset(source, augment_config, **kwargs)
    else:
      ds = _streaming_dataset(source, augment_config, num_shards=stream_shards, **kwargs)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
  logging.info('Pretraining input: %s, %d examples, host batch %d, from step %d.', source.name,
               source.num_examples, host_batch, start_step)
  return Batches(ds, num_examples=source.num_examples, num_classes=source.num_classes,
                 steps_per_epoch_=steps_per_epoch(source.num_examples, global_batch_size),
                 image_shape=(image_size, image_size, channels))


def eval_arrays(dataset_config, split: str, *, chunk_size: int = 2048,
                source: Optional[sources.Source] = None) -> tuple[np.ndarray, np.ndarray]:
  """A whole in-memory split, preprocessed with `augment.eval_preprocess`, as host arrays.

  Args:
    dataset_config: `config.dataset`.
    split: e.g. 'train', 'test', 'test[:1000]'.
    chunk_size: images preprocessed per TF call (bounds the peak memory of resizing).
    source: the split, if already loaded.

  Returns:
    (images float32 [N, S, S, C] in [0, 1] with S = dataset_config.image_size, labels int32 [N]).

  Raises:
    ValueError: for streamed sources (ImageNet), which `evaluation.data.EvalSplit` reads per
      process instead.
  """
  source = source or sources.load(dataset_config, split)
  if not source.in_memory:
    raise ValueError(f'{source.name} is streamed and does not fit in memory as float32: read it '
                     'with simclr_jax.evaluation.data.load_split.')
  image_size = int(dataset_config.image_size)
  chunks = [augment.eval_preprocess(source.images[i:i + chunk_size], image_size).numpy()
            for i in range(0, source.num_examples, chunk_size)]
  return np.concatenate(chunks).astype(np.float32), source.labels.astype(np.int32)
