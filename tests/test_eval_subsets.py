"""Tests for simclr_jax.evaluation.subsets on real Fashion-MNIST labels."""

import numpy as np
import pytest

from simclr_jax.evaluation import subsets
from tests import helpers


@pytest.fixture(scope='module')
def labels():
  return helpers.fashion_mnist('train', 2000)[1]


def test_fraction_is_class_balanced_sorted_and_unique(labels):
  indices = subsets.label_fraction_indices(labels, fraction=0.1, seed=0)
  assert indices.shape == (200,)  # round(0.1 * 2000 / 10) = 20 per class.
  assert np.all(np.diff(indices) > 0)
  np.testing.assert_array_equal(np.bincount(labels[indices], minlength=10), np.full(10, 20))


def test_per_class(labels):
  indices = subsets.label_fraction_indices(labels, per_class=3, seed=1)
  np.testing.assert_array_equal(np.bincount(labels[indices], minlength=10), np.full(10, 3))


def test_deterministic_for_a_seed(labels):
  first = subsets.label_fraction_indices(labels, fraction=0.01, seed=3)
  again = subsets.label_fraction_indices(labels, fraction=0.01, seed=3)
  other = subsets.label_fraction_indices(labels, fraction=0.01, seed=4)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_full_fraction_is_everything(labels):
  np.testing.assert_array_equal(subsets.label_fraction_indices(labels, fraction=1.0, seed=0),
                                np.arange(labels.size))


def test_errors(labels):
  with pytest.raises(ValueError, match='fewer than'):
    subsets.label_fraction_indices(labels, per_class=10_000, seed=0)
  with pytest.raises(ValueError, match='fewer than'):
    subsets.label_fraction_indices(np.array([0, 0, 0, 1]), per_class=2, seed=0)
  with pytest.raises(ValueError, match='exactly one'):
    subsets.label_fraction_indices(labels, fraction=0.1, per_class=3, seed=0)
  with pytest.raises(ValueError, match='exactly one'):
    subsets.label_fraction_indices(labels, seed=0)
  with pytest.raises(ValueError, match='too small'):
    subsets.label_fraction_indices(labels, fraction=1e-4, seed=0)
