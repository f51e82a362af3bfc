"""The pretraining loop: data -> mapped step -> metrics, checkpoints, preemption handling."""

import dataclasses
import functools
import json
import os
import signal
import threading
from typing import Any, Callable, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from simclr_jax import checkpoint
from simclr_jax import config_validation
from simclr_jax import methods
from simclr_jax import metric_writer
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import time_budget
from simclr_jax import train_step as train_step_lib
from simclr_jax.data import pipeline
from simclr_jax.data import sources
from simclr_jax.models import build_model


class NonFiniteError(FloatingPointError):
  """The loss or gradients became NaN/Inf; nothing was saved after the last good checkpoint."""


class StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps (preemption)."""

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning('received signal %d: saving a checkpoint at the current step, then exiting',
                    signum)
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any: hosts that see SIGTERM a step apart must
  still save the same step together, or one would wait in a collective for the other forever."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


class _ElapsedLog:
  """Budget time spent up to each checkpointed step of a time-budget run
  (`workdir/time_budget.json`, {step: seconds}), so a resumed run continues the clock."""

  FILE = 'time_budget.json'

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, self.FILE)

  def _read(self) -> dict:
    from tensorflow.io import gfile  # pylint: disable=g-import-not-at-top  (handles gs://)
    if not gfile.exists(self.path):
      return {}
    with gfile.GFile(self.path) as f:
      return json.load(f)

  def check_mode(self, *, timed: bool, has_checkpoints: bool) -> None:
    """A workdir's checkpoints resume only in the mode that wrote them (the optimizer state
    differs), so a mismatch stops here instead of setting the checkpoints aside as unreadable."""
    if not has_checkpoints:
      return
    was_timed = bool(self._read())
    if timed != was_timed:
      raise config_validation.ConfigError(
          f'the checkpoints in {os.path.dirname(self.path)} come from a run '
          f'{"with" if was_timed else "without"} config.time_budget_minutes and resume only '
          f'in that mode: {"set it as before" if was_timed else "leave it at 0"}, or use a '
          'new --workdir.')

  def at(self, step: Optional[int]) -> float:
    if step is None:
      return 0.0
    log = self._read()
    if str(step) not in log:
      raise config_validation.ConfigError(
          f'{self.path} has no elapsed time for checkpoint step {step}; cannot continue the '
          'time budget. Use a new --workdir.')
    return float(log[str(step)])

  def record(self, step: int, seconds: float) -> None:
    metric_writer.write_json(self.path, {str(step): seconds})


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
  mapper = parallel.Mapper(config.mapping, config.num_devices)
  config_validation.validate(config, num_devices=mapper.num_devices)
  source = sources.load(config.dataset, config.dataset.train_split)
  num_train = source.num_examples
  config_validation.check_schedule(config, num_train)
  steps_per_epoch = config_validation.steps_per_epoch(config, num_train)
  total_steps = config_validation.total_steps(config, num_train)
  channels = sources.image_shape(source, config.dataset.image_size)[-1]
  image_shape = (config.dataset.image_size, config.dataset.image_size, channels)
  model = build_model(config.model, num_classes=source.num_classes, image_size=image_shape[0],
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

  Cached by (config, devices, mapping): a resumed or repeated run in the same process (tests,
  notebooks) reuses the compiled step instead of compiling it again.
  """
  key = (s.config.to_json(), tuple(d.id for d in s.mapper.devices), s.mapper.mapping)
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
  elapsed = _ElapsedLog(workdir)
  elapsed.check_mode(timed=budget_s > 0, has_checkpoints=bool(ckpt.all_steps()))
  restored_step, state = ckpt.restore_latest(state)
  metric_writer.write_json(os.path.join(workdir, 'config.json'), config.to_dict(), merge=False)
  start_step = int(state.step)
  if restored_step is not None:
    logging.info('resuming from step %d in %s', start_step, ckpt.directory)
  clock = None
  if budget_s > 0:
    clock = time_budget.Clock(budget_s, elapsed.at(restored_step))
    logging.info('pretraining %s for %.1f minutes (%.1f left), the schedule spread over them as '
                 'over %d steps; global batch %d on %d devices (%s)', config.method,
                 config.time_budget_minutes, (budget_s - clock.elapsed_before_s) / 60,
                 s.total_steps, config.batch_size, s.mapper.num_devices, config.mapping)
  else:
    logging.info('pretraining %s: %d steps (%d per epoch), global batch %d on %d devices (%s)',
                 config.method, s.total_steps, s.steps_per_epoch, config.batch_size,
                 s.mapper.num_devices, config.mapping)
  writer = metric_writer.MetricWriter(workdir, total_steps=None if clock else s.total_steps,
                                      global_batch_size=config.batch_size)
  step_fn = make_step(s)
  rng = train_step_lib.run_key(config.seed)
  batches = pipeline.batches_from_source(
      s.source, config.augment, image_size=config.dataset.image_size,
      global_batch_size=config.batch_size, seed=config.seed, start_step=start_step,
      end_step=None if clock else s.total_steps, process_index=jax.process_index(),
      process_count=jax.process_count(), device_augment=config.augment.on_device)
  device_state = s.mapper.put_state(state)
  last_saved = restored_step
  last_metrics = {}
  history = []
  preempted = False
  progress = clock.progress() if clock else start_step / s.total_steps
  step = start_step
  with StopSignal() as stop:
    while progress < 1:
      if clock:
        lr = time_budget.learning_rate(s.schedule, s.total_steps, progress)
        device_state = device_state.replace(opt_state=optim.with_learning_rate(
            device_state.opt_state, s.mapper.put_state(lr)))
      batch = s.mapper.put_batch(next(batches))
      device_state, metrics = step_fn(device_state, batch, rng)
      if not bool(metrics['finite']):
        raise NonFiniteError(
            f'the loss or gradients became NaN/Inf at step {step}. Nothing was saved after the '
            f'last good checkpoint (step {last_saved}, in {ckpt.directory}). Lower '
            'config.optimizer.learning_rate or raise config.optimizer.warmup_epochs, then rerun.')
      step += 1
      if clock:
        clock.start()  # no-op after the first step: its compilation is not counted
        progress = clock.progress()
      else:
        progress = step / s.total_steps
      last = progress >= 1
      if on_step is not None:
        on_step(step)
      if step % config.log_every_steps == 0 or last:
        host_metrics = jax.device_get(metrics)
        if clock:
          host_metrics.update(budget_progress=min(progress, 1.0),
                              eta_minutes=max(0.0, 1 - progress) * budget_s / 60)
        last_metrics = writer.write(step, host_metrics)
        history.append({'step': step, **last_metrics})
      stop_now = _any_process(stop.received is not None)
      if step % config.checkpoint_every_steps == 0 or last or stop_now:
        if clock:  # before the checkpoint: a step never exists without its elapsed time
          elapsed.record(step, clock.elapsed_s())
        ckpt.save(step, s.mapper.get_state(device_state))
        last_saved = step
      if stop_now:
        logging.warning('stopped by signal %d at step %d; checkpoint saved. Rerun the same '
                        'command to resume.', stop.received, step)
        preempted = True
        break
  writer.flush()
  ckpt.close()
  host_state = s.mapper.get_state(device_state)
  return dict(step=int(host_state.step), train_loss=last_metrics.get('train/loss'),
              train_metrics=last_metrics, history=history, state=host_state, setup=s,
              preempted=preempted)
