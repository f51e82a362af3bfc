"""The evaluation protocols, by name: each is `fn(config, workdir, encoder, data) -> metrics`.

`config.eval.protocols` lists the ones `--mode=pretrain_then_eval` / `--mode=evaluate` run; the
other modes name one each (simclr_jax/run.py). Every protocol reads an `evaluation.data.EvalData`
(in memory or streamed) and an `evaluation.encoder.Encoder`, and returns a flat dict that the
entry point merges into `workdir/results.json`.

| name | in memory (Fashion-MNIST, CIFAR) | streamed (ImageNet) |
|---|---|---|
| linear | exact L-BFGS probe on the features (+ the raw-pixel baseline) | the paper's SGD protocol |
| linear_sgd | the paper's SGD protocol (data-parallel, checkpointed), keys `linear_sgd_*` | same |
| knn | feature bank sharded over the devices, global top-k | same |
| finetune | each of config.eval.finetune_fractions, class-balanced subsets | ImageNet's own 1 % / 10 % subsets (TFDS `imagenet2012_subset`), class-balanced elsewhere |
| label_fraction_linear | L-BFGS probe on label subsets, the mean over several | in memory only |
| embed_plot | t-SNE of the test features | in memory only |
| transfer | L-BFGS probe on config.eval.transfer_dataset | in memory only |
| distill | SimCLRv2's distillation: a student trained on the fine-tuned teacher's predictions, per label fraction | same (labelled loss in memory only) |
| probe | the checkpoint's own linear classifier (`params['probe']`: the online probe, or an imported official model's supervised head) on the test split | same |

Results of a random-init encoder (`config.init='random'`) get the prefix `random_init_`.
"""

import functools
import math
import os
import time
from typing import Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from simclr_jax import defaults
from simclr_jax import train_step as train_step_lib
from simclr_jax.evaluation import data as data_lib
from simclr_jax.evaluation import classifier
from simclr_jax.evaluation import features as features_lib
from simclr_jax.evaluation import finetune as finetune_lib
from simclr_jax.evaluation import knn as knn_lib
from simclr_jax.evaluation import linear as linear_lib
from simclr_jax.evaluation import linear_sgd as linear_sgd_lib
from simclr_jax.evaluation import plots
from simclr_jax.evaluation import subsets
from simclr_jax.evaluation.encoder import Encoder
from simclr_jax.models import build_model
from simclr_jax.models.heads import PROBE_KEY

# Streamed ImageNet's label fractions: the paper's own subsets (file lists shipped with the
# official code, in TFDS as imagenet2012_subset/<p>pct), not draws of ours.
IMAGENET_SUBSETS = {0.01: 'imagenet2012_subset/1pct', 0.1: 'imagenet2012_subset/10pct'}


def prefix(config) -> str:
  """Result keys of a random-init encoder get a prefix, so both can live in one results.json."""
  return 'random_init_' if config.init == 'random' else ''


def percent(fraction: float) -> str:
  return f'{fraction * 100:g}pct'


def linear(config, workdir, encoder: Encoder, data: data_lib.EvalData) -> dict:
  """Linear evaluation: the exact L-BFGS probe where the features fit in memory, else the
  paper's SGD protocol (`linear_sgd`)."""
  if not data.in_memory:
    return _linear_sgd(config, workdir, encoder, data, key='linear_eval')
  train_x, train_y, test_x, test_y, num_classes = data.arrays()
  t0 = time.time()
  train_f = encoder.features(data.train, config.eval.feature)
  test_f = encoder.features(data.test, config.eval.feature)
  res = linear_lib.linear_eval(train_f, train_y, test_f, test_y, num_classes=num_classes,
                               **linear_lib.probe_kwargs(config))
  p = prefix(config)
  out = {f'{p}linear_eval_top1': res['top1'], f'{p}linear_eval_top5': res['top5'],
         f'{p}linear_eval_feature': config.eval.feature, f'{p}linear_eval_l2_reg': res['l2_reg'],
         f'{p}linear_eval_protocol': 'lbfgs', f'{p}linear_eval_seconds': time.time() - t0,
         'encoder_step': encoder.step}
  if (config.init == 'pretrained' and config.eval.feature == 'h'
      and encoder.model.probe_input == 0):
    online = encoder.variables['params'][PROBE_KEY]
    logits = test_f @ np.asarray(online['kernel']) + np.asarray(online['bias'])
    out['online_probe_top1'] = features_lib.topk_accuracy(logits, test_y, 1)
  if config.eval.pixel_baseline:
    pix = linear_lib.pixel_baseline(train_x, train_y, test_x, test_y, num_classes=num_classes,
                                    **linear_lib.probe_kwargs(config))
    out['pixel_baseline_top1'] = pix['top1']
  return out


