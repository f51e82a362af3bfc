"""Barlow Twins: redundancy reduction on the cross-correlation of two views' embeddings.

Zbontar et al. 2021, eq. 1 and Algorithm 1:

    z_a_norm = (z_a - mean(z_a)) / std(z_a)        per dimension, over the GLOBAL batch of N images
    C = z_a_norm^T z_b_norm / N                    [d, d]
    L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

As in the official code (`nn.BatchNorm1d(affine=False)` under SyncBatchNorm, then an all_reduce of
C), the standardisation uses the biased variance plus eps = 1e-5, and C is summed over devices.

Distributed gradient. Each core computes the same global L from psum'd statistics. Under the
trainer's pmap semantics (shard_map with check_vma=False) the transpose of a psum is a psum, so
core c's gradient with respect to its own rows is M x (its rows' share of dL/dz) for M cores; the
trainer's pmean over cores of the per-core parameter gradients then divides by M, giving exactly
dL/dparams. So the per-core loss is L itself, not L / M (tests/test_barlow_twins.py checks that 8
devices give the 1-device gradient and parameters).
"""

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from simclr_jax.methods import base

# Epsilon of the standardisation (PyTorch BatchNorm1d's default, as in the official code).
STANDARDIZE_EPSILON = 1e-5


def standardize(z: jax.Array, axis_name: Optional[str], epsilon: float = STANDARDIZE_EPSILON):
  """(z - mean) / sqrt(var + eps) per dimension over the global batch (biased variance).

  Args:
    z: [n, d] this core's rows; every core holds the same number of rows.
    axis_name: mapped axis to take the statistics over, or None on one device.
    epsilon: added to the variance.

  Returns:
    [n, d] float32.
  """
  z = z.astype(jnp.float32)
  mean = jnp.mean(z, 0)
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)  # equal shards: mean of means = global mean
  var = jnp.mean(jnp.square(z - mean), 0)
  if axis_name is not None:
    var = lax.pmean(var, axis_name)
  return (z - mean) * lax.rsqrt(var + epsilon)


def cross_correlation(z_a: jax.Array, z_b: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """C = z_a_norm^T z_b_norm / N over the global batch of N images.

  Args:
    z_a, z_b: [n, d] this core's embeddings of the two views.
    axis_name: mapped axis, or None.

  Returns:
    C [d, d], the same on every core.
  """
  if z_a.ndim != 2 or z_a.shape != z_b.shape:
    raise ValueError(f'barlow_twins needs z_a and z_b of the same shape [n, d]; got {z_a.shape} '
                     f'and {z_b.shape}.')
  a = standardize(z_a, axis_name)
  b = standardize(z_b, axis_name)
  n = z_a.shape[0]
  global_n = n if axis_name is None else n * lax.axis_size(axis_name)
  c = a.T @ b / global_n
  if axis_name is not None:
    c = lax.psum(c, axis_name)
  return c


def barlow_twins_loss(z_a: jax.Array, z_b: jax.Array, *, lambd: float,
                      axis_name: Optional[str] = None):
  """The Barlow Twins loss over the global batch.

  Args:
    z_a, z_b: [n, d] this core's projector outputs of view a and view b.
    lambd: weight of the off-diagonal term (paper: 0.0051).
    axis_name: mapped axis ('batch'), or None on one device.

  Returns:
    (loss, metrics): loss is the global L on every core (see the module docstring for why this is
    the right per-core value for the trainer's gradient). metrics: `invariance` (sum_i (1-C_ii)^2),
    `redundancy` (sum_{i!=j} C_ij^2, unweighted), `mean_diagonal` (mean C_ii).
  """
  if not lambd >= 0:
    raise ValueError(f'config.barlow_twins.lambd must be >= 0 (paper: 0.0051), got {lambd}')
  c = cross_correlation(z_a, z_b, axis_name)
  diagonal = jnp.diagonal(c)
  # A mask rather than sum(c^2) - sum(diag^2): the subtraction loses the small off-diagonal sum
  # next to the ~d diagonal terms in float32.
  off_diagonal = jnp.where(jnp.eye(c.shape[0], dtype=bool), 0.0, c)
  invariance = jnp.sum(jnp.square(1.0 - diagonal))
  redundancy = jnp.sum(jnp.square(off_diagonal))
  loss = invariance + lambd * redundancy
  return loss, {'invariance': invariance, 'redundancy': redundancy,
                'mean_diagonal': jnp.mean(diagonal)}


class BarlowTwins(base.Method):
  """Two views through one network (one forward pass per view), loss on the projector outputs."""

  name = 'barlow_twins'

  def loss(self, model, params, batch_stats, extra, views, rng, *, config, axis_name):
    """Returns (loss, Aux) with outputs over [2n] rows (view 1 then view 2).

    Each view is its own forward pass, as in the official code, so the network's BN statistics
    are those of one view over the global batch; the running statistics are updated once per
    view (view 1's update feeds view 2's), as PyTorch does.
    """
    del extra, rng
    if views.ndim != 5 or views.shape[1] != 2:
      raise ValueError(f'views must be [n, 2, H, W, C]; got {views.shape}')
    outputs = []
    for view in (views[:, 0], views[:, 1]):
      out, state = model.apply({'params': params, 'batch_stats': batch_stats}, view, train=True,
                               mutable=['batch_stats'])
      batch_stats = state['batch_stats']
      outputs.append(out)
    loss, metrics = barlow_twins_loss(outputs[0]['z'], outputs[1]['z'],
                                      lambd=config.barlow_twins.lambd, axis_name=axis_name)
    outputs = jax.tree.map(lambda x, y: jnp.concatenate([x, y], 0), *outputs)
    return loss, base.Aux(metrics=metrics, batch_stats=batch_stats, outputs=outputs)
