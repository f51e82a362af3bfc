"""Tests for simclr_jax.evaluation.features on a tiny ResNet-18 and real Fashion-MNIST."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax.evaluation import features
from simclr_jax.models import build_model
from tests import helpers

IMAGE_SIZE = 16
NUM_IMAGES = 100


@pytest.fixture(scope='module')
def tiny():
  """(model, variables, images [100, 16, 16, 1] float32): ResNet-18 at width 1/8, 2-layer head."""
  model = build_model(helpers.tiny_config().model, num_classes=10, image_size=IMAGE_SIZE)
  # 'rbg' keys: the initialisers compile several times faster than with threefry on CPU.
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 1)),
                                             train=False))(jax.random.key(0, impl='rbg'))
  images, _ = helpers.fashion_mnist('train', NUM_IMAGES)
  images = np.asarray(jax.image.resize(images, (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 1), 'linear'))
  return model, variables, images


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _assert_trees_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_matches_one_big_batch_for_any_batch_size_and_leaves_variables_alone(tiny):
  model, variables, images = tiny
  before = _copy(variables)
  reference = np.asarray(model.apply(variables, images, train=False)['h'])
  # 100 = 3 * 32 + 4 = 14 * 7 + 2: both runs pad their last batch.
  by_32 = features.extract_features(model, variables, images, batch_size=32)
  by_7 = features.extract_features(model, variables, images, batch_size=7)
  assert by_32.shape == by_7.shape == (NUM_IMAGES, reference.shape[1])
  assert by_32.dtype == np.float32
  np.testing.assert_allclose(by_32, reference, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(by_7, reference, rtol=1e-5, atol=1e-6)
  _assert_trees_bitwise_equal(variables, before)


def test_head_features_and_uint8_input(tiny):
  model, variables, images = tiny
  outputs = model.apply(variables, images[:10], train=False)
  head_1 = features.extract_features(model, variables, images[:10], batch_size=32,
                                     feature='head_1')
  np.testing.assert_allclose(head_1, np.asarray(outputs['head_outputs'][1]), rtol=1e-5,
                             atol=1e-6)
  as_uint8 = np.round(images[:10] * 255).astype(np.uint8)
  from_uint8 = features.extract_features(model, variables, as_uint8, batch_size=32)
  from_float = features.extract_features(model, variables, as_uint8 / np.float32(255),
                                         batch_size=32)
  np.testing.assert_allclose(from_uint8, from_float, rtol=1e-5, atol=1e-6)


def test_feature_names():
  assert features.parse_feature('h') == 0
  assert features.parse_feature('head_0') == 0
  assert features.parse_feature('head_2') == 2
  for bad in ('z', 'head_', 'head_-1', 'head_a'):
    with pytest.raises(ValueError):
      features.parse_feature(bad)


def test_missing_head_layer_is_a_clear_error(tiny):
  model, variables, images = tiny
  with pytest.raises(ValueError, match='head_outputs has 3 entries'):
    features.extract_features(model, variables, images[:4], batch_size=4, feature='head_3')


def test_topk_accuracy():
  logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
  labels = np.array([1, 1, 0, 1])
  assert features.topk_accuracy(logits, labels, 1) == 0.25
  assert features.topk_accuracy(logits, labels, 2) == 0.75
  assert features.topk_accuracy(logits, labels, 5) == 1.0  # k capped at the 3 classes.
