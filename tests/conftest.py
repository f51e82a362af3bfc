"""Test-wide setup: 8 simulated CPU devices, the trainer's XLA flags, quiet TensorFlow, TF kept off
accelerators."""

import os
import shutil
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
# CPU only, also where libtpu is installed (requirements-dev.txt, for the deviceless TPU compile
# test): without this JAX would try to start a TPU backend. TPU_SKIP_MDS_QUERY keeps libtpu from
# asking a metadata server that this machine does not have.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
# One persistent XLA compilation cache per run, shared by the pytest-xdist workers and by the
# `python -m simclr_jax.main` processes tests start (both inherit this environment): many tests
# build the same tiny programs afresh, and XLA compilation is most of the suite's time. The cache
# key is the program's HLO and compile options, so a hit runs the same machine code. The process
# that made the folder (pytest's main process) removes it at the end. SIMCLR_TEST_XLA_CACHE=0
# compiles everything afresh.
_OWN_CACHE = None
if (os.environ.get('SIMCLR_TEST_XLA_CACHE', '1') != '0'
    and 'JAX_COMPILATION_CACHE_DIR' not in os.environ):
  _OWN_CACHE = tempfile.mkdtemp(prefix='simclr_jax_test_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import defaults  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import xla_setup  # pylint: disable=g-import-not-at-top,wrong-import-position

# What `python -m simclr_jax.main` runs with (config.xla_flags), plus LLVM optimisation level 0
# for the machine code. The suite compiles a few hundred programs and runs each a few steps;
# compiling them is most of its time, and level 0 cuts it by a third (a tiny ResNet-18 SimCLR
# train step: 32 -> 20 s on 2 cores) while the HLO program (fusion, layouts, collectives) stays
# the shipped one. Results differ from level 2's by float rounding (~1e-6 relative), which every
# comparison with a reference tolerates; bitwise comparisons are between runs of one setting
# (subprocesses get these flags: helpers.subprocess_xla_flags). SIMCLR_TEST_XLA_OPT=1 keeps XLA's
# default level.
TEST_XLA_FLAGS = ('' if os.environ.get('SIMCLR_TEST_XLA_OPT', '0') == '1'
                  else '--xla_backend_optimization_level=0')
# The simulated devices of one program meet at each collective (a rendezvous of 8 threads). XLA
# ends the process when one of them is 60 s late (20 s warning + 40 s), which on a loaded 2-core
# machine (two pytest workers, subprocesses, compiles) can happen to a program that is merely
# slow. The suite waits up to 10 minutes; a hang beyond that is pytest-timeout's (launch/test.sh),
# which prints every thread's stack.
TEST_XLA_FLAGS += (' --xla_cpu_collective_call_warn_stuck_timeout_seconds=60'
                   ' --xla_cpu_collective_call_terminate_timeout_seconds=600')
xla_setup.apply_xla_flags(f'{defaults.get_config().xla_flags} {TEST_XLA_FLAGS}')
jax.config.update('jax_num_cpu_devices', 8)


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
