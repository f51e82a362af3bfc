"""What `--mode` runs: pretraining and the evaluation protocols, each writing into results.json.

`train_and_evaluate(config, workdir, mode)` is the one function the entry point calls. Every
protocol reads the encoder from the workdir's newest checkpoint (or `config.init_checkpoint`), or
a random-init encoder of the same architecture with `--config.init=random`, and merges its
figures into `workdir/results.json`.
"""

import functools
import os
import time
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from simclr_jax import checkpoint
from simclr_jax import config_validation
from simclr_jax import metric_writer
from simclr_jax import train
from simclr_jax import train_step as train_step_lib
from simclr_jax.data import pipeline
from simclr_jax.data import sources
from simclr_jax.evaluation import features as features_lib
from simclr_jax.evaluation import finetune as finetune_lib
from simclr_jax.evaluation import knn as knn_lib
from simclr_jax.evaluation import linear as linear_lib
from simclr_jax.evaluation import plots
from simclr_jax.evaluation import subsets
from simclr_jax.models import build_model

MODES = ('pretrain', 'linear_eval', 'pretrain_then_eval', 'knn', 'finetune', 'transfer',
         'embed_plot', 'eval_all')


def _results_path(workdir: str) -> str:
  return os.path.join(workdir, 'results.json')


def _prefix(config) -> str:
  """Result keys of a random-init encoder get a prefix, so both can live in one results.json."""
  return 'random_init_' if config.init == 'random' else ''


