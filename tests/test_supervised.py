"""The supervised baseline (`config.method = 'supervised'`) on real Fashion-MNIST: its loss against
a float64 reference, and a run of the pretraining loop that learns the labels."""

import jax
import numpy as np

from simclr_jax import methods
from simclr_jax import train
from simclr_jax import train_step as train_step_lib
from simclr_jax.methods import base
from simclr_jax.models import build_model
from tests import helpers


def test_loss_is_the_cross_entropy_of_the_linear_classifier_on_h():
  config = helpers.tiny_config(method='supervised')
  images, labels = helpers.fashion_mnist('train', 8)
  views = helpers.simple_views(images)
  model = build_model(config.model, num_classes=10, image_size=28, axis_name=None)
  variables = train_step_lib.init_variables(model, image_shape=(28, 28, 1), seed=0)
  params = jax.tree.map(np.asarray, variables['params'])
  # A classifier that is not at its (small) initialisation, so the logits matter.
  rng = np.random.default_rng(0)
  params['probe'] = {'kernel': rng.normal(size=params['probe']['kernel'].shape).astype(np.float32),
                     'bias': rng.normal(size=10).astype(np.float32)}
  loss, aux = methods.get_method('supervised').loss(
      model, params, variables['batch_stats'], {}, views, jax.random.key(0), config=config,
      axis_name=None, labels=labels)

  outputs = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                        base.split_views(views), train=True, mutable=['batch_stats'])[0]
  h = np.asarray(outputs['h'], np.float64)
  logits = h @ params['probe']['kernel'].astype(np.float64) + params['probe']['bias']
  both = np.concatenate([labels, labels])
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  want = -log_p[np.arange(16), both].mean()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(aux.metrics['train_accuracy']),
                             np.mean(logits.argmax(-1) == both), atol=1e-7)


def test_pretraining_loop_trains_the_encoder_on_the_labels(tmp_path):
  config = helpers.tiny_config(method='supervised', num_train_steps=40, batch_size=64,
                               log_every_steps=10, checkpoint_every_steps=20)
  config.dataset.max_train_examples = 2048
  config.optimizer.learning_rate = 0.3
  out = train.pretrain(config, str(tmp_path))
  assert out['step'] == 40
  history = out['history']
  # Learns the labels: well above chance (0.1) on its augmented training views by step 40.
  assert history[0]['train/train_accuracy'] < 0.3 < history[-1]['train/train_accuracy']
  assert history[-1]['train/loss'] < history[0]['train/loss']
  init = train_step_lib.init_variables(
      build_model(config.model, num_classes=10, image_size=28, axis_name=None),
      image_shape=(28, 28, 1), seed=config.seed)
  assert any(not np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(out['state'].params['encoder']), jax.tree.leaves(init['params']['encoder'])))
