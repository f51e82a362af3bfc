"""Per-core NT-Xent memory at a large global batch, and proof that no core holds [2N, 2N].

  python benchmarks/nt_xent_memory.py                      # N = 16,384 on 8 simulated devices
  python benchmarks/nt_xent_memory.py --global_batch=4096 --num_devices=4

Compiles (does not run) the project's real per-core SimCLR step, `train_step.train_step` mapped
by `parallel.Mapper` with `jax.shard_map`, for `--num_devices` simulated CPU devices at global
batch N. Each core holds n = N / devices images (2n views); its NT-Xent logits should be its
own rows only, [2n, 2N], never the full [2N, 2N] similarity matrix.

What it reports, from the compiled per-device program:
  - every array shape in the optimised per-device HLO and in the step's jaxpr (inside the
    shard_map body, where shapes are per core) with two or more dims >= 2N: there must be none;
  - the logits-sized arrays ([2n, 2N], any order) and their bytes: the per-core logits memory;
  - XLA's memory analysis (arguments, outputs, temporaries) of the per-device program.
The encoder is small by default (ResNet-18 width 1/8 on 8x8x1 images): the loss, its gathers and
its logits do not depend on the encoder, and a small one compiles in seconds.

Prints a table and one JSON line; exits 1 if a [>=2N, >=2N] array is found.
"""

import os
import sys

_ND = 8
for _arg in sys.argv:
  if _arg.startswith('--num_devices='):
    _ND = int(_arg.split('=', 1)[1])
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count={_ND}')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import functools  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import re

from absl import app
from absl import flags
import jax
from jax.extend import core as jax_core
import numpy as np

from simclr_jax import defaults
from simclr_jax import methods
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import train_step as train_step_lib
from simclr_jax.models import build_model

flags.DEFINE_integer('global_batch', 16384, 'N images in the global batch (2N views).')
flags.DEFINE_integer('num_devices', 8, 'Simulated CPU devices (cores).')
flags.DEFINE_integer('depth', 18, 'ResNet depth.')
flags.DEFINE_float('width_multiplier', 0.125, 'ResNet width multiplier.')
flags.DEFINE_integer('image_size', 8, 'Image side.')
flags.DEFINE_integer('channels', 1, 'Image channels.')
flags.DEFINE_integer('head_out_dim', 128, 'Projection size d.')
FLAGS = flags.FLAGS

_DTYPE_BYTES = {'f32': 4, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 'pred': 1, 'f64': 8,
                's64': 8, 'u8': 1, 's8': 1}
# An HLO array type: f32[4096,32768]{1,0}.
_HLO_SHAPE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([0-9,]*)\]')


def hlo_shapes(hlo_text: str) -> set[tuple[str, tuple[int, ...]]]:
  """Every (dtype, shape) that appears in an HLO module's text."""
  out = set()
  for dtype, dims in _HLO_SHAPE.findall(hlo_text):
    out.add((dtype, tuple(int(d) for d in dims.split(',') if d)))
  return out


def jaxpr_shapes(jaxpr) -> set[tuple[str, tuple[int, ...]]]:
  """Every (dtype, shape) of a variable in a jaxpr and its sub-jaxprs (shard_map bodies...)."""
  out = set()

  def visit(jx):
    for eqn in jx.eqns:
      for var in list(eqn.invars) + list(eqn.outvars):
        aval = getattr(var, 'aval', None)
        if aval is not None and hasattr(aval, 'shape'):
          out.add((str(aval.dtype), tuple(aval.shape)))
      for sub in jax_core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr if hasattr(jaxpr, 'jaxpr') else jaxpr)
  return out


