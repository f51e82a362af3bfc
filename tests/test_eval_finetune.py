"""Tests for simclr_jax.evaluation.finetune on a tiny ResNet-18 and real Fashion-MNIST."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax.evaluation import finetune
from simclr_jax.models import build_model
from tests import helpers

IMAGE_SIZE = 16


@pytest.fixture(scope='module')
def tiny():
  """(model, variables, images [192, 16, 16, 1], labels) with a ResNet-18 at width 1/8."""
  model = build_model(helpers.tiny_config().model, num_classes=10, image_size=IMAGE_SIZE)
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 1)),
                                             train=False))(jax.random.key(0, impl='rbg'))
  images, labels = helpers.fashion_mnist('train', 192)
  images = np.asarray(jax.image.resize(images, (192, IMAGE_SIZE, IMAGE_SIZE, 1), 'linear'))
  return model, variables, images, labels


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _equal(a, b) -> bool:
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(np.asarray(x), np.asarray(y))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_block_4_trains_only_the_classifier(tiny):
  model, variables, images, labels = tiny
  before = _copy(variables)
  result = finetune.finetune(
      model, variables, images[:128], labels[:128], images[128:], labels[128:], num_classes=10,
      fine_tune_after_block=4, head_layer=0, steps=4, batch_size=32, learning_rate=0.5, seed=0)
  assert _equal(result['variables'], before)  # Encoder, head, probe: params and batch_stats.
  assert _equal(variables, before)  # The input was not modified either.
  classifier = result['classifier']
  assert classifier['kernel'].shape == (64, 10) and classifier['bias'].shape == (10,)
  # The bias starts at zero, so a non-zero bias shows the classifier did train.
  assert np.any(classifier['bias'] != 0)
  assert 0.0 <= result['top1'] <= result['top5'] <= 1.0
  assert np.isfinite(result['train_loss'])


def test_partial_finetune_updates_exactly_the_unfrozen_parts(tiny):
  model, variables, images, labels = tiny
  before = _copy(variables)
  result = finetune.finetune(
      model, variables, images[:128], labels[:128], images[128:], labels[128:], num_classes=10,
      fine_tune_after_block=2, head_layer=1, steps=2, batch_size=16, learning_rate=0.1, seed=0,
      augment_fn=functools.partial(finetune.crop_and_flip, area_range=(0.5, 1.0)))
  params, stats = result['variables']['params'], result['variables']['batch_stats']
  old_params, old_stats = before['params'], before['batch_stats']
  frozen = ['stem_conv', 'stem_bn'] + [f'stage{s}_block{b}' for s in (1, 2) for b in (1, 2)]
  trained = [f'stage{s}_block{b}' for s in (3, 4) for b in (1, 2)]
  for name in frozen:
    assert _equal(params['encoder'][name], old_params['encoder'][name]), name
    if name in stats['encoder']:
      assert _equal(stats['encoder'][name], old_stats['encoder'][name]), name
  for name in trained:
    assert not _equal(params['encoder'][name], old_params['encoder'][name]), name
    assert not _equal(stats['encoder'][name], old_stats['encoder'][name]), name
  # The classifier reads head layer 1: layer 1 trains, layer 2 gets no gradient, the probe neither.
  assert not _equal(params['head']['dense_1'], old_params['head']['dense_1'])
  assert not _equal(stats['head']['bn_1'], old_stats['head']['bn_1'])
  assert _equal(params['head']['dense_2'], old_params['head']['dense_2'])
  assert _equal(params['probe'], old_params['probe'])
  assert result['classifier']['kernel'].shape == (64, 10)
  assert _equal(variables, before)


def test_crop_and_flip():
  images, _ = helpers.fashion_mnist('train', 8)
  images = jnp.asarray(images)
  # A full-size square crop is the identity, so each output is the image or its mirror.
  same = finetune.crop_and_flip(jax.random.key(0), images, area_range=(1.0, 1.0),
                                aspect_ratio_range=(1.0, 1.0))
  for image, out in zip(np.asarray(images), np.asarray(same)):
    assert (np.allclose(out, image, atol=1e-5) or np.allclose(out, image[:, ::-1], atol=1e-5))
  cropped = np.asarray(finetune.crop_and_flip(jax.random.key(1), images))
  assert cropped.shape == images.shape and cropped.dtype == np.float32
  assert cropped.min() >= -1e-6 and cropped.max() <= 1 + 1e-6
  assert not np.allclose(cropped, images)
