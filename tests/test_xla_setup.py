"""simclr_jax.xla_setup: the config's XLA flags join XLA_FLAGS without overriding the user's."""

from simclr_jax import defaults
from simclr_jax import xla_setup

YNN = '--xla_cpu_experimental_ynn_fusion_type'


def test_merge_adds_missing_flags_and_keeps_the_users():
  assert xla_setup.merged_xla_flags('', f'{YNN}=-individual_convolution') == (
      f'{YNN}=-individual_convolution')
  current = f'--xla_force_host_platform_device_count=8 {YNN}=+individual_convolution'
  # The user's own setting of the same flag wins; other flags are appended once.
  assert xla_setup.merged_xla_flags(current, f'{YNN}=-individual_convolution --xla_cpu_ftz') == (
      f'{current} --xla_cpu_ftz')
  assert xla_setup.merged_xla_flags(current, '') == current


def test_apply_changes_nothing_once_jax_has_started():
  """(Before JAX starts: the fresh-process test below.)"""
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  # The test process has started JAX (conftest), so nothing new can take effect: unchanged.
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()
  assert xla_setup.apply_xla_flags('--xla_cpu_ftz', env) == (
      '--xla_force_host_platform_device_count=2')
  assert env == {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  # A flag that is already there needs no backend restart: no warning path, same value.
  assert xla_setup.apply_xla_flags('--xla_force_host_platform_device_count=4', env) == (
      '--xla_force_host_platform_device_count=2')


def test_the_default_config_turns_ynnpack_convolutions_off_and_tests_run_with_it():
  import os  # pylint: disable=g-import-not-at-top
  flag = defaults.get_config().xla_flags
  assert flag == f'{YNN}=-individual_convolution'
  assert YNN in os.environ['XLA_FLAGS']  # conftest applied it before JAX started


_PROBE = r'''
import os, sys
sys.path.insert(0, {root!r})
os.environ['XLA_FLAGS'] = {user!r}
from simclr_jax import xla_setup
xla_setup.apply_xla_flags({extra!r})
import jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
x, w = jnp.ones((2, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
print('YNN_CONV', '__ynn_fusion' in jax.jit(conv).lower(x, w).compile().as_text())
'''


def _ynn_conv_in_a_fresh_process(user_flags: str, extra: str) -> bool:
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = _PROBE.format(root=root, user=user_flags, extra=extra)
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  line = [l for l in out.stdout.splitlines() if l.startswith('YNN_CONV')][-1]
  return line.split()[1] == 'True'


def test_the_flag_moves_convolutions_off_ynnpack_in_a_fresh_process():
  """The default flag has the effect it is there for, and a user's XLA_FLAGS overrides it. If a
  new jaxlib no longer puts convolutions on YNNPACK, the second check fails: re-measure
  (docs/benchmarks.md) and drop the flag."""
  default = defaults.get_config().xla_flags
  assert not _ynn_conv_in_a_fresh_process('', default)
  assert _ynn_conv_in_a_fresh_process(f'{YNN}=+individual_convolution', default)


def test_allocator_advice_only_for_a_cpu_run_on_the_system_malloc(tmp_path):
  glibc = tmp_path / 'maps_glibc'
  glibc.write_text('7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n')
  tcmalloc = tmp_path / 'maps_tcmalloc'
  tcmalloc.write_text(glibc.read_text() + '7f02-7f03 r-xp 00000000 08:01 2 '
                      '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n')
  advice = xla_setup.allocator_advice('cpu', str(glibc))
  assert 'source launch/cpu_env.sh' in advice
  assert xla_setup.allocator_advice('cpu', str(tcmalloc)) is None
  assert xla_setup.allocator_advice('gpu', str(glibc)) is None
  assert xla_setup.allocator_advice('cpu', str(tmp_path / 'absent')) is None
