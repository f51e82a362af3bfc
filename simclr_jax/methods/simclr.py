"""SimCLR (Chen et al. 2020): two views through one network, a contrastive loss on the projections.

The losses (NT-Xent over the global batch, and the loss study's NT-Logistic and margin triplet)
are in simclr_jax/methods/losses.py.
"""

from simclr_jax.methods import base
from simclr_jax.methods import losses


class SimCLR(base.Method):
  """Two views through one network, a contrastive loss on the projections.

  The loss is config.loss.name: 'nt_xent' (the paper's) or, for the loss study, 'nt_logistic' /
  'margin_triplet' (simclr_jax/methods/losses.py), all over the same gathered negatives.
  """

  name = 'simclr'

  def loss(self, model, params, batch_stats, extra, views, rng, *, config, axis_name):
    del extra, rng
    outputs, batch_stats, z_a, z_b = base.forward_two_views(model, params, batch_stats, views)
    loss, metrics = losses.contrastive_loss(z_a, z_b, config.loss, axis_name=axis_name)
    return loss, base.Aux(metrics=metrics, batch_stats=batch_stats, outputs=outputs)
