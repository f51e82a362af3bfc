"""Supervised baseline: the encoder trained from scratch with cross-entropy on the labels.

The reference that self-supervised pretraining is measured against (benchmarks/quality.py's
`supervised` row): the same encoder, augmentation (both views of every image are training
examples), optimizer, schedule, batch, devices and training loop as pretraining, selected with
`config.method = 'supervised'`; only the loss differs. So it has everything pretraining has:
data-parallel BN over the global batch, checkpoints and resume, time budgets, the NaN guard, and
evaluation by every protocol as if it were a pretrained checkpoint.

The classifier is the model's linear layer on h, `params['probe']`, here without the
stop-gradient, so its cross-entropy trains the encoder. The trainer's online-probe loss (the same
logits on stop_gradient(h)) still runs beside it: the probe's own optimizer
(`optimizer.probe_learning_rate`) then sees the cross-entropy gradient twice, the encoder once.
The projection head is not used (its parameters stay at their initialisation).
"""

import jax.numpy as jnp
import optax

from simclr_jax.methods import base


class Supervised(base.Method):
  """Cross-entropy of a linear classifier on h, on both views of every labelled image."""

  name = 'supervised'
  uses_labels = True

  def loss(self, model, params, batch_stats, extra, views, rng, *, config, axis_name,
           labels=None):
    del extra, rng, config, axis_name
    if labels is None:
      raise ValueError('the supervised method needs the batch labels')
    outputs, batch_stats, _, _ = base.forward_two_views(model, params, batch_stats, views)
    probe = params['probe']
    logits = outputs['h'].astype(jnp.float32) @ probe['kernel'] + probe['bias']
    both = jnp.concatenate([labels, labels])  # rows: all first views, then all second views
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, both).mean()
    accuracy = jnp.mean((jnp.argmax(logits, -1) == both).astype(jnp.float32))
    return loss, base.Aux(metrics={'train_accuracy': accuracy}, batch_stats=batch_stats,
                          outputs=outputs)
