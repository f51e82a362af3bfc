"""oneDNN convolutions on the CPU, as XLA custom calls (`config.model.conv_impl='onednn'`).

XLA:CPU's native convolution runs on Eigen, whose weight gradient wants the activation transposed
to batch-minor; on the AVX-512 machine of sessions 8-9 it reached ~128 GFLOP/s where oneDNN, the
library PyTorch's CPU convolutions run on, reached ~330 (docs/benchmarks.md, issue 10). oneDNN
reads NHWC directly in all three directions. `onednn_conv.cc` wraps its forward,
backward-data and backward-weights primitives as XLA FFI handlers; `conv2d` here ties them
together with a custom VJP, so the math is a plain convolution (tests/test_onednn.py checks
values and both gradients against a float64 NumPy convolution).

Opt-in: on the 2-core AVX2 machine where it was built (session 10) the whole ResNet-18 step ran
0.86x the speed of 'auto' (oneDNN 3.2 has no brgemm weight gradient for AVX2), so 'auto' does
not use it; measure on your CPU with benchmarks/compare_cpu.py (`jax:onednn` beside `jax:auto`).

The shared library is compiled on first use (g++, ~10 s) against the oneDNN that pip installs
(`onednn-devel-cpu-gomp`, in requirements.txt for Linux x86-64) and XLA's FFI headers from
jaxlib, and cached under `$SIMCLR_JAX_CACHE` (default `~/.cache/simclr_jax`), keyed by the
source, jaxlib, the oneDNN library and the compiler, so an upgrade rebuilds it. Where oneDNN or
a compiler is missing, `available()` is False with the reason in `unavailable_reason()`, and
using the kernels raises OnednnUnavailableError naming the fix.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import site
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'onednn_conv.cc')
_TARGETS = {
    'forward': ('simclr_onednn_conv_fwd', 'SimclrOnednnConvForward'),
    'backward_data': ('simclr_onednn_conv_bwd_data', 'SimclrOnednnConvBackwardData'),
    'backward_weights': ('simclr_onednn_conv_bwd_weights', 'SimclrOnednnConvBackwardWeights'),
}
INSTALL_HINT = ("pip install 'onednn-devel-cpu-gomp==2023.2.0' (Linux x86-64; requirements.txt "
                "installs it) and a C++ compiler (g++), or use --config.model.conv_impl=auto / xla")

_lock = threading.Lock()
_state = {'loaded': False, 'error': None}


class OnednnUnavailableError(RuntimeError):
  """oneDNN convolutions were asked for but cannot be built or loaded here."""


def _onednn_root() -> str | None:
  """The prefix holding include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so (pip's or the system's)."""
  # pip puts the wheel's include/ and lib/ under the environment's prefix (the user base with
  # --user); SIMCLR_ONEDNN_ROOT points at another install.
  candidates = [os.environ.get('SIMCLR_ONEDNN_ROOT'), sys.prefix, site.getuserbase(),
                sys.base_prefix, '/usr/local', '/usr']
  for root in candidates:
    if (root and os.path.exists(os.path.join(root, 'include', 'oneapi', 'dnnl', 'dnnl.hpp'))
        and os.path.exists(os.path.join(root, 'lib', 'libdnnl.so'))):
      return root
  return None


def _cache_dir() -> str:
  return os.environ.get('SIMCLR_JAX_CACHE',
                        os.path.join(os.path.expanduser('~'), '.cache', 'simclr_jax'))


def _build(root: str) -> str:
  """Compiles onednn_conv.cc (once per source / jaxlib / oneDNN) and returns the .so's path."""
  compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if compiler is None:
    raise OnednnUnavailableError(f'no C++ compiler found (CXX, g++, c++). Fix: {INSTALL_HINT}.')
  include = jax.ffi.include_dir()
  library = os.path.realpath(os.path.join(root, 'lib', 'libdnnl.so'))
  with open(_SOURCE, 'rb') as f:
    digest = hashlib.sha256(f.read())
  digest.update(f'{jax.__version__} {jax.lib.__version__} {library} {compiler}'.encode())
  path = os.path.join(_cache_dir(), f'libsimclr_onednn_{digest.hexdigest()[:16]}.so')
  if os.path.exists(path):
    return path
  os.makedirs(_cache_dir(), exist_ok=True)
  # Built under a temporary name and renamed: a process never loads a half-written library,
  # and processes building at once (multi-host tests) each rename a whole one.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=_cache_dir())
  os.close(fd)
  command = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w', f'-I{include}',
             f'-I{os.path.join(root, "include")}', _SOURCE, '-o', tmp,
             f'-L{os.path.join(root, "lib")}', '-ldnnl', f'-Wl,-rpath,{os.path.join(root, "lib")}']
  logging.info('Building the oneDNN convolution kernels: %s', ' '.join(command))
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode != 0:
    os.unlink(tmp)
    raise OnednnUnavailableError(
        f'compiling {_SOURCE} failed ({compiler}, oneDNN at {root}):\n{result.stderr[:2000]}\n'
        f'Fix: {INSTALL_HINT}.')
  os.replace(tmp, path)
  return path