def linear_sgd(config, workdir, encoder: Encoder, data: data_lib.EvalData) -> dict:
  """The paper's linear evaluation: a linear layer on the frozen encoder's h, trained with
  Nesterov SGD on cropped and flipped images (config.eval.linear_*), data-parallel, checkpointed
  under workdir/linear_sgd (a rerun resumes). Keys `linear_sgd_*`, so it can sit beside the
  L-BFGS probe's `linear_eval_*` (on streamed data `linear` runs it under those)."""
  return _linear_sgd(config, workdir, encoder, data, key='linear_sgd')


def _linear_sgd(config, workdir, encoder: Encoder, data: data_lib.EvalData, *, key: str) -> dict:
  t0 = time.time()
  p = prefix(config)
  res = linear_sgd_lib.linear_eval_official(
      encoder.model, encoder.variables, data.train, data.test, num_classes=data.num_classes,
      epochs=config.eval.linear_epochs, batch_size=config.eval.linear_batch_size,
      learning_rate=(config.eval.linear_learning_rate if config.eval.linear_learning_rate > 0
                     else None), feature=config.eval.feature, seed=config.seed,
      augment_fn=linear_augment(config, data.train.image_shape[0]),
      eval_batch_size=config.eval.batch_size, mapper=encoder.mapper,
      workdir=os.path.join(workdir, f'{p}linear_sgd'), log_every_steps=config.log_every_steps,
      checkpoint_every_steps=config.checkpoint_every_steps, name='linear evaluation')
  if res['preempted']:
    return {'preempted': True}
  return {f'{p}{key}_top1': res['top1'], f'{p}{key}_top5': res['top5'],
          f'{p}{key}_feature': config.eval.feature, f'{p}{key}_protocol': 'sgd',
          f'{p}{key}_steps': res['steps'], f'{p}{key}_seconds': time.time() - t0,
          'encoder_step': encoder.step}


def linear_augment(config, image_side: int):
  """The SGD linear protocol's augmentation (config.eval.linear_augment): 'crop_flip' (the
  paper's), 'flip', or 'none'."""
  choice = config.eval.get('linear_augment', 'crop_flip')
  if choice == 'crop_flip':
    return finetune_augment(image_side)
  if choice == 'flip':
    return functools.partial(finetune_lib.crop_and_flip, area_range=(1.0, 1.0),
                             aspect_ratio_range=(1.0, 1.0))
  if choice == 'none':
    return None
  raise ValueError(f"config.eval.linear_augment must be 'crop_flip', 'flip' or 'none', got "
                   f'{choice!r}')


def knn(config, workdir, encoder: Encoder, data: data_lib.EvalData) -> dict:
  """Weighted kNN (config.eval.knn_k, knn_temperature) with the training features sharded over
  the devices (`knn.sharded_knn_eval`): exact, and never gathered on a host."""
  del workdir
  batch = features_lib.device_batch_size(config.eval.batch_size, encoder.mapper)
  top1 = knn_lib.sharded_knn_eval(
      encoder.split_features(data.train, config.eval.feature),
      encoder.split_features(data.test, config.eval.feature),
      num_train_steps=data.train.num_steps(batch), ks=tuple(config.eval.knn_k),
      temperature=config.eval.knn_temperature, num_classes=data.num_classes,
      mapper=encoder.mapper)
  return {f'{prefix(config)}knn{k}_top1': v for k, v in top1.items()}


