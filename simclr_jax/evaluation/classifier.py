"""A new linear classifier trained on a (partly) frozen model, data-parallel, on the shared loop.

One step serves three protocols:
- fine-tuning (`finetune.finetune`, SimCLR / SimCLRv2): the classifier reads
  `head_outputs[head_layer]` (0 = h; 1 = the first projection layer, SimCLRv2), and the encoder
  blocks after `fine_tune_after_block` train with it (plus projection layers 1..head_layer), BN in
  train mode with statistics over the global batch;
- the paper's linear evaluation (`linear_sgd.linear_eval_official`): everything frozen in inference
  mode, only the classifier trains;
- SimCLRv2's distillation (`protocols.distill`, with a `Distillation`): a student model and its
  classifier train on a frozen teacher's tempered predictions, computed in the same step on the
  same augmented images, plus optionally the labelled loss on the examples whose label is >= 0.

The step is written for one core (collectives name the axis 'batch') and mapped by
`parallel.Mapper` over every device of every process, like the pretraining step; it runs in
`loop.run_loop`, so it gets the same metrics, Orbax checkpoints (under its own workdir), SIGTERM
resume and NaN guard. Optimiser as in the paper (Appendix B.5/B.6): Nesterov momentum SGD,
cosine decay, no warmup, no weight decay.
"""

from collections.abc import Callable, Mapping
import dataclasses
import functools
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from simclr_jax import checkpoint
from simclr_jax import defaults
from simclr_jax import loop
from simclr_jax import metric_writer
from simclr_jax import parallel
from simclr_jax import train_step as train_step_lib
from simclr_jax.evaluation import features as features_lib
from simclr_jax.methods import losses

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
PyTree = Any


@flax.struct.dataclass
class ClassifierState:
  step: jax.Array  # int32 scalar
  trainable: PyTree  # {'classifier': {'kernel', 'bias'}, and 'encoder' / 'head' when they train}
  frozen: PyTree  # the model's params that do not train
  batch_stats: PyTree
  opt_state: PyTree
  # Distillation: the frozen teacher's {'variables', 'classifier'}; None otherwise.
  teacher: PyTree = None


@dataclasses.dataclass(frozen=True)
class Distillation:
  """A student's targets (SimCLRv2, Chen et al. 2020b, eq. 3): the predictions of a frozen
  teacher (`model`, in inference mode, its classifier reading `head_outputs[head_layer]`) at
  `temperature` (methods.losses.distillation_loss), weighted 1 - label_weight, plus label_weight
  x the cross-entropy on the examples whose label is >= 0 (the labelled subset; -1 marks the
  unlabelled images), averaged over the labelled examples of the global batch."""
  model: nn.Module
  head_layer: int
  temperature: float = 1.0
  label_weight: float = 0.0


def _labelled_cross_entropy(logits, labels, axis_name: Optional[str]):
  """This core's share of the mean cross-entropy over the global batch's labelled rows (label
  >= 0): after the step's pmean it is the global mean, however the rows fall on the cores."""
  valid = (labels >= 0).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  local = jnp.sum(ce * valid)
  count, cores = valid.sum(), 1.0
  if axis_name is not None:
    count, cores = lax.psum(count, axis_name), lax.psum(1.0, axis_name)
  return cores * local / jnp.maximum(lax.stop_gradient(count), 1.0)


def with_axis(model: nn.Module, axis_name: Optional[str]) -> nn.Module:
  """`model` (a ContrastiveModel) with its BN statistics taken over `axis_name`."""
  return model.clone(encoder=model.encoder.clone(axis_name=axis_name),
                     head=model.head.clone(axis_name=axis_name))


