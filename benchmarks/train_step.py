"""Throughput of the project's own SimCLR train step (the real mapped step, not a copy).

  python benchmarks/train_step.py --depth=18 --width_multiplier=1 --image_size=32 \
    --batch_size=128 --num_devices=1 [--conv_impl=xla|im2col|auto]

Prints a short table and one JSON line: images_per_s (views per second: 2N per step),
step_s_median/min/max over --steps timed steps after warm-up, compile_s, peak_rss_mb,
flops_per_step (XLA cost analysis), achieved_flops_per_s, and ceiling_fraction: achieved FLOP/s
over a float32 matmul ceiling measured on this machine (CPU), or mfu against --peak_flops (GPU/TPU),
and conv_impl. `build_step` is also what benchmarks/compare_cpu.py times beside PyTorch.
"""

import os
import sys

# Simulated CPU devices must be requested before JAX starts.
for _arg in sys.argv:
  if _arg.startswith('--num_devices='):
    _n = int(_arg.split('=', 1)[1])
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={_n}')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The trainer's XLA flags (config.xla_flags), so the benchmark times what `simclr_jax.main` runs;
# a flag already in XLA_FLAGS wins (compare_cpu.py's `flags=` variants rely on that).
from simclr_jax import defaults  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import xla_setup  # pylint: disable=g-import-not-at-top,wrong-import-position
xla_setup.apply_xla_flags(defaults.get_config().xla_flags)

import functools  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import resource
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import methods
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import train_step as train_step_lib
from simclr_jax.models import build_model

