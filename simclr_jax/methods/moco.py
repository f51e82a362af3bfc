"""MoCo v1 / v2: a momentum key encoder and a queue of keys as the dictionary.

He et al. 2020 (v1), Chen et al. 2020 "Improved Baselines with Momentum Contrastive Learning" (v2:
MLP head, blur, cosine schedule; selected by the config, not by code). Algorithm 1 of the paper,
per step:

    q = f_q(x_a); k = stop_gradient(f_k(x_b))            (both l2-normalised)
    loss = InfoNCE(q, k, queue) at temperature tau        (positive: k; negatives: the K queue keys)
    f_q <- optimizer step
    f_k <- m f_k + (1 - m) f_q                            (`update_extra`, with the NEW f_q)
    enqueue(k over the global batch); dequeue the oldest  (`update_extra`)

The official code runs the momentum update at the start of the next forward pass instead; both give
the same sequence of key encoders: f_k starts equal to f_q, so the official first update is the
identity, and each later one uses the f_q of the preceding optimizer step, as here.

State (`extra`, replicated and checkpointed with the TrainState):
  key_params: the key encoder's {'encoder', 'head'} params (the online probe is not copied).
  key_batch_stats: the key encoder's BN running statistics, updated by its own forward passes, as
    the official code does (its momentum update covers parameters, not BN buffers). Training
    never reads them (BN uses batch statistics); they exist so the key encoder is a whole model.
  queue: [K, d] float32 unit keys; initialised to random unit vectors from config.seed.
  queue_ptr: int32 row where the next global batch of keys is written (the oldest keys).

BN: every forward pass normalises over the GLOBAL batch of one view (the model's BN is synchronised
over 'batch'). This is the "global BN" remedy (SimCLR; MoCo v3), chosen over MoCo's shuffled BN:
the per-device statistics that let a query find its positive key through BN do not exist when all
devices share one set of statistics, and global BN needs no cross-device permutation of images.
Each view is a separate forward pass, as in the official code, so a view's statistics never mix
with the other view's.
"""

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

from simclr_jax.methods import base
from simclr_jax.models.heads import PROBE_KEY

PyTree = Any
_QUEUE_SEED_TAG = 0x6d6f636f  # 'moco': the queue's key is fold_in(key(config.seed), this)


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / ||x|| over the last axis (float32), safe at 0."""
  x = x.astype(jnp.float32)
  return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))


def info_nce(q: jax.Array, k: jax.Array, queue: jax.Array, *, temperature: float):
  """MoCo's InfoNCE (eq. 1) for this core's queries.

  Args:
    q: [n, d] queries (normalised here).
    k: [n, d] their positive keys (normalised here); treat as constants (stop_gradient).
    queue: [K, d] negative keys, unit rows.
    temperature: tau > 0.

  Returns:
    (loss, metrics): loss = mean over the n queries of -log softmax([q.k, q.queue] / tau)[0];
    metrics has `contrast_accuracy` (positive ranked first among 1 + K) and `contrast_entropy`
    (mean entropy of the softmax over a row).
  """
  if q.ndim != 2 or q.shape != k.shape or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
    raise ValueError(f'info_nce needs q, k [n, d] and queue [K, d]; got {q.shape}, {k.shape}, '
                     f'{queue.shape}. config.model.head_out_dim must match the queue width.')
  if not temperature > 0:
    raise ValueError(f'temperature must be > 0 (got {temperature}); MoCo v1 uses 0.07, v2 0.2.')
  q = l2_normalize(q)
  k = l2_normalize(k)
  l_pos = jnp.sum(q * k, -1, keepdims=True)  # [n, 1]
  l_neg = q @ queue.astype(jnp.float32).T  # [n, K]
  logits = jnp.concatenate([l_pos, l_neg], -1) / temperature
  log_p = jax.nn.log_softmax(logits, -1)
  loss = -jnp.mean(log_p[:, 0])
  accuracy = jnp.mean((jnp.argmax(logits, -1) == 0).astype(jnp.float32))
  entropy = -jnp.mean(jnp.sum(jnp.exp(log_p) * log_p, -1))
  return loss, {'contrast_accuracy': accuracy, 'contrast_entropy': entropy}


def embedding_dim(params: Mapping[str, PyTree]) -> int:
  """Width of z from the model's params: the last head layer's, or h's when there is no head."""
  head = params.get('head') or {}
  dense = sorted((k for k in head if k.startswith('dense_')), key=lambda k: int(k.split('_')[1]))
  if dense:
    return int(head[dense[-1]]['kernel'].shape[-1])
  return int(params[PROBE_KEY]['kernel'].shape[0])  # mode 'none': z = h, read by the probe


def _online_part(params: Mapping[str, PyTree]) -> dict:
  """The params the key encoder mirrors: everything but the online probe."""
  return {k: v for k, v in params.items() if k != PROBE_KEY}