def classifier_step(state: ClassifierState, batch, rng, *, model, tx, trainable_names,
                    fine_tune_after_block: int, head_layer: int,
                    augment_fn: Optional[AugmentFn], axis_name: Optional[str] = parallel.AXIS,
                    distillation: Optional[Distillation] = None):
  """One optimizer step of the classifier (and the unfrozen model parts) on this core's rows.

  Args:
    state: replicated `ClassifierState`.
    batch: {'image': float32 [n, S, S, C] in [0, 1], 'label': int32 [n]}, this core's rows.
    rng: the run's raw key; folded with the step and the core here.
    model: the ContrastiveModel with BN over `axis_name` (`with_axis`).
    tx: the optimizer.
    trainable_names: model parts that train besides the classifier ('encoder', 'head').
    fine_tune_after_block: blocks <= this run frozen with running statistics (-1..4).
    head_layer: index into `head_outputs` the classifier reads.
    augment_fn: `(key, images) -> images`, or None.
    axis_name: the mapped axis.
    distillation: train on a teacher's predictions (state.teacher) instead of the labels; the
      'accuracy' metric is then the agreement with the teacher's top class.

  Returns:
    (new state, metrics averaged over the global batch).
  """
  key = train_step_lib.step_key(rng, state.step, axis_name)
  images = batch['image']
  if augment_fn is not None:
    images = augment_fn(key, images)
  train_mode = bool(trainable_names)

  def loss_fn(trainable):
    params = {**state.frozen, **{name: trainable[name] for name in trainable_names}}
    variables = {'params': params, 'batch_stats': state.batch_stats}
    if train_mode:
      outputs, updates = model.apply(variables, images, train=True,
                                     fine_tune_after_block=fine_tune_after_block,
                                     mutable=['batch_stats'])
      # Keep only the statistics of the parts being fine-tuned: with head_layer = 0 the head
      # still runs in train mode, but it is not part of the fine-tuned network.
      batch_stats = {**state.batch_stats, **{name: updates['batch_stats'][name]
                                             for name in trainable_names
                                             if name in updates['batch_stats']}}
    else:  # frozen model: inference mode, as the linear protocol prescribes
      outputs = model.apply(variables, images, train=False)
      batch_stats = state.batch_stats
    representation = features_lib.select_feature(outputs, head_layer).astype(jnp.float32)
    logits = representation @ trainable['classifier']['kernel'] + trainable['classifier']['bias']
    if distillation is None:
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
      return loss, (batch_stats, accuracy)
    teacher = state.teacher
    teacher_out = distillation.model.apply(teacher['variables'], images, train=False)
    teacher_logits = (features_lib.select_feature(teacher_out, distillation.head_layer)
                      .astype(jnp.float32) @ teacher['classifier']['kernel']
                      + teacher['classifier']['bias'])
    weight = distillation.label_weight
    loss = (1.0 - weight) * losses.distillation_loss(
        logits, teacher_logits, temperature=distillation.temperature).mean()
    if weight > 0:
      loss = loss + weight * _labelled_cross_entropy(logits, batch['label'], axis_name)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1))
    return loss, (batch_stats, accuracy)

  (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.trainable)
  metrics = {'loss': loss, 'accuracy': accuracy}
  if axis_name is not None:
    grads = lax.pmean(grads, axis_name)
    metrics = lax.pmean(metrics, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  grad_norm = optax.tree.norm(grads)
  metrics.update(grad_norm=grad_norm,
                 finite=jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm))
  return state.replace(step=state.step + 1, trainable=trainable, batch_stats=batch_stats,
                       opt_state=opt_state), metrics


