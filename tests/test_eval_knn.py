"""Tests for simclr_jax.evaluation.knn against a float64 NumPy brute-force reference."""

import numpy as np
import pytest

from simclr_jax.evaluation import knn
from tests import helpers


def _knn_reference(train, train_labels, test, *, k, temperature, num_classes):
  """Brute force: cosine similarity to every training point, exp(sim / T) votes of the top k."""
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  predictions = []
  for query in test:
    similarity = train @ query
    neighbours = np.argsort(-similarity, kind='stable')[:k]
    votes = np.zeros(num_classes)
    for i in neighbours:
      votes[train_labels[i]] += np.exp(similarity[i] / temperature)
    predictions.append(np.argmax(votes))
  return np.array(predictions)


@pytest.mark.parametrize('k, temperature', [(1, 0.07), (7, 0.07), (20, 0.5), (500, 1.0)])
def test_equals_brute_force(k, temperature):
  rng = np.random.default_rng(k)
  num_classes = 5
  train_labels = rng.integers(0, num_classes, size=300)
  centres = rng.normal(size=(num_classes, 16))
  train = centres[train_labels] + 1.5 * rng.normal(size=(300, 16))
  test = centres[rng.integers(0, num_classes, size=53)] + 1.5 * rng.normal(size=(53, 16))
  # batch_size 16 does not divide 53: the padded last batch must not change anything.
  predictions = knn.knn_classify(train.astype(np.float32), train_labels, test.astype(np.float32),
                                 k=k, temperature=temperature, num_classes=num_classes,
                                 batch_size=16)
  reference = _knn_reference(train, train_labels, test, k=min(k, 300), temperature=temperature,
                             num_classes=num_classes)
  assert predictions.shape == (53,) and predictions.dtype == np.int32
  np.testing.assert_array_equal(predictions, reference)


def test_knn_on_fashion_mnist_pixels():
  train_images, train_labels = helpers.fashion_mnist('train', 2000)
  test_images, test_labels = helpers.fashion_mnist('test', 500)
  top1 = knn.knn_eval(train_images.reshape(2000, -1), train_labels, test_images.reshape(500, -1),
                      test_labels, k=20, temperature=0.07, num_classes=10, batch_size=128)
  assert top1 > 0.7


@pytest.mark.parametrize('num_devices', [8, 1])
def test_sharded_bank_equals_brute_force(num_devices):
  """The feature bank sharded over 8 devices (per-shard top-k, then a global top-k) predicts as
  the float64 brute force on real pixels; 301 and 97 examples do not divide the batch of 64, so
  the padded rows of the last batches must never vote or count."""
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluation import data  # pylint: disable=g-import-not-at-top
  train_x, train_y = helpers.fashion_mnist('train', 301)
  test_x, test_y = helpers.fashion_mnist('test', 97)
  mapper = parallel.Mapper(num_devices=num_devices)

  def steps(x, y):  # pixels as features, laid out as split_features lays out features
    split = data.EvalSplit.from_arrays(x, y, num_classes=10)
    for batch in split.batches(64):
      batch = mapper.put_batch(batch)
      yield {'features': batch['image'].reshape(64, -1), 'label': batch['label'],
             'mask': batch['mask']}

  ks = (1, 20, 200)
  top1 = knn.sharded_knn_eval(steps(train_x, train_y), steps(test_x, test_y),
                              num_train_steps=5, ks=ks, temperature=0.07, num_classes=10,
                              mapper=mapper)
  flat_train = train_x.reshape(301, -1).astype(np.float64)
  flat_test = test_x.reshape(97, -1).astype(np.float64)
  for k in ks:
    reference = _knn_reference(flat_train, train_y, flat_test, k=k, temperature=0.07,
                               num_classes=10)
    assert top1[k] == pytest.approx(np.mean(reference == test_y), abs=1e-9), k
