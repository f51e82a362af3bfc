"""Memory per TPU core of the project's SimCLR step: ResNet-50, 224 px, global batch 4096.

  python benchmarks/memory_per_core.py                      # v3-32, v4-32, v5e-64; f32 + bf16
  python benchmarks/memory_per_core.py --platforms=v4-32 --dtypes=bfloat16
  python benchmarks/memory_per_core.py --fit_batches=8,16   # cheaper: fit and extrapolate

For each TPU slice, the real per-core step (`train_step.train_step` mapped by `parallel.Mapper`
with `jax.shard_map`, the NT-Xent gathers included) is compiled on CPU for a mesh of as many
simulated devices as JAX sees on that slice, with the per-device batch 4096 / devices, and XLA's
`compiled.memory_analysis()` of the per-device program gives:
  state   = params + BN statistics + LARS momentum (float32 always; exact, from the shapes),
  input   = this device's two-view batch, float32 [b, 2, 224, 224, 3] + labels,
  temp    = XLA's temporary buffers: activations saved for the backward pass, gradients,
            workspaces (the part that grows with the batch),
  peak    = arguments + outputs - donated aliases + temp, per device.
Nothing runs and no device memory is allocated: only compilation happens (20-60 s per
(slice, dtype) on a 2-core CPU; each runs in its own process, which also lets it simulate its own
device count).

Assumptions (see docs/scaling.md): XLA:CPU's buffer assignment stands in for XLA:TPU's. The TPU
compiler fuses more (BN and ReLU into convolutions) and rematerialises when short of memory; the
official SimCLR fits 128 images per 16 GiB v3 core where XLA:CPU predicts 32 GiB, so read the
activation figures as upper bounds (about 2x). XLA:CPU has no native bfloat16 convolutions (it
converts to float32, apparently holding both copies), so its bfloat16 figures come out higher
than float32's; on TPU bfloat16 activations take half the bytes.
The state term is exact. With --fit_batches the step is compiled at those per-device batches and
`temp` and `input` are extrapolated linearly in the batch (activations are linear in it; checked:
a fit from 4 and 8 images gives the figure compiled at 16).

Prints a table and one JSON line.
"""

import argparse
import json
import os
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2 ** 30

# JAX devices per slice and HBM per JAX device (Cloud TPU system architecture docs).
PLATFORMS = {
    # 16 chips x 2 TensorCores; JAX sees each core (16 GiB of the chip's 32 GiB HBM).
    'v3-32': dict(devices=32, hbm_gib=16, accelerator_type='v3-32'),
    # 16 chips x 2 TensorCores as one megacore device each; 32 GiB HBM per chip.
    'v4-32': dict(devices=16, hbm_gib=32, accelerator_type='v4-32'),
    # 64 chips x 1 TensorCore; 16 GiB HBM per chip. gcloud calls it v5litepod-64.
    'v5e-64': dict(devices=64, hbm_gib=16, accelerator_type='v5litepod-64'),
}


def _tree_bytes(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def compile_and_measure(*, num_devices: int, per_device_batch: int, dtype: str, depth: int,
                        image_size: int) -> dict:
  """Compiles the mapped step for `num_devices` (already simulated) and measures one device."""
  import functools  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, _ROOT)
  from configs import imagenet  # pylint: disable=g-import-not-at-top
  from simclr_jax import methods  # pylint: disable=g-import-not-at-top
  from simclr_jax import optim  # pylint: disable=g-import-not-at-top
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  from simclr_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import build_model  # pylint: disable=g-import-not-at-top

  config = imagenet.get_config()
  config.model.depth = depth
  config.model.dtype = dtype
  config.dataset.image_size = image_size
  config.batch_size = num_devices * per_device_batch
  mapper = parallel.Mapper('shard_map', num_devices)
  shape = (image_size, image_size, 3)
  model = build_model(config.model, num_classes=1000, image_size=image_size,
                      axis_name=parallel.AXIS)
  method = methods.get_method(config.method)
  tx, _ = optim.build_optimizer(config.optimizer, global_batch_size=config.batch_size,
                                       total_steps=1000, steps_per_epoch=100)
  # Shapes only: no ResNet-50 is initialised, nothing is allocated.
  state = jax.eval_shape(lambda: train_step_lib.create_train_state(
      model, method, tx, config, image_shape=shape))
  step_fn = mapper.map_step(functools.partial(
      train_step_lib.train_step, model=model, method=method, tx=tx, config=config,
      axis_name=parallel.AXIS))

  def abstract(x, sharding):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  global_batch = config.batch_size
  batch = {'views': jax.ShapeDtypeStruct((global_batch, 2) + shape, jnp.float32,
                                         sharding=mapper.batch_sharding),
           'label': jax.ShapeDtypeStruct((global_batch,), jnp.int32,
                                         sharding=mapper.batch_sharding)}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=mapper.replicated)
  t0 = time.time()
  compiled = step_fn.lower(jax.tree.map(lambda x: abstract(x, mapper.replicated), state), batch,
                           rng).compile()
  compile_s = time.time() - t0
  ma = compiled.memory_analysis()
  input_bytes = per_device_batch * (2 * image_size * image_size * 3 * 4 + 4)
  return dict(
      num_devices=num_devices, per_device_batch=per_device_batch, dtype=dtype, depth=depth,
      image_size=image_size, compile_s=compile_s,
      num_params=int(sum(x.size for x in jax.tree.leaves(state.params))),
      params_bytes=_tree_bytes(state.params), batch_stats_bytes=_tree_bytes(state.batch_stats),
      opt_state_bytes=_tree_bytes(state.opt_state), state_bytes=_tree_bytes(state),
      input_bytes=input_bytes,
      argument_bytes=int(ma.argument_size_in_bytes), output_bytes=int(ma.output_size_in_bytes),
      alias_bytes=int(ma.alias_size_in_bytes), temp_bytes=int(ma.temp_size_in_bytes),
      code_bytes=int(ma.generated_code_size_in_bytes))


