"""The one training loop: host batches -> mapped step -> metrics, checkpoints, signals, NaN guard.

Pretraining (`train.pretrain`) and every evaluation protocol that trains (the paper's linear
evaluation, label-fraction fine-tuning) run through `run_loop`. What differs between them is the
mapped step, the state and the data; the loop only keeps the host out of the devices' way:

- The host never waits for the device between log steps. The step's `finite` flag is folded into
  a device-side running AND and read only at log steps and before every checkpoint, so no
  checkpoint is ever written from a non-finite state; the error names the range of steps in which
  it happened and the last good checkpoint.
- The next batch is put on the devices while the current step runs (`prefetch_to_device`), and
  the host runs at most `MAX_STEPS_AHEAD` steps ahead of the devices (it waits on an old step's
  output, which costs no transfer), so the wall clock and SIGTERM handling stay close to the
  devices.
- A stop signal (SIGTERM / SIGINT: preemption) is agreed across processes at log and checkpoint
  steps only (one cross-host round trip there, none per step), so all hosts save the same step.

A `Budget` says how long the run is: a step count (`StepBudget`) or wall-clock minutes
(`ClockBudget`, `config.time_budget_minutes`), which also sets each step's learning rate.
"""

import collections
import dataclasses
import json
import os
import signal
import threading
from typing import Any, Callable, Iterator, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import defaults
from simclr_jax import metric_writer
from simclr_jax import optim
from simclr_jax import time_budget

PyTree = Any
# How many steps the host may dispatch before the devices finished them: enough to overlap the
# next batch's transfer and the host's own work with the current step.
MAX_STEPS_AHEAD = 2
# jax.transfer_guard_device_to_host level for the part of each step between log steps (the batch
# fetch and the step's dispatch). 'allow' in production; tests set 'disallow_explicit' to prove
# that non-log steps make no device-to-host transfer.
STEP_TRANSFER_GUARD = 'allow'


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
    logging.warning('received signal %d: saving a checkpoint at the next log or checkpoint '
                    'step, then exiting', signum)
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any: hosts that see SIGTERM a step apart must
  still save the same step together, or one would wait in a collective for the other forever."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def prefetch_to_device(batches: Iterator[PyTree], put: Callable[[PyTree], PyTree],
                       size: int = 2) -> Iterator[PyTree]:
  """Yields `put(batch)` for each host batch, with `size` batches already sent ahead.

  `put` (e.g. `parallel.Mapper.put_batch`) starts an asynchronous host-to-device copy, so the
  batch of step s + 1 travels while step s runs.
  """
  queue = collections.deque()

  def fill():
    while len(queue) < size:
      try:
        queue.append(put(next(batches)))
      except StopIteration:
        return

  fill()
  while queue:
    yield queue.popleft()
    fill()


class StepBudget:
  """A run of `total_steps` optimizer steps (the step count sets the learning rate)."""

  timed = False

  def __init__(self, total_steps: int):
    self.total_steps = total_steps

  def before_step(self, state, put_state):
    del put_state
    return state

  def progress(self, step: int) -> float:
    return step / self.total_steps

  after_step = progress

  def log_extras(self, progress: float) -> dict:
    del progress
    return {}

  def on_checkpoint(self, step: int) -> None:
    del step


class ElapsedLog:
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
      raise defaults.ConfigError(
          f'the checkpoints in {os.path.dirname(self.path)} come from a run '
          f'{"with" if was_timed else "without"} config.time_budget_minutes and resume only '
          f'in that mode: {"set it as before" if was_timed else "leave it at 0"}, or use a '
          'new --workdir.')

  def at(self, step: Optional[int]) -> float:
    if step is None:
      return 0.0
    log = self._read()
    if str(step) not in log:
      raise defaults.ConfigError(
          f'{self.path} has no elapsed time for checkpoint step {step}; cannot continue the '
          'time budget. Use a new --workdir.')
    return float(log[str(step)])

  def record(self, step: int, seconds: float) -> None:
    metric_writer.write_json(self.path, {str(step): seconds})


class ClockBudget:
  """A run of `budget_s` seconds of wall clock; each step's learning rate is the step schedule
  of a `total_steps` run at the spent fraction of the budget (simclr_jax/time_budget.py)."""

  timed = True

  def __init__(self, budget_s: float, *, schedule: Callable, total_steps: int,
               elapsed: ElapsedLog, restored_step: Optional[int]):
    self.clock = time_budget.Clock(budget_s, elapsed.at(restored_step))
    self.budget_s = budget_s
    self.schedule = schedule
    self.total_steps = total_steps
    self.elapsed = elapsed
    self._progress = 0.0

  def before_step(self, state, put_state):
    # The progress the loop last read (after the previous step), so the rate and the stopping
    # decision see the same clock reading.
    lr = time_budget.learning_rate(self.schedule, self.total_steps, self._progress)
    return state.replace(opt_state=optim.with_learning_rate(state.opt_state, put_state(lr)))

  def progress(self, step: int) -> float:
    del step
    self._progress = self.clock.progress()
    return self._progress

  def after_step(self, step: int) -> float:
    self.clock.start()  # no-op after the first step: its compilation is not counted
    return self.progress(step)

  def log_extras(self, progress: float) -> dict:
    return dict(budget_progress=min(progress, 1.0),
                eta_minutes=max(0.0, 1 - progress) * self.budget_s / 60)

  def on_checkpoint(self, step: int) -> None:
    # Before the checkpoint: a step never exists without its elapsed time.
    self.elapsed.record(step, self.clock.elapsed_s())


