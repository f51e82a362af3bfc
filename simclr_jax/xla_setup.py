"""XLA flags the trainer sets before JAX starts a backend (`config.xla_flags`).

XLA reads `XLA_FLAGS` once, when the first backend starts, so these can only be applied at the
start of a process: `simclr_jax.main`, the benchmarks and the test suite call `apply_xla_flags`
before their first JAX computation. A flag the user already put in `XLA_FLAGS` wins over the
config's.

The default (simclr_jax/defaults.py) is `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`:
XLA:CPU then runs convolutions with its Eigen kernels instead of YNNPACK. Measured on 2 cores
(docs/benchmarks.md, training step): YNNPACK's convolution reaches ~200 GFLOP/s only when its output
feeds a fused reduction; writing the output, as every ResNet layer does, it drops to ~70 GFLOP/s,
and its weight gradient to ~40; the SimCLR step of a CIFAR-stem ResNet-18 runs 1.7x faster
without it. Dots stay on YNNPACK (the im2col lowering of simclr_jax/models/conv.py uses them).
The flag only concerns the CPU backend; TPU and GPU programs are unchanged.

`allocator_advice` is the other half of the CPU runtime: the allocator cannot be changed once a
process runs, so `simclr_jax.main` only says (a warning) when a CPU run is on glibc's malloc and
how to preload tcmalloc (launch/cpu_env.sh).
"""

import os

from absl import logging


def _flag_name(flag: str) -> str:
  return flag.split('=', 1)[0]


def merged_xla_flags(current: str, extra: str) -> str:
  """`current` plus each flag of `extra` whose name `current` does not set already."""
  present = {_flag_name(f) for f in current.split()}
  added = [f for f in extra.split() if _flag_name(f) not in present]
  return ' '.join(current.split() + added)


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # a JAX without the probe: assume not started
    return False


def apply_xla_flags(extra: str, environ=None) -> str:
  """Adds the flags of `extra` (space-separated) to `environ['XLA_FLAGS']`, keeping the user's.

  Args:
    extra: flags such as config.xla_flags; '' does nothing.
    environ: the environment to change (default os.environ).

  Returns:
    The resulting XLA_FLAGS value.
  """
  environ = os.environ if environ is None else environ
  current = environ.get('XLA_FLAGS', '')
  merged = merged_xla_flags(current, extra)
  if merged != ' '.join(current.split()):
    if _backends_started():
      logging.warning(
          'XLA flags %r not applied: JAX already started its backends, and XLA reads XLA_FLAGS '
          'only once. Set XLA_FLAGS before the first JAX computation (or run through '
          '`python -m simclr_jax.main`) to get them.', extra)
      return current
    environ['XLA_FLAGS'] = merged
  return environ.get('XLA_FLAGS', '')


_FAST_ALLOCATORS = ('tcmalloc', 'jemalloc', 'mimalloc')


def allocator_advice(backend: str, maps_path: str = '/proc/self/maps') -> str | None:
  """What to do when a CPU run has glibc's malloc, or None (another backend or allocator).

  XLA:CPU allocates each step's buffers afresh; glibc maps every buffer over 32 MB freshly and
  unmaps it when freed, so each step page-faults and zeroes its memory again. A caching
  allocator keeps the memory: +26 % steps/s for the CPU default on 2 cores (docs/scaling.md).

  Args:
    backend: jax.default_backend().
    maps_path: the process's memory map (Linux); unreadable means no advice.
  """
  if backend != 'cpu':
    return None
  try:
    with open(maps_path) as f:
      maps = f.read()
  except OSError:
    return None
  if any(name in maps for name in _FAST_ALLOCATORS):
    return None
  return ('CPU run on the system malloc: every step page-faults its buffers afresh. '
          '`source launch/cpu_env.sh` before the command preloads tcmalloc (launch/install.sh '
          'installs it): +26 % steps/s for the CPU default on 2 cores (docs/scaling.md).')


__all__ = ('allocator_advice', 'apply_xla_flags', 'merged_xla_flags')
