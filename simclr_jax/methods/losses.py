"""Contrastive losses over the global batch: NT-Xent (SimCLR) and the two the paper compares it
with in section 5.1, NT-Logistic and margin triplet.

## NT-Xent (Chen et al. 2020, eq. 1)

Each core holds n images (2n views) of the global batch of N images. Inside a mapped step the
other cores' embeddings arrive through `lax.all_gather` (gradients flow back through it as a
reduce-scatter), so every view has its pair as the positive and the 2N - 2 other views of the
GLOBAL batch as negatives. Each core computes only its own rows of the logits, `[2n, 2N]`.

Loss scale: we report the paper's L = 1/(2N) sum over the 2N anchors of l(i, j). The official
TF code (`add_contrastive_loss`) returns loss_a + loss_b, each a mean over N anchors, i.e. 2L.

## NT-Logistic and margin triplet

Chen et al. 2020, Table 2 writes each loss for one triplet (anchor u, positive v+, negative v-) of
l2-normalised vectors:

  NT-Xent         -u.v+/tau + log sum_{v in {v+, v-}} exp(u.v/tau)     (nt_xent)
  NT-Logistic     -log sigmoid(u.v+/tau) - log sigmoid(-u.v-/tau)
  Margin triplet  max(u.v- - u.v+ + m, 0)

(the paper lists the negatives of these, i.e. objectives to maximise). NT-Xent sums over all
negatives inside one softmax; the other two are per-triplet terms, so how the 2N - 2 negatives of
an anchor are combined is a choice. We take the MEAN over an anchor's triplets, which weighs the
anchor's positive term and its negatives' terms equally (weight 1 each in total, whatever the
batch size); a plain sum would let 2N - 2 negative terms swamp the one positive. Table 2's caption
("different loss functions impose different weightings of positive and negative examples") and
Table 4 compare exactly these per-triplet losses, once over all negatives and once with semi-hard
negative mining ("sh").

Semi-hard negative mining (section 5.1, after Schroff et al. 2015): "compute the gradient using
semi-hard negative terms (i.e., those that are within the loss margin and closest in distance, but
farther than positive examples)". Per anchor we keep ONE negative: the most similar negative among
those LESS similar than the positive (for the margin loss, one outside the margin window gives a
zero hinge, so "within the margin" needs no extra test). If no negative is less similar than the
positive, we take the least similar negative, the fallback of TF-Addons' `triplet_semihard_loss`
(the anchor still gets a gradient). NT-Logistic (sh) uses the same negative; with one positive and
one negative per anchor it is balanced by construction.

Differences from the paper: the paper's loss study takes negatives from one augmentation view
only (appendix B.10); we use the same 2N - 2 negatives of the global batch as NT-Xent (both
views), gathered over devices by `contrastive_logits`, so the three losses see the same
pairs. Every loss reuses that function, so `normalize` (cosine vs raw dot product) and the
all_gather of negatives behave identically.
"""

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

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


LOSSES = ('nt_xent', 'nt_logistic', 'margin_triplet')
MINING = ('none', 'semi_hard')


def negative_mask(pos_col: jax.Array, self_col: jax.Array, num_cols: int) -> jax.Array:
  """bool [2n, 2N]: True where column k is a negative of anchor row i (not itself, not its pair)."""
  cols = jnp.arange(num_cols)[None, :]
  return (cols != pos_col[:, None]) & (cols != self_col[:, None])


def semi_hard_negatives(sim: jax.Array, pos_col: jax.Array, negatives: jax.Array) -> jax.Array:
  """The mined negative of each anchor (see the module docstring).

  Args:
    sim: [2n, 2N] similarities (any monotone scale: cosine, dot product, or either / tau).
    pos_col: int [2n], the positive's column per row.
    negatives: bool [2n, 2N], `negative_mask`.

  Returns:
    int32 [2n]: per row, the column of the most similar negative that is less similar than the
    positive; where there is none, the column of the least similar negative.
  """
  pos_sim = jnp.take_along_axis(sim, pos_col[:, None], axis=-1)
  below = negatives & (sim < pos_sim)
  hardest_below = jnp.argmax(jnp.where(below, sim, -jnp.inf), axis=-1)
  easiest = jnp.argmin(jnp.where(negatives, sim, jnp.inf), axis=-1)
  return jnp.where(jnp.any(below, axis=-1), hardest_below, easiest).astype(jnp.int32)


