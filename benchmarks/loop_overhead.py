"""Host overhead of the training loop: what `train.pretrain` costs per step beyond the step.

  python benchmarks/loop_overhead.py --rounds=3
  python benchmarks/loop_overhead.py --trees=/path/to/old/checkout,.   # before / after

For each source tree (a checkout of simclr_jax; default: this one) a fresh process runs, on a
tiny model whose step is short (so the loop's own cost shows): (1) the mapped step alone, back
to back on one batch already on the devices, synchronised once at the end: the device time per
step; (2) `train.pretrain` for the same number of steps with metrics logged only at the end:
the loop's time per step, tf.data and host-to-device copies included. The difference is the
host's time per step outside the device step (what a step waits on the host). Rounds alternate
between trees in fresh processes, so load changes hit each alike. One JSON line and a table.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {'model.depth': 18, 'model.width_multiplier': 0.125, 'model.head_out_dim': 16,
             'batch_size': 64, 'augment.on_device': True, 'dataset.max_train_examples': 8192,
             'optimizer.warmup_epochs': 0.0}


def _worker(tree: str, steps: int, skip: int, num_devices: int) -> dict:
  sys.path.insert(0, tree)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from configs import fashion_mnist_fast  # pylint: disable=g-import-not-at-top
  from simclr_jax import xla_setup  # pylint: disable=g-import-not-at-top
  config = fashion_mnist_fast.get_config()
  xla_setup.apply_xla_flags(config.xla_flags)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity('error')
  from simclr_jax import train  # pylint: disable=g-import-not-at-top
  from simclr_jax import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import train_loop  # pylint: disable=g-import-not-at-top  (this benchmark's sibling)
  train_loop.set_overrides(config, OVERRIDES)
  config.num_devices = num_devices
  config.num_train_steps = steps
  # (1) The step alone, on one batch already on the devices.
  s = train.setup(config)
  step_fn = train.make_step(s)
  state = s.mapper.put_state(train_step_lib.create_train_state(
      s.model, s.method, s.tx, config, image_shape=s.image_shape))
  from simclr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  batch = s.mapper.put_batch(next(pipeline.batches_from_source(
      s.source, config.augment, image_size=config.dataset.image_size,
      global_batch_size=config.batch_size, seed=0, device_augment=True)))
  rng = train_step_lib.run_key(0)
  for _ in range(skip):
    state, metrics = step_fn(state, batch, rng)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps - skip):
    state, metrics = step_fn(state, batch, rng)
  jax.block_until_ready(metrics)
  device_s = (time.perf_counter() - t0) / (steps - skip)
  del state
  # (2) The whole loop.
  loop_s = train_loop.pretrain_seconds_per_step(train, config, steps, skip)
  return dict(device_ms=1e3 * device_s, loop_ms=1e3 * loop_s,
              host_ms=1e3 * (loop_s - device_s), steps_per_s=1 / loop_s,
              devices=int(np.asarray(s.mapper.num_devices)))


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--trees', default=ROOT, help='","-separated source trees to compare')
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--skip_steps', type=int, default=50)
  parser.add_argument('--num_devices', type=int, default=1)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--worker', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print('RESULT', json.dumps(_worker(args.worker, args.steps, args.skip_steps,
                                       args.num_devices)), flush=True)
    return
  trees = [os.path.abspath(t) for t in args.trees.split(',') if t]
  results = {t: [] for t in trees}
  for _ in range(args.rounds):
    for tree in trees:
      out = subprocess.run([sys.executable, __file__, f'--worker={tree}', f'--steps={args.steps}',
                            f'--skip_steps={args.skip_steps}',
                            f'--num_devices={args.num_devices}'],
                           capture_output=True, text=True, check=False)
      line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
      if not line:
        raise RuntimeError(f'{tree} failed:\n{out.stderr[-3000:]}')
      results[tree].append(json.loads(line[0][len('RESULT '):]))
  print(f'{"tree":50s} {"steps/s":>8s} {"loop ms":>8s} {"step ms":>8s} {"host ms":>8s}')
  summary = {}
  for tree, runs in results.items():
    med = {k: statistics.median(r[k] for r in runs)
           for k in ('steps_per_s', 'loop_ms', 'device_ms', 'host_ms')}
    summary[tree] = dict(median=med, runs=runs)
    print(f'{tree[-50:]:50s} {med["steps_per_s"]:8.2f} {med["loop_ms"]:8.2f} '
          f'{med["device_ms"]:8.2f} {med["host_ms"]:8.2f}')
  print(json.dumps(dict(benchmark='loop_overhead', cpu=_cpu_model(), cores=os.cpu_count(),
                        load_average=os.getloadavg(), steps=args.steps,
                        skip_steps=args.skip_steps, num_devices=args.num_devices,
                        overrides=OVERRIDES, trees=summary)))


if __name__ == '__main__':
  main()
