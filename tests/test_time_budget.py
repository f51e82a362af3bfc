"""Time-budget runs (config.time_budget_minutes): the schedule follows the clock, the run stops on it.

A fake clock (advanced by a fixed amount after every step) makes the expected learning rates and
step counts exact; one test uses the real clock.
"""

import math
import types

import jax
import numpy as np
import optax
import pytest

from simclr_jax import optim
from simclr_jax import time_budget
from simclr_jax import train
from simclr_jax.evaluation.encoder import Encoder
from tests import helpers

BUDGET_S = 60.0
TICK_S = 6.0  # fake seconds per step
NOMINAL_STEPS = 20
WARMUP_STEPS = 4  # 0.125 epochs x 32 steps per epoch (512 images / 16)
PEAK = 0.5 * 16 / 256


class FakeClock:
  def __init__(self):
    self.now = 1000.0

  def perf_counter(self):
    return self.now

  def tick(self, done=None):
    del done
    self.now += TICK_S


@pytest.fixture
def fake_clock(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(time_budget, 'time', types.SimpleNamespace(perf_counter=clock.perf_counter))
  return clock


def _config(**overrides):
  base = {'time_budget_minutes': BUDGET_S / 60, 'num_train_steps': NOMINAL_STEPS,
          'optimizer.warmup_epochs': WARMUP_STEPS / 32, 'dataset.max_train_examples': 512,
          'checkpoint_every_steps': 4, 'num_devices': 2}
  base.update(overrides)
  return helpers.tiny_config(**base)


def _reference_lr(progress: float) -> float:
  """Warmup + cosine of the nominal run at step progress * S, in float64."""
  w = WARMUP_STEPS / NOMINAL_STEPS
  p = min(progress, 1.0)
  if p < w:
    return PEAK * p / w
  return PEAK * 0.5 * (1 + math.cos(math.pi * (p - w) / (1 - w)))


def _expected_rates(num_steps: int) -> list:
  # Step 1 compiles and runs at progress 0; the clock starts when it returns, so step 2 runs at
  # progress 0 too, and step k + 1 at (k - 1) ticks.
  progress = [0.0] + [(k - 1) * TICK_S / BUDGET_S for k in range(1, num_steps)]
  return [_reference_lr(p) for p in progress]


def test_host_learning_rate_is_the_rate_the_update_uses():
  config = helpers.tiny_config()
  params = {'encoder': {'kernel': np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
                        'bias': np.ones(4, np.float32)},
            'probe': {'kernel': np.ones((4, 2), np.float32)}}
  grads = {'encoder': {'kernel': np.cos(np.arange(12, dtype=np.float32)).reshape(3, 4),
                       'bias': np.full(4, 0.5, np.float32)},
           'probe': {'kernel': np.full((4, 2), 0.1, np.float32)}}
  by_count, _ = optim.build_optimizer(config.optimizer, global_batch_size=16, total_steps=10,
                                      steps_per_epoch=5)  # warmup 0: the peak at count 0
  by_host, _ = optim.build_optimizer(config.optimizer, global_batch_size=16, total_steps=10,
                                     steps_per_epoch=5, learning_rate_from_host=True)
  want, want_state = by_count.update(grads, by_count.init(params), params)
  state = optim.with_learning_rate(by_host.init(params), np.float32(PEAK))
  got, got_state = by_host.update(grads, state, params)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  assert float(optim.learning_rate(want_state)) == float(optim.learning_rate(got_state)) == PEAK
  # Half the rate: half the (first, momentum-free) encoder update; the probe's is its own.
  half, _ = by_host.update(grads, optim.with_learning_rate(by_host.init(params),
                                                           np.float32(PEAK / 2)), params)
  np.testing.assert_allclose(half['encoder']['kernel'], got['encoder']['kernel'] / 2, rtol=1e-6)
  np.testing.assert_array_equal(half['probe']['kernel'], got['probe']['kernel'])


def test_schedule_follows_the_clock_and_the_run_stops_on_it(fake_clock, tmp_path):
  out = train.pretrain(_config(), str(tmp_path), on_step=fake_clock.tick)
  num_steps = int(BUDGET_S / TICK_S) + 1  # the clock runs from the end of step 1
  assert out['step'] == num_steps and not out['preempted']
  rates = [h['train/learning_rate'] for h in out['history']]
  np.testing.assert_allclose(rates, _expected_rates(num_steps), rtol=1e-5, atol=1e-9)
  assert out['history'][-1]['train/budget_progress'] == 1.0
  assert out['history'][-1]['train/eta_minutes'] == 0.0
  # Not the nominal step count: the clock decides.
  assert num_steps != NOMINAL_STEPS
  # Evaluation reads only params and BN statistics: a step-count config of the same model loads
  # this run's encoder (its optimizer state, with the host-set rate, is not read).
  encoder = Encoder(_config(time_budget_minutes=0.0), str(tmp_path), num_classes=10,
                    image_shape=(28, 28, 1))
  assert encoder.step == num_steps
  for a, b in zip(jax.tree.leaves(encoder.variables['params']),
                  jax.tree.leaves(out['state'].params)):
    np.testing.assert_array_equal(a, b)


def test_real_clock_stops_after_the_budget(tmp_path):
  budget_s = 3.0
  config = _config(time_budget_minutes=budget_s / 60, checkpoint_every_steps=1000,
                   log_every_steps=1)
  times = []
  out = train.pretrain(config, str(tmp_path), on_step=lambda done: times.append(
      time_budget.time.perf_counter()))
  assert out['step'] > 2
  # The clock starts just before times[0] and is read just before each times[i].
  assert times[-1] - times[0] >= budget_s - 0.01
  assert times[-2] - times[0] < budget_s + 0.01
  # The last update ran at the end of the cosine (no warmup-sized rate left).
  assert out['history'][-1]['train/learning_rate'] < 0.1 * PEAK


def test_learning_rate_is_clipped_at_the_end():
  schedule = lambda step: 1.0 - step / 10  # pylint: disable=unnecessary-lambda-assignment
  assert time_budget.learning_rate(schedule, 10, 0.5) == np.float32(0.5)
  assert time_budget.learning_rate(schedule, 10, 1.7) == np.float32(0.0)
  with pytest.raises(ValueError, match='> 0'):
    time_budget.Clock(0.0)