def probe(config, workdir, encoder: Encoder, data: data_lib.EvalData) -> dict:
  """Top-1 / top-5 of the checkpoint's own linear classifier on the whole test split: the
  online probe trained during pretraining, or the supervised head of an imported official
  model (simclr_jax/convert.py), which reproduces its published accuracy. It reads
  `model.probe_input` (0 = h)."""
  del workdir
  layer = encoder.model.probe_input
  params = encoder.variables['params'][PROBE_KEY]
  if params['kernel'].shape[-1] != data.num_classes:
    raise defaults.ConfigError(
        f"the checkpoint's classifier has {params['kernel'].shape[-1]} classes, "
        f'{data.train.name} {data.num_classes}: the probe protocol needs the dataset it was '
        'trained on')
  res = classifier.evaluate(encoder.model, encoder.variables, params, data.test, head_layer=layer,
                            batch_size=config.eval.batch_size, mapper=encoder.mapper)
  return {f'{prefix(config)}probe_top1': res['top1'], f'{prefix(config)}probe_top5': res['top5'],
          f'{prefix(config)}probe_input': layer}


def fraction_split(config, data: data_lib.EvalData, fraction: float) -> data_lib.EvalSplit:
  """The labelled training examples of a label fraction: ImageNet's own 1 % / 10 % subsets
  when the data is streamed imagenet2012, a class-balanced draw (seed config.seed) otherwise."""
  if fraction == 1.0:
    return data.train
  if data.train.name == 'imagenet2012' and fraction in IMAGENET_SUBSETS:
    subset_config = ml_collections.ConfigDict(config.dataset.to_dict())
    subset_config.name = IMAGENET_SUBSETS[fraction]
    subset_config.max_train_examples = -1
    return data_lib.load_split(subset_config, 'train')
  indices = subsets.label_fraction_indices(data.train.labels_in_order(), fraction=fraction,
                                           seed=config.seed)
  return data.train.subset(indices)


def finetune(config, workdir, encoder: Encoder, data: data_lib.EvalData) -> dict:
  """Fine-tunes the whole model (from config.eval.fine_tune_after_block on) with a new linear
  classifier, on each of config.eval.finetune_fractions of the labels: data-parallel with BN
  over the global batch, checkpointed under workdir/finetune_<p>pct (a rerun resumes)."""
  out = {}
  for fraction, steps in finetune_steps(config, data, tuple(config.eval.finetune_fractions)).items():
    key, res, train = _finetune_run(config, workdir, encoder, data, fraction, steps)
    if res['preempted']:
      return {**out, 'preempted': True}
    out.update({f'{key}_top1': res['top1'], f'{key}_top5': res['top5'],
                f'{key}_num_labels': int(train.num_examples), f'{key}_steps': steps})
  return out


def _finetune_run(config, workdir, encoder: Encoder, data: data_lib.EvalData, fraction: float,
                  steps: int):
  """(result key, train_classifier's result, labelled split) of fine-tuning on one fraction;
  a finished run in its workdir is read back, not repeated."""
  train = fraction_split(config, data, fraction)
  key = f'{prefix(config)}finetune_{percent(fraction)}'
  res = classifier.train_classifier(
      encoder.model, encoder.variables, train, data.test, num_classes=data.num_classes,
      fine_tune_after_block=config.eval.fine_tune_after_block,
      head_layer=config.eval.finetune_head_layer, train_head=True, steps=steps,
      batch_size=device_batch_size(config.eval.finetune_batch_size, train, encoder.mapper),
      learning_rate=config.eval.finetune_learning_rate, seed=config.seed,
      augment_fn=finetune_augment(train.image_shape[0]), eval_batch_size=config.eval.batch_size,
      mapper=encoder.mapper, workdir=os.path.join(workdir, key),
      log_every_steps=config.log_every_steps,
      checkpoint_every_steps=config.checkpoint_every_steps, name=f'fine-tuning {percent(fraction)}')
  return key, res, train


