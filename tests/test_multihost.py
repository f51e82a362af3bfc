"""Two JAX processes on localhost (4 simulated CPU devices each) == one process with 8 devices.

Launches tests/multihost_worker.py as real OS processes joined by `jax.distributed.initialize`
(CPU collectives over gloo, JAX's default), so the global mesh, `Mapper.put_batch`
(jax.make_array_from_process_local_data), the cross-process gradient pmean / NT-Xent all_gather /
BN statistics, Orbax checkpoints into one shared workdir and the process-0-only logs are the
code that a TPU pod runs, not a simulation of it.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from simclr_jax.data import standin
from tests import helpers

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKER = os.path.join(_ROOT, 'tests', 'multihost_worker.py')
_TIMEOUT_S = 300  # a hung collective must fail the test, not hang the suite


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices_per_process: int) -> dict:
  env = dict(os.environ)
  # conftest.py sets 8 devices for this (pytest) process; each worker sets its own count.
  env['XLA_FLAGS'] = helpers.subprocess_xla_flags(devices_per_process)
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['PYTHONPATH'] = _ROOT + os.pathsep + env.get('PYTHONPATH', '')
  # One thread pool per process is plenty for a tiny model, and three processes share the cores.
  env.setdefault('OMP_NUM_THREADS', '1')
  return env


def _launch(args, devices_per_process, log_path):
  log = open(log_path, 'w')  # pylint: disable=consider-using-with
  proc = subprocess.Popen([sys.executable, _WORKER] + args, env=_env(devices_per_process),
                          cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT)
  return proc, log


def _wait_all(procs):
  """Waits for every process; on failure or timeout kills the rest and shows their logs."""
  deadline = time.time() + _TIMEOUT_S
  failed = None
  for proc, log, path in procs:
    try:
      rc = proc.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      rc = 'timeout'
    if rc != 0 and failed is None:
      failed = (path, rc)
  for proc, log, _ in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    log.close()
  if failed:
    tails = '\n'.join(f'--- {p}\n' + open(p).read()[-3000:] for _, _, p in procs)
    pytest.fail(f'worker {failed[0]} ended with {failed[1]}\n{tails}')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Runs the 2-process pair (step + pretrain phases) and the 1-process reference, in parallel."""
  root = tmp_path_factory.mktemp('multihost')
  out2, out1, workdir = root / 'two', root / 'one', root / 'workdir'
  out2.mkdir()
  out1.mkdir()
  standin_dir = str(root / 'tfds')
  standin.write(standin_dir, num_train=512, num_test=64, max_side=48)
  coordinator = f'localhost:{_free_port()}'
  procs = []
  for i in range(2):
    args = [f'--coordinator={coordinator}', '--num_processes=2', f'--process_id={i}',
            f'--out={out2}', f'--workdir={workdir}', f'--standin_dir={standin_dir}',
            f'--standin_workdir={root / "standin_two"}',
            f'--sigterm_workdir={root / "sigterm"}',
            # One cache for both: JAX writes it from process 0 only, and both read it.
            f'--compilation_cache={root / "xla_cache"}']
    path = str(root / f'process_{i}.log')
    procs.append(_launch(args, 4, path) + (path,))
  path = str(root / 'single.log')
  procs.append(_launch(['--num_processes=1', f'--out={out1}', f'--standin_dir={standin_dir}',
                        f'--standin_workdir={root / "standin_one"}'], 8, path) + (path,))
  _wait_all(procs)
  return dict(two=[dict(np.load(out2 / f'step_{i}.npz')) for i in range(2)],
              one=dict(np.load(out1 / 'step_0.npz')),
              pretrain=[dict(np.load(out2 / f'pretrain_{i}.npz')) for i in range(2)],
              workdir=str(workdir),
              standin={n: json.load(open(out / 'standin_results.json'))
                       for n, out in (('two', out2), ('one', out1))},
              sigterm=[json.load(open(out2 / f'sigterm_{i}.json')) for i in range(2)],
              sigterm_workdir=str(root / 'sigterm'))


def _params(d):
  return {k: v for k, v in d.items() if k.startswith('params')}


def test_both_processes_end_with_identical_params(runs):
  p0, p1 = (_params(d) for d in runs['two'])
  assert p0.keys() == p1.keys() and p0
  for k in p0:
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
  assert int(runs['two'][0]['step']) == 3


def test_two_processes_equal_one_process_with_eight_devices(runs):
  two, one = runs['two'][0], runs['one']
  np.testing.assert_allclose(two['losses'], one['losses'], rtol=1e-5)
  for k, v in _params(one).items():
    np.testing.assert_allclose(two[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_pretrain_checkpoints_restore_on_both_processes(runs):
  for d in runs['pretrain']:
    assert int(d['step']) == 3 and int(d['restored_step']) == 3
  p0, p1 = (_params(d) for d in runs['pretrain'])
  for k in p0:
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
  steps = sorted(int(os.path.basename(p)) for p in
                 glob.glob(os.path.join(runs['workdir'], 'checkpoints', '[0-9]*')))
  assert steps == [2, 3]


def test_only_process_zero_writes_logs_and_results(runs):
  workdir = runs['workdir']
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['step'] == 3
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  events = glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert len(events) == 1, events  # one writer: process 0's
  assert not glob.glob(os.path.join(workdir, '*.tmp'))


def test_imagenet_config_on_streamed_standin_two_processes_equal_one(runs):
  """configs/imagenet.py's default mode on a streamed dataset of real images (JPEGs of varying
  size, read per process like imagenet2012): pretraining, the SGD linear protocol, kNN with the
  bank sharded over the devices, 1 % and 10 % fine-tuning; 2 processes x 4 devices give the
  numbers of 1 process x 8 devices."""
  two, one = runs['standin']['two'], runs['standin']['one']
  keys = ('train_loss', 'linear_eval_top1', 'linear_eval_top5', 'knn5_top1', 'knn20_top1',
          'finetune_1pct_top1', 'finetune_1pct_top5', 'finetune_10pct_top1',
          'finetune_10pct_top5')
  for key in keys:
    assert key in one and key in two, key
    np.testing.assert_allclose(two[key], one[key], rtol=1e-4, err_msg=key)
  assert one['linear_eval_protocol'] == 'sgd'  # streamed: the paper's protocol, not L-BFGS
  assert one['finetune_1pct_num_labels'] == 10 and one['finetune_10pct_num_labels'] == 50
  assert one['step'] == 2


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(runs):
  """SIGTERM reaches process 1 alone after step 6; the stop is agreed across processes at the
  next log step (8: metrics every 4), where both save the same checkpoint and stop."""
  steps = [r['step'] for r in runs['sigterm']]
  assert all(r['preempted'] for r in runs['sigterm']) and steps == [8, 8]
  saved = sorted(int(os.path.basename(p)) for p in
                 glob.glob(os.path.join(runs['sigterm_workdir'], 'checkpoints', '[0-9]*')))
  assert saved == [8]