def check_config(config) -> None:
  """Raises ValueError on MoCo settings that cannot work (before any compilation)."""
  queue_size, batch_size = config.moco.queue_size, config.batch_size
  if queue_size < batch_size or queue_size % batch_size:
    raise ValueError(
        f'config.moco.queue_size={queue_size} must be a positive multiple of config.batch_size='
        f'{batch_size}: each step replaces exactly one global batch of keys (the official code '
        f'asserts the same); e.g. --config.moco.queue_size='
        f'{max(1, queue_size // batch_size) * batch_size}')
  if not 0.0 <= config.moco.momentum <= 1.0:
    raise ValueError(
        f'config.moco.momentum={config.moco.momentum} must be in [0, 1] (paper: 0.999)')
  if not config.loss.temperature > 0:
    raise ValueError(f'config.loss.temperature={config.loss.temperature} must be > 0 '
                     '(MoCo v1: 0.07, v2: 0.2)')


def init_queue(seed: int, queue_size: int, dim: int) -> jax.Array:
  """[queue_size, dim] random unit vectors (the official code's normalised randn), from `seed`."""
  key = jax.random.fold_in(jax.random.key(seed), _QUEUE_SEED_TAG)
  return l2_normalize(jax.random.normal(key, (queue_size, dim), jnp.float32))


class MoCo(base.Method):
  """Query encoder = the online params; key encoder, queue and pointer in `extra`."""

  name = 'moco'

  def init_extra(self, variables, config):
    check_config(config)
    params = variables['params']
    # jnp.array copies: the key encoder must not share buffers with the donated online params.
    copy = lambda tree: jax.tree.map(jnp.array, tree)
    return {
        'key_params': copy(_online_part(params)),
        'key_batch_stats': copy(variables.get('batch_stats', {})),
        'queue': init_queue(config.seed, config.moco.queue_size, embedding_dim(params)),
        'queue_ptr': jnp.zeros((), jnp.int32),
    }

  def loss(self, model, params, batch_stats, extra, views, rng, *, config, axis_name):
    """InfoNCE of the queries against their keys and the queue.

    Asymmetric (default): queries from view 1, keys from view 2. Symmetric
    (config.moco.symmetric): also queries from view 2 against keys from view 1, the two losses
    averaged; only view 2's keys are enqueued, so the queue holds one global batch per step in
    both modes. (The official CIFAR demo enqueues both views' keys, i.e. 2N per step.)

    Returns:
      (loss, Aux): `outputs` are the query encoder's over [2n] rows, view 1 then view 2 (in the
      asymmetric case view 1's rows twice: only view 1 goes through the query encoder, and the
      probe's mean over the [2n] rows is then its mean over view 1). `extra_update` holds this
      core's normalised keys [n, d] to enqueue and the key encoder's new BN statistics.
    """
    del rng
    if views.ndim != 5 or views.shape[1] != 2:
      raise ValueError(f'views must be [n, 2, H, W, C]; got {views.shape}')
    temperature = config.loss.temperature
    queue = lax.stop_gradient(extra['queue'])
    # The key encoder also computes probe logits; feed it the (constant) online probe.
    key_params = dict(extra['key_params'],
                      **{PROBE_KEY: lax.stop_gradient(params[PROBE_KEY])})

    def forward(p, stats, x):
      out, state = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                               mutable=['batch_stats'])
      return out, state['batch_stats']

    out_a, batch_stats = forward(params, batch_stats, views[:, 0])
    key_b, key_stats = forward(key_params, extra['key_batch_stats'], views[:, 1])
    k_b = lax.stop_gradient(key_b['z'])
    loss, metrics = info_nce(out_a['z'], k_b, queue, temperature=temperature)
    if config.moco.symmetric:
      out_b, batch_stats = forward(params, batch_stats, views[:, 1])
      key_a, key_stats = forward(key_params, key_stats, views[:, 0])
      loss_b, metrics_b = info_nce(out_b['z'], lax.stop_gradient(key_a['z']), queue,
                                   temperature=temperature)
      loss = 0.5 * (loss + loss_b)
      metrics = jax.tree.map(lambda x, y: 0.5 * (x + y), metrics, metrics_b)
    else:
      out_b = out_a
    outputs = jax.tree.map(lambda x, y: jnp.concatenate([x, y], 0), out_a, out_b)
    return loss, base.Aux(metrics=metrics, batch_stats=batch_stats, outputs=outputs,
                          extra_update={'keys': l2_normalize(k_b), 'key_batch_stats': key_stats})

  def update_extra(self, extra, params, aux, *, config, axis_name: Optional[str]):
    """Momentum update with the new query params, then enqueue this step's global keys.

    Every core writes the same all-gathered [N, d] keys (in global batch order) at the same
    pointer, so the replicated queue stays identical on all cores.
    """
    m = config.moco.momentum
    key_params = jax.tree.map(lambda k, q: m * k + (1.0 - m) * q, extra['key_params'],
                              _online_part(params))
    keys = aux.extra_update['keys']
    if axis_name is not None:
      keys = lax.all_gather(keys, axis_name, tiled=True)
    queue = extra['queue']
    ptr = extra['queue_ptr']
    queue = lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (ptr, jnp.zeros_like(ptr)))
    ptr = (ptr + keys.shape[0]) % queue.shape[0]
    return {'key_params': key_params, 'key_batch_stats': aux.extra_update['key_batch_stats'],
            'queue': queue, 'queue_ptr': ptr.astype(jnp.int32)}