flags.DEFINE_integer('depth', 18, 'ResNet depth.')
flags.DEFINE_float('width_multiplier', 1.0, 'ResNet width multiplier.')
flags.DEFINE_integer('image_size', 32, 'Image side.')
flags.DEFINE_integer('channels', 3, 'Image channels.')
flags.DEFINE_integer('batch_size', 128, 'N images per step (2N views).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
flags.DEFINE_integer('num_devices', 1, 'Devices (simulated on CPU).')
flags.DEFINE_integer('head_out_dim', 128, 'Projection size.')
flags.DEFINE_integer('steps', 5, 'Timed steps after warm-up.')
flags.DEFINE_integer('warmup_steps', 2, 'Untimed steps after compilation.')
flags.DEFINE_float('peak_flops', 0.0, 'Accelerator peak FLOP/s for MFU (0: measure a CPU '
                   'matmul ceiling).')
flags.DEFINE_string('cifar_stem', 'auto', 'auto | true | false.')
flags.DEFINE_enum('conv_impl', 'xla', ['xla', 'im2col', 'auto'],
                  'How convolutions are lowered (config.model.conv_impl).')
FLAGS = flags.FLAGS


def matmul_ceiling(n: int = 2048, repeats: int = 5) -> float:
  """float32 FLOP/s of a large jitted matmul on the default device (the machine's ceiling)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def build_step(*, depth: int = 18, width_multiplier: float = 1.0, image_size: int = 32,
               channels: int = 3, batch_size: int = 128, dtype: str = 'float32',
               num_devices: int = 1, head_out_dim: int = 128,
               cifar_stem=None, conv_impl: str = 'xla'):
  """Builds, compiles and runs once the project's mapped SimCLR step on a fixed batch.

  Returns:
    (step, info): `step()` runs one more step (the state is donated and carried inside) and
    returns its metrics, ready; info has compile_s (compile + first step) and flops_per_step
    (XLA cost analysis of the whole step).
  """
  c = defaults.get_config()
  c.model.depth = depth
  c.model.width_multiplier = width_multiplier
  c.model.dtype = dtype
  c.model.head_out_dim = head_out_dim
  c.model.cifar_stem = cifar_stem
  c.model.conv_impl = conv_impl
  c.batch_size = batch_size
  c.loss.temperature = 0.5
  c.optimizer.warmup_epochs = 0.0
  shape = (image_size, image_size, channels)
  mapper = parallel.Mapper(num_devices)
  mapper.check_batch_size(batch_size)
  model = build_model(c.model, num_classes=10, image_size=image_size, axis_name=parallel.AXIS)
  method = methods.get_method('simclr')
  tx, _ = optim.build_optimizer(c.optimizer, global_batch_size=c.batch_size,
                                       total_steps=1000, steps_per_epoch=100)
  state = train_step_lib.create_train_state(model, method, tx, c, image_shape=shape)
  step = functools.partial(train_step_lib.train_step, model=model, method=method, tx=tx,
                           config=c, axis_name=parallel.AXIS)
  step_fn = mapper.map_step(step)
  # Real-looking inputs are not needed for timing: the step's cost does not depend on pixels.
  rng = np.random.default_rng(0)
  host_batch = {'views': rng.uniform(size=(batch_size, 2) + shape).astype(np.float32),
                'label': rng.integers(0, 10, batch_size).astype(np.int32)}
  batch = mapper.put_batch(host_batch)
  carried = {'state': mapper.put_state(state)}
  key = train_step_lib.run_key(0)

  t0 = time.perf_counter()
  run = step_fn.lower(carried['state'], batch, key).compile()
  cost = run.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else None

  def one_step():
    carried['state'], metrics = run(carried['state'], batch, key)
    return jax.block_until_ready(metrics)

  one_step()
  compile_s = time.perf_counter() - t0
  # cost_analysis of a shard_map'ed step counts one core's program; the step runs it on each.
  flops_per_step = flops * mapper.num_devices if flops else None
  return one_step, dict(compile_s=compile_s, flops_per_step=flops_per_step)


def main(argv):
  del argv
  one_step, info = build_step(
      depth=FLAGS.depth, width_multiplier=FLAGS.width_multiplier, image_size=FLAGS.image_size,
      channels=FLAGS.channels, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
      num_devices=FLAGS.num_devices, head_out_dim=FLAGS.head_out_dim,
      cifar_stem={'auto': None, 'true': True, 'false': False}[FLAGS.cifar_stem],
      conv_impl=FLAGS.conv_impl)
  for _ in range(FLAGS.warmup_steps):
    metrics = one_step()
  times = []
  for _ in range(FLAGS.steps):
    t0 = time.perf_counter()
    metrics = one_step()
    times.append(time.perf_counter() - t0)
  median = float(np.median(times))
  flops_per_step = info['flops_per_step']
  result = dict(
      depth=FLAGS.depth, width_multiplier=FLAGS.width_multiplier, image_size=FLAGS.image_size,
      batch_size=FLAGS.batch_size, dtype=FLAGS.dtype, num_devices=FLAGS.num_devices,
      backend=jax.default_backend(),
      images_per_s=2 * FLAGS.batch_size / median, step_s_median=median,
      step_s_min=float(np.min(times)), step_s_max=float(np.max(times)),
      compile_s=info['compile_s'],
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      flops_per_step=flops_per_step, loss=float(metrics['loss']), conv_impl=FLAGS.conv_impl)
  if flops_per_step:
    result['achieved_flops_per_s'] = flops_per_step / median
    if FLAGS.peak_flops > 0:
      result['mfu'] = result['achieved_flops_per_s'] / FLAGS.peak_flops
    elif jax.default_backend() == 'cpu':
      result['matmul_ceiling_flops_per_s'] = matmul_ceiling()
      result['ceiling_fraction'] = (result['achieved_flops_per_s'] /
                                    result['matmul_ceiling_flops_per_s'])
  print(f"{'metric':<28}value")
  for k in ('images_per_s', 'step_s_median', 'compile_s', 'peak_rss_mb', 'flops_per_step',
            'achieved_flops_per_s', 'ceiling_fraction', 'mfu'):
    if result.get(k) is not None:
      print(f'{k:<28}{result[k]:.4g}')
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
