"""Figure 8 of SimCLR: projection head none / linear / nonlinear, evaluated from h and g(h).

  python -m studies.head_comparison --out=/tmp/studies/head_comparison

Each head is pretrained once; the frozen network is then linear-evaluated on h (the encoder
output, config.eval.feature='h') and on every head layer ('head_<i>'; the last one is z = g(h)).
With head 'none' the loss sits on h itself, so g(h) = h. The paper finds nonlinear > linear by
~3% and > none by >10% when evaluating h, and h > g(h) by >10% (Figure 8, ImageNet ResNet-50).

Writes head_comparison.{md,json,png} into --out.
"""

import os
import time

from absl import app
from absl import flags

from studies import common

flags.DEFINE_list('head_modes', ['none', 'linear', 'nonlinear'], 'config.model.head_mode values.')
FLAGS = flags.FLAGS

# Approximate top-1 % from h, derived from the paper's text on Figure 8 (which prints no numbers):
# nonlinear ~ the default setting's 63.9 (Table 4), linear ~3 points lower, none >10 lower.
PAPER_FIGURE8_APPROX = {'none': 50.0, 'linear': 61.0, 'nonlinear': 64.0}


def features_of(config) -> list[str]:
  """'h', then every head layer: head_1..head_n (none: only h)."""
  num_layers = {'none': 0, 'linear': 1, 'nonlinear': config.model.head_num_layers}
  return ['h'] + [f'head_{i}' for i in range(1, num_layers[config.model.head_mode] + 1)]


def plot(cells, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  modes = [c['head_mode'] for c in cells]
  h = [100 * c['top1']['h'] for c in cells]
  gh = [100 * c['top1'][c['g_feature']] for c in cells]
  fig, ax = plt.subplots(figsize=(6, 3.6))
  x = range(len(modes))
  b1 = ax.bar([i - 0.2 for i in x], h, width=0.4, label='h (before the head)')
  b2 = ax.bar([i + 0.2 for i in x], gh, width=0.4, label='g(h) = z')
  ax.bar_label(b1, fmt='%.1f', fontsize=8)
  ax.bar_label(b2, fmt='%.1f', fontsize=8)
  ax.set_xticks(list(x), [f'{m} head' for m in modes])
  ax.set_ylabel('linear eval top-1 (%)')
  ax.set_ylim(min(h + gh) - 10, 100)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8, loc='upper left', ncol=2)
  common.save_figure(fig, path)


def main(argv):
  del argv
  out = FLAGS.out
  common.setup_jax(out)
  base, data = common.base_config_and_data(FLAGS.budget_scale, FLAGS.seed)
  t0 = time.time()
  cells = []
  for mode in FLAGS.head_modes:
    config = base.copy_and_resolve_references()
    config.model.head_mode = mode
    features = features_of(config)
    cell = common.run_cell(f'head_{mode}', config, out, data, features=features)
    cell.update(head_mode=mode, g_feature=features[-1], hidden_features=features[1:-1])
    cells.append(cell)
  baselines, baseline_numbers = common.baselines_line(base, data, out)
  note = common.budget_note(base, time.time() - t0, len(cells))
  rows = []
  for c in cells:
    hidden = [c['top1'][f] for f in c['hidden_features']]
    rows.append([c['head_mode'], common.pct(c['top1']['h']),
                 common.pct(c['top1'][c['g_feature']]), common.pct(hidden[0] if hidden else None),
                 f"~{PAPER_FIGURE8_APPROX[c['head_mode']]:g}"])
  md = ('# Projection head (SimCLR Figure 8)\n\n'
        f'Linear eval top-1 (%). h: encoder output ({int(64 * 8 * base.model.width_multiplier)}'
        f'-d); g(h): the head\'s output z ({base.model.head_out_dim}-d; = h for head none). '
        + baselines + '\n\n'
        + common.markdown_table(['head', 'from h', 'from g(h)', 'from hidden layer',
                                 'paper, from h (approx.)'], rows)
        + f'\n{note}\n')
  common.write_outputs(out, 'head_comparison', md, dict(
      **baseline_numbers, cells=cells, note=note,
      paper_figure8_approx=PAPER_FIGURE8_APPROX))
  plot(cells, os.path.join(out, 'head_comparison.png'),
       'SimCLR Fig. 8 at CPU scale: evaluating h vs g(h)')


if __name__ == '__main__':
  app.run(main)
