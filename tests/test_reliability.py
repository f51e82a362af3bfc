"""Faults and bad input: preemption-exact resume, broken checkpoints, NaN, full disk, bad configs.

Every fault this module exercises has a row in docs/reliability.md (the last test checks that the
table and the tests agree, and reports the count).
"""

import errno
import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from simclr_jax import checkpoint
from simclr_jax import config_validation
from simclr_jax import train
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS_TESTED = set()


def fault(name):
  """Records that the decorated test exercises the docs/reliability.md row `name`."""
  FAULTS_TESTED.add(name)
  return lambda test: test


def _config(**overrides):
  base = dict(num_train_steps=8, batch_size=16, checkpoint_every_steps=3, log_every_steps=4,
              num_devices=2, **{'dataset.max_train_examples': 256})
  base.update(overrides)
  return helpers.tiny_config(**base)


def _params(state):
  return jax.tree.leaves(jax.device_get((state.params, state.batch_stats, state.opt_state)))


def _assert_bitwise_equal(a, b):
  for x, y in zip(_params(a), _params(b)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  return train.pretrain(_config(), workdir)['state']


@fault('SIGTERM mid-run (in-process), resume')
def test_signal_saves_and_resume_is_bitwise_exact(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  stop_at = 5

  def send_signal(done):
    if done == stop_at:
      os.kill(os.getpid(), signal.SIGTERM)

  out = train.pretrain(_config(), workdir, on_step=send_signal)
  assert out['preempted'] and out['step'] == stop_at
  assert checkpoint.Checkpointer(workdir).all_steps()[-1] == stop_at
  resumed = train.pretrain(_config(), workdir)
  assert not resumed['preempted'] and resumed['step'] == 8
  _assert_bitwise_equal(resumed['state'], uninterrupted)


@fault('SIGTERM to a CLI run at a random step, resume')
def test_killed_process_resumes_bitwise_exact(uninterrupted, tmp_path):
  """A real `python -m simclr_jax.main` process, SIGTERM-ed once it has logged a random step."""
  workdir = str(tmp_path)
  flags = ['--config.model.depth=18', '--config.model.width_multiplier=0.125',
           '--config.model.head_out_dim=16', '--config.batch_size=16',
           '--config.num_train_steps=8', '--config.optimizer.warmup_epochs=0.0',
           '--config.optimizer.learning_rate=0.5', '--config.loss.temperature=0.5',
           '--config.log_every_steps=1', '--config.checkpoint_every_steps=3',
           '--config.num_devices=2', '--config.dataset.max_train_examples=256',
           '--config.augment.crop_area_min=0.08', '--config.augment.color_strength=0.5']
  cmd = [sys.executable, '-m', 'simclr_jax.main', '--config=simclr_jax/defaults.py',
         f'--workdir={workdir}', '--mode=pretrain', *flags]
  # The same XLA flags and simulated devices as this process, so the compiled programs are the
  # same.
  env = dict(os.environ, XLA_FLAGS=helpers.subprocess_xla_flags(8))
  kill_after = int(np.random.default_rng().integers(1, 6))
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
  seen = []
  for line in proc.stderr:
    m = re.search(r'step (\d+)/8', line)
    if m:
      seen.append(int(m.group(1)))
      if seen[-1] >= kill_after:
        proc.send_signal(signal.SIGTERM)
        break
  proc.stderr.read()
  code = proc.wait(timeout=300)
  steps = checkpoint.Checkpointer(workdir).all_steps()
  assert steps and steps[-1] >= kill_after, (kill_after, steps, code)
  if steps[-1] < 8:
    assert code != 0  # an unfinished run must not look like a finished one
  resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'resuming from step {steps[-1]}' in resumed.stderr
  _, state = checkpoint.Checkpointer(workdir).restore_latest(uninterrupted)
  _assert_bitwise_equal(state, uninterrupted)


@fault('SIGTERM during a time-budget run, resume')
def test_time_budget_run_resumes_with_its_clock(tmp_path):
  """The elapsed time of the saved step comes back, so the two parts together spend one budget."""
  import types  # pylint: disable=g-import-not-at-top
  from simclr_jax import time_budget  # pylint: disable=g-import-not-at-top
  now = [0.0]
  fake = types.SimpleNamespace(perf_counter=lambda: now[0])
  tick_s, budget_s, stop_at = 6.0, 60.0, 5
  config = _config(time_budget_minutes=budget_s / 60, log_every_steps=1)

  def tick_and_stop(done):
    now[0] += tick_s
    if done == stop_at:
      os.kill(os.getpid(), signal.SIGTERM)

  original = time_budget.time
  time_budget.time = fake
  try:
    first = train.pretrain(config, str(tmp_path), on_step=tick_and_stop)
    assert first['preempted'] and first['step'] == stop_at
    # The clock starts at the end of step 1; the save reads it after step 5's tick.
    spent = stop_at * tick_s
    with open(os.path.join(str(tmp_path), 'time_budget.json')) as f:
      assert json.load(f)[str(stop_at)] == spent
    resumed = train.pretrain(config, str(tmp_path), on_step=tick_and_stop)
  finally:
    time_budget.time = original
  assert not resumed['preempted']
  history = resumed['history']
  assert history[0]['step'] == stop_at + 1
  assert history[0]['train/budget_progress'] == spent / budget_s  # continued, not restarted
  # The resumed part spends the rest: its own first step is again uncounted compilation.
  assert resumed['step'] == stop_at + 1 + int((budget_s - spent) / tick_s)
  assert history[-1]['train/budget_progress'] == 1.0


@fault('resume in the other budget mode')
@pytest.mark.parametrize('first_minutes,then_minutes', [(0.0, 0.05), (0.05, 0.0)])
def test_switching_budget_mode_on_resume_is_a_clear_error(first_minutes, then_minutes, tmp_path):
  train.pretrain(_config(num_train_steps=3, time_budget_minutes=first_minutes), str(tmp_path))
  steps = checkpoint.Checkpointer(str(tmp_path)).all_steps()
  with pytest.raises(config_validation.ConfigError, match='time_budget_minutes'):
    train.pretrain(_config(num_train_steps=3, time_budget_minutes=then_minutes), str(tmp_path))
  # Nothing was set aside as unreadable.
  assert checkpoint.Checkpointer(str(tmp_path)).all_steps() == steps
  assert not [d for d in os.listdir(os.path.join(str(tmp_path), 'checkpoints'))
              if 'unreadable' in d]


@fault('checkpoint from another config or version')
def test_checkpoint_of_another_state_is_a_clear_error_and_kept(tmp_path):
  workdir = str(tmp_path)
  train.pretrain(_config(num_train_steps=3), workdir)
  steps = checkpoint.Checkpointer(workdir).all_steps()
  with pytest.raises(checkpoint.CheckpointMismatchError, match='other shapes: .*head'):
    train.pretrain(_config(num_train_steps=3, **{'model.head_out_dim': 8}), workdir)
  # A tree with other keys (e.g. an older optimizer state layout): named, nothing set aside.
  ckpt = checkpoint.Checkpointer(workdir)
  with pytest.raises(checkpoint.CheckpointMismatchError, match='only in the checkpoint'):
    ckpt.restore_latest({'params': {'w': np.zeros(2, np.float32)}})
  assert ckpt.all_steps() == steps
  assert not [d for d in os.listdir(ckpt.directory) if 'unreadable' in d]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['head_out_dim'] == 16  # the config that wrote them, kept


@fault('newest checkpoint truncated')
def test_truncated_newest_checkpoint_falls_back_to_previous(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  train.pretrain(_config(), workdir)  # checkpoints at 3, 6, 8
  ckpt = checkpoint.Checkpointer(workdir)
  assert ckpt.all_steps() == [3, 6, 8]
  newest = os.path.join(ckpt.directory, '8')
  truncated = 0
  for dirpath, _, files in os.walk(newest):
    for name in files:
      path = os.path.join(dirpath, name)
      if os.path.getsize(path) > 0:
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
        truncated += 1
  assert truncated
  step, _ = checkpoint.Checkpointer(workdir).restore_latest(uninterrupted)
  assert step == 6
  # Nothing is lost: the unreadable step is set aside under another name.
  assert any(n.startswith('8.unreadable-') for n in os.listdir(ckpt.directory))
  # Resuming from 6 redoes steps 7-8 and lands on the same numbers.
  rerun = train.pretrain(_config(), workdir)
  _assert_bitwise_equal(rerun['state'], uninterrupted)


@fault('half-written checkpoint (crash during save)')
def test_unfinished_checkpoint_is_never_restored(uninterrupted, tmp_path):
  workdir = str(tmp_path)
  train.pretrain(_config(), workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  # What a crash mid-save leaves: Orbax's temporary folder, never renamed to its step.
  os.makedirs(os.path.join(ckpt.directory, '9.orbax-checkpoint-tmp-123', 'default'))
  assert checkpoint.Checkpointer(workdir).all_steps() == [3, 6, 8]
  step, _ = checkpoint.Checkpointer(workdir).restore_latest(uninterrupted)
  assert step == 8


@fault('NaN/Inf loss')
def test_nan_stops_with_step_and_last_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = _config(num_train_steps=30, checkpoint_every_steps=2)
  config.optimizer.learning_rate = 1e30
  with pytest.raises(train.NonFiniteError, match=r'at step \d+.*last good checkpoint') as e:
    train.pretrain(config, workdir)
  bad_step = int(re.search(r'at step (\d+)', str(e.value)).group(1))
  steps = checkpoint.Checkpointer(workdir).all_steps()
  assert all(s <= bad_step for s in steps)  # nothing saved from the bad step on


@fault('disk full while saving a checkpoint')
def test_disk_full_keeps_previous_checkpoint(uninterrupted, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  real_save = checkpoint.ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step > 3:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, 'save', full_disk)
  with pytest.raises(checkpoint.CheckpointError, match='step 6.*previous checkpoint.*step 3'):
    train.pretrain(_config(), workdir)
  monkeypatch.undo()
  assert checkpoint.Checkpointer(workdir).all_steps() == [3]
  step, _ = checkpoint.Checkpointer(workdir).restore_latest(uninterrupted)
  assert step == 3


BAD_CONFIGS = [
    ('unknown key', {'model.depthh': 18}, 'unknown config field'),
    ('wrong type', {'batch_size': 'big'}, 'batch_size'),
    ('batch not divisible by devices', {'batch_size': 12}, 'multiple of'),
    ('temperature <= 0', {'loss.temperature': 0.0}, 'temperature'),
    ('unknown method', {'method': 'simsiam'}, 'method'),
    ('unknown depth', {'model.depth': 20}, 'depth'),
    ('unknown dataset', {'dataset.name': 'no_such_dataset'}, 'no_such_dataset'),
    ('warmup longer than the run', {'optimizer.warmup_epochs': 50.0}, 'warmup'),
    ('batch larger than the dataset', {'batch_size': 512}, 'batch'),
    ('negative time budget', {'time_budget_minutes': -1.0}, 'time_budget_minutes'),
    ('negative probe weight decay', {'eval.l2_reg_grid': (1e-3, -1.0)}, 'l2_reg_grid'),
]


FAULTS_TESTED.update(f'config: {b[0]}' for b in BAD_CONFIGS)


@pytest.mark.parametrize('name,override,message', BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_one_clear_error_before_compiling(name, override, message, tmp_path,
                                                        monkeypatch):
  config = _config(num_devices=8)
  key, value = next(iter(override.items()))
  node = config
  *parents, leaf = key.split('.')
  for p in parents:
    node = node[p]
  with config.unlocked():
    if leaf in node:
      del node[leaf]  # as a config file would: a new value of any type
    node[leaf] = value
  compiled = []
  monkeypatch.setattr(train, 'make_step', lambda *a: compiled.append(1))
  with pytest.raises(ValueError, match=message):
    train.pretrain(config, str(tmp_path))
  assert not compiled


def test_fault_table_matches_tests():
  """docs/reliability.md lists exactly the faults the tests exercise (run last in this file)."""
  with open(os.path.join(ROOT, 'docs', 'reliability.md')) as f:
    rows = re.findall(r'^\| `([^`]+)` \|', f.read(), flags=re.M)
  documented = set(rows)
  data_faults = {'data: truncated image skipped and counted', 'data: strict mode stops',
                 'data: empty class folder', 'data: dataset smaller than one batch',
                 'data: offline with no local copy'}
  tested = FAULTS_TESTED | data_faults
  print(f'\nfaults and bad inputs exercised: {len(tested)}')
  assert documented == tested, (documented ^ tested)
