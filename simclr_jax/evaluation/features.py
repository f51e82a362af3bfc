"""Frozen-encoder feature extraction, and the top-k accuracy every protocol reports.

Every offline protocol (linear eval, kNN, t-SNE, the fine-tuning test pass) starts from the same
step: run the `ContrastiveModel` in inference mode over an image array and keep one of its
representations. That step lives here, once.
"""

from collections.abc import Mapping
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def parse_feature(feature: str) -> int:
  """Maps a feature name to its index in the model's `head_outputs` list.

  `head_outputs` is `[h, layer_1, ..., layer_n]` (docs/architecture.md), so `'h'` and `'head_0'`
  name the same array and `'head_<i>'` is the output of the i-th projection layer.

  Args:
    feature: `'h'` or `'head_<i>'` with `i >= 0`.

  Returns:
    The index into `head_outputs`.
  """
  if feature == 'h':
    return 0
  prefix = 'head_'
  if feature.startswith(prefix) and feature[len(prefix):].isdigit():
    return int(feature[len(prefix):])
  raise ValueError(f"feature must be 'h' or 'head_<i>', got {feature!r}")


def select_feature(outputs: Mapping[str, Any], head_index: int) -> jax.Array:
  """Picks `head_outputs[head_index]` from a `ContrastiveModel` output dict, with a clear error.

  Args:
    outputs: the dict returned by `ContrastiveModel.__call__`.
    head_index: index into `outputs['head_outputs']` (0 = h).

  Returns:
    The selected representation, `[B, D]`.
  """
  head_outputs = outputs['head_outputs']
  if not 0 <= head_index < len(head_outputs):
    raise ValueError(
        f'head_outputs has {len(head_outputs)} entries (h plus the projection layers); '
        f'index {head_index} does not exist')
  return head_outputs[head_index]


def to_model_input(images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
  """Converts an image batch to the model's input convention (float32 in [0, 1]).

  uint8 images (as `sources.load` returns them) are scaled by 1/255; float images are assumed to
  be in [0, 1] already (as `pipeline.eval_arrays` returns them) and only cast.

  Args:
    images: `[B, H, W, C]` uint8 or float.

  Returns:
    `[B, H, W, C]` float32 in [0, 1], a NumPy array for NumPy input and a jax.Array otherwise.
  """
  xp = np if isinstance(images, np.ndarray) else jnp
  if images.dtype == xp.uint8:
    return images.astype(xp.float32) / 255.0
  return images.astype(xp.float32)


@functools.partial(jax.jit, static_argnames=('model', 'head_index'))
def _forward(model: nn.Module, variables: Any, images: jax.Array, head_index: int) -> jax.Array:
  # train=False: BN uses running statistics, so an example's features do not depend on the rest
  # of its batch, which is what makes padding the last batch harmless. No `mutable`: apply
  # cannot write back any collection.
  outputs = model.apply(variables, images, train=False)
  return select_feature(outputs, head_index).astype(jnp.float32)


def extract_features(
    model: nn.Module,
    variables: Mapping[str, Any],
    images: np.ndarray,
    *,
    batch_size: int,
    feature: str = 'h',
) -> np.ndarray:
  """Runs the model in inference mode over `images` and returns one representation per image.

  The forward pass is jitted for one batch shape: the last partial batch is padded with zeros to
  `batch_size` and the padded rows are stripped afterwards, so the result does not depend on
  `batch_size` and there is a single compilation. `variables` is only read.

  Args:
    model: a `ContrastiveModel` (docs/architecture.md); anything whose `apply(variables, x,
      train=False)` returns a dict with `head_outputs` works.
    variables: `{'params': ..., 'batch_stats': ...}` of the model.
    images: `[N, H, W, C]` uint8 (scaled by 1/255) or float in [0, 1].
    batch_size: images per forward pass.
    feature: `'h'` (encoder output) or `'head_<i>'` (i-th entry of `head_outputs`, i.e. the i-th
      projection layer; `'head_0'` is h).

  Returns:
    float32 `[N, D]` NumPy array.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  head_index = parse_feature(feature)
  num_images = images.shape[0]
  if num_images == 0:
    raise ValueError('images is empty')
  # Once, up front: host (NumPy) variables would otherwise be copied to the device every batch.
  variables = jax.device_put(variables)
  batches = []
  for start in range(0, num_images, batch_size):
    batch = to_model_input(np.asarray(images[start:start + batch_size]))
    num_real = batch.shape[0]
    if num_real < batch_size:
      padding = np.zeros((batch_size - num_real,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, padding])
    # Keep results on device until the end so the host loop does not wait on each batch.
    batches.append((_forward(model, variables, batch, head_index), num_real))
  return np.concatenate([np.asarray(f)[:n] for f, n in batches])


def topk_accuracy(logits: np.ndarray | jax.Array, labels: np.ndarray | jax.Array, k: int) -> float:
  """Fraction of examples whose label is among the `k` highest logits.

  `k` is capped at the number of classes, so top-5 on a 3-class problem is 1.0. Ties count in the
  label's favour only as far as a stable descending sort puts it first among equals.

  Args:
    logits: `[N, C]` scores.
    labels: `[N]` int labels in `[0, C)`.
    k: how many top classes count as a hit.

  Returns:
    Accuracy in [0, 1] as a Python float.
  """
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  k = min(k, logits.shape[-1])
  top = np.argsort(-logits, axis=-1, kind='stable')[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=-1)))
