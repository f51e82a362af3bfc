"""The project's steps compile for a TPU slice on this CPU host (libtpu, no TPU): deviceless AOT.

benchmarks/tpu_compile.py compiles the ImageNet configs' steps at full size for v3-32, v4-32 and
v5e-256 (docs/scaling.md); this test runs the same command on a small config and a v3-8, so a
change that breaks the TPU lowering (a collective, a sharding, a dtype) fails here. The command
runs in its own process: libtpu, once loaded, stays in a process for good (its own threads and
signal handlers), and the pytest worker goes on to run the rest of the suite.
"""

import importlib.util
import json
import os
import platform
import subprocess
import sys

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
                     'tpu_compile.py')
pytestmark = pytest.mark.skipif(
    platform.system() != 'Linux' or platform.machine() != 'x86_64',
    reason='libtpu is published for x86-64 Linux only (requirements-dev.txt)')
SMALL = ('model.depth=18', 'model.width_multiplier=0.25', 'dataset.image_size=32',
         'model.head_hidden_dim=128', 'model.head_out_dim=64')


@pytest.fixture(scope='module')
def tpu_compile():
  spec = importlib.util.spec_from_file_location('tpu_compile', _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _compile_in_a_process(tmp_path, **flags) -> dict:
  out = tmp_path / 'rows.jsonl'
  args = [f'--{k}={v}' for k, v in flags.items()] + [f'--override={o}' for o in SMALL]
  done = subprocess.run([sys.executable, _PATH, *args, f'--out={out}'], timeout=600,
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  return row


def test_small_train_step_compiles_for_a_v3_8_and_fits(tpu_compile, tmp_path):
  row = _compile_in_a_process(tmp_path, topologies='v3-8', methods='simclr', steps='train',
                              dtypes='bfloat16', batch_per_core=8)
  assert row['devices'] == 8 and row['global_batch'] == 64
  # A ResNet-18 x1/4 at 32 px and 8 images (16 views) per core: well under the 16 GiB of a core.
  assert 0 < row['resident_gib'] < 1 and row['hbm_free'] > 0.9
  assert row['tflop_per_device'] > 0 and row['hbm_traffic_gib_per_device'] > 0
  # The roofline bound is the slower of compute and memory traffic at the chip's peaks.
  chip = tpu_compile.CHIPS['v3']
  compute_ms = row['tflop_per_device'] * 1e12 / (chip['peak_flops'] / chip['cores']) * 1e3
  traffic_ms = (row['hbm_traffic_gib_per_device'] * tpu_compile.GIB
                / (chip['hbm_bandwidth'] / chip['cores']) * 1e3)
  assert row['roofline_ms'] == pytest.approx(max(compute_ms, traffic_ms), rel=1e-6)
  assert 0 < row['mfu_bound'] <= 1


def test_every_named_slice_has_its_chip(tpu_compile):
  for name, (chip, _, _) in tpu_compile.TOPOLOGIES.items():
    assert chip in tpu_compile.CHIPS, name
