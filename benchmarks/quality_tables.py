"""The quality benchmark's tables (benchmarks/quality.py), apart from its flags so tests import
them: the per-method table, the margins by label fraction, and the fine-tuning steps rule."""

from simclr_jax.evaluation import protocols


def finetune_steps(fractions: list[float], steps: list[str], default: int) -> dict[float, int]:
  """Fine-tuning steps per label fraction: `steps` (--finetune_steps) has one value for every
  fraction or one per fraction; empty means `default` (config.eval.finetune_steps)."""
  counts = [int(s) for s in steps] or [default]
  if len(counts) == 1:
    counts = counts * len(fractions)
  if len(counts) != len(fractions) or min(counts) < 1:
    raise ValueError(f'--finetune_steps needs one positive value or one per --fractions '
                     f'entry ({fractions}), got {steps}')
  return dict(zip(fractions, counts))


def fmt(value, spec='.4f') -> str:
  return format(value, spec) if isinstance(value, (int, float)) else '-'


def table(rows: dict, fractions: list[float]) -> str:
  """The markdown table: a row per method, the few-label columns at `fractions`."""
  pct = protocols.percent
  few = [f for f in fractions if f < 1]
  header = (['method', 'pretrain minutes', 'images/s', 'linear top-1 (100% labels)']
            + [f'linear top-1 ({pct(f)[:-3]}% labels, mean of subsets)' for f in few]
            + ['kNN-20 top-1'] + [f'fine-tune {pct(f)[:-3]}% top-1 (mean)' for f in fractions])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name, r in rows.items():
    if 'blocked' in r:
      lines.append(f'| {name} | blocked: {r["blocked"]} |' + '|' * (len(header) - 2))
      continue
    knn_key = next((k for k in r if k.startswith('knn')), None)
    cells = ([name, fmt(r.get('pretrain_minutes'), '.2f'), fmt(r.get('images_per_s'), '.0f'),
              fmt(r['linear_100pct_top1'])]
             + [fmt(r[f'linear_{pct(f)}_top1']) for f in few] + [fmt(r.get(knn_key))]
             + [fmt(r.get(f'finetune_{pct(f)}_top1')) for f in fractions])
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def margin_table(rows: dict, fractions: list[float]) -> str:
  """Each pretrained row's margin over the baselines at each label fraction (the issue's "largest
  margin at 1% labels"): frozen linear probe minus raw pixels' probe, and fine-tuning minus the
  better of raw pixels' probe and the random-init encoder fine-tuned alike. '' without a
  pixels row or a pretrained row."""
  pct = protocols.percent
  pixels, scratch = rows.get('pixels'), rows.get('random_init')
  if not pixels or 'blocked' in pixels:
    return ''
  header = ('| labels | method | raw pixels, linear | random-init, fine-tuned | linear | '
            'fine-tuned | linear - pixels | fine-tuned - best baseline |')
  lines = [header, '|' + '---|' * 8]
  for f in sorted(set(fractions) | {1.0}):
    lin, ft = f'linear_{pct(f)}_top1', f'finetune_{pct(f)}_top1'
    base_ft = scratch.get(ft) if scratch else None
    for name, r in rows.items():
      if name in ('pixels', 'random_init', 'supervised') or 'blocked' in r:
        continue
      best = max(pixels[lin], base_ft) if base_ft is not None else pixels[lin]
      d_lin = 100 * (r[lin] - pixels[lin])
      d_ft = 100 * (r[ft] - best) if ft in r else None
      lines.append(f'| {pct(f)[:-3]}% | {name} | {fmt(pixels[lin])} | {fmt(base_ft)} | '
                   f'{fmt(r[lin])} | {fmt(r.get(ft))} | {d_lin:+.2f} | '
                   f'{fmt(d_ft, "+.2f")} |')
  return '\n'.join(lines) if len(lines) > 2 else ''


def standard_table(rows: dict, fractions: list[float]) -> str:
  """The rows on the standard protocol (scikit-learn logistic regression C=1 on standardised
  features, kNN-20 cosine with exp(sim / 0.1) votes), in %; '' when no row has it."""
  pct = protocols.percent
  few = [f for f in fractions if f < 1]
  header = (['method', 'linear 100 %'] + [f'linear {pct(f)[:-3]} % (mean of subsets)' for f in few]
            + ['kNN-20'])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name, r in rows.items():
    if 'std_linear_100pct_top1' not in r:
      continue
    cells = ([name, fmt(100 * r['std_linear_100pct_top1'], '.2f')]
             + [fmt(100 * r[f'std_linear_{pct(f)}_top1'], '.2f') for f in few]
             + [fmt(100 * r['std_knn20_top1'], '.2f')])
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) if len(lines) > 2 else ''
