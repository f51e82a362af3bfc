"""The study scripts' own logic (studies/): the one-branch grid config, budgets, tables."""

import numpy as np
import pytest

from simclr_jax.data import augment
from studies import augmentation_grid
from studies import common
from tests import helpers


def test_grid_augments_one_branch_only():
  images, _ = helpers.fashion_mnist('test', 8)
  config = augmentation_grid.cell_config(common.base_config(), ('cutout', 'rotate'))
  assert config.augment.ops == ('cutout', 'rotate')
  for seed in range(4):
    views = augment.two_views(images[seed], [seed, 1], config.augment, 28).numpy()
    # View 2 is the untouched image: 'grayscale' is exactly the identity on grey images.
    np.testing.assert_array_equal(views[1], images[seed])
    assert np.abs(views[0] - images[seed]).max() > 0.1


def test_budget_scale_fills_data_then_epochs():
  assert common.scaled_budget(1.0) == (common.TRAIN_EXAMPLES, common.EPOCHS)
  n, epochs = common.scaled_budget(1000.0)
  assert n == common.FULL_TRAIN_EXAMPLES
  assert n * epochs == pytest.approx(common.TRAIN_EXAMPLES * common.EPOCHS * 1000.0)
  config = common.base_config(budget_scale=4.0)
  common.set_epochs(config, 3.0, batch_size=128)
  assert common.epochs_of(config) == pytest.approx(3.0)


def test_markdown_table():
  table = common.markdown_table(['a', 'b'], [['x', 0.12345], ['y', None]])
  assert table.splitlines() == ['| a | b |', '|---|---|', '| x | 0.123 |', '| y |  |']
  assert common.pct(0.6789) == '67.9'
