"""Supervised training of a new linear classifier on top of a (partly) frozen model.

One loop serves two protocols:
- `finetune`: SimCLR/SimCLRv2 fine-tuning. A new Dense classifier reads
  `head_outputs[head_layer]` (0 = h; 1 = first projection layer, SimCLRv2), and the encoder blocks
  after `fine_tune_after_block` train with it (plus projection layers 1..head_layer).
- `linear.linear_eval_official`: everything frozen in inference mode, only the classifier trains.

Optimiser as in the paper (Appendix B.5): Nesterov momentum SGD, cosine decay, no warmup, no
weight decay. Single device; the batch is drawn on the host.
"""

from collections.abc import Callable, Iterator, Mapping
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from simclr_jax.evaluation import features as features_lib

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def _crop_and_flip_one(key: jax.Array, image: jax.Array, *, area_range: tuple[float, float],
                       aspect_ratio_range: tuple[float, float]) -> jax.Array:
  height, width, channels = image.shape
  area_key, ratio_key, y_key, x_key, flip_key = jax.random.split(key, 5)
  area = jax.random.uniform(area_key, minval=area_range[0], maxval=area_range[1]) * height * width
  # Log-uniform aspect ratio (width / height), as in Inception-style crops.
  ratio = jnp.exp(jax.random.uniform(ratio_key, minval=math.log(aspect_ratio_range[0]),
                                     maxval=math.log(aspect_ratio_range[1])))
  # Clipping replaces the reference's rejection sampling (up to 100 tries, then a centre crop):
  # the crop stays inside the image and the sampling stays branch-free under jit.
  crop_height = jnp.clip(jnp.sqrt(area / ratio), 1.0, height)
  crop_width = jnp.clip(jnp.sqrt(area * ratio), 1.0, width)
  top = jax.random.uniform(y_key) * (height - crop_height)
  left = jax.random.uniform(x_key) * (width - crop_width)
  # Continuous coordinates: output = input * scale + translation maps [top, top + crop_height]
  # onto [0, height]. The crop is never larger than the image, so this only upsamples and needs
  # no antialiasing.
  scale = jnp.stack([height / crop_height, width / crop_width])
  translation = -jnp.stack([top, left]) * scale
  crop = jax.image.scale_and_translate(image, (height, width, channels), (0, 1), scale,
                                       translation, method='linear', antialias=False)
  return jnp.where(jax.random.bernoulli(flip_key), crop[:, ::-1], crop)


def crop_and_flip(
    rng: jax.Array,
    images: jax.Array,
    *,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
) -> jax.Array:
  """Random resized crop + random horizontal flip, per image, jit-able.

  The augmentation SimCLR uses for linear evaluation and fine-tuning. Each image gets a crop with
  area fraction uniform in `area_range` and log-uniform aspect ratio in `aspect_ratio_range`,
  resized (bilinear) back to the input size, then flipped left-right with probability 1/2.
  For small images bind a gentler range, e.g. `functools.partial(crop_and_flip,
  area_range=(0.5, 1.0))`.

  Args:
    rng: a `jax.random.key`.
    images: `[B, H, W, C]` float in [0, 1].
    area_range: (min, max) fraction of the image area kept.
    aspect_ratio_range: (min, max) crop width / height.

  Returns:
    `[B, H, W, C]` float32 in [0, 1].
  """
  keys = jax.random.split(rng, images.shape[0])
  one = functools.partial(_crop_and_flip_one, area_range=area_range,
                          aspect_ratio_range=aspect_ratio_range)
  return jax.vmap(one)(keys, images.astype(jnp.float32))


