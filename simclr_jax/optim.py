"""Optimizers (LARS, SGD, AdamW) and the warmup + cosine learning-rate schedule.

LARS is optax.lars, which is the chain

    add_decayed_weights(wd, mask)           g' = g + wd * w          (decayed params only)
    masked(scale_by_trust_ratio(eta), mask)  u = trust * g',  trust = eta * ||w|| / ||g'||
                                             (trust = 1 when ||w|| or ||g'|| is 0)
    scale_by_learning_rate(lr)               u = -lr_t * u
    trace(momentum)                          v_t = momentum * v_{t-1} + u;  update = v_t

Ordering, and where it matters:
- Weight decay comes before the trust ratio, so ||g'|| includes wd * w (the LARS paper and the
  official SimCLR LARS do the same).
- The trust ratio is computed from the current g', before momentum: it scales what enters the
  momentum buffer, not the buffer.
- The learning rate is applied before momentum: the buffer accumulates lr-scaled steps,
  v_t = m v_{t-1} - lr_t * trust_t * g'_t. This is the official SimCLR LARS with
  `classic_momentum=True` (`next_v = m * v + scaled_lr * grad`). It equals the textbook form
  `v_t = m v_{t-1} + trust_t * g'_t; update = -lr_t * v_t` only while lr is constant. Under the
  schedule they differ: during warmup a gradient taken at a small lr stays small in the buffer
  (the step-0 gradient, at lr 0, is dropped entirely), and during decay old steps keep their
  larger lr.
Parameters excluded by `exclude_bias_and_norm` (biases, BN scale/offset) get neither weight decay
nor the trust ratio: for them update = momentum-accumulated -lr_t * g.

The online probe (params['probe']) is trained by its own plain momentum SGD at
`probe_learning_rate`, without weight decay or scaling, via optax.multi_transform.
"""

import functools
import math
from typing import Any

import jax
import ml_collections
import optax

from simclr_jax.models.heads import PROBE_KEY

OPTIMIZERS = ('lars', 'sgd', 'adamw')
LR_SCALINGS = ('linear', 'sqrt', 'none')


def exclude_bias_and_norm(path: tuple[Any, ...], leaf: jax.Array) -> bool:
  """Whether a parameter is excluded from weight decay and from the LARS trust ratio.

  The predicate is the rank: a parameter of rank <= 1 is a per-channel affine term (a Dense or
  Conv bias, a BN scale or offset) and is excluded; weight matrices and conv kernels (rank >= 2)
  are not. Unlike matching names ('bias', 'scale'), this does not depend on how a module names
  its parameters. It selects the same parameters as the official SimCLR LARS, which excludes by
  name the 'batch_normalization' and 'bias' variables (exactly its rank-1 ones; it also excludes
  its supervised head, which here is the separately optimised probe).

  Args:
    path: key path of the leaf (as from jax.tree.map_with_path); unused by the rank
      rule, kept so the signature fits tree_map_with_path and name-based variants.
    leaf: the parameter (an array or anything with `.ndim`).

  Returns:
    True to exclude the parameter.
  """
  del path
  return leaf.ndim <= 1


def decay_mask(params: Any) -> Any:
  """Tree of bools, True where weight decay (and the LARS trust ratio) apply."""
  return jax.tree.map_with_path(
      lambda path, leaf: not exclude_bias_and_norm(path, leaf), params)


def lars(learning_rate: optax.ScalarOrSchedule, *, weight_decay: float, momentum: float,
         trust_coefficient: float) -> optax.GradientTransformation:
  """LARS (optax.lars) with biases and BN parameters excluded by `exclude_bias_and_norm`.

  See the module docstring for the exact update rule and where optax's ordering matters.

  Args:
    learning_rate: constant or schedule (step -> lr).
    weight_decay: L2 coefficient added to the gradient of decayed parameters.
    momentum: momentum of the update buffer.
    trust_coefficient: eta in trust = eta * ||w|| / ||g + wd * w||.

  Returns:
    The optax transformation.
  """
  return optax.lars(
      learning_rate,
      weight_decay=weight_decay,
      weight_decay_mask=decay_mask,
      trust_coefficient=trust_coefficient,
      trust_ratio_mask=decay_mask,
      momentum=momentum)


