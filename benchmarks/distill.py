"""SimCLRv2's semi-supervised recipe on Fashion-MNIST with 1 % of the labels: teacher vs student.

  source launch/cpu_env.sh
  python benchmarks/distill.py --workdir=/tmp/distill --pretrain_minutes=5 --seeds=0,1,2

Pretrains once (configs/fashion_mnist_fast.py by default, SimCLRv2's 3-layer head, for
--pretrain_minutes of wall clock), then per seed runs `--mode=distill`: fine-tunes the teacher
from the head's first layer on a class-balanced 1 % (600 labels; the subset, batch order and
augmentation follow the seed) and distils a student of the same architecture from random init
on all 60,000 training images (the teacher's predictions at temperature 1, no labels), both
tested on the whole test split. Prints a markdown table and one JSON line.
"""

import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from simclr_jax import defaults
from simclr_jax import run
from simclr_jax import xla_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/tmp/simclr_distill')
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'fashion_mnist_fast.py'))
  parser.add_argument('--pretrain_minutes', type=float, default=5.0)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--override', action='append', default=[],
                      help='config overrides of every run, e.g. distill.label_weight=0.5')
  args = parser.parse_args()
  path = os.path.abspath(args.config)
  base = defaults.config_file(path, os.path.splitext(os.path.basename(path))[0]).get_config()
  base.model.head_num_layers = 3  # SimCLRv2
  base.eval.finetune_head_layer = 1  # fine-tuned from the head's first layer
  base.eval.finetune_fractions = (0.01,)
  base.eval.finetune_steps = 500
  base.distill.epochs = 5.0
  for assignment in args.override:
    defaults.override(base, assignment)
  xla_setup.apply_xla_flags(base.xla_flags)  # as simclr_jax.main, before JAX starts
  pretrain_dir = os.path.join(args.workdir, 'pretrain')
  config = base.copy_and_resolve_references()
  config.time_budget_minutes = args.pretrain_minutes
  pretrained = run.train_and_evaluate(config, pretrain_dir, mode='pretrain')
  rows = []
  for seed in map(int, args.seeds.split(',')):
    config = base.copy_and_resolve_references()
    config.seed = seed
    config.init_checkpoint = pretrain_dir
    out = run.train_and_evaluate(config, os.path.join(args.workdir, f'seed{seed}'), mode='distill')
    rows.append(dict(seed=seed, teacher=out['distill_1pct_teacher_top1'],
                     student=out['distill_1pct_top1'], steps=out['distill_1pct_steps']))
  teacher = np.array([r['teacher'] for r in rows])
  student = np.array([r['student'] for r in rows])
  print('| seed | teacher (fine-tuned, 1 % labels) | student (distilled) | student - teacher |')
  print('|---|---|---|---|')
  for r in rows:
    print(f"| {r['seed']} | {100 * r['teacher']:.2f} | {100 * r['student']:.2f} | "
          f"{100 * (r['student'] - r['teacher']):+.2f} |")
  print(f'| mean | {100 * teacher.mean():.2f} | {100 * student.mean():.2f} | '
        f'{100 * (student - teacher).mean():+.2f} |')
  print(json.dumps(dict(benchmark='distill_fashion_mnist', date=datetime.date.today().isoformat(),
                        command=' '.join(sys.argv), pretrain_steps=pretrained['step'],
                        overrides=args.override, rows=rows)))


if __name__ == '__main__':
  main()