def distill(config, workdir, encoder: Encoder, data: data_lib.EvalData) -> dict:
  """SimCLRv2's third step (Chen et al. 2020b, section 2): for each of
  config.eval.finetune_fractions, the model fine-tuned on that fraction (the finetune protocol's
  run, read back from workdir/finetune_<p>pct or run first) is the teacher; a student (the same
  architecture, or config.distill.student_depth / student_width_multiplier; random init, or the
  teacher's weights with config.distill.student_init='teacher') trains on every training image
  for config.distill.epochs with the teacher's predictions at config.distill.temperature as
  targets, plus config.distill.label_weight x the cross-entropy on the fraction's labels (in
  memory only), data-parallel on the shared loop (checkpoints under workdir/distill_<p>pct).
  Teacher and student are tested on the same test split."""
  d = config.distill
  out = {}
  for fraction, steps in finetune_steps(config, data, tuple(config.eval.finetune_fractions)).items():
    _, teacher, _ = _finetune_run(config, workdir, encoder, data, fraction, steps)
    if teacher['preempted']:
      return {**out, 'preempted': True}
    key = f'{prefix(config)}distill_{percent(fraction)}'
    unlabelled = data.train
    if d.label_weight > 0:
      if not data.in_memory:
        raise defaults.ConfigError(
            f'config.distill.label_weight={d.label_weight}: the labelled loss needs the data in '
            f'memory ({data.train.name} is streamed); use 0 (distillation alone)')
      labels = np.full(data.train.num_examples, -1, np.int32)
      kept = (np.arange(data.train.num_examples) if fraction == 1.0 else
              subsets.label_fraction_indices(data.train.labels, fraction=fraction,
                                             seed=config.seed))
      labels[kept] = data.train.labels[kept]
      unlabelled = data_lib.EvalSplit.from_arrays(data.train.images, labels,
                                                  num_classes=data.num_classes,
                                                  name=data.train.name)
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    if d.student_depth > 0:
      model_config.depth = d.student_depth
    if d.student_width_multiplier > 0:
      model_config.width_multiplier = d.student_width_multiplier
    student = build_model(model_config, num_classes=data.num_classes,
                          image_size=data.train.image_shape[0])
    if d.student_init == 'teacher':
      if (model_config.depth, model_config.width_multiplier) != (
          config.model.depth, config.model.width_multiplier):
        raise defaults.ConfigError("config.distill.student_init='teacher' needs the teacher's "
                                   'architecture; leave student_depth / width at -1')
      variables = teacher['variables']
    elif d.student_init == 'random':
      variables = jax.device_get(train_step_lib.init_variables(
          student, image_shape=data.train.image_shape, seed=config.seed))
    else:
      raise defaults.ConfigError(f"config.distill.student_init must be 'random' or 'teacher', "
                                 f'got {d.student_init!r}')
    batch = device_batch_size(d.batch_size, unlabelled, encoder.mapper)
    student_steps = max(1, math.ceil(d.epochs * unlabelled.num_examples / batch))
    res = classifier.train_classifier(
        student, variables, unlabelled, data.test, num_classes=data.num_classes,
        fine_tune_after_block=-1, head_layer=0, train_head=False, steps=student_steps,
        batch_size=batch,
        learning_rate=d.learning_rate, seed=config.seed,
        augment_fn=finetune_augment(unlabelled.image_shape[0]),
        eval_batch_size=config.eval.batch_size, mapper=encoder.mapper,
        workdir=os.path.join(workdir, key), log_every_steps=config.log_every_steps,
        checkpoint_every_steps=config.checkpoint_every_steps,
        name=f'distillation {percent(fraction)}',
        distillation=classifier.Distillation(
            model=encoder.model, head_layer=config.eval.finetune_head_layer,
            temperature=d.temperature, label_weight=d.label_weight),
        teacher={'variables': teacher['variables'], 'classifier': teacher['classifier']})
    if res['preempted']:
      return {**out, 'preempted': True}
    out.update({f'{key}_teacher_top1': teacher['top1'], f'{key}_top1': res['top1'],
                f'{key}_top5': res['top5'], f'{key}_steps': student_steps,
                f'{key}_student': f'{model_config.depth}x{model_config.width_multiplier:g}'})
  return out


def finetune_steps(config, data, fractions) -> dict:
  """Steps of each fine-tuning run: config.eval.finetune_epochs (one per fraction; the paper:
  60 epochs of the 1 % subset, 30 of the 10 %) when given, else config.eval.finetune_steps."""
  epochs = tuple(config.eval.finetune_epochs)
  if not epochs:
    return {f: config.eval.finetune_steps for f in fractions}
  if len(epochs) != len(fractions):
    raise ValueError(f'config.eval.finetune_epochs {epochs} needs one value per fraction of '
                     f'config.eval.finetune_fractions {fractions}')
  steps = {}
  for fraction, n_epochs in zip(fractions, epochs):
    n = round(fraction * data.train.num_examples)
    steps[fraction] = max(1, math.ceil(n_epochs * n / config.eval.finetune_batch_size))
  return steps