def _check_mining(negative_mining: str) -> None:
  if negative_mining not in MINING:
    raise ValueError(f'negative_mining must be one of {MINING} (config.loss.negative_mining); '
                     f'got {negative_mining!r}')


def _combine_negatives(neg_terms: jax.Array, sim: jax.Array, pos_col: jax.Array,
                       negatives: jax.Array, negative_mining: str) -> jax.Array:
  """Per-anchor negative term [2n]: the mean over all negatives, or the mined negative's term."""
  if negative_mining == 'semi_hard':
    mined = semi_hard_negatives(sim, pos_col, negatives)
    return jnp.take_along_axis(neg_terms, mined[:, None], axis=-1)[:, 0]
  count = jnp.sum(negatives, axis=-1)
  # where(), not a product with the mask: the self column holds -1e9-shifted values.
  return jnp.sum(jnp.where(negatives, neg_terms, 0.0), axis=-1) / count


def _ranking_accuracy(sim: jax.Array, pos_col: jax.Array) -> jax.Array:
  """Fraction of anchors whose positive is the most similar column (self masked by the caller)."""
  return jnp.mean((jnp.argmax(sim, -1) == pos_col).astype(jnp.float32))


def nt_logistic(z_a: jax.Array, z_b: jax.Array, *, temperature: float,
                axis_name: Optional[str] = None, normalize: bool = True,
                negative_mining: str = 'none'):
  """NT-Logistic over the global batch, positive and negatives balanced per anchor.

  L = 1/(2N) sum_i [ -log sigmoid(s_ip / tau) - mean_{k in neg(i)} log sigmoid(-s_ik / tau) ],
  with neg(i) the 2N - 2 other views (or the one semi-hard negative), s the cosine similarity
  (raw dot product when normalize=False).

  Args:
    z_a, z_b: [n, d] this core's embeddings of the two views.
    temperature: tau > 0 (paper tunes {0.1, 0.2, 0.5, 1.0}, appendix B.10).
    axis_name: the mapped axis to gather negatives over, None on one device.
    normalize: l2-normalise z (the paper does, for every loss).
    negative_mining: 'none' (all negatives) or 'semi_hard'.

  Returns:
    (loss, metrics): this core's mean over its 2n anchors (the mean over cores is L);
    metrics: `contrast_accuracy` (positive ranked first).
  """
  _check_mining(negative_mining)
  logits, pos_col, self_col = contrastive_logits(
      z_a, z_b, temperature=temperature, axis_name=axis_name, normalize=normalize)
  negatives = negative_mask(pos_col, self_col, logits.shape[1])
  pos_logit = jnp.take_along_axis(logits, pos_col[:, None], axis=-1)[:, 0]
  # -log sigmoid(x) = softplus(-x), stable for large |x|.
  pos_term = jax.nn.softplus(-pos_logit)
  neg_term = _combine_negatives(jax.nn.softplus(logits), logits, pos_col, negatives,
                                negative_mining)
  loss = jnp.mean(pos_term + neg_term)
  return loss, {'contrast_accuracy': _ranking_accuracy(logits, pos_col)}