def train_classifier(
    model: nn.Module,
    variables: Mapping[str, Any],
    train,
    test,
    *,
    num_classes: int,
    fine_tune_after_block: int,
    head_layer: int,
    train_head: bool,
    steps: int,
    batch_size: int,
    learning_rate: float,
    momentum: float = 0.9,
    seed: int = 0,
    augment_fn: Optional[AugmentFn] = None,
    eval_batch_size: int = 512,
    mapper: Optional[parallel.Mapper] = None,
    workdir: Optional[str] = None,
    log_every_steps: int = 100,
    checkpoint_every_steps: int = 1000,
    name: str = 'classifier',
    on_step: Optional[Callable[[int], None]] = None,
    distillation: Optional[Distillation] = None,
    teacher: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
  """Trains a new linear classifier on `head_outputs[head_layer]`, plus the unfrozen model parts.

  What trains:
  - always the classifier (`{'kernel': [D, C], 'bias': [C]}`, kernel ~ N(0, 0.01^2), bias 0);
  - the encoder blocks after `fine_tune_after_block` (k in -1..4): the model's own
    `fine_tune_after_block` argument runs blocks <= k behind `stop_gradient` with running BN
    statistics; with k = 4 the encoder is not touched at all;
  - projection layers 1..head_layer when `train_head` and `head_layer >= 1`.
  Whatever trains runs with BN in train mode over the global batch and keeps its updated
  statistics; everything else keeps its parameters and statistics bitwise. If nothing but the
  classifier trains, the model runs fully in inference mode.

  Args:
    model: a `ContrastiveModel` (any axis_name: it is re-bound to the mapped axis).
    variables: its `{'params': {'encoder', 'head', 'probe'}, 'batch_stats': ...}`; only read.
    train: an `evaluation.data.EvalSplit` (in memory or streamed) to train on.
    test: an `EvalSplit` to report top-1/top-5 on (un-augmented).
    num_classes: number of classes C.
    fine_tune_after_block: -1 (fine-tune all) .. 4 (encoder frozen).
    head_layer: index into `head_outputs` the classifier reads (0 = h).
    train_head: whether projection layers 1..head_layer train (fine-tuning) or stay frozen in
      inference mode (linear evaluation).
    steps: optimiser steps.
    batch_size: global training batch (a multiple of the device count).
    learning_rate: peak learning rate, cosine-decayed to 0 over `steps`.
    momentum: Nesterov momentum.
    seed: drives the batch order, augmentation and classifier init.
    augment_fn: `(key, images [n,H,W,C]) -> images`, applied per core inside the step.
    eval_batch_size: global batch of the test-set forward pass.
    mapper: the devices to run on; None: every device of every process.
    workdir: where its checkpoints and TensorBoard events go; a rerun with the same workdir
      resumes (bitwise) from the newest checkpoint. None: no checkpoints.
    log_every_steps, checkpoint_every_steps: as pretraining's.
    name: what trains, for logs.
    on_step: called with the number of steps done after each step (tests).
    distillation: learn from a teacher (`Distillation`) instead of the labels.
    teacher: with `distillation`, the teacher's {'variables', 'classifier'} (NumPy or
      device arrays; only read).

  Returns:
    `dict(top1=, top5=, train_loss=, variables=, classifier=, preempted=)`: test accuracies,
    the last logged loss, the model variables after training (same structure as `variables`,
    NumPy) and the classifier params (NumPy); `preempted` when a signal stopped it (then the
    accuracies are None).
  """
  if not -1 <= fine_tune_after_block <= 4:
    raise ValueError(f'fine_tune_after_block must be in -1..4, got {fine_tune_after_block}')
  if head_layer < 0:
    raise ValueError(f'head_layer must be >= 0, got {head_layer}')
  if steps <= 0 or batch_size <= 0:
    raise ValueError(f'steps and batch_size must be positive, got {steps} and {batch_size}')
  mapper = mapper or parallel.Mapper()
  mapper.check_batch_size(batch_size)
  trainable_names = []
  if fine_tune_after_block < 4:
    trainable_names.append('encoder')
  if train_head and head_layer >= 1:
    trainable_names.append('head')
  variables = jax.device_get(variables)
  params = dict(variables['params'])
  feature_dim = jax.eval_shape(
      lambda v, x: features_lib.select_feature(model.apply(v, x, train=False), head_layer),
      variables, jax.ShapeDtypeStruct((1,) + tuple(train.image_shape), jnp.float32)).shape[-1]
  init_key = jax.random.key(seed)
  classifier = {'kernel': 0.01 * jax.random.normal(init_key, (feature_dim, num_classes)),
                'bias': jnp.zeros((num_classes,), jnp.float32)}
  trainable = {'classifier': classifier, **{n: params[n] for n in trainable_names}}
  tx = optax.sgd(optax.cosine_decay_schedule(learning_rate, steps), momentum=momentum,
                 nesterov=True)
  if (distillation is None) != (teacher is None):
    raise ValueError('distillation and teacher go together')
  state = ClassifierState(
      step=jnp.zeros((), jnp.int32), trainable=trainable,
      frozen={n: v for n, v in params.items() if n not in trainable_names},
      batch_stats=dict(variables.get('batch_stats', {})), opt_state=tx.init(trainable),
      teacher=None if teacher is None else jax.device_get(
          {'variables': dict(teacher['variables']), 'classifier': teacher['classifier']}))
  ckpt, restored_step = None, None
  if workdir is not None:
    metric_writer.makedirs(workdir)
    settings = dict(
        name=name, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        momentum=momentum, seed=seed, fine_tune_after_block=fine_tune_after_block,
        head_layer=head_layer, train_head=train_head, num_classes=num_classes,
        train_examples=int(train.num_examples), augment=_describe(augment_fn))
    if distillation is not None:
      settings['distillation'] = dict(head_layer=distillation.head_layer,
                                      temperature=distillation.temperature,
                                      label_weight=distillation.label_weight)
    _check_settings(workdir, settings)
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=1)
    restored_step, state = ckpt.restore_latest(state)
  start_step = int(state.step)
  step_fn = mapper.map_step(functools.partial(
      classifier_step, model=with_axis(model, parallel.AXIS), tx=tx,
      trainable_names=tuple(trainable_names), fine_tune_after_block=fine_tune_after_block,
      head_layer=head_layer, augment_fn=augment_fn, distillation=distillation))
  writer = metric_writer.MetricWriter(workdir, total_steps=steps, global_batch_size=batch_size)
  result = loop.run_loop(
      step_fn=step_fn, state=mapper.put_state(state),
      batches=train.train_batches(batch_size, seed=seed, start_step=start_step),
      rng=train_step_lib.run_key(seed), mapper=mapper, checkpointer=ckpt, writer=writer,
      budget=loop.StepBudget(steps), start_step=start_step, last_saved=restored_step,
      log_every_steps=log_every_steps, checkpoint_every_steps=checkpoint_every_steps, name=name,
      fix_hint='Lower the learning rate of this protocol, then rerun.', on_step=on_step)
  if ckpt is not None:
    ckpt.close()
  state = mapper.get_state(result.state)
  new_params = {**params, **{n: state.trainable[n] for n in trainable_names}}
  new_variables = {**variables, 'params': new_params}
  if 'batch_stats' in variables:
    new_variables['batch_stats'] = state.batch_stats
  classifier = jax.tree.map(np.asarray, state.trainable['classifier'])
  out = dict(train_loss=result.last_metrics.get('train/loss'), variables=new_variables,
             classifier=classifier, preempted=result.preempted, top1=None, top5=None)
  if not result.preempted:
    out.update(evaluate(model, new_variables, classifier, test, head_layer=head_layer,
                        batch_size=eval_batch_size, mapper=mapper))
  return out