def scaled_learning_rate(base_learning_rate: float, global_batch_size: int, scaling: str) -> float:
  """Peak learning rate: base * B / 256 ('linear'), base * sqrt(B) ('sqrt') or base ('none')."""
  if scaling == 'linear':
    return base_learning_rate * global_batch_size / 256
  if scaling == 'sqrt':
    return base_learning_rate * math.sqrt(global_batch_size)
  if scaling == 'none':
    return base_learning_rate
  raise ValueError(f'optimizer.lr_scaling must be one of {LR_SCALINGS}, got {scaling!r}.')


def warmup_steps(optimizer_config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Number of warmup steps: round(warmup_epochs * steps_per_epoch)."""
  return int(round(optimizer_config.warmup_epochs * steps_per_epoch))


def learning_rate_schedule(optimizer_config: ml_collections.ConfigDict, *, global_batch_size: int,
                           total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup from 0 to the scaled peak, then cosine decay to 0 at `total_steps`.

  Args:
    optimizer_config: config.optimizer (learning_rate, lr_scaling, warmup_epochs).
    global_batch_size: images per step over all devices (B in the scaling rule).
    total_steps: length of training; the rate is 0 from this step on.
    steps_per_epoch: converts warmup_epochs to steps.

  Returns:
    schedule(step) -> learning rate; peak at step warmup_steps.

  Raises:
    ValueError: bad scaling, total_steps < 1, or more warmup steps than total steps.
  """
  peak = scaled_learning_rate(
      optimizer_config.learning_rate, global_batch_size, optimizer_config.lr_scaling)
  warmup = warmup_steps(optimizer_config, steps_per_epoch)
  if total_steps < 1:
    raise ValueError(f'total_steps must be >= 1, got {total_steps}.')
  if warmup < 0:
    raise ValueError(f'optimizer.warmup_epochs must be >= 0, got {optimizer_config.warmup_epochs}.')
  if warmup > total_steps:
    raise ValueError(
        f'optimizer.warmup_epochs={optimizer_config.warmup_epochs} x steps_per_epoch='
        f'{steps_per_epoch} gives {warmup} warmup steps, more than total_steps={total_steps} '
        '(from num_epochs / num_train_steps): lower warmup_epochs or train longer.')
  decay_steps = total_steps - warmup
  if decay_steps > 0:
    decay = optax.cosine_decay_schedule(peak, decay_steps=decay_steps, alpha=0.0)
  else:
    decay = optax.constant_schedule(0.0)  # Warmup fills the whole run: stop at its end.
  if warmup == 0:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, transition_steps=warmup), decay], boundaries=[warmup])


def _partition_labels(params: Any) -> Any:
  """'probe' for leaves under params['probe'], 'backbone' for everything else."""

  def label(path: tuple[Any, ...], leaf: jax.Array) -> str:
    del leaf
    top = getattr(path[0], 'key', None) if path else None
    return 'probe' if top == PROBE_KEY else 'backbone'

  return jax.tree.map_with_path(label, params)


