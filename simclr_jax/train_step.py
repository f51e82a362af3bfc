"""Train state and the per-core pretraining step.

`train_step` is a pure function of (state, batch, rng) written for ONE core: every collective in
it (gradient `pmean`, BN statistics, NT-Xent / MoCo / Barlow Twins gathers) names the axis
`'batch'`. `simclr_jax.parallel.Mapper.map_step` maps it over devices.
"""

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from simclr_jax import optim

PyTree = Any
# fold_in data of the device augmentation's key; step_key folds in core indices, never this.
_AUGMENT_STREAM = 2 ** 32 - 1


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimizer updates done
  params: PyTree  # {'encoder', 'head', 'probe'}
  batch_stats: PyTree
  opt_state: PyTree
  extra: PyTree  # method state (MoCo key encoder + queue); {} for SimCLR


def init_variables(model, *, image_shape, seed: int):
  """Model variables from a dummy batch. `image_shape` is (H, W, C)."""
  x = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  # train=False: no BN statistics are computed, so no collective runs outside a mapped step.
  # The 'rbg' generator: threefry's init of a ResNet takes ~10x longer to compile on CPU.
  return model.init(jax.random.key(seed, impl='rbg'), x, train=False)


def create_train_state(model, method, tx, config, *, image_shape) -> TrainState:
  """A fresh state on the default device (place it with `Mapper.put_state`)."""
  variables = jax.jit(lambda: init_variables(model, image_shape=image_shape, seed=config.seed))()
  params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
      extra=method.init_extra(variables, config))


def run_key(seed: int) -> np.ndarray:
  """Raw key data (uint32 [2]) of the run's RNG; folded with the step inside the step."""
  return np.asarray(jax.random.key_data(jax.random.key(seed)))


def step_key(rng: jax.Array, step: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """The key of this step (and core): a resumed run draws the same numbers."""
  key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
  if axis_name is not None:
    key = jax.random.fold_in(key, lax.axis_index(axis_name))
  return key


def batch_views(batch, rng: jax.Array, step: jax.Array, config) -> jax.Array:
  """The views of a batch: the pipeline's 'views', or drawn from its 'image' (on_device).

  The augmentation key depends on (run key, step) only, not on the core, so each image's views
  follow its global position ('position') and any number of devices draws the same views.
  """
  if 'views' in batch:
    return batch['views']
  # Imported here: it needs TensorFlow (augment's op list), which a step fed with views (the
  # step benchmarks, whose peak RSS and start time are measured) must not load.
  from simclr_jax.data import device_augment  # pylint: disable=g-import-not-at-top
  key = jax.random.fold_in(step_key(rng, step, None), _AUGMENT_STREAM)
  return device_augment.views(batch['image'], batch['position'], key, config.augment,
                              config.dataset.image_size)


def _probe_loss(logits: jax.Array, labels: jax.Array):
  """Cross-entropy of the online probe; labels < 0 (unlabelled images) are ignored."""
  valid = (labels >= 0).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  count = jnp.maximum(valid.sum(), 1.0)
  accuracy = jnp.sum((jnp.argmax(logits, -1) == labels) * valid) / count
  return jnp.sum(ce * valid) / count, accuracy


def train_step(state: TrainState, batch, rng: jax.Array, *, model, method, tx, config,
               axis_name: Optional[str] = 'batch'):
  """One optimizer step on this core's share of the global batch.

  Args:
    state: replicated TrainState.
    batch: {'views': [n, 2, H, W, C] float32, 'label': [n] int32} this core's images; or, from
      a pipeline with device_augment, {'image': uint8, 'label', 'position': int32 [n]}: the
      views are then drawn here (`device_augment.views`).
    rng: raw PRNG key data, uint32 [2] (the run's key; folded with the step here).
    model, method, tx, config: static, bound with functools.partial (tx from
      `optim.build_optimizer`).
    axis_name: the mapped axis, or None when not mapped.

  Returns:
    (new state, metrics): metrics are averages over the global batch.
  """
  key = step_key(rng, state.step, axis_name)
  labels = batch['label']
  views = batch_views(batch, rng, state.step, config)

  def loss_fn(params):
    kwargs = {'labels': labels} if method.uses_labels else {}
    loss, aux = method.loss(model, params, state.batch_stats, state.extra, views, key,
                            config=config, axis_name=axis_name, **kwargs)
    # Both views' h feed the probe; stop_gradient inside the model keeps it off the encoder.
    probe_loss, probe_accuracy = _probe_loss(aux.outputs['probe_logits'],
                                             jnp.concatenate([labels, labels]))
    return loss + probe_loss, (loss, probe_loss, probe_accuracy, aux)

  grads, (loss, probe_loss, probe_accuracy, aux) = jax.grad(loss_fn, has_aux=True)(state.params)
  metrics = {'loss': loss, 'probe_loss': probe_loss, 'probe_accuracy': probe_accuracy,
             **aux.metrics}
  if axis_name is not None:
    # Each core's gradient already holds the other cores' terms that reach it through the
    # all_gather's transpose; the mean over cores is the gradient of the global mean loss.
    grads = lax.pmean(grads, axis_name)
    metrics = lax.pmean(metrics, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  extra = method.update_extra(state.extra, params, aux, config=config, axis_name=axis_name)
  grad_norm = optax.tree.norm(grads)
  metrics.update(
      learning_rate=optim.learning_rate(opt_state),  # the rate of this update
      grad_norm=grad_norm,
      param_norm=optax.tree.norm(params),
      update_norm=optax.tree.norm(updates),
      # After the pmean: a NaN on any core shows here on every core.
      finite=jnp.isfinite(metrics['loss'] + metrics['probe_loss']) & jnp.isfinite(grad_norm))
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=aux.batch_stats,
                            opt_state=opt_state, extra=extra)
  return new_state, metrics