def _batch_indices(num_examples: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
  """Endless stream of index batches from consecutive per-epoch permutations.

  Batches may straddle an epoch boundary, which keeps every batch full even when the (labelled
  subset of the) training set is smaller than `batch_size`.
  """
  rng = np.random.default_rng(seed)
  buffer = np.zeros((0,), np.int64)
  while True:
    while buffer.shape[0] < batch_size:
      buffer = np.concatenate([buffer, rng.permutation(num_examples)])
    yield buffer[:batch_size]
    buffer = buffer[batch_size:]


def train_classifier(
    model: nn.Module,
    variables: Mapping[str, Any],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    fine_tune_after_block: int,
    head_layer: int,
    train_head: bool,
    steps: int,
    batch_size: int,
    learning_rate: float,
    momentum: float = 0.9,
    seed: int = 0,
    augment_fn: AugmentFn | None = None,
    eval_batch_size: int = 512,
) -> dict[str, Any]:
  """Trains a new linear classifier on `head_outputs[head_layer]`, plus the unfrozen model parts.

  What trains:
  - always the classifier (`{'kernel': [D, C], 'bias': [C]}`, kernel ~ N(0, 0.01^2), bias 0);
  - the encoder blocks after `fine_tune_after_block` (k in -1..4): the model's own
    `fine_tune_after_block` argument runs blocks <= k behind `stop_gradient` with running BN
    statistics; with k = 4 the encoder is not touched at all;
  - projection layers 1..head_layer when `train_head` and `head_layer >= 1`.
  Whatever trains runs with BN in train mode and keeps its updated batch statistics; everything
  else keeps its parameters and statistics bitwise. If nothing but the classifier trains, the
  model runs fully in inference mode.

  Args:
    model: a `ContrastiveModel`.
    variables: its `{'params': {'encoder', 'head', 'probe'}, 'batch_stats': ...}`; only read.
    train_images: `[N, H, W, C]` uint8 or float in [0, 1].
    train_labels: `[N]` int.
    test_images: `[M, H, W, C]`.
    test_labels: `[M]` int.
    num_classes: number of classes C.
    fine_tune_after_block: -1 (fine-tune all) .. 4 (encoder frozen).
    head_layer: index into `head_outputs` the classifier reads (0 = h).
    train_head: whether projection layers 1..head_layer train (fine-tuning) or stay frozen in
      inference mode (linear evaluation).
    steps: optimiser steps.
    batch_size: training batch size.
    learning_rate: peak learning rate, cosine-decayed to 0 over `steps`.
    momentum: Nesterov momentum.
    seed: drives the batch order, augmentation and classifier init.
    augment_fn: `(rng, images [B,H,W,C]) -> images`, applied inside the jitted step; None = none.
    eval_batch_size: batch size of the test-set forward pass.

  Returns:
    `dict(top1=, top5=, train_loss=, variables=, classifier=)`: test accuracies, the last batch's
    loss, the model variables after training (same structure as `variables`) and the classifier
    params as NumPy arrays.
  """
  if not -1 <= fine_tune_after_block <= 4:
    raise ValueError(f'fine_tune_after_block must be in -1..4, got {fine_tune_after_block}')
  if head_layer < 0:
    raise ValueError(f'head_layer must be >= 0, got {head_layer}')
  if steps <= 0 or batch_size <= 0:
    raise ValueError(f'steps and batch_size must be positive, got {steps} and {batch_size}')
  train_images = np.asarray(train_images)
  train_labels = np.asarray(train_labels, np.int32)

  trainable_names = []
  if fine_tune_after_block < 4:
    trainable_names.append('encoder')
  if train_head and head_layer >= 1:
    trainable_names.append('head')
  # BN runs in train mode only if something besides the classifier learns; with a frozen model
  # there are no statistics to update and inference mode is what the protocol prescribes.
  train_mode = bool(trainable_names)

  # Once, up front: host (NumPy) variables would otherwise be copied to the device every step.
  variables = jax.device_put(variables)
  params = dict(variables['params'])
  batch_stats = dict(variables.get('batch_stats', {}))
  other_collections = {name: value for name, value in variables.items()
                       if name not in ('params', 'batch_stats')}
  frozen_params = {name: value for name, value in params.items() if name not in trainable_names}

  init_key, augment_key = jax.random.split(jax.random.key(seed))
  input_spec = jax.ShapeDtypeStruct((1,) + train_images.shape[1:], jnp.float32)
  feature_spec = jax.eval_shape(
      lambda v, x: features_lib.select_feature(model.apply(v, x, train=False), head_layer),
      variables, input_spec)
  feature_dim = feature_spec.shape[-1]
  classifier = {
      'kernel': 0.01 * jax.random.normal(init_key, (feature_dim, num_classes), jnp.float32),
      'bias': jnp.zeros((num_classes,), jnp.float32),
  }
  trainable = {'classifier': classifier, **{name: params[name] for name in trainable_names}}
  optimizer = optax.sgd(optax.cosine_decay_schedule(learning_rate, steps), momentum=momentum,
                        nesterov=True)
  opt_state = optimizer.init(trainable)

  def loss_fn(trainable, frozen_params, batch_stats, images, labels):
    model_variables = {**other_collections,
                       'params': {**frozen_params,
                                  **{name: trainable[name] for name in trainable_names}}}
    if batch_stats:
      model_variables['batch_stats'] = batch_stats
    if train_mode:
      outputs, updates = model.apply(model_variables, images, train=True,
                                     fine_tune_after_block=fine_tune_after_block,
                                     mutable=['batch_stats'])
      # Keep only the statistics of the parts being fine-tuned: e.g. with head_layer = 0 the
      # head still runs in train mode, but it is not part of the fine-tuned network.
      new_batch_stats = dict(batch_stats)
      for name in trainable_names:
        if name in updates.get('batch_stats', {}):
          new_batch_stats[name] = updates['batch_stats'][name]
    else:
      outputs = model.apply(model_variables, images, train=False)
      new_batch_stats = batch_stats
    representation = features_lib.select_feature(outputs, head_layer).astype(jnp.float32)
    logits = representation @ trainable['classifier']['kernel'] + trainable['classifier']['bias']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, new_batch_stats

  # No buffer donation: the initial trainable arrays are the caller's `variables`, which must
  # stay valid and unchanged.
  @jax.jit
  def train_step(trainable, opt_state, frozen_params, batch_stats, images, labels, rng):
    if augment_fn is not None:
      images = augment_fn(rng, images)
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, frozen_params, batch_stats, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, batch_stats, loss

  loss = jnp.nan
  batches = _batch_indices(train_images.shape[0], batch_size, seed)
  for step in range(steps):
    indices = next(batches)
    images = features_lib.to_model_input(train_images[indices])
    trainable, opt_state, batch_stats, loss = train_step(
        trainable, opt_state, frozen_params, batch_stats, images, train_labels[indices],
        jax.random.fold_in(augment_key, step))

  new_variables = {**other_collections,
                   'params': {**params, **{name: trainable[name] for name in trainable_names}}}
  if batch_stats:
    new_variables['batch_stats'] = batch_stats
  classifier = jax.tree.map(np.asarray, trainable['classifier'])
  test_features = features_lib.extract_features(model, new_variables, test_images,
                                                batch_size=eval_batch_size,
                                                feature=f'head_{head_layer}')
  test_logits = test_features @ classifier['kernel'] + classifier['bias']
  return dict(
      top1=features_lib.topk_accuracy(test_logits, test_labels, 1),
      top5=features_lib.topk_accuracy(test_logits, test_labels, 5),
      train_loss=float(loss),
      variables=new_variables,
      classifier=classifier,
  )


def finetune(
    model: nn.Module,
    variables: Mapping[str, Any],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    fine_tune_after_block: int,
    head_layer: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    augment_fn: AugmentFn | None = None,
    momentum: float = 0.9,
    eval_batch_size: int = 512,
) -> dict[str, Any]:
  """Fine-tunes the pretrained model with a new linear classifier (SimCLR / SimCLRv2).

  The classifier reads `head_outputs[head_layer]`: 0 = h (SimCLR); 1 = the first projection
  layer, which then trains too (SimCLRv2 fine-tunes "from the middle of the projection head").
  Encoder blocks after `fine_tune_after_block` train with BN in train mode; blocks up to it stay
  frozen with running statistics (-1 = fine-tune everything, 4 = encoder frozen, so with
  `head_layer=0` only the classifier trains). Nesterov momentum SGD, cosine decay from
  `learning_rate` to 0, no weight decay. The paper's fine-tuning rate is
  0.05 * batch_size / 256; this function takes the absolute rate.

  Args:
    model: a `ContrastiveModel`.
    variables: its `{'params', 'batch_stats'}`; only read.
    train_images: `[N, H, W, C]` uint8 or float in [0, 1] (e.g. a `label_fraction_indices`
      subset).
    train_labels: `[N]` int.
    test_images: `[M, H, W, C]`.
    test_labels: `[M]` int.
    num_classes: number of classes C.
    fine_tune_after_block: -1..4 (config.eval.fine_tune_after_block).
    head_layer: 0 = h, i = i-th projection layer (config.eval.finetune_head_layer).
    steps: optimiser steps (config.eval.finetune_steps).
    batch_size: training batch size (config.eval.finetune_batch_size).
    learning_rate: peak learning rate (config.eval.finetune_learning_rate).
    seed: drives batch order, augmentation and classifier init.
    augment_fn: `(rng, images [B,H,W,C]) -> images` inside the jitted step, e.g.
      `crop_and_flip` (the paper's choice); None trains on the plain images.
    momentum: Nesterov momentum.
    eval_batch_size: batch size of the test-set forward pass.

  Returns:
    `dict(top1=, top5=, variables=, classifier=, train_loss=)`: test accuracies, the fine-tuned
    model variables, the classifier `{'kernel': [D, C], 'bias': [C]}` and the last batch loss.
  """
  return train_classifier(
      model, variables, train_images, train_labels, test_images, test_labels,
      num_classes=num_classes, fine_tune_after_block=fine_tune_after_block,
      head_layer=head_layer, train_head=True, steps=steps, batch_size=batch_size,
      learning_rate=learning_rate, momentum=momentum, seed=seed, augment_fn=augment_fn,
      eval_batch_size=eval_batch_size)
