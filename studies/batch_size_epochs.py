"""Figure 9 of SimCLR: linear top-1 for batch size x training length, at CPU scale.

  python -m studies.batch_size_epochs --out=/tmp/studies/batch_size_epochs

Every batch size trains for the same numbers of epochs of the train subset, so a bigger batch
takes fewer steps. The learning rate follows the config's rule (LARS, lr = base * B / 256, as
the paper's Figure 9). The paper (ImageNet ResNet-50, B = 256..8192, 100..800 epochs) finds that
bigger batches win clearly at 100 epochs and the gap shrinks with longer training.

Writes batch_size_epochs.{md,json,png} into --out.
"""

import os
import time

from absl import app
from absl import flags

from studies import common

flags.DEFINE_list('batch_sizes', ['128', '256', '512'], 'Global batch sizes (images).')
flags.DEFINE_list('epochs', ['1', '3'], 'Training lengths in epochs of the train subset; '
                  'scaled like the base budget once --budget_scale has filled the 60000 images.')
FLAGS = flags.FLAGS


def plot(batch_sizes, epochs, grid, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 3.6))
  width = 0.8 / len(batch_sizes)
  for b, batch in enumerate(batch_sizes):
    xs = [e + (b - (len(batch_sizes) - 1) / 2) * width for e in range(len(epochs))]
    ax.bar(xs, [100 * grid[b][e] for e in range(len(epochs))], width=width,
           label=f'batch {batch}')
  ax.set_xticks(range(len(epochs)), [f'{e:g} epochs' for e in epochs])
  values = [100 * v for row in grid for v in row]
  ax.set_ylim(min(values) - 5, max(values) + 3)
  ax.set_ylabel('linear eval top-1 (%)')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8, ncol=len(batch_sizes), loc='upper left')
  common.save_figure(fig, path)


def main(argv):
  del argv
  out = FLAGS.out
  common.setup_jax(out)
  base, data = common.base_config_and_data(FLAGS.budget_scale, FLAGS.seed)
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  # Epochs scale with the budget beyond the full dataset, as in base_config.
  epoch_scale = common.epochs_of(base) / common.EPOCHS
  epochs = [float(e) * epoch_scale for e in FLAGS.epochs]
  t0 = time.time()
  cells, grid = [], []
  for batch in batch_sizes:
    row = []
    for e in epochs:
      config = base.copy_and_resolve_references()
      common.set_epochs(config, e, batch_size=batch)
      cell = common.run_cell(f'b{batch}_e{e:g}', config, out, data)
      cell.update(batch_size=batch, epochs=e)
      cells.append(cell)
      row.append(cell['top1']['h'])
    grid.append(row)
  baselines, baseline_numbers = common.baselines_line(base, data, out)
  note = common.budget_note(base, time.time() - t0, len(cells))
  rows = [[b] + [common.pct(v) for v in grid[i]] for i, b in enumerate(batch_sizes)]
  steps = [[b] + [c['steps'] for c in cells if c['batch_size'] == b] for b in batch_sizes]
  md = ('# Batch size x training length (SimCLR Figure 9)\n\n'
        'Linear eval top-1 (%) of h. ' + baselines + '\n\n'
        + common.markdown_table(['batch \\ epochs'] + [f'{e:g}' for e in epochs], rows)
        + '\nOptimizer steps of each cell:\n\n'
        + common.markdown_table(['batch \\ epochs'] + [f'{e:g}' for e in epochs], steps)
        + f'\n{note}\n')
  common.write_outputs(out, 'batch_size_epochs', md, dict(
      batch_sizes=batch_sizes, epochs=epochs, grid=grid, **baseline_numbers,
      cells=cells, note=note))
  plot(batch_sizes, epochs, grid, os.path.join(out, 'batch_size_epochs.png'),
       'SimCLR Fig. 9 at CPU scale: batch size x epochs (Fashion-MNIST)')


if __name__ == '__main__':
  app.run(main)