def _load() -> None:
  """Builds (if needed), loads and registers the custom calls, once per process."""
  with _lock:
    if _state['loaded'] or _state['error'] is not None:
      return
    try:
      root = _onednn_root()
      if root is None:
        raise OnednnUnavailableError(f'oneDNN headers/library not found. Fix: {INSTALL_HINT}.')
      lib = ctypes.cdll.LoadLibrary(_build(root))
      for name, symbol in _TARGETS.values():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform='cpu')
      _state['loaded'] = True
    except (OnednnUnavailableError, OSError) as e:
      _state['error'] = str(e)


def available() -> bool:
  """Whether the oneDNN kernels are usable in this process (built and registered on first call)."""
  if jax.default_backend() != 'cpu':
    return False
  _load()
  return _state['loaded']


def unavailable_reason() -> str | None:
  """Why `available()` is False (None when it is True or was not asked yet)."""
  return _state['error']


def require() -> None:
  """Raises OnednnUnavailableError naming the fix unless the kernels are usable."""
  if jax.default_backend() != 'cpu':
    raise OnednnUnavailableError(
        f"conv_impl='onednn' runs on the CPU only; this backend is {jax.default_backend()}. "
        "Fix: --config.model.conv_impl=auto (XLA's convolution off the CPU).")
  if not available():
    raise OnednnUnavailableError(_state['error'])


def _call(direction, out_shape, a, b, strides, padding):
  (pad_top, pad_bottom), (pad_left, pad_right) = padding
  # FFI attributes must be NumPy scalars of a fixed width.
  attributes = dict(stride_h=strides[0], stride_w=strides[1], pad_top=pad_top,
                    pad_bottom=pad_bottom, pad_left=pad_left, pad_right=pad_right)
  return jax.ffi.ffi_call(_TARGETS[direction][0], jax.ShapeDtypeStruct(out_shape, jnp.float32))(
      a, b, **{k: np.int64(v) for k, v in attributes.items()})


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
           padding: Sequence[tuple[int, int]]) -> jax.Array:
  """NHWC x [B, H, W, Cin] (*) HWIO kernel [kh, kw, Cin, Cout] -> [B, Ho, Wo, Cout], float32,
  explicit zero padding ((top, bottom), (left, right)); the same function as
  `lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO',
  'NHWC'))`."""
  require()
  if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
    raise ValueError(f"conv_impl='onednn' computes in float32; got {x.dtype} input and "
                     f"{kernel.dtype} kernel. Fix: --config.model.dtype=float32, or "
                     "--config.model.conv_impl=auto (other dtypes then use XLA's convolution).")
  b, h, w, _ = x.shape
  kh, kw, _, cout = kernel.shape
  ho = (h + sum(padding[0]) - kh) // strides[0] + 1
  wo = (w + sum(padding[1]) - kw) // strides[1] + 1
  return _call('forward', (b, ho, wo, cout), x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
  return conv2d(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  return (_call('backward_data', x.shape, dy, kernel, strides, padding),
          _call('backward_weights', kernel.shape, x, dy, strides, padding))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
