"""Wall-clock budgets: train for N minutes with the warmup + cosine schedule spread over them.

With `config.time_budget_minutes > 0` a run stops when the budget is spent, not after a step
count, and its learning rate follows elapsed time: at progress p = elapsed / budget it is the
step schedule of a run of S = `total_steps` steps at step p * S (`optim.learning_rate_schedule`;
S comes from config.num_train_steps / num_epochs and only sets the shape: the warmup takes
warmup_steps / S of the budget). The rate reaches 0 exactly when the budget ends, however fast
the machine turns out to be, so two trainers given the same budget get the same wall time by
construction (benchmarks/quality.py), and a Colab runtime or a preemptible VM can be filled exactly.

The clock starts when the first step of a process returns, so compilation is not counted, and
checkpoint writes are. The run is not bitwise reproducible (the rate depends on timing), unlike
a step-count run.
"""

import time
from typing import Callable, Optional

import jax
import numpy as np


class Clock:
  """Elapsed time of a budgeted run, continued from `elapsed_before_s` (a resumed run).

  On several processes every process reads process 0's clock, so all of them use the same
  learning rate and stop at the same step.
  """

  def __init__(self, budget_s: float, elapsed_before_s: float = 0.0):
    if budget_s <= 0:
      raise ValueError(f'time budget must be > 0 seconds, got {budget_s}')
    self.budget_s = float(budget_s)
    self.elapsed_before_s = float(elapsed_before_s)
    self._start: Optional[float] = None

  def start(self) -> None:
    """Starts counting (call when the first, compiling, step has returned)."""
    if self._start is None:
      self._start = time.perf_counter()

  def elapsed_s(self) -> float:
    local = self.elapsed_before_s
    if self._start is not None:
      local += time.perf_counter() - self._start
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return float(multihost_utils.broadcast_one_to_all(np.float64(local)))

  def progress(self) -> float:
    """Fraction of the budget spent (>= 1: done)."""
    return self.elapsed_s() / self.budget_s


def learning_rate(schedule: Callable, total_steps: int, progress: float) -> np.float32:
  """The step schedule of a `total_steps` run at the fraction `progress` of it (clipped to 1)."""
  return np.float32(schedule(min(progress, 1.0) * total_steps))