def margin_triplet(z_a: jax.Array, z_b: jax.Array, *, margin: float,
                   axis_name: Optional[str] = None, normalize: bool = True,
                   negative_mining: str = 'none'):
  """Margin triplet loss over the global batch.

  L = 1/(2N) sum_i mean_{k in neg(i)} max(s_ik - s_ip + m, 0), neg(i) as in `nt_logistic`.
  There is no temperature: scaling s by 1/tau is the same as scaling the margin by tau.

  Args:
    z_a, z_b: [n, d] this core's embeddings of the two views.
    margin: m >= 0 (paper tunes {0, 0.4, 0.8, 1.6}, appendix B.10).
    axis_name: the mapped axis to gather negatives over, None on one device.
    normalize: l2-normalise z (cosine similarity; the paper does).
    negative_mining: 'none' (all negatives) or 'semi_hard' (the paper's better variant, Table 4).

  Returns:
    (loss, metrics): this core's mean over its 2n anchors; metrics: `contrast_accuracy` and
    `active_fraction` (fraction of the anchors' used triplets with a non-zero hinge).
  """
  _check_mining(negative_mining)
  if not margin >= 0:
    raise ValueError(f'margin must be >= 0 (config.loss.margin; paper: 0, 0.4, 0.8, 1.6); '
                     f'got {margin}')
  # temperature=1: the "logits" are the similarities themselves (self column masked).
  sim, pos_col, self_col = contrastive_logits(
      z_a, z_b, temperature=1.0, axis_name=axis_name, normalize=normalize)
  negatives = negative_mask(pos_col, self_col, sim.shape[1])
  pos_sim = jnp.take_along_axis(sim, pos_col[:, None], axis=-1)
  hinge = jax.nn.relu(sim - pos_sim + margin)
  active = (hinge > 0).astype(jnp.float32)
  loss = jnp.mean(_combine_negatives(hinge, sim, pos_col, negatives, negative_mining))
  active_fraction = jnp.mean(_combine_negatives(active, sim, pos_col, negatives,
                                                negative_mining))
  return loss, {'contrast_accuracy': _ranking_accuracy(sim, pos_col),
                'active_fraction': active_fraction}


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
                      temperature: float) -> jax.Array:
  """SimCLRv2's distillation loss per example (Chen et al. 2020b, eq. 3).

  -T^2 sum_y P_teacher(y; T) log P_student(y; T), P(.; T) = softmax(logits / T): the
  cross-entropy of the student's tempered prediction against the teacher's, times T^2 as the
  official distillation colab weighs it (so the gradient's scale does not change with T). The
  teacher is a constant (stop_gradient).

  Args:
    student_logits, teacher_logits: [n, C].
    temperature: T > 0 (the paper: 1).

  Returns:
    [n] float32.
  """
  if temperature <= 0:
    raise ValueError(f'distillation temperature must be > 0, got {temperature!r}')
  teacher = jax.nn.softmax(lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature)
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  return -temperature ** 2 * jnp.sum(teacher * log_student, axis=-1)


def contrastive_loss(z_a: jax.Array, z_b: jax.Array, loss_config: Mapping,
                     *, axis_name: Optional[str] = None):
  """The loss named by `config.loss.name`, with its `config.loss` settings.

  Args:
    z_a, z_b: [n, d] this core's projections of view a and view b.
    loss_config: `config.loss` (name, temperature, normalize, margin, negative_mining).
    axis_name: the mapped axis, None on one device.

  Returns:
    (loss, metrics) of the chosen function.
  """
  name = loss_config['name']
  normalize = bool(loss_config.get('normalize', True))
  mining = loss_config.get('negative_mining', 'none')
  if name == 'nt_xent':
    if mining != 'none':
      raise ValueError('NT-Xent weighs negatives by hardness itself (softmax); '
                       "config.loss.negative_mining must be 'none' with loss.name='nt_xent'")
    return nt_xent(z_a, z_b, temperature=loss_config['temperature'],
                          axis_name=axis_name, normalize=normalize)
  if name == 'nt_logistic':
    return nt_logistic(z_a, z_b, temperature=loss_config['temperature'], axis_name=axis_name,
                       normalize=normalize, negative_mining=mining)
  if name == 'margin_triplet':
    return margin_triplet(z_a, z_b, margin=loss_config['margin'], axis_name=axis_name,
                          normalize=normalize, negative_mining=mining)
  raise ValueError(f'unknown config.loss.name={name!r}; use one of {LOSSES}')
