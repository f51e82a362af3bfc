"""The shared training loop: no device-to-host transfer between log steps, device prefetch."""

import jax
from jax._src import array as jax_array
from jax._src import config as jax_config
import numpy as np
import pytest

from simclr_jax import loop
from simclr_jax import train
from tests import helpers


def _config(**overrides):
  return helpers.tiny_config(**{'num_train_steps': 6, 'log_every_steps': 3,
                                'checkpoint_every_steps': 6, 'num_devices': 2,
                                'dataset.max_train_examples': 256, **overrides})


@pytest.fixture
def guarded(monkeypatch):
  """The loop's step region under `jax.transfer_guard_device_to_host('disallow_explicit')`.

  On TPU and GPU JAX enforces the guard itself; CPU arrays live in host memory, so JAX lets every
  read through there. This fixture makes the guard bite on CPU too: every read of a jax.Array's
  value (device_get, float(), bool(), printing) goes through `ArrayImpl._value`, which raises
  while the guard is set.
  """
  monkeypatch.setattr(loop, 'STEP_TRANSFER_GUARD', 'disallow_explicit')
  value = jax_array.ArrayImpl._value

  def checked(self):
    if (jax_config.transfer_guard_device_to_host.value or '').startswith('disallow'):
      raise RuntimeError('disallowed device-to-host transfer')
    return value.fget(self)

  monkeypatch.setattr(jax_array.ArrayImpl, '_value', property(checked))


def test_non_log_steps_make_no_device_to_host_transfer(tmp_path, guarded):
  # The guard covers each step's batch fetch and dispatch; log and checkpoint steps read the
  # metrics and the finite flag outside it. Any read of a device value in between raises.
  del guarded
  out = train.pretrain(_config(), str(tmp_path))
  assert out['step'] == 6 and [h['step'] for h in out['history']] == [3, 6]
  assert np.isfinite(out['train_loss'])


def test_guard_catches_a_transfer_inside_the_step_region(tmp_path, guarded, monkeypatch):
  # The test above can fail: a step function that reads a device value under the guard raises.
  del guarded
  real_make_step = train.make_step

  def reading_step(s):
    step = real_make_step(s)

    def run(state, batch, rng):
      state, metrics = step(state, batch, rng)
      jax.device_get(metrics['loss'])
      return state, metrics
    return run

  monkeypatch.setattr(train, 'make_step', reading_step)
  with pytest.raises(Exception, match='disallowed device-to-host'):
    train.pretrain(_config(), str(tmp_path))


def test_prefetch_to_device_keeps_order_and_sends_ahead():
  sent = []

  def put(x):
    sent.append(x)
    return x * 10

  batches = loop.prefetch_to_device(iter(range(5)), put, size=2)
  assert next(batches) == 0 and sent == [0, 1]  # batch 1 is on its way while 0 is used
  assert list(batches) == [10, 20, 30, 40]
