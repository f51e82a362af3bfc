"""Fine-tuning (SimCLR / SimCLRv2) on in-memory arrays, and the crop + flip it trains on.

A new Dense classifier reads `head_outputs[head_layer]` (0 = h; 1 = first projection layer,
SimCLRv2), and the encoder blocks after `fine_tune_after_block` train with it (plus projection
layers 1..head_layer). The training itself is `classifier.train_classifier`: data-parallel on the
shared loop, with streamed splits too (the protocols in `evaluation/protocols.py` call it
directly).
"""

from collections.abc import Callable, Mapping
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax.evaluation import classifier
from simclr_jax.evaluation import data

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
    **loop_kwargs,
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
    loop_kwargs: `classifier.train_classifier`'s options (mapper, workdir, log_every_steps,
      checkpoint_every_steps, name).

  Returns:
    `dict(top1=, top5=, variables=, classifier=, train_loss=, preempted=)`: test accuracies, the fine-tuned
    model variables, the classifier `{'kernel': [D, C], 'bias': [C]}` and the last batch loss.
  """
  return classifier.train_classifier(
      model, variables, data.EvalSplit.from_arrays(train_images, train_labels,
                                                   num_classes=num_classes),
      data.EvalSplit.from_arrays(test_images, test_labels, num_classes=num_classes),
      num_classes=num_classes, fine_tune_after_block=fine_tune_after_block,
      head_layer=head_layer, train_head=True, steps=steps, batch_size=batch_size,
      learning_rate=learning_rate, momentum=momentum, seed=seed, augment_fn=augment_fn,
      eval_batch_size=eval_batch_size, **loop_kwargs)
