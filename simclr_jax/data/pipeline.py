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
order per epoch; resuming skips the already-seen records of the current epoch without decoding.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from simclr_jax.data import augment
from simclr_jax.data import device_augment as device_augment_lib
from simclr_jax.data import sources

# Salts that keep the permutation and augmentation streams of one seed independent.
_PERMUTATION_SALT = 0
_AUGMENT_SALT = 1
# Streaming sources: shuffle-buffer size (examples), a trade of RAM for randomness.
STREAM_SHUFFLE_BUFFER = 50_000


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per epoch (the remainder is dropped)."""
  return num_examples // global_batch_size


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
  return augment.fold_in(augment.fold_in(_seed_pair(seed, _AUGMENT_SALT), step), position)


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
        positions, augment.fold_in(permutation_seed, epoch), n_host - 1)
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


def _streaming_dataset(source: sources.Source, augment_config, *, image_size: int,
                       host_batch: int, seed: int, start_step: int, end_step: Optional[int],
                       process_index: int, process_count: int) -> tf.data.Dataset:
  """Streaming variant. Cannot be exercised offline (needs a prepared ImageNet copy)."""
  n_host = source.num_examples // process_count
  spe = n_host // host_batch
  records = source.as_dataset(process_index, process_count, decode=False, drop_remainder=True)
  first_epoch = start_step // spe

  def epoch_records(epoch):
    # A fresh seeded order each epoch; take() drops the per-epoch remainder like the in-memory
    # path. The seed is a function of (seed, epoch) only, so a resumed epoch replays the order.
    epoch_seed = tf.cast(seed, tf.int64) * 1_000_003 + epoch
    order = records.shuffle(STREAM_SHUFFLE_BUFFER, seed=epoch_seed,
                            reshuffle_each_iteration=False)
    return order.take(spe * host_batch)

  ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch_records)
  # Skip the steps of the resumed epoch that were already seen, before decoding (cheap).
  ds = ds.skip((start_step - first_epoch * spe) * host_batch).enumerate(start_step * host_batch)

  def example(k, x):
    step, j = k // host_batch, k % host_batch
    image = tf.io.decode_image(x['image'], channels=3, expand_animations=False)
    views = augment.two_views(image, _example_seed(seed, step, process_index * host_batch + j),
                              augment_config, image_size)
    return {'views': views, 'label': x['label']}

  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(host_batch, drop_remainder=True)
  if end_step is not None:
    ds = ds.take(end_step - start_step)
  return ds


def pretrain_batches(dataset_config, augment_config, *, global_batch_size: int, seed: int,
                     start_step: int = 0, process_index: int = 0, process_count: int = 1,
                     end_step: Optional[int] = None, device_augment: bool = False) -> Batches:
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
                             device_augment=device_augment)


def batches_from_source(source: sources.Source, augment_config, *, image_size: int,
                        global_batch_size: int, seed: int, start_step: int = 0,
                        process_index: int = 0, process_count: int = 1,
                        end_step: Optional[int] = None, device_augment: bool = False) -> Batches:
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
    build = _in_memory_dataset if source.in_memory else _streaming_dataset
    ds = build(source, augment_config, **kwargs)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
  logging.info('Pretraining input: %s, %d examples, host batch %d, from step %d.', source.name,
               source.num_examples, host_batch, start_step)
  return Batches(ds, num_examples=source.num_examples, num_classes=source.num_classes,
                 steps_per_epoch_=steps_per_epoch(source.num_examples, global_batch_size),
                 image_shape=(image_size, image_size, channels))


def eval_arrays(dataset_config, split: str, *, chunk_size: int = 2048
                ) -> tuple[np.ndarray, np.ndarray]:
  """A whole split, preprocessed with `augment.eval_preprocess`, as host arrays.

  Args:
    dataset_config: `config.dataset`.
    split: e.g. 'train', 'test', 'test[:1000]'.
    chunk_size: images preprocessed per TF call (bounds the peak memory of resizing).

  Returns:
    (images float32 [N, S, S, C] in [0, 1] with S = dataset_config.image_size, labels int32 [N]).

  Raises:
    ValueError: for streaming sources (ImageNet): use `eval_batches` instead.
  """
  source = sources.load(dataset_config, split)
  if not source.in_memory:
    raise ValueError(f'{source.name} is streamed and does not fit in memory as float32: use '
                     'pipeline.eval_batches instead of eval_arrays.')
  image_size = int(dataset_config.image_size)
  chunks = [augment.eval_preprocess(source.images[i:i + chunk_size], image_size).numpy()
            for i in range(0, source.num_examples, chunk_size)]
  return np.concatenate(chunks).astype(np.float32), source.labels.astype(np.int32)


def eval_batches(dataset_config, split: str, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This host's share of a split in order, preprocessed, in batches (the last may be short).

  Works for streaming sources too. Every example of the split is seen by exactly one process.

  Returns:
    Iterator of {'image': float32 [b, S, S, C], 'label': int32 [b]}, b <= batch_size.
  """
  source = sources.load(dataset_config, split)
  image_size = int(dataset_config.image_size)
  ds = source.as_dataset(process_index, process_count)
  ds = ds.map(lambda x: {'image': augment.eval_preprocess(x['image'], image_size),
                         'label': x['label']},
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