def _backbone(optimizer_config: ml_collections.ConfigDict, learning_rate: optax.ScalarOrSchedule
              ) -> optax.GradientTransformation:
  """The encoder/head optimizer of `build_optimizer` at `learning_rate`."""
  name = optimizer_config.name
  if name == 'lars':
    backbone = lars(
        learning_rate,
        weight_decay=optimizer_config.weight_decay,
        momentum=optimizer_config.momentum,
        trust_coefficient=optimizer_config.trust_coefficient)
  elif name == 'sgd':
    backbone = optax.chain(
        optax.add_decayed_weights(optimizer_config.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(learning_rate),
        optax.trace(decay=optimizer_config.momentum))
  else:
    backbone = optax.adamw(learning_rate, weight_decay=optimizer_config.weight_decay,
                           mask=decay_mask)
  bias_scale = optimizer_config.get('bias_learning_rate_scale', 1.0)
  if bias_scale != 1.0:
    # Every transform above is linear in the learning rate once the trust ratio (masked off for
    # these parameters) is out, so scaling their final update = running them at bias_scale * lr.
    excluded = lambda params: jax.tree.map(lambda keep: not keep, decay_mask(params))
    backbone = optax.chain(backbone, optax.masked(optax.scale(bias_scale), excluded))
  return backbone


def build_optimizer(optimizer_config: ml_collections.ConfigDict, *, global_batch_size: int,
                    total_steps: int, steps_per_epoch: int, learning_rate_from_host: bool = False
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer for the whole parameter tree {'encoder', 'head', 'probe'}.

  encoder and head: `optimizer_config.name` with the warmup + cosine schedule:
    'lars': see `lars`.
    'sgd': the same chain as LARS without the trust ratio (weight decay added to the gradient,
      lr applied before momentum), so lars vs sgd differ only by layer adaptation.
    'adamw': optax.adamw with decoupled weight decay (scaled by lr, as optax does); the momentum
      field is not used (b1=0.9, b2=0.999).
  Weight decay is masked by `exclude_bias_and_norm` in all three. Those excluded parameters
  (biases, BN) run at `bias_learning_rate_scale` x the schedule (Barlow Twins: 0.0048 / 0.2).
  probe: momentum SGD at `probe_learning_rate` (constant), no weight decay.

  The encoder/head learning rate is an injected hyperparameter (optax.inject_hyperparams): its
  value for the update just made is `learning_rate(opt_state)`. By default the optimizer computes
  it from its own step count with the schedule; with `learning_rate_from_host` it keeps whatever
  `with_learning_rate` last set (the time-budget mode of `simclr_jax.train`, where the host maps
  elapsed time to the schedule).

  Args:
    optimizer_config: config.optimizer (see simclr_jax/defaults.py).
    global_batch_size: images per step over all devices.
    total_steps: training length in steps (time-budget mode: the schedule's nominal length).
    steps_per_epoch: steps in one epoch (for warmup_epochs).
    learning_rate_from_host: the learning rate is set by `with_learning_rate`, not the count.

  Returns:
    (optimizer, schedule): schedule(step) is the encoder/head learning rate.
  """
  schedule = learning_rate_schedule(
      optimizer_config, global_batch_size=global_batch_size, total_steps=total_steps,
      steps_per_epoch=steps_per_epoch)
  if optimizer_config.name not in OPTIMIZERS:
    raise ValueError(
        f'optimizer.name must be one of {OPTIMIZERS}, got {optimizer_config.name!r}.')
  backbone = optax.inject_hyperparams(functools.partial(_backbone, optimizer_config))(
      learning_rate=0.0 if learning_rate_from_host else schedule)
  probe = optax.sgd(optimizer_config.probe_learning_rate, momentum=optimizer_config.momentum)
  optimizer = optax.multi_transform(
      {'backbone': backbone, 'probe': probe}, param_labels=_partition_labels)
  return optimizer, schedule


def _lr_state(opt_state: Any):
  # multi_transform -> masked('backbone') -> inject_hyperparams.
  return opt_state.inner_states['backbone'].inner_state


def learning_rate(opt_state: Any) -> jax.Array:
  """The encoder/head learning rate of the last update (of the next one when set by the host)."""
  return _lr_state(opt_state).hyperparams['learning_rate']


def with_learning_rate(opt_state: Any, value: Any) -> Any:
  """`opt_state` whose next update runs at `value` (optimizer built with learning_rate_from_host;
  `value` an array laid out like the state's, e.g. from `parallel.Mapper.put_state`)."""
  inject = _lr_state(opt_state)
  inject = inject._replace(hyperparams={**inject.hyperparams, 'learning_rate': value})
  masked = opt_state.inner_states['backbone']._replace(inner_state=inject)
  return opt_state._replace(inner_states={**opt_state.inner_states, 'backbone': masked})
