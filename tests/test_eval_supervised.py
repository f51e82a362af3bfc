"""Tests for simclr_jax.evaluation.supervised on a tiny ResNet-18 and real Fashion-MNIST."""

import jax
import numpy as np
import pytest

from simclr_jax.evaluation import features
from simclr_jax.evaluation import supervised
from simclr_jax.models import build_model
from simclr_jax import train_step as train_step_lib
from tests import helpers


@pytest.mark.parametrize('on_device', [False, True])  # views from tf.data / drawn in the step
def test_trains_the_encoder_only_and_gives_contrastive_model_variables(on_device):
  config = helpers.tiny_config(**{'dataset.max_train_examples': 256,
                                  'augment.on_device': on_device})
  steps = []
  out = supervised.train_supervised(config, num_steps=3, on_step=steps.append)
  assert steps == [1, 2, 3] and out['step'] == 3
  assert np.isfinite(out['train_loss']) and 0.0 <= out['train_accuracy'] <= 1.0

  model = build_model(config.model, num_classes=10, image_size=28, axis_name=None)
  init = jax.device_get(train_step_lib.init_variables(model, image_shape=(28, 28, 1),
                                                      seed=config.seed))
  variables = out['variables']
  # Same tree as a pretrained ContrastiveModel, so every evaluation protocol can read it.
  assert jax.tree.structure(variables) == jax.tree.structure(init)
  changed = lambda a, b: any(not np.array_equal(x, y)  # pylint: disable=unnecessary-lambda-assignment
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(variables['params']['encoder'], init['params']['encoder'])
  assert changed(variables['batch_stats']['encoder'], init['batch_stats']['encoder'])
  # Head and online probe are not part of the supervised network: left at their init.
  assert not changed(variables['params']['head'], init['params']['head'])
  assert not changed(variables['params']['probe'], init['params']['probe'])

  images, _ = helpers.fashion_mnist('test', 8)
  h = features.extract_features(model, variables, images, batch_size=8)
  assert h.shape == (8, 64) and np.all(np.isfinite(h))