def device_batch_size(batch_size: int, split: data_lib.EvalSplit, mapper) -> int:
  """A training batch (fine-tuning, distillation) capped at the split's size, in whole units of
  the devices (and of the stream shards, for a streamed split)."""
  unit = mapper.num_devices if split.in_memory else math.lcm(mapper.num_devices,
                                                             split.stream_shards)
  batch = min(batch_size, split.num_examples)
  return max(unit, batch // unit * unit)


def finetune_augment(image_side: int):
  """Crop + flip for fine-tuning and the SGD linear protocol: Inception crops (area 0.08-1) for
  large images; on images of <= 32 px a crop of 8% of the area leaves a few pixels, so keep at
  least half of it there."""
  area_range = (0.08, 1.0) if image_side > 32 else (0.5, 1.0)
  return functools.partial(finetune_lib.crop_and_flip, area_range=area_range)


def label_fraction_linear(config, workdir, encoder: Encoder, data: data_lib.EvalData) -> dict:
  """The L-BFGS probe with only a class-balanced fraction of the labels
  (config.eval.label_fractions), the mean over config.eval.label_subsets subsets; with
  config.eval.pixel_baseline the same probe on raw pixels and the same subsets
  (`pixel_<p>pct_top1`), the floor at each fraction."""
  del workdir
  train_x, train_y, test_x, test_y, num_classes = data.arrays()
  out = label_fraction_metrics(config, encoder.features(data.train, config.eval.feature),
                               train_y, encoder.features(data.test, config.eval.feature),
                               test_y, num_classes, config.eval.label_fractions)
  out = {prefix(config) + k: v for k, v in out.items()}
  if config.eval.pixel_baseline:
    pixels = label_fraction_metrics(
        config, linear_lib.pixel_features(train_x), train_y, linear_lib.pixel_features(test_x),
        test_y, num_classes, config.eval.label_fractions)
    out.update({f'pixel_{k.removeprefix("linear_")}': v for k, v in pixels.items()
                if k.endswith('_top1')})
  return out


def label_fraction_metrics(config, train_f, train_y, test_f, test_y, num_classes,
                           fractions) -> dict:
  """The linear probe on features at each label fraction, the mean over config.eval.label_subsets
  subsets: `linear_<p>pct_top1`, `_top1_std`, `_top1_runs`, `_num_labels`, `_l2_regs` (the
  weight decay of each subset's fit) (no init prefix)."""
  out = {}
  seeds = range(config.seed, config.seed + config.eval.label_subsets)
  for fraction in fractions:
    res = linear_lib.label_fraction_eval(train_f, train_y, test_f, test_y, fraction=fraction,
                                         seeds=seeds, num_classes=num_classes,
                                         **linear_lib.probe_kwargs(config))
    key = f'linear_{percent(fraction)}'
    out.update({f'{key}_top1': res['top1'], f'{key}_top1_std': res['top1_std'],
                f'{key}_top1_runs': res['top1_runs'], f'{key}_num_labels': res['num_labels'],
                f'{key}_l2_regs': res['l2_regs']})
  return out


def embed_plot(config, workdir, encoder: Encoder, data: data_lib.EvalData) -> dict:
  """A t-SNE plot of the test features (workdir/embedding.png), titled with the kNN top-1."""
  _, train_y, _, test_y, num_classes = data.arrays()
  train_f = encoder.features(data.train, config.eval.feature)
  test_f = encoder.features(data.test, config.eval.feature)
  k = config.eval.knn_k[0]
  top1 = knn_lib.knn_eval(train_f, train_y, test_f, test_y, k=k,
                          temperature=config.eval.knn_temperature, num_classes=num_classes)
  path = os.path.join(workdir, f'{prefix(config)}embedding.png')
  if jax.process_index() == 0:
    plots.embed_plot(test_f, test_y, out_path=path, seed=config.seed,
                     title=f'{config.method} {config.dataset.name} test h '
                     f'(step {encoder.step}): kNN-{k} top-1 {top1:.3f}')
  return {f'{prefix(config)}embed_plot': path, f'{prefix(config)}knn{k}_top1': top1}


def transfer(config, workdir, encoder: Encoder, data: data_lib.EvalData) -> dict:
  """L-BFGS linear eval of the encoder (pretrained on config.dataset) on
  config.eval.transfer_dataset (its own train/test splits), beside raw pixels."""
  del workdir, data
  if not config.eval.transfer_dataset:
    raise ValueError('--mode=transfer needs --config.eval.transfer_dataset=<name> '
                     "(a TFDS name, or 'sklearn_digits' offline)")
  target_config = ml_collections.ConfigDict(config.dataset.to_dict())
  target_config.name = config.eval.transfer_dataset
  target_config.max_train_examples = -1
  target = data_lib.load(target_config)
  train_x, train_y, test_x, test_y, num_classes = target.arrays()
  want = encoder_channels(encoder)
  train = data_lib.EvalSplit.from_arrays(match_channels(train_x, want), train_y,
                                         num_classes=num_classes, name=target.train.name)
  test = data_lib.EvalSplit.from_arrays(match_channels(test_x, want), test_y,
                                        num_classes=num_classes, name=target.test.name)
  if encoder.random_init:
    encoder.calibrate_batch_norm(train, seed=config.seed)
  res = linear_lib.linear_eval(encoder.features(train), train_y, encoder.features(test), test_y,
                               num_classes=num_classes, **linear_lib.probe_kwargs(config))
  pix = linear_lib.pixel_baseline(train.images, train_y, test.images, test_y,
                                  num_classes=num_classes, **linear_lib.probe_kwargs(config))
  name = config.eval.transfer_dataset.replace('/', '_')
  return {f'{prefix(config)}transfer_{name}_top1': res['top1'],
          f'transfer_{name}_pixel_baseline_top1': pix['top1']}


def encoder_channels(encoder: Encoder) -> int:
  """Input channels the encoder was built for (its stem kernel's input dimension)."""
  stem = encoder.variables['params']['encoder']['stem_conv']['kernel']
  return int(np.shape(stem)[-2])


def match_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """Grey <-> RGB so that a target dataset fits the encoder's input."""
  if images.shape[-1] == channels:
    return images
  if channels == 3:
    return np.repeat(images, 3, axis=-1)
  return images.mean(axis=-1, keepdims=True)


PROTOCOLS: dict[str, Callable] = {
    'linear': linear,
    'linear_sgd': linear_sgd,
    'knn': knn,
    'finetune': finetune,
    'label_fraction_linear': label_fraction_linear,
    'embed_plot': embed_plot,
    'transfer': transfer,
    'probe': probe,
    'distill': distill,
}
# What `--mode=eval_all` runs (transfer needs a second dataset, so it has its own mode).
ALL = ('linear', 'knn', 'finetune', 'label_fraction_linear', 'embed_plot')
STREAMABLE = ('linear', 'linear_sgd', 'knn', 'finetune', 'probe', 'distill')


def check_names(names) -> None:
  """A ConfigError naming the unknown protocols of `names`, if any."""
  unknown = [name for name in names if name not in PROTOCOLS]
  if unknown:
    raise defaults.ConfigError(f'config.eval.protocols has unknown protocols {unknown}; use '
                               f'names from {sorted(PROTOCOLS)}')


def run(names, config, workdir, encoder: Encoder, data: data_lib.EvalData,
        on_result: Callable[[dict], dict]) -> dict:
  """Runs the protocols `names` in order; `on_result` gets each one's metrics (it merges them
  into results.json and returns the merged dict). On streamed data the protocols that need the
  data in memory are skipped with a warning."""
  check_names(names)
  results = {}
  for name in names:
    if not data.in_memory and name not in STREAMABLE:
      logging.warning('%s is streamed: protocol %s needs the data in memory, skipped (the '
                      'streamed protocols: %s)', data.train.name, name, STREAMABLE)
      continue
    t0 = time.time()
    out = PROTOCOLS[name](config, workdir, encoder, data)
    logging.info('%s (%.0f s): %s', name, time.time() - t0, out)
    results = on_result(out)
    if out.get('preempted'):
      break
  return results

