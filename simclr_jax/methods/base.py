"""The small interface every self-supervised method implements.

A method is a loss over a batch of view pairs plus optional extra state (MoCo's key encoder and
queue). The trainer (`simclr_jax.train_step`) owns everything else: the optimizer, the online
probe, the collectives on gradients, checkpoints. Adding a method = one module here, registered in
`simclr_jax/methods/__init__.py`, and a config.
"""

import abc
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp

PyTree = Any


class Aux(NamedTuple):
  """What `Method.loss` returns beside the loss (all of it this core's values)."""
  metrics: Mapping[str, jax.Array]  # scalars, averaged over cores by the trainer
  batch_stats: PyTree  # the online network's updated BN statistics
  outputs: Mapping[str, jax.Array]  # model outputs of both views stacked [2n, ...] (probe uses h)
  extra_update: PyTree = None  # anything `update_extra` needs (e.g. this step's keys)


class Method(abc.ABC):
  """Base class: a method with no extra state; subclasses define `loss`."""

  name = 'base'
  # True: `loss` also takes `labels=` (this core's [n] int32 labels); only the supervised
  # baseline uses them.
  uses_labels = False

  def init_extra(self, variables: Mapping[str, PyTree], config) -> PyTree:
    """Extra state created from the initial model variables ({} for SimCLR)."""
    del variables, config
    return {}

  @abc.abstractmethod
  def loss(self, model, params, batch_stats, extra, views, rng, *, config,
           axis_name: Optional[str]):
    """Returns (loss, Aux). `views` is [n, 2, H, W, C]; called inside the per-core step."""

  def update_extra(self, extra: PyTree, params: PyTree, aux: Aux, *, config,
                   axis_name: Optional[str]) -> PyTree:
    """Extra state after the optimizer step (momentum encoder, queue). Default: unchanged."""
    del params, aux, config, axis_name
    return extra


def split_views(views: jax.Array) -> jax.Array:
  """[n, 2, H, W, C] -> [2n, H, W, C]: all first views, then all second views.

  Both views go through the network in one call, so BN statistics are taken over all 2N views of
  the global batch, as in the official implementation.
  """
  if views.ndim != 5 or views.shape[1] != 2:
    raise ValueError(f'views must be [n, 2, H, W, C] (two views per image); got {views.shape}')
  return jnp.concatenate([views[:, 0], views[:, 1]], axis=0)


def forward_two_views(model, params, batch_stats, views, **kwargs):
  """Runs the model in train mode on both views.

  Returns:
    (outputs over [2n] rows, new batch_stats, z_a [n, d], z_b [n, d]).
  """
  x = split_views(views)
  outputs, state = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                               mutable=['batch_stats'], **kwargs)
  z_a, z_b = jnp.split(outputs['z'], 2, axis=0)
  return outputs, state['batch_stats'], z_a, z_b
