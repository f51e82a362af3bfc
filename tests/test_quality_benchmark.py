"""benchmarks/quality_tables.py: the margin over the baselines per label fraction.

Imported by path, not with benchmarks/quality.py, whose absl flags (--seed, ...) would clash with
other test modules' in the same pytest process."""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
                     'quality_tables.py')


@pytest.fixture(scope='module')
def quality():
  spec = importlib.util.spec_from_file_location('quality_tables', _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _rows():
  return {
      'pixels': {'linear_100pct_top1': 0.84, 'linear_1pct_top1': 0.77, 'linear_10pct_top1': 0.81,
                 'knn20_top1': 0.85},
      # Fine-tuned from scratch: below pixels' probe at 1 %, above it at 10 % and 100 %.
      'random_init': {'linear_100pct_top1': 0.27, 'linear_1pct_top1': 0.24,
                      'linear_10pct_top1': 0.25, 'knn20_top1': 0.28, 'finetune_1pct_top1': 0.75,
                      'finetune_10pct_top1': 0.85, 'finetune_100pct_top1': 0.90},
      'simclr': {'pretrain_minutes': 15.0, 'images_per_s': 1000.0, 'linear_100pct_top1': 0.86,
                 'linear_1pct_top1': 0.775, 'linear_10pct_top1': 0.83, 'knn20_top1': 0.84,
                 'finetune_1pct_top1': 0.80, 'finetune_10pct_top1': 0.86,
                 'finetune_100pct_top1': 0.905},
      'lightly': {'blocked': 'no torch'},
  }


def test_margin_table_subtracts_the_better_baseline_at_each_fraction(quality):
  lines = quality.margin_table(_rows(), [0.01, 0.1, 1.0]).splitlines()
  cells = [[c.strip() for c in line.strip('|').split('|')] for line in lines[2:]]
  # labels, method, pixels, random-init FT, linear, FT, linear - pixels, FT - best baseline
  assert [c[:2] for c in cells] == [['1%', 'simclr'], ['10%', 'simclr'], ['100%', 'simclr']]
  assert [c[6] for c in cells] == ['+0.50', '+2.00', '+2.00']
  # 1 %: pixels' 0.77 is the better baseline; 10 % and 100 %: the random-init fine-tune.
  assert [c[7] for c in cells] == ['+3.00', '+1.00', '+0.50']


def test_margin_table_without_fine_tuning_at_a_fraction(quality):
  lines = quality.margin_table(_rows(), [0.01]).splitlines()[2:]
  # 100 % is always there (the linear probe on all labels); no fine-tune column asked for it.
  one = [c.strip() for c in lines[1].strip('|').split('|')]
  assert one[0] == '100%' and one[6] == '+2.00'
  assert quality.margin_table({'simclr': _rows()['simclr']}, [0.01]) == ''  # no pixels row
  baselines = {k: v for k, v in _rows().items() if k != 'simclr'}
  assert quality.margin_table(baselines, [0.01]) == ''  # nothing pretrained to compare


def test_table_has_a_column_per_fraction(quality):
  lines = quality.table(_rows(), [0.01, 0.1]).splitlines()
  assert 'linear top-1 (10% labels' in lines[0] and 'fine-tune 10% top-1' in lines[0]
  assert lines[0].count('|') == lines[2].count('|') == lines[-1].count('|')
  assert '| simclr | 15.00 | 1000 | 0.8600 | 0.7750 | 0.8300 | 0.8400 | 0.8000 | 0.8600 |' in lines
  assert lines[-1].startswith('| lightly | blocked: no torch |')


def test_finetune_steps_per_fraction(quality):
  assert quality.finetune_steps([0.01, 0.1], [], 500) == {0.01: 500, 0.1: 500}
  assert quality.finetune_steps([0.01, 0.1], ['20'], 500) == {0.01: 20, 0.1: 20}
  assert quality.finetune_steps([0.01, 1.0], ['500', '2000'], 7) == {0.01: 500, 1.0: 2000}
  with pytest.raises(ValueError, match='--finetune_steps needs one positive value'):
    quality.finetune_steps([0.01, 0.1, 1.0], ['500', '2000'], 500)


def test_standard_table_lists_the_rows_that_have_the_standard_protocol(quality):
  rows = _rows()
  rows['pixels'].update(std_linear_100pct_top1=0.844, std_linear_1pct_top1=0.7802,
                        std_knn20_top1=0.8447)
  lines = quality.standard_table(rows, [0.01]).splitlines()
  assert lines[0] == '| method | linear 100 % | linear 1 % (mean of subsets) | kNN-20 |'
  assert lines[2:] == ['| pixels | 84.40 | 78.02 | 84.47 |']  # only the row that has it
  assert quality.standard_table(_rows(), [0.01]) == ''
