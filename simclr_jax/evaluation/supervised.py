"""Supervised baseline: the same encoder trained from scratch with cross-entropy on the labels.

The upper reference of the quality benchmark (benchmarks/quality.py): same ResNet, same two-view
augmentation (`pipeline.batches_from_source` with `config.augment`, drawn in the step when
`augment.on_device`; both views used as training examples), same optimizer and schedule
(`optim.build_optimizer(config.optimizer)`), same batch; only the loss differs. A Dense
classifier on h trains with the encoder (as part of the backbone, so it gets the same LARS/SGD
as the weights). Single device, jitted; no checkpoints (a baseline,
not a product).

The result is returned as `ContrastiveModel` variables (encoder trained; projection head and
online probe left at their initialisation), so every evaluation protocol (`run.Encoder`,
`features.extract_features`, `finetune.finetune`) reads it like a pretrained checkpoint.
"""

from collections.abc import Callable
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from simclr_jax import optim
from simclr_jax import time_budget
from simclr_jax import train_step as train_step_lib
from simclr_jax.data import pipeline
from simclr_jax.data import sources
from simclr_jax.models import build_model


def train_supervised(config: ml_collections.ConfigDict, *, num_steps: int,
                     on_step: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
  """Trains encoder + linear classifier on labelled, augmented views for `num_steps` steps.

  With config.time_budget_minutes > 0 it trains for that wall time instead, the schedule of a
  `num_steps` run spread over it (simclr_jax/time_budget.py), as pretraining does.

  Args:
    config: a pretraining config (dataset, augment, model, optimizer, batch_size, seed,
      time_budget_minutes are used; `method`, `loss` and the head are not).
    num_steps: optimiser steps (each sees `config.batch_size` images, 2 views each).
    on_step: called with the number of steps done after each step (timing).

  Returns:
    dict(variables={'params': {'encoder', 'head', 'probe'}, 'batch_stats': ...} as NumPy,
    step=, train_loss= (last step), train_accuracy= (last step, on augmented views),
    seconds= (wall time of the loop, compilation included)).
  """
  source = sources.load(config.dataset, config.dataset.train_split)
  channels = sources.image_shape(source, config.dataset.image_size)[-1]
  image_shape = (config.dataset.image_size, config.dataset.image_size, channels)
  # axis_name=None: one device, BN over the local batch.
  model = build_model(config.model, num_classes=source.num_classes, image_size=image_shape[0],
                      axis_name=None)
  variables = jax.device_get(train_step_lib.init_variables(model, image_shape=image_shape,
                                                           seed=config.seed))
  feature_dim = variables['params']['probe']['kernel'].shape[0]
  classifier_key = jax.random.key(config.seed + 1)
  params = {'encoder': variables['params']['encoder'],
            'classifier': {'kernel': 0.01 * jax.random.normal(
                classifier_key, (feature_dim, source.num_classes), jnp.float32),
                           'bias': jnp.zeros((source.num_classes,), jnp.float32)}}
  batch_stats = {'encoder': variables['batch_stats']['encoder']}
  steps_per_epoch = pipeline.steps_per_epoch(source.num_examples, config.batch_size)
  clock = (time_budget.Clock(config.time_budget_minutes * 60)
           if config.time_budget_minutes > 0 else None)
  tx, schedule = optim.build_optimizer(
      config.optimizer, global_batch_size=config.batch_size, total_steps=num_steps,
      steps_per_epoch=steps_per_epoch, learning_rate_from_host=clock is not None)
  opt_state = tx.init(params)

  def loss_fn(params, batch_stats, images, labels):
    h, updates = model.encoder.apply(
        {'params': params['encoder'], 'batch_stats': batch_stats['encoder']}, images,
        train=True, mutable=['batch_stats'])
    logits = h @ params['classifier']['kernel'] + params['classifier']['bias']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, ({'encoder': updates['batch_stats']}, accuracy)

  rng = train_step_lib.run_key(config.seed)

  @jax.jit
  def step_fn(params, opt_state, batch_stats, batch, step):
    # The pretraining step's views (config.augment.on_device: drawn here, as there).
    views = train_step_lib.batch_views(batch, rng, step, config)
    # [B, 2, H, W, C] -> [2B, H, W, C], view 1 of every image first, labels repeated to match.
    images = jnp.concatenate([views[:, 0], views[:, 1]])
    labels = jnp.concatenate([batch['label'], batch['label']])
    (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, batch_stats, loss, accuracy

  batches = pipeline.batches_from_source(
      source, config.augment, image_size=config.dataset.image_size,
      global_batch_size=config.batch_size, seed=config.seed,
      end_step=None if clock else num_steps, device_augment=config.augment.on_device,
      stream_shards=config.dataset.stream_shards)
  t0 = time.time()
  loss = accuracy = jnp.nan
  step, progress = 0, 0.0
  while progress < 1:
    if clock:
      opt_state = optim.with_learning_rate(
          opt_state, jnp.asarray(time_budget.learning_rate(schedule, num_steps, progress)))
    batch = next(batches)
    params, opt_state, batch_stats, loss, accuracy = step_fn(params, opt_state, batch_stats,
                                                             batch, jnp.int32(step))
    if not np.isfinite(float(loss)):  # float() also syncs, so on_step timings are real
      raise FloatingPointError(f'supervised loss became {float(loss)} at step {step}')
    step += 1
    if clock:
      clock.start()  # after the first (compiling) step, as in pretraining
      progress = clock.progress()
    else:
      progress = step / num_steps
    if on_step is not None:
      on_step(step)
  variables['params']['encoder'] = jax.device_get(params['encoder'])
  variables['batch_stats']['encoder'] = jax.device_get(batch_stats['encoder'])
  return dict(variables=variables, step=step, train_loss=float(loss),
              train_accuracy=float(accuracy), seconds=time.time() - t0)