class Encoder:
  """A model in inference form (no mapped axis) with its variables, from a checkpoint or random."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, num_classes: int,
               image_shape: tuple, state: Optional[Any] = None):
    self.model = build_model(config.model, num_classes=num_classes, image_size=image_shape[0],
                             axis_name=None)
    self.step = 0
    self._cache = {}
    if state is not None:
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      self.step = int(state.step)
    else:
      variables = jax.device_get(train_step_lib.init_variables(
          self.model, image_shape=image_shape, seed=config.seed))
      if config.init == 'pretrained':
        variables, self.step = _restore_variables(config.init_checkpoint or workdir, variables)
    self.variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    self.random_init = state is None and config.init == 'random'

  def calibrate_batch_norm(self, images: np.ndarray, *, seed: int, batch_size: int = 256,
                           num_batches: int = 50) -> None:
    """Replaces a random-init encoder's running BN statistics (mean 0, variance 1 at init) by
    statistics of the data: train-mode forward passes, no gradient. Without this the random-init
    baseline measures mismatched normalisation rather than random features. With BN momentum
    0.9, 50 batches leave 0.9**50 < 1% of the initial values."""
    @jax.jit
    def update(variables, x):
      _, new = self.model.apply(variables, x, train=True, mutable=['batch_stats'])
      return {'params': variables['params'], 'batch_stats': new['batch_stats']}

    rng = np.random.default_rng(seed)
    variables = self.variables
    for _ in range(num_batches):
      idx = rng.choice(len(images), min(batch_size, len(images)), replace=False)
      variables = update(variables, features_lib.to_model_input(images[idx]))
    self.variables = jax.device_get(variables)
    self._cache.clear()

  def features(self, images: np.ndarray, config, feature: Optional[str] = None) -> np.ndarray:
    """Frozen features of `images`, computed once per (array, feature) across protocols."""
    feature = feature or config.eval.feature
    key = (images.__array_interface__['data'][0], images.shape, feature)
    if key not in self._cache:
      self._cache[key] = features_lib.extract_features(
          self.model, self.variables, images, batch_size=config.eval.batch_size, feature=feature)
    return self._cache[key]


def _restore_variables(directory: str, variables):
  """Params and BN statistics of the newest readable checkpoint under `directory`, into the
  structure of `variables`; the optimizer and method state in it are not read, so any optimizer
  or budget setting of the run that wrote it will do."""
  ckpt = checkpoint.Checkpointer(directory)
  if not ckpt.all_steps():
    raise FileNotFoundError(
        f'no checkpoint under {ckpt.directory}: pretrain first (--mode=pretrain), point '
        '--config.init_checkpoint at a pretraining workdir, or evaluate a random-init encoder '
        'with --config.init=random')
  step, parts = ckpt.restore_latest_parts({'params': variables['params'],
                                           'batch_stats': variables['batch_stats'],
                                           'step': np.zeros((), np.int32)})
  ckpt.close()
  if step is None:
    raise FileNotFoundError(f'no readable checkpoint under {ckpt.directory}')
  return {'params': parts['params'], 'batch_stats': parts['batch_stats']}, int(parts['step'])


def _eval_data(config, dataset_config=None):
  dataset_config = dataset_config or config.dataset
  train_x, train_y = pipeline.eval_arrays(dataset_config, dataset_config.train_split)
  test_x, test_y = pipeline.eval_arrays(dataset_config, dataset_config.eval_split)
  num_classes = int(max(train_y.max(), test_y.max()) + 1)
  return train_x, train_y, test_x, test_y, num_classes


def _data_and_encoder(config, workdir, encoder, data):
  """The labelled arrays and the encoder a protocol uses, loaded unless given."""
  data = data or _eval_data(config)
  if encoder is None:
    encoder = _encoder(config, workdir, data)
  return data, encoder


def _encoder(config, workdir, data, state=None) -> Encoder:
  encoder = Encoder(config, workdir, num_classes=data[4], image_shape=data[0].shape[1:],
                    state=state)
  if encoder.random_init:
    encoder.calibrate_batch_norm(data[0], seed=config.seed)
  return encoder


def _num_classes_and_shape(config):
  src = sources.load(config.dataset, config.dataset.eval_split)
  channels = sources.image_shape(src, config.dataset.image_size)[-1]
  return src.num_classes, (config.dataset.image_size, config.dataset.image_size, channels)


def linear_eval(config, workdir, *, encoder: Optional[Encoder] = None, data=None) -> dict:
  """Frozen encoder, L-BFGS logistic regression on features; also the raw-pixel baseline."""
  data, encoder = _data_and_encoder(config, workdir, encoder, data)
  train_x, train_y, test_x, test_y, num_classes = data
  t0 = time.time()
  train_f = encoder.features(train_x, config)
  test_f = encoder.features(test_x, config)
  res = linear_lib.linear_eval(train_f, train_y, test_f, test_y, num_classes=num_classes,
                               **linear_lib.probe_kwargs(config))
  p = _prefix(config)
  out = {f'{p}linear_eval_top1': res['top1'], f'{p}linear_eval_top5': res['top5'],
         f'{p}linear_eval_feature': config.eval.feature, f'{p}linear_eval_l2_reg': res['l2_reg'],
         f'{p}linear_eval_seconds': time.time() - t0, 'encoder_step': encoder.step}
  if config.init == 'pretrained' and config.eval.feature == 'h':
    probe = encoder.variables['params']['probe']
    logits = test_f @ np.asarray(probe['kernel']) + np.asarray(probe['bias'])
    out['online_probe_top1'] = features_lib.topk_accuracy(logits, test_y, 1)
  if config.eval.pixel_baseline:
    pix = linear_lib.pixel_baseline(train_x, train_y, test_x, test_y, num_classes=num_classes,
                                    **linear_lib.probe_kwargs(config))
    out['pixel_baseline_top1'] = pix['top1']
  logging.info('linear eval: %s', out)
  return metric_writer.write_json(_results_path(workdir), out)


def knn(config, workdir, *, encoder=None, data=None) -> dict:
  data, encoder = _data_and_encoder(config, workdir, encoder, data)
  train_x, train_y, test_x, test_y, num_classes = data
  train_f, test_f = encoder.features(train_x, config), encoder.features(test_x, config)
  out = {}
  for k in config.eval.knn_k:
    out[f'{_prefix(config)}knn{k}_top1'] = knn_lib.knn_eval(
        train_f, train_y, test_f, test_y, k=k, temperature=config.eval.knn_temperature,
        num_classes=num_classes)
  logging.info('kNN: %s', out)
  return metric_writer.write_json(_results_path(workdir), out)


def finetune(config, workdir, *, encoder=None, data=None) -> dict:
  """Fine-tunes on a class-balanced label fraction (config.eval.finetune_fraction)."""
  data, encoder = _data_and_encoder(config, workdir, encoder, data)
  train_x, train_y, test_x, test_y, num_classes = data
  fraction = config.eval.finetune_fraction
  idx = subsets.label_fraction_indices(train_y, fraction=fraction, seed=config.seed)
  res = finetune_lib.finetune(
      encoder.model, encoder.variables, train_x[idx], train_y[idx], test_x, test_y,
      num_classes=num_classes, fine_tune_after_block=config.eval.fine_tune_after_block,
      head_layer=config.eval.finetune_head_layer, steps=config.eval.finetune_steps,
      batch_size=min(config.eval.finetune_batch_size, len(idx)),
      learning_rate=config.eval.finetune_learning_rate, seed=config.seed,
      augment_fn=_finetune_augment(train_x.shape[1]))
  key = f'{_prefix(config)}finetune_{_percent(fraction)}_top1'
  out = {key: res['top1'], key.replace('top1', 'top5'): res['top5'],
         f'{_prefix(config)}finetune_{_percent(fraction)}_num_labels': int(len(idx))}
  logging.info('fine-tune: %s', out)
  return metric_writer.write_json(_results_path(workdir), out)


def _finetune_augment(image_side: int):
  """Crop + flip for fine-tuning: Inception crops (area 0.08-1) for large images; on images of
  <= 32 px a crop of 8% of the area leaves a few pixels, so keep at least half of it there."""
  area_range = (0.08, 1.0) if image_side > 32 else (0.5, 1.0)
  return functools.partial(finetune_lib.crop_and_flip, area_range=area_range)


def _percent(fraction: float) -> str:
  return f'{fraction * 100:g}pct'


def label_fraction_linear_eval(config, workdir, *, encoder=None, data=None) -> dict:
  """Linear eval with only a class-balanced fraction of the labels (config.eval.label_fractions),
  the mean over config.eval.label_subsets subsets (seeds config.seed, config.seed + 1, ...)."""
  data, encoder = _data_and_encoder(config, workdir, encoder, data)
  train_x, train_y, test_x, test_y, num_classes = data
  train_f, test_f = encoder.features(train_x, config), encoder.features(test_x, config)
  out = label_fraction_metrics(config, train_f, train_y, test_f, test_y, num_classes,
                               config.eval.label_fractions)
  return metric_writer.write_json(_results_path(workdir),
                                  {_prefix(config) + k: v for k, v in out.items()})


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
    key = f'linear_{_percent(fraction)}'
    out.update({f'{key}_top1': res['top1'], f'{key}_top1_std': res['top1_std'],
                f'{key}_top1_runs': res['top1_runs'], f'{key}_num_labels': res['num_labels'],
                f'{key}_l2_regs': res['l2_regs']})
  return out


def transfer(config, workdir) -> dict:
  """Linear eval of the encoder (pretrained on config.dataset) on config.eval.transfer_dataset."""
  if not config.eval.transfer_dataset:
    raise ValueError('--mode=transfer needs --config.eval.transfer_dataset=<name> '
                     "(a TFDS name, or 'sklearn_digits' offline)")
  num_classes, image_shape = _num_classes_and_shape(config)
  encoder = Encoder(config, workdir, num_classes=num_classes, image_shape=image_shape)
  target = ml_collections.ConfigDict(config.dataset.to_dict())
  target.name = config.eval.transfer_dataset
  target.max_train_examples = -1
  train_x, train_y, test_x, test_y, target_classes = _eval_data(config, target)
  train_x = _match_channels(train_x, image_shape[-1])
  test_x = _match_channels(test_x, image_shape[-1])
  if encoder.random_init:
    encoder.calibrate_batch_norm(train_x, seed=config.seed)
  train_f, test_f = encoder.features(train_x, config), encoder.features(test_x, config)
  res = linear_lib.linear_eval(train_f, train_y, test_f, test_y, num_classes=target_classes,
                               **linear_lib.probe_kwargs(config))
  pix = linear_lib.pixel_baseline(train_x, train_y, test_x, test_y, num_classes=target_classes,
                                  **linear_lib.probe_kwargs(config))
  name = config.eval.transfer_dataset.replace('/', '_')
  out = {f'{_prefix(config)}transfer_{name}_top1': res['top1'],
         f'transfer_{name}_pixel_baseline_top1': pix['top1']}
  return metric_writer.write_json(_results_path(workdir), out)


def _match_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """Grey <-> RGB so that a target dataset fits the encoder's input."""
  if images.shape[-1] == channels:
    return images
  if channels == 3:
    return np.repeat(images, 3, axis=-1)
  return images.mean(axis=-1, keepdims=True)