@dataclasses.dataclass
class LoopResult:
  state: PyTree  # the devices' state after the last step
  step: int
  last_metrics: dict  # the last logged metrics (host floats)
  history: list  # every logged step's metrics
  preempted: bool


def run_loop(*, step_fn: Callable, state: PyTree, batches: Iterator[PyTree], rng: Any,
             mapper, checkpointer, writer, budget, start_step: int, last_saved: Optional[int],
             log_every_steps: int, checkpoint_every_steps: int, name: str = 'training',
             fix_hint: str = '', on_step: Optional[Callable[[int], None]] = None) -> LoopResult:
  """Runs `step_fn(state, batch, rng) -> (state, metrics)` until `budget` is spent or a signal.

  Args:
    step_fn: the mapped step (`Mapper.map_step`); metrics must hold a boolean `finite`.
    state: the state on the devices (`Mapper.put_state`), with a `step` and an `opt_state`.
    batches: host batches of this process, from `start_step` on.
    rng: the run's raw key, passed to every step.
    mapper: the `parallel.Mapper` the step was mapped with.
    checkpointer: a `checkpoint.Checkpointer` for this run's workdir; None: no checkpoints
      (short in-memory runs; a signal then only stops the run).
    writer: a `metric_writer.MetricWriter`.
    budget: `StepBudget` or `ClockBudget`.
    start_step: the step `state` is at.
    last_saved: the newest checkpointed step (None: none), named by the NaN error.
    log_every_steps, checkpoint_every_steps: how often metrics are read / state is saved.
    name: what trains, for the messages.
    fix_hint: what the NaN error advises.
    on_step: called with the number of steps done after each step (tests, notebooks).

  Returns:
    A `LoopResult`.

  Raises:
    NonFiniteError: NaN/Inf in the loss or gradients (nothing saved from a non-finite state).
  """
  step = start_step
  checked_through = start_step  # every step up to here was finite
  all_finite = None  # device-side AND of the steps' finite flags since `checked_through`
  in_flight = collections.deque()
  last_metrics, history, preempted = {}, [], False
  progress = budget.progress(step)
  device_batches = prefetch_to_device(batches, mapper.put_batch)
  with StopSignal() as stop:
    while progress < 1:
      state = budget.before_step(state, mapper.put_state)
      with jax.transfer_guard_device_to_host(STEP_TRANSFER_GUARD):
        state, metrics = step_fn(state, next(device_batches), rng)
        finite = metrics['finite']
        all_finite = finite if all_finite is None else jnp.logical_and(all_finite, finite)
      step += 1
      in_flight.append(finite)
      if len(in_flight) > MAX_STEPS_AHEAD:
        in_flight.popleft().block_until_ready()  # waits for an older step; no transfer
      progress = budget.after_step(step)
      last = progress >= 1
      if on_step is not None:
        on_step(step)
      log_now = step % log_every_steps == 0 or last
      save_now = step % checkpoint_every_steps == 0 or last
      if jax.process_count() == 1:
        stop_now = stop.received is not None
      else:  # one cross-host round trip, at log and checkpoint steps only
        stop_now = (log_now or save_now) and any_process(stop.received is not None)
      save_now = save_now or stop_now
      if log_now or save_now:
        if not bool(all_finite):
          raise NonFiniteError(
              f'{name}: the loss or gradients became NaN/Inf at step {step} or earlier (after '
              f'step {checked_through}, the last finite check). Nothing was saved after the '
              f'last good checkpoint (step {last_saved}, in '
              f'{checkpointer.directory if checkpointer else None}). '
              f'{fix_hint}'.rstrip())
        checked_through, all_finite = step, None
      if log_now:
        host_metrics = {k: v for k, v in jax.device_get(metrics).items() if k != 'finite'}
        host_metrics.update(budget.log_extras(progress))
        last_metrics = writer.write(step, host_metrics)
        history.append({'step': step, **last_metrics})
      if save_now and checkpointer is not None:
        budget.on_checkpoint(step)
        checkpointer.save(step, mapper.get_state(state))
        last_saved = step
      if stop_now:
        logging.warning('%s stopped by signal %d at step %d; checkpoint saved. Rerun the same '
                        'command to resume.', name, stop.received, step)
        preempted = True
        break
  writer.flush()
  return LoopResult(state=state, step=step, last_metrics=last_metrics, history=history,
                    preempted=preempted)
