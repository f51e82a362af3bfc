"""Every --mode protocol writes its key into results.json (tiny encoder, real data)."""

import os

import numpy as np
import pytest

from simclr_jax import run
from simclr_jax.data import sources
from tests import helpers


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  config = helpers.tiny_eval_config()
  run.train_and_evaluate(config, workdir, mode='pretrain')
  return config, workdir


def test_sklearn_digits_is_a_real_offline_source():
  cfg = helpers.tiny_config().dataset
  with cfg.unlocked():
    cfg.name = 'sklearn_digits'
  train, test = sources.load(cfg, 'train'), sources.load(cfg, 'test')
  assert train.images.shape == (1297, 8, 8, 1) and test.images.shape == (500, 8, 8, 1)
  assert set(np.unique(train.labels)) == set(range(10))
  assert train.images.max() == 255


def test_eval_all_writes_every_protocol(pretrained):
  config, workdir = pretrained
  results = run.train_and_evaluate(config, workdir, mode='eval_all')
  for key in ('linear_eval_top1', 'linear_eval_top5', 'pixel_baseline_top1', 'knn20_top1',
              'knn200_top1', 'finetune_10pct_top1', 'linear_10pct_top1', 'linear_100pct_top1',
              'pixel_10pct_top1', 'pixel_100pct_top1', 'embed_plot'):
    assert key in results, key
  assert os.path.getsize(results['embed_plot']) > 1000
  # The few-label probe is the mean over config.eval.label_subsets subsets, each recorded.
  assert len(results['linear_10pct_top1_runs']) == config.eval.label_subsets
  np.testing.assert_allclose(results['linear_10pct_top1'],
                             np.mean(results['linear_10pct_top1_runs']))
  assert len(results['linear_100pct_top1_runs']) == 1
  # Raw pixels on the same subsets: all labels give the linear protocol's pixel baseline.
  np.testing.assert_allclose(results['pixel_100pct_top1'], results['pixel_baseline_top1'],
                             atol=2e-3)
  # No l2_reg_grid: every fit used the fixed weight decay.
  assert results['linear_10pct_l2_regs'] == [config.eval.l2_reg] * config.eval.label_subsets


def test_evaluate_mode_runs_the_paper_linear_protocol(pretrained):
  """`linear_sgd` (the paper's SGD protocol, data-parallel on the shared loop) by name."""
  config, workdir = pretrained
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.eval.protocols = ('linear_sgd',)
    config.eval.linear_epochs = 4
    config.eval.linear_batch_size = 64
  results = run.train_and_evaluate(config, workdir, mode='evaluate')
  # 4 epochs of 600 images at 64 a step; its accuracy is tested in tests/test_eval_linear.py.
  assert results['linear_sgd_steps'] == 38 and results['linear_sgd_protocol'] == 'sgd'
  assert 0 <= results['linear_sgd_top1'] <= results['linear_sgd_top5'] <= 1


def test_random_init_results_live_beside_pretrained(pretrained):
  config, workdir = pretrained
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.init = 'random'
    config.eval.l2_reg_grid = (1e-3, 1.0)  # picked by cross-validation on the training labels
    config.eval.l2_reg_folds = 2
  results = run.train_and_evaluate(config, workdir, mode='linear_eval')
  assert 'random_init_linear_eval_top1' in results and 'linear_eval_top1' in results
  assert results['random_init_linear_eval_l2_reg'] in (1e-3, 1.0)


def test_transfer_to_digits(pretrained):
  config, workdir = pretrained
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.eval.transfer_dataset = 'sklearn_digits'
  results = run.train_and_evaluate(config, workdir, mode='transfer')
  assert 0.3 < results['transfer_sklearn_digits_top1'] <= 1.0
  assert 0.3 < results['transfer_sklearn_digits_pixel_baseline_top1'] <= 1.0


def test_eval_without_checkpoint_names_the_fix(tmp_path):
  config = helpers.tiny_config()
  config.dataset.train_split = 'train[:100]'
  config.dataset.eval_split = 'test[:100]'
  with pytest.raises(FileNotFoundError, match='pretrain first|init=random'):
    run.train_and_evaluate(config, str(tmp_path), mode='linear_eval')
