"""Frozen-encoder feature extraction, and the top-k accuracy every protocol reports.

Every offline protocol (linear eval, kNN, t-SNE, the fine-tuning test pass) starts from the same
step: run the `ContrastiveModel` in inference mode over an image array and keep one of its
representations. That step lives here, once.
"""

from collections.abc import Iterator, Mapping
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P


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


def device_batch_size(batch_size: int, mapper) -> int:
  """`batch_size` rounded up to a multiple of the devices (every device gets equal rows)."""
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  return -(-batch_size // mapper.num_devices) * mapper.num_devices


@functools.lru_cache(maxsize=16)
def _mapped_forward(model: nn.Module, mesh, head_index: int):
  """The inference forward pass, data-parallel: variables replicated, images and features
  sharded over the mesh's 'batch' axis."""
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top

  def per_core(variables, images):
    # train=False: BN uses running statistics, so an example's features do not depend on the
    # rest of its batch, which is what makes padding harmless. No `mutable`: apply cannot write
    # back any collection.
    outputs = model.apply(variables, images, train=False)
    return select_feature(outputs, head_index).astype(jnp.float32)

  return jax.jit(jax.shard_map(per_core, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                               out_specs=P(parallel.AXIS), check_vma=False))


def default_mapper():
  """A mapper over every device of every process (evaluation's default)."""
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  return parallel.Mapper()


def split_features(model: nn.Module, variables: Mapping[str, Any], split, *, batch_size: int,
                   feature: str = 'h', mapper=None) -> Iterator[dict[str, jax.Array]]:
  """Features of every example of an `evaluation.data.EvalSplit`, data-parallel.

  Each step's global batch is spread over every device of every process (each process reads
  its own share of the split); nothing is brought back to the host.

  Yields:
    Per step, global arrays sharded over the mesh: {'features': float32 [B, D],
    'label': int32 [B], 'mask': bool [B]} (padding rows have mask False).
  """
  mapper = mapper or default_mapper()
  forward = _mapped_forward(model, mapper.mesh, parse_feature(feature))
  variables = jax.device_put(variables, mapper.replicated)  # once, not every batch
  for batch in split.batches(device_batch_size(batch_size, mapper)):
    batch = mapper.put_batch(batch)
    yield {'features': forward(variables, batch['image']), 'label': batch['label'],
           'mask': batch['mask']}


def to_host(array: jax.Array) -> np.ndarray:
  """A global array as one NumPy array on every process (in the global order)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(array))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def extract_features(
    model: nn.Module,
    variables: Mapping[str, Any],
    images: np.ndarray,
    *,
    batch_size: int,
    feature: str = 'h',
    mapper=None,
) -> np.ndarray:
  """Runs the model in inference mode over in-memory `images`, data-parallel over the devices,
  and returns one representation per image, in order, on every process.

  The forward pass is compiled for one global batch shape (`batch_size` rounded up to a multiple
  of the devices): the last batch is padded and the padding stripped, so the result does not
  depend on `batch_size` or the device count. `variables` is only read.

  Args:
    model: a `ContrastiveModel` (docs/architecture.md); anything whose `apply(variables, x,
      train=False)` returns a dict with `head_outputs` works.
    variables: `{'params': ..., 'batch_stats': ...}` of the model.
    images: `[N, H, W, C]` uint8 (scaled by 1/255) or float in [0, 1], the same on every process.
    batch_size: images per global forward pass.
    feature: `'h'` (encoder output) or `'head_<i>'` (i-th entry of `head_outputs`, i.e. the i-th
      projection layer; `'head_0'` is h).
    mapper: the `parallel.Mapper` whose devices run it; None: every device.

  Returns:
    float32 `[N, D]` NumPy array.
  """
  from simclr_jax.evaluation import data  # pylint: disable=g-import-not-at-top
  parse_feature(feature)
  device_batch_size(batch_size, mapper or default_mapper())
  if images.shape[0] == 0:
    raise ValueError('images is empty')
  split = data.EvalSplit.from_arrays(images, np.zeros(len(images), np.int32), num_classes=1)
  # Results stay on the devices until the end, so the host loop does not wait on each batch.
  steps = [out['features'] for out in split_features(model, variables, split,
                                                      batch_size=batch_size, feature=feature,
                                                      mapper=mapper)]
  return np.concatenate([to_host(f) for f in steps])[:len(images)]


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
