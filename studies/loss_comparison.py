"""Tables 4 and 5 of SimCLR: NT-Xent vs NT-Logistic vs margin triplet, each at its best setting.

  python -m studies.loss_comparison --out=/tmp/studies/loss_comparison

Each loss gets a small sweep of its one knob (the paper tunes more, appendix B.10: learning rate
too, and margin in {0, 0.4, 0.8, 1.6}, NT-Logistic temperature in {0.1, 0.2, 0.5, 1}); the table
reports the best cell per loss, like Table 4, with and without semi-hard negative mining ("sh"),
and NT-Xent's temperature / l2-normalisation sweep, like Table 5. All losses use the same
gathered negatives (both views, 2N - 2 per anchor): simclr_jax/methods/losses.py.

Writes loss_comparison.{md,json,png} into --out.
"""

import os
import time

from absl import app
from absl import flags

from studies import common

flags.DEFINE_list('nt_xent_temperatures', ['0.2', '0.5'], 'NT-Xent tau (l2-normalised).')
flags.DEFINE_list('nt_xent_unnormalized_temperatures', ['10'],
                  'NT-Xent tau on raw dot products (paper Table 5: 10, 100).')
flags.DEFINE_list('nt_logistic_temperatures', ['0.2', '0.5'], 'NT-Logistic tau.')
flags.DEFINE_list('margins', ['0.4', '0.8'], 'Margin triplet m.')
FLAGS = flags.FLAGS

# Paper, ImageNet ResNet-50 linear eval top-1 % (Table 4; Table 5: contrastive over 4096 examples).
PAPER_TABLE4 = {'Margin': 50.9, 'NT-Logi.': 51.6, 'Margin (sh)': 57.5, 'NT-Logi. (sh)': 57.9,
                'NT-Xent': 63.9}
PAPER_TABLE5 = {('yes', 0.05): 59.7, ('yes', 0.1): 64.4, ('yes', 0.5): 60.7, ('yes', 1.0): 58.0,
                ('no', 10.0): 57.2, ('no', 100.0): 57.0}


def sweep(base):
  """(family, knob label, cell name, config) for every cell of the study."""
  cells = []

  def add(family, knob, cell_name, **loss):
    c = base.copy_and_resolve_references()
    c.loss.update(loss)
    cells.append((family, knob, cell_name, c))

  for t in map(float, FLAGS.nt_xent_temperatures):
    add('NT-Xent', f'tau={t:g}', f'nt_xent_l2_t{t:g}', name='nt_xent', temperature=t)
  for t in map(float, FLAGS.nt_xent_unnormalized_temperatures):
    add('NT-Xent (no l2)', f'tau={t:g}', f'nt_xent_dot_t{t:g}', name='nt_xent', temperature=t,
        normalize=False)
  for mining, suffix in (('none', ''), ('semi_hard', ' (sh)')):
    for t in map(float, FLAGS.nt_logistic_temperatures):
      add('NT-Logi.' + suffix, f'tau={t:g}', f'nt_logistic_{mining}_t{t:g}', name='nt_logistic',
          temperature=t, negative_mining=mining)
    for m in map(float, FLAGS.margins):
      add('Margin' + suffix, f'm={m:g}', f'margin_{mining}_m{m:g}', name='margin_triplet',
          margin=m, negative_mining=mining)
  return cells


def plot(best, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(best)
  fig, ax = plt.subplots(figsize=(7.5, 3.6))
  x = range(len(names))
  ours = [100 * best[n]['top1']['h'] for n in names]
  bars = ax.bar([i - 0.2 for i in x], ours, width=0.4, label='ours (Fashion-MNIST, CPU scale)')
  paper = [PAPER_TABLE4.get(n, float('nan')) for n in names]
  ax.bar([i + 0.2 for i in x], paper, width=0.4, label='paper (ImageNet, Table 4)', alpha=0.6)
  ax.bar_label(bars, fmt='%.1f', fontsize=8)
  ax.set_xticks(list(x), names, rotation=20)
  ax.set_ylabel('linear eval top-1 (%)')
  ax.set_ylim(min(ours + [p for p in paper if p == p]) - 10, 100)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8, loc='upper left', ncol=2)
  common.save_figure(fig, path)


def main(argv):
  del argv
  out = FLAGS.out
  common.setup_jax(out)
  base, data = common.base_config_and_data(FLAGS.budget_scale, FLAGS.seed)
  t0 = time.time()
  cells, best = [], {}
  for family, knob, name, config in sweep(base):
    cell = common.run_cell(name, config, out, data)
    cell.update(family=family, knob=knob)
    cells.append(cell)
    if family not in best or cell['top1']['h'] > best[family]['top1']['h']:
      best[family] = cell
  baselines, baseline_numbers = common.baselines_line(base, data, out)
  note = common.budget_note(base, time.time() - t0, len(cells))
  order = ['Margin', 'NT-Logi.', 'Margin (sh)', 'NT-Logi. (sh)', 'NT-Xent', 'NT-Xent (no l2)']
  best = {k: best[k] for k in order if k in best}
  table4 = [[k, best[k]['knob'], common.pct(best[k]['top1']['h']), PAPER_TABLE4.get(k)]
            for k in best]
  table5 = []
  for cell in cells:
    if cell['family'].startswith('NT-Xent'):
      l2 = 'no' if 'no l2' in cell['family'] else 'yes'
      tau = float(cell['knob'].split('=')[1])
      table5.append([l2, f'{tau:g}', common.pct(cell['contrast_accuracy']),
                     common.pct(cell['top1']['h']), PAPER_TABLE5.get((l2, tau))])
  sweep_rows = [[c['family'], c['knob'], common.pct(c['top1']['h']), c['train_loss'],
                 common.pct(c['contrast_accuracy'])] for c in cells]
  md = ('# Loss functions (SimCLR Tables 4 and 5)\n\n'
        'Linear eval top-1 (%) of h. ' + baselines + '\n\n'
        '## Best setting per loss (Table 4)\n\n'
        + common.markdown_table(['loss', 'best knob', 'ours', 'paper (ImageNet)'], table4)
        + '\n## NT-Xent: l2 normalisation and temperature (Table 5)\n\n'
        + common.markdown_table(['l2 norm?', 'tau', 'contrastive acc. (last step)', 'ours',
                                 'paper (ImageNet)'], table5)
        + '\n## Every cell\n\n'
        + common.markdown_table(['loss', 'knob', 'top-1', 'final train loss',
                                 'contrastive acc.'], sweep_rows)
        + f'\n{note}\n')
  common.write_outputs(out, 'loss_comparison', md, dict(
      best={k: dict(knob=v['knob'], top1=v['top1']['h']) for k, v in best.items()},
      paper_table4=PAPER_TABLE4, **baseline_numbers, cells=cells, note=note))
  plot(best, os.path.join(out, 'loss_comparison.png'),
       'SimCLR Table 4 at CPU scale: best setting per loss')


if __name__ == '__main__':
  app.run(main)