def _peak(m: dict) -> int:
  return m['argument_bytes'] + m['output_bytes'] - m['alias_bytes'] + m['temp_bytes']


def _run_child(num_devices, per_device_batch, dtype, args) -> dict:
  """One compile in a fresh process that simulates `num_devices` CPU devices."""
  # JAX_PLATFORMS=cpu: the estimate is XLA:CPU's, on any machine (a TPU host too).
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}')
  cmd = [sys.executable, os.path.abspath(__file__), '--_child',
         f'--_num_devices={num_devices}', f'--_per_device_batch={per_device_batch}',
         f'--dtypes={dtype}', f'--depth={args.depth}', f'--image_size={args.image_size}']
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr[-4000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def measure(platform: str, dtype: str, args) -> dict:
  """Memory per device for one slice and dtype (compiled at the target batch, or fitted)."""
  spec = PLATFORMS[platform]
  batch = args.global_batch // spec['devices']
  if args.global_batch % spec['devices']:
    raise ValueError(f'global batch {args.global_batch} does not divide over {platform}')
  if not args.fit_batches:
    m = _run_child(spec['devices'], batch, dtype, args)
    m['method'] = 'compiled at the per-device batch'
  else:
    b1, b2 = args.fit_batches
    m1 = _run_child(spec['devices'], b1, dtype, args)
    m2 = _run_child(spec['devices'], b2, dtype, args)
    m = dict(m2)
    for key in ('argument_bytes', 'output_bytes', 'alias_bytes', 'temp_bytes', 'input_bytes'):
      slope = (m2[key] - m1[key]) / (b2 - b1)
      m[key] = int(round(m2[key] + slope * (batch - b2)))
    m['per_device_batch'] = batch
    m['compile_s'] = m1['compile_s'] + m2['compile_s']
    m['method'] = f'compiled at per-device batches {b1}, {b2}; linear in the batch'
  m['platform'] = platform
  m['accelerator_type'] = spec['accelerator_type']
  m['hbm_gib'] = spec['hbm_gib']
  m['peak_bytes'] = _peak(m)
  m['hbm_fraction'] = m['peak_bytes'] / (spec['hbm_gib'] * GIB)
  return m


def table(rows) -> str:
  head = (f"{'slice':<8}{'devices':>8}{'img/dev':>8}{'dtype':>10}{'state':>9}{'input':>9}"
          f"{'temp':>10}{'peak':>10}{'HBM':>7}{'used':>7}")
  lines = [head, '-' * len(head)]
  for m in rows:
    lines.append(
        f"{m['platform']:<8}{m['num_devices']:>8}{m['per_device_batch']:>8}{m['dtype']:>10}"
        f"{m['state_bytes'] / GIB:>8.2f}G{m['input_bytes'] / GIB:>8.2f}G"
        f"{m['temp_bytes'] / GIB:>9.2f}G{m['peak_bytes'] / GIB:>9.2f}G{m['hbm_gib']:>6}G"
        f"{100 * m['hbm_fraction']:>6.0f}%")
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  parser.add_argument('--platforms', default=','.join(PLATFORMS))
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--global_batch', type=int, default=4096)
  parser.add_argument('--depth', type=int, default=50)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--fit_batches', default='',
                      help='two per-device batches "b1,b2" to compile at and extrapolate from')
  parser.add_argument('--_child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--_num_devices', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--_per_device_batch', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._child:  # pylint: disable=protected-access
    print(json.dumps(compile_and_measure(
        num_devices=args._num_devices, per_device_batch=args._per_device_batch,  # pylint: disable=protected-access
        dtype=args.dtypes, depth=args.depth, image_size=args.image_size)))
    return
  args.fit_batches = [int(b) for b in args.fit_batches.split(',')] if args.fit_batches else None
  rows = []
  for platform in args.platforms.split(','):
    for dtype in args.dtypes.split(','):
      rows.append(measure(platform, dtype, args))
      print(f"{platform} {dtype}: {rows[-1]['peak_bytes'] / GIB:.2f} GiB per device "
            f"({rows[-1]['compile_s']:.0f} s to compile)", file=sys.stderr, flush=True)
  print(table(rows))
  print(json.dumps(rows))


if __name__ == '__main__':
  main()