def embed_plot(config, workdir, *, encoder=None, data=None) -> dict:
  data, encoder = _data_and_encoder(config, workdir, encoder, data)
  train_x, train_y, test_x, test_y, num_classes = data
  train_f, test_f = encoder.features(train_x, config), encoder.features(test_x, config)
  k = config.eval.knn_k[0]
  top1 = knn_lib.knn_eval(train_f, train_y, test_f, test_y, k=k,
                          temperature=config.eval.knn_temperature, num_classes=num_classes)
  path = os.path.join(workdir, f'{_prefix(config)}embedding.png')
  if jax.process_index() == 0:
    plots.embed_plot(test_f, test_y, out_path=path, seed=config.seed,
                     title=f'{config.method} {config.dataset.name} test h '
                     f'(step {encoder.step}): kNN-{k} top-1 {top1:.3f}')
  return metric_writer.write_json(_results_path(workdir), {
      f'{_prefix(config)}embed_plot': path, f'{_prefix(config)}knn{k}_top1': top1})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mode: str = 'pretrain_then_eval') -> dict:
  """Runs `mode` (see MODES) and returns the merged results.json contents."""
  if mode not in MODES:
    raise ValueError(f'unknown mode {mode!r}; use one of {MODES}')
  metric_writer.makedirs(workdir)  # local or gs://
  config_validation.validate(config)
  results = {}
  state = None
  if mode in ('pretrain', 'pretrain_then_eval'):
    t0 = time.time()
    out = train.pretrain(config, workdir)
    state = out['state']
    results = metric_writer.write_json(_results_path(workdir), {
        'step': out['step'], 'train_loss': out['train_loss'],
        'pretrain_minutes': (time.time() - t0) / 60,
        **{k: v for k, v in out['train_metrics'].items()
           if k.split('/')[1] in ('contrast_accuracy', 'probe_accuracy', 'images_per_s')}})
    if out['preempted']:
      return {**results, 'preempted': True}
  if mode in ('pretrain', 'transfer'):
    return transfer(config, workdir) if mode == 'transfer' else results
  data = _eval_data(config)
  encoder = _encoder(config, workdir, data, state)
  if mode in ('linear_eval', 'pretrain_then_eval', 'eval_all'):
    results = linear_eval(config, workdir, encoder=encoder, data=data)
  if mode in ('knn', 'eval_all'):
    results = knn(config, workdir, encoder=encoder, data=data)
  if mode in ('finetune', 'eval_all'):
    results = finetune(config, workdir, encoder=encoder, data=data)
  if mode == 'eval_all':
    results = label_fraction_linear_eval(config, workdir, encoder=encoder, data=data)
  if mode in ('embed_plot', 'eval_all'):
    results = embed_plot(config, workdir, encoder=encoder, data=data)
  return results


def summary(results: dict) -> str:
  """The lines the entry point prints at the end."""
  keys = [k for k in ('step', 'train_loss', 'linear_eval_top1', 'pixel_baseline_top1',
                      'online_probe_top1', 'random_init_linear_eval_top1', 'knn20_top1',
                      'knn200_top1') if k in results]
  keys += sorted(k for k in results if ('finetune' in k or 'transfer' in k or 'pct' in k)
                 and k not in keys and k.endswith('top1'))
  lines = ['results:'] + [f'  {k}: {results[k]:.4f}' if isinstance(results[k], float)
                          else f'  {k}: {results[k]}' for k in keys]
  return '\n'.join(lines)
