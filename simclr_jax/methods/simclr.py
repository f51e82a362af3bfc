"""SimCLR: NT-Xent over the global batch (Chen et al. 2020, eq. 1).

Each core holds n images (2n views) of the global batch of N images. Inside a mapped step the
other cores' embeddings arrive through `lax.all_gather` (gradients flow back through it as a
reduce-scatter), so every view has its pair as the positive and the 2N - 2 other views of the
GLOBAL batch as negatives. Each core computes only its own rows of the logits, `[2n, 2N]`.

Loss scale: we report the paper's L = 1/(2N) sum over the 2N anchors of l(i, j). The official
TF code (`add_contrastive_loss`) returns loss_a + loss_b, each a mean over N anchors, i.e. 2L.
"""

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

from simclr_jax.methods import base

# Large enough that exp(-_MASK) underflows to 0 in float32, small enough to stay finite.
_MASK = 1e9


def _check_inputs(z_a: jax.Array, z_b: jax.Array, temperature: float) -> None:
  if z_a.ndim != 2 or z_a.shape != z_b.shape:
    raise ValueError(
        f'nt_xent needs z_a and z_b of the same shape [n, d]; got {z_a.shape} and {z_b.shape}. '
        'Pass the two views\' embeddings separately, one row per image.')
  if not temperature > 0:
    raise ValueError(f'temperature must be > 0 (got {temperature}); the paper uses 0.1 for '
                     'ImageNet and 0.5 for CIFAR-10 (config.loss.temperature).')


def gather_views(z_a: jax.Array, z_b: jax.Array, axis_name: Optional[str]):
  """Gathers both views' embeddings over `axis_name` (differentiable).

  Returns:
    (keys [2N, d] = [all z_a; all z_b], offset of this core's first image in the global batch,
    global number of images N).
  """
  n = z_a.shape[0]
  if axis_name is None:
    return jnp.concatenate([z_a, z_b], 0), 0, n
  all_a = lax.all_gather(z_a, axis_name, tiled=True)
  all_b = lax.all_gather(z_b, axis_name, tiled=True)
  offset = lax.axis_index(axis_name) * n
  return jnp.concatenate([all_a, all_b], 0), offset, all_a.shape[0]


def contrastive_logits(z_a: jax.Array, z_b: jax.Array, *, temperature: float,
                       axis_name: Optional[str] = None, normalize: bool = True):
  """This core's rows of the similarity matrix, self-similarity masked.

  Args:
    z_a, z_b: [n, d] embeddings of the two views of this core's n images.
    temperature: softmax temperature tau.
    axis_name: mapped axis to gather negatives over, or None on one device.
    normalize: l2-normalise before the dot product (cosine similarity).

  Returns:
    logits [2n, 2N] (anchors: this core's [z_a; z_b]; columns: global [z_a; z_b]),
    positive column index [2n], self column index [2n].
  """
  _check_inputs(z_a, z_b, temperature)
  z_a = z_a.astype(jnp.float32)
  z_b = z_b.astype(jnp.float32)
  if normalize:
    z_a = z_a * lax.rsqrt(jnp.maximum(jnp.sum(z_a * z_a, -1, keepdims=True), 1e-24))
    z_b = z_b * lax.rsqrt(jnp.maximum(jnp.sum(z_b * z_b, -1, keepdims=True), 1e-24))
  n = z_a.shape[0]
  keys, offset, global_n = gather_views(z_a, z_b, axis_name)
  anchors = jnp.concatenate([z_a, z_b], 0)
  logits = anchors @ keys.T / temperature
  rows = offset + jnp.arange(n)
  self_col = jnp.concatenate([rows, rows + global_n])
  pos_col = jnp.concatenate([rows + global_n, rows])
  # The mask as an iota compare inside a `where` (not a one-hot matrix): XLA fuses it into the
  # logits' consumers instead of holding int/bool [2n, 2N] arrays (benchmarks/nt_xent_memory.py).
  # Bitwise the same values as subtracting _MASK * one_hot.
  logits = jnp.where(_columns(logits) == self_col[:, None], logits - _MASK, logits)
  return logits, pos_col, self_col


def _columns(logits: jax.Array) -> jax.Array:
  return lax.broadcasted_iota(jnp.int32, logits.shape, 1)


def nt_xent(z_a: jax.Array, z_b: jax.Array, *, temperature: float,
            axis_name: Optional[str] = None, normalize: bool = True):
  """NT-Xent loss of the paper over the global batch.

  Args:
    z_a, z_b: [n, d] this core's embeddings of view a and view b.
    temperature: tau > 0.
    axis_name: the mapped axis ('batch') to take negatives from, None on one device.
    normalize: cosine similarity (True, the paper) or raw dot products.

  Returns:
    (loss, metrics): loss is this core's mean over its 2n anchors; the mean over cores is the
    paper's L. metrics has `contrast_accuracy` (positive ranked first) and `contrast_entropy`
    (mean entropy of the softmax over a row), also this core's means.
  """
  logits, pos_col, _ = contrastive_logits(
      z_a, z_b, temperature=temperature, axis_name=axis_name, normalize=normalize)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  # Row-wise pick of the positive as a masked sum (exact: one term, the rest zeros); unlike
  # take_along_axis its gradient is elementwise, not a scatter.
  pos_log_p = jnp.sum(jnp.where(_columns(log_p) == pos_col[:, None], log_p, 0.0), axis=-1)
  loss = -jnp.mean(pos_log_p)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == pos_col).astype(jnp.float32))
  entropy = -jnp.mean(jnp.sum(jnp.exp(log_p) * log_p, -1))
  return loss, {'contrast_accuracy': accuracy, 'contrast_entropy': entropy}


class SimCLR(base.Method):
  """Two views through one network, a contrastive loss on the projections.

  The loss is config.loss.name: 'nt_xent' (the paper's) or, for the loss study, 'nt_logistic' /
  'margin_triplet' (simclr_jax/methods/losses.py), all over the same gathered negatives.
  """

  name = 'simclr'

  def loss(self, model, params, batch_stats, extra, views, rng, *, config, axis_name):
    del extra, rng
    # Imported here: losses.py builds on this module's contrastive_logits (import cycle).
    from simclr_jax.methods import losses  # pylint: disable=g-import-not-at-top
    outputs, batch_stats, z_a, z_b = base.forward_two_views(model, params, batch_stats, views)
    loss, metrics = losses.contrastive_loss(z_a, z_b, config.loss, axis_name=axis_name)
    return loss, base.Aux(metrics=metrics, batch_stats=batch_stats, outputs=outputs)