def main(argv):
  del argv
  n_global, devices = FLAGS.global_batch, FLAGS.num_devices
  two_n = 2 * n_global
  n_core = n_global // devices
  c = defaults.get_config()
  c.model.depth = FLAGS.depth
  c.model.width_multiplier = FLAGS.width_multiplier
  c.model.head_out_dim = FLAGS.head_out_dim
  c.batch_size = n_global
  c.loss.temperature = 0.1
  shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  mapper = parallel.Mapper(devices)
  mapper.check_batch_size(n_global)
  model = build_model(c.model, num_classes=10, image_size=FLAGS.image_size,
                      axis_name=parallel.AXIS)
  method = methods.get_method('simclr')
  tx, _ = optim.build_optimizer(c.optimizer, global_batch_size=n_global,
                                       total_steps=1000, steps_per_epoch=100)
  state = train_step_lib.create_train_state(model, method, tx, c, image_shape=shape)
  step = functools.partial(train_step_lib.train_step, model=model, method=method, tx=tx,
                           config=c, axis_name=parallel.AXIS)
  step_fn = mapper.map_step(step)
  # Abstract inputs: nothing is allocated, only compiled.
  batch = {
      'views': jax.ShapeDtypeStruct((n_global, 2) + shape, np.float32,
                                    sharding=mapper.batch_sharding),
      'label': jax.ShapeDtypeStruct((n_global,), np.int32, sharding=mapper.batch_sharding)}
  state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=mapper.replicated), state)
  key = jax.ShapeDtypeStruct((2,), np.uint32, sharding=mapper.replicated)
  lowered = step_fn.lower(state, batch, key)
  compiled = lowered.compile()
  hlo = hlo_shapes(compiled.as_text())
  jaxpr = jaxpr_shapes(jax.make_jaxpr(step_fn)(state, batch, key))

  def square_ge_2n(shapes):
    return sorted(s for s in shapes if sum(d >= two_n for d in s[1]) >= 2)

  def logits_like(shapes):
    return sorted(s for s in shapes
                  if sorted(s[1][-2:]) == sorted((2 * n_core, two_n)) and len(s[1]) == 2)

  bad_hlo, bad_jaxpr = square_ge_2n(hlo), square_ge_2n(jaxpr)
  logits = logits_like(hlo)
  logits_bytes = {f'{d}{list(s)}': int(np.prod(s)) * _DTYPE_BYTES[d] for d, s in logits}
  mem = compiled.memory_analysis()
  mem_d = {k: int(getattr(mem, k)) for k in
           ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
            'temp_size_in_bytes') if mem is not None and hasattr(mem, k)}
  largest = sorted(hlo, key=lambda s: -int(np.prod(s[1])) * _DTYPE_BYTES[s[0]])[:5]
  result = dict(
      global_batch=n_global, num_devices=devices, images_per_core=n_core,
      logits_rows_cols=[2 * n_core, two_n], full_matrix=[two_n, two_n],
      full_matrix_f32_bytes=two_n * two_n * 4, per_core_logits_f32_bytes=2 * n_core * two_n * 4,
      logits_arrays_in_hlo=logits_bytes,
      arrays_with_two_dims_ge_2n_hlo=[list(s[1]) for s in bad_hlo],
      arrays_with_two_dims_ge_2n_jaxpr=[list(s[1]) for s in bad_jaxpr],
      largest_hlo_arrays=[f'{d}{list(s)}' for d, s in largest],
      memory_analysis=mem_d, encoder=f'ResNet-{FLAGS.depth} w{FLAGS.width_multiplier} '
      f'{FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}')
  mib = 2 ** 20
  print(f'global batch N={n_global} on {devices} devices: {n_core} images / core; '
        f'2N = {two_n}')
  per_core_mib = result['per_core_logits_f32_bytes'] / mib
  print(f'per-core logits [{2 * n_core}, {two_n}] f32: {per_core_mib:.0f} MiB   (full [2N, 2N] '
        f'f32 would be {result["full_matrix_f32_bytes"] / mib:.0f} MiB)')
  print(f'logits-shaped arrays in the per-device HLO: {sorted(logits_bytes) or "none"}')
  print(f'largest per-device HLO arrays: {result["largest_hlo_arrays"]}')
  for k, v in mem_d.items():
    print(f'  {k:<28}{v / mib:10.1f} MiB')
  print(f'arrays with two dims >= 2N: HLO {result["arrays_with_two_dims_ge_2n_hlo"] or "none"}, '
        f'jaxpr {result["arrays_with_two_dims_ge_2n_jaxpr"] or "none"}')
  print(json.dumps(result))
  if bad_hlo or bad_jaxpr:
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
