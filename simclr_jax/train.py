"""Pretraining: the config -> source, model, method, optimizer and mapped step, run by the shared
loop (`simclr_jax.loop`: metrics, checkpoints, preemption handling, NaN guard)."""

import dataclasses
import functools
import os
from typing import Any, Callable, Optional

from absl import logging
import jax
import ml_collections

from simclr_jax import checkpoint
from simclr_jax import config_validation
from simclr_jax import loop
from simclr_jax import methods
from simclr_jax import metric_writer
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import train_step as train_step_lib
from simclr_jax.data import pipeline
from simclr_jax.data import sources
from simclr_jax.models import build_model


NonFiniteError = loop.NonFiniteError


@dataclasses.dataclass
class Setup:
  """Everything a pretraining run builds from its config before the first step."""
  config: ml_collections.ConfigDict
  mapper: parallel.Mapper
  source: Any
  model: Any
  method: Any
  tx: Any
  schedule: Any
  steps_per_epoch: int
  total_steps: int
  image_shape: tuple


def setup(config: ml_collections.ConfigDict) -> Setup:
  """Validates the config and builds data source, model, method and optimizer."""
  mapper = parallel.Mapper(config.num_devices)
  config_validation.validate(config, num_devices=mapper.num_devices)
  source = sources.load(config.dataset, config.dataset.train_split)
  config_validation.check_schedule(config, source.num_examples)
  return build(config, mapper, num_train_examples=source.num_examples,
               num_classes=source.num_classes,
               channels=sources.image_shape(source, config.dataset.image_size)[-1],
               source=source)


def build(config: ml_collections.ConfigDict, mapper: parallel.Mapper, *,
          num_train_examples: int, num_classes: int, channels: int, source=None) -> Setup:
  """Model, method, optimizer and schedule of a run over `mapper`'s devices, from the dataset's
  size alone (`setup` reads it from the source; benchmarks/tpu_compile.py states ImageNet's)."""
  steps_per_epoch = pipeline.steps_per_epoch(num_train_examples, config.batch_size)
  total_steps = config_validation.total_steps(config, num_train_examples)
  image_shape = (config.dataset.image_size, config.dataset.image_size, channels)
  model = build_model(config.model, num_classes=num_classes, image_size=image_shape[0],
                      axis_name=parallel.AXIS)
  tx, schedule = optim.build_optimizer(
      config.optimizer, global_batch_size=config.batch_size, total_steps=total_steps,
      steps_per_epoch=steps_per_epoch, learning_rate_from_host=config.time_budget_minutes > 0)
  return Setup(config=config, mapper=mapper, source=source, model=model,
               method=methods.get_method(config.method), tx=tx, schedule=schedule,
               steps_per_epoch=steps_per_epoch, total_steps=total_steps, image_shape=image_shape)


_STEP_CACHE = {}


def make_step(s: Setup):
  """The per-core step, mapped over the devices.

  Cached by (config, devices): a resumed or repeated run in the same process (tests,
  notebooks) reuses the compiled step instead of compiling it again.
  """
  key = (s.config.to_json(), tuple(d.id for d in s.mapper.devices))
  if key not in _STEP_CACHE:
    step = functools.partial(train_step_lib.train_step, model=s.model, method=s.method, tx=s.tx,
                             config=s.config, axis_name=parallel.AXIS)
    _STEP_CACHE.clear()  # one entry: compiled programs can be large
    _STEP_CACHE[key] = s.mapper.map_step(step)
  return _STEP_CACHE[key]


def pretrain(config: ml_collections.ConfigDict, workdir: str,
             on_step: Optional[Callable[[int], None]] = None) -> dict:
  """Pretrains (resuming from `workdir` if it holds a checkpoint).

  For the config's step count, or with config.time_budget_minutes > 0 until that much wall time
  has passed since the first step returned, the learning rate set from the clock each step
  (simclr_jax/time_budget.py).

  Args:
    config: a validated-or-not config (validated here).
    workdir: checkpoints, TensorBoard events, config.json.
    on_step: called with the number of steps done after each step (tests, notebooks).

  Returns:
    dict(step=, train_loss=, train_metrics= (last logged), history= (every logged step),
    state=<host TrainState>, setup=<Setup>, preempted=bool).

  Raises:
    NonFiniteError: NaN/Inf in the loss or gradients.
    checkpoint.CheckpointError: a checkpoint could not be written.
    checkpoint.CheckpointMismatchError: the workdir's checkpoint holds another config's state.
    config_validation.ConfigError: a bad config, or a resume in the other budget mode.
  """
  s = setup(config)
  metric_writer.makedirs(workdir)  # local or gs://
  state = train_step_lib.create_train_state(s.model, s.method, s.tx, config,
                                            image_shape=s.image_shape)
  ckpt = checkpoint.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  budget_s = config.time_budget_minutes * 60
  elapsed = loop.ElapsedLog(workdir)
  elapsed.check_mode(timed=budget_s > 0, has_checkpoints=bool(ckpt.all_steps()))
  restored_step, state = ckpt.restore_latest(state)
  metric_writer.write_json(os.path.join(workdir, 'config.json'), config.to_dict(), merge=False)
  start_step = int(state.step)
  if restored_step is not None:
    logging.info('resuming from step %d in %s', start_step, ckpt.directory)
  if budget_s > 0:
    budget = loop.ClockBudget(budget_s, schedule=s.schedule, total_steps=s.total_steps,
                              elapsed=elapsed, restored_step=restored_step)
    logging.info('pretraining %s for %.1f minutes (%.1f left), the schedule spread over them as '
                 'over %d steps; global batch %d on %d devices', config.method,
                 config.time_budget_minutes, (budget_s - budget.clock.elapsed_before_s) / 60,
                 s.total_steps, config.batch_size, s.mapper.num_devices)
  else:
    budget = loop.StepBudget(s.total_steps)
    logging.info('pretraining %s: %d steps (%d per epoch), global batch %d on %d devices',
                 config.method, s.total_steps, s.steps_per_epoch, config.batch_size,
                 s.mapper.num_devices)
  writer = metric_writer.MetricWriter(workdir, total_steps=None if budget.timed else s.total_steps,
                                      global_batch_size=config.batch_size)
  batches = pipeline.batches_from_source(
      s.source, config.augment, image_size=config.dataset.image_size,
      global_batch_size=config.batch_size, seed=config.seed, start_step=start_step,
      end_step=None if budget.timed else s.total_steps, process_index=jax.process_index(),
      process_count=jax.process_count(), device_augment=config.augment.on_device,
      stream_shards=config.dataset.stream_shards)
  result = loop.run_loop(
      step_fn=make_step(s), state=s.mapper.put_state(state), batches=batches,
      rng=train_step_lib.run_key(config.seed), mapper=s.mapper, checkpointer=ckpt, writer=writer,
      budget=budget, start_step=start_step, last_saved=restored_step,
      log_every_steps=config.log_every_steps,
      checkpoint_every_steps=config.checkpoint_every_steps, name='pretraining',
      fix_hint='Lower config.optimizer.learning_rate or raise config.optimizer.warmup_epochs, '
      'then rerun.', on_step=on_step)
  ckpt.close()
  host_state = s.mapper.get_state(result.state)
  return dict(step=int(host_state.step), train_loss=result.last_metrics.get('train/loss'),
              train_metrics=result.last_metrics, history=result.history, state=host_state,
              setup=s, preempted=result.preempted)