SETTINGS_FILE = 'classifier_settings.json'


def _describe(fn) -> str:
  """A function (or partial) by name and bound arguments: the same in every process."""
  if fn is None:
    return 'none'
  if isinstance(fn, functools.partial):
    return f'{_describe(fn.func)}({fn.args}, {sorted(fn.keywords.items())})'
  return f'{fn.__module__}.{fn.__qualname__}'


def _check_settings(workdir: str, settings: dict) -> None:
  """A workdir's checkpoints resume only the run that wrote them: the same protocol settings, or
  a clear error (a resumed run with another learning rate or length would mix two runs)."""
  import json  # pylint: disable=g-import-not-at-top
  from tensorflow.io import gfile  # pylint: disable=g-import-not-at-top  (handles gs://)
  path = f'{workdir.rstrip("/")}/{SETTINGS_FILE}'
  settings = json.loads(json.dumps(settings))
  if gfile.exists(path):
    with gfile.GFile(path) as f:
      saved = json.load(f)
    if saved != settings:
      changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
      raise defaults.ConfigError(
          f'{workdir} holds a {saved.get("name")} run with other settings ({", ".join(changed)}: '
          f'{[saved.get(k) for k in changed]} there, {[settings.get(k) for k in changed]} now); '
          f'delete {workdir} to run afresh with these, or restore the settings to resume it.')
    return
  metric_writer.write_json(path, settings, merge=False)


@functools.lru_cache(maxsize=8)
def _mapped_eval_step(model: nn.Module, mesh, head_index: int):
  """Per step: forward pass, top-1 / top-5 hits and the count of real rows, as one mapped
  program whose totals are summed over the cores and carried on the devices. (One program with
  collectives per step: several in flight at once can deadlock XLA:CPU's simulated devices.)"""

  def per_core(totals, variables, classifier, batch):
    outputs = model.apply(variables, batch['image'], train=False)
    representation = features_lib.select_feature(outputs, head_index).astype(jnp.float32)
    logits = representation @ classifier['kernel'] + classifier['bias']
    top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hit = top == batch['label'][:, None]
    mask = batch['mask']
    local = jnp.stack([jnp.sum(hit[:, 0] & mask), jnp.sum(jnp.any(hit, axis=-1) & mask),
                       jnp.sum(mask)]).astype(jnp.int32)
    return totals + lax.psum(local, parallel.AXIS)

  return jax.jit(jax.shard_map(per_core, mesh=mesh,
                               in_specs=(P(), P(), P(), P(parallel.AXIS)), out_specs=P(),
                               check_vma=False), donate_argnums=(0,))


def evaluate(model, variables, classifier, split, *, head_layer: int, batch_size: int,
             mapper) -> dict[str, float]:
  """Top-1 / top-5 of `classifier` on `head_outputs[head_layer]` over a split, data-parallel;
  the hits are counted on the devices and read once at the end."""
  step = _mapped_eval_step(model, mapper.mesh, head_layer)
  variables = jax.device_put(variables, mapper.replicated)
  classifier = jax.device_put(classifier, mapper.replicated)
  totals = jax.device_put(np.zeros(3, np.int32), mapper.replicated)
  for batch in split.batches(features_lib.device_batch_size(batch_size, mapper)):
    totals = step(totals, variables, classifier, mapper.put_batch(batch))
  top1, top5, count = (int(x) for x in jax.device_get(totals))
  return dict(top1=top1 / count, top5=top5 / count)
