"""Figure 5 of SimCLR: linear top-1 for single augmentations and pairs, applied to ONE branch.

  python -m studies.augmentation_grid --out=/tmp/studies/augmentation_grid

As in the paper's ablation, view 1 gets the op pair (row op, then column op) and view 2 is the
untouched image (the paper first crops both views only to bring ImageNet images to one size;
Fashion-MNIST images already share 28x28, so that step is dropped). View 2 uses the 'grayscale'
op, which is exactly the identity on grey images (simclr_jax/data/augment.py). Diagonal cells
are a single op. Only one order of each pair is run (row before column), so the heat map is shown
symmetric; the paper runs both orders. 'color' is the grey-image colour jitter
(brightness + contrast, strength config.augment.color_strength).

Writes augmentation_grid.{md,json,png} into --out.
"""

import itertools
import os
import time

from absl import app
from absl import flags
import numpy as np

from studies import common

# Paper's Figure 5 op names -> simclr_jax.data.augment.OPS names.
OP_NAMES = {'crop': 'crop', 'cutout': 'cutout', 'color': 'brightness_contrast', 'sobel': 'sobel',
            'noise': 'noise', 'blur': 'blur', 'rotate': 'rotate', 'flip': 'flip'}
IDENTITY_ON_GREY = ('grayscale',)  # view 2: the identity on 1-channel images

flags.DEFINE_list('ops', ['crop', 'cutout', 'color', 'sobel', 'rotate'],
                  'Ops of the grid (CPU default: 5 ops, 15 cells; the paper also has noise and '
                  f'blur); from {sorted(OP_NAMES)}.')
FLAGS = flags.FLAGS


def cell_config(base, ops: tuple[str, ...]):
  """`base` with view 1 = `ops` (paper names) and view 2 = the identity."""
  c = base.copy_and_resolve_references()
  c.augment.ops = tuple(OP_NAMES[o] for o in ops)
  c.augment.ops_view2 = IDENTITY_ON_GREY
  return c


def plot(ops, grid, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  k = len(ops)
  fig, ax = plt.subplots(figsize=(1.1 * k + 2.5, 1.0 * k + 1.5))
  shown = np.concatenate([grid, np.nanmean(grid, axis=1, keepdims=True)], axis=1) * 100
  im = ax.imshow(shown, cmap='viridis')
  for i in range(k):
    for j in range(k + 1):
      if np.isfinite(shown[i, j]):
        ax.text(j, i, f'{shown[i, j]:.1f}', ha='center', va='center', fontsize=8,
                color='white' if shown[i, j] < np.nanmean(shown) else 'black')
  ax.set_xticks(range(k + 1), list(ops) + ['Average'], rotation=45, ha='right')
  ax.set_yticks(range(k), ops)
  ax.set_xlabel('2nd transformation')
  ax.set_ylabel('1st transformation')
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, ax=ax, label='linear eval top-1 (%)')
  common.save_figure(fig, path)


def main(argv):
  del argv
  out = FLAGS.out
  common.setup_jax(out)
  for o in FLAGS.ops:
    if o not in OP_NAMES:
      raise app.UsageError(f'unknown op {o!r}; choose from {sorted(OP_NAMES)}')
  ops = tuple(FLAGS.ops)
  base, data = common.base_config_and_data(FLAGS.budget_scale, FLAGS.seed)
  t0 = time.time()
  k = len(ops)
  grid = np.full((k, k), np.nan)
  cells = []
  for i, j in itertools.combinations_with_replacement(range(k), 2):
    pair = (ops[i],) if i == j else (ops[i], ops[j])
    cell = common.run_cell('+'.join(pair), cell_config(base, pair), out, data)
    cell['ops'] = list(pair)
    cells.append(cell)
    grid[i, j] = grid[j, i] = cell['top1']['h']
  baselines, baseline_numbers = common.baselines_line(base, data, out)
  seconds = time.time() - t0
  note = common.budget_note(base, seconds, len(cells))
  rows = [[ops[i]] + [common.pct(grid[i, j]) for j in range(k)]
          + [common.pct(float(np.mean(grid[i])))] for i in range(k)]
  md = ('# Augmentation composition (SimCLR Figure 5), one branch augmented\n\n'
        'Linear eval top-1 (%) of h; row = 1st op, column = 2nd op, diagonal = the op alone; '
        'view 2 is the identity. ' + baselines + '\n\n'
        + common.markdown_table(['1st \\ 2nd'] + list(ops) + ['Average'], rows)
        + f'\n{note}\n')
  common.write_outputs(out, 'augmentation_grid', md, dict(
      ops=list(ops), grid=grid.tolist(), **baseline_numbers, cells=cells, note=note))
  plot(ops, grid, os.path.join(out, 'augmentation_grid.png'),
       'SimCLR Fig. 5, CPU scale\n(Fashion-MNIST, one branch augmented)')


if __name__ == '__main__':
  app.run(main)
