"""Steps per second of the whole training loop, input pipeline included: `train.pretrain` itself.

  python benchmarks/train_loop.py --config=configs/fashion_mnist_fast.py --steps=200 --rounds=3

benchmarks/train_step.py times the step on fixed arrays; this times what a run gets: tf.data
(sharing the cores with XLA), host-to-device copies, the step, logging. Each variant is a set of
config overrides (and `env:NAME=value` settings of the worker's environment, such as an
LD_PRELOAD'ed allocator); runs alternate (A, B, A, B, ...) in fresh processes so that load
changes hit every variant alike. Default variants: the augmentation in tf.data
(`augment.on_device=False`) and inside the train step (`augment.on_device=True`). The rate is
taken over the steps after --skip_steps (compilation and the steps fed from tf.data's buffer
filled during it excluded). Checkpoints are off (one at the end), so only the loop is timed.

Prints a table and one JSON line: per variant the rates of every round and their median.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VARIANTS = ('augment.on_device=False', 'augment.on_device=True')


def _worker(config_path: str, overrides: list[str], steps: int, skip: int) -> float:
  """Runs `steps` steps of train.pretrain in this process; returns steps/s after `skip`."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.path.insert(0, ROOT)
  from simclr_jax import xla_setup  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('benchmark_config', config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  set_overrides(config, dict(o.split('=', 1) for o in overrides))
  xla_setup.apply_xla_flags(config.xla_flags)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity('error')
  from simclr_jax import train  # pylint: disable=g-import-not-at-top
  return 1 / pretrain_seconds_per_step(train, config, steps, skip)


def set_overrides(config, overrides: dict) -> None:
  """Sets dotted `key: value` fields of a ConfigDict (values cast to the field's type)."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    kind = type(node[leaf])
    node[leaf] = (str(value) == 'True') if kind is bool else kind(value)


def pretrain_seconds_per_step(train, config, steps: int, skip: int) -> float:
  """Seconds per step of `train.pretrain` (the given module: another checkout's too) over the
  steps after `skip`, metrics logged and a checkpoint written only at the end."""
  config.num_train_steps = steps
  config.checkpoint_every_steps = steps
  config.log_every_steps = steps
  times = {}

  def on_step(done):
    if done in (skip, steps):
      times[done] = time.perf_counter()

  with tempfile.TemporaryDirectory() as workdir:
    train.pretrain(config, workdir, on_step=on_step)
  return (times[steps] - times[skip]) / (steps - skip)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'fashion_mnist_fast.py'))
  parser.add_argument('--variants', default=';'.join(DEFAULT_VARIANTS),
                      help='";"-separated variants, each ","-separated key=value config '
                      'overrides and env:NAME=value settings of the worker\'s environment '
                      '(e.g. env:LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)')
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--skip_steps', type=int, default=50)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--worker', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    overrides = [o for o in args.worker.split(',') if o]
    print('RATE', _worker(args.config, overrides, args.steps, args.skip_steps), flush=True)
    return
  variants = [v for v in args.variants.split(';') if v]
  rates = {v: [] for v in variants}
  for _ in range(args.rounds):
    for variant in variants:
      items = [o for o in variant.split(',') if o]
      env = dict(os.environ, **dict(o[len('env:'):].split('=', 1) for o in items
                                    if o.startswith('env:')))
      overrides = ','.join(o for o in items if not o.startswith('env:'))
      out = subprocess.run([sys.executable, __file__, f'--config={args.config}',
                            f'--steps={args.steps}', f'--skip_steps={args.skip_steps}',
                            f'--worker={overrides}'], capture_output=True, text=True, check=False,
                           env=env)
      line = [l for l in out.stdout.splitlines() if l.startswith('RATE ')]
      if not line:
        raise RuntimeError(f'variant {variant!r} failed:\n{out.stderr[-3000:]}')
      rates[variant].append(float(line[0].split()[1]))
  base = statistics.median(rates[variants[0]])
  print(f'{"variant":40s} {"steps/s (median)":>17s} {"x first":>8s}  rounds')
  for variant in variants:
    median = statistics.median(rates[variant])
    print(f'{variant:40s} {median:17.3f} {median / base:8.3f}  '
          + ' '.join(f'{r:.3f}' for r in rates[variant]))
  print(json.dumps(dict(config=os.path.relpath(args.config, ROOT), steps=args.steps,
                        skip_steps=args.skip_steps, load_average=os.getloadavg(),
                        variants={v: dict(steps_per_s=r, median=statistics.median(r))
                                  for v, r in rates.items()})))


if __name__ == '__main__':
  main()
