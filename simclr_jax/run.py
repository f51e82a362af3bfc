"""What `--mode` runs: pretraining, then the evaluation protocols, each writing into results.json.

`train_and_evaluate(config, workdir, mode)` is the one function the entry point calls; it only
dispatches. The protocols (simclr_jax/evaluation/protocols.py) read the encoder from the workdir's
newest checkpoint (or `config.init_checkpoint`), or a random-init encoder of the same
architecture with `--config.init=random`, and each merges its figures into
`workdir/results.json`.
"""

import os
import time

import ml_collections

from simclr_jax import config_validation
from simclr_jax import metric_writer
from simclr_jax import train
from simclr_jax.evaluation import data as data_lib
from simclr_jax.evaluation import protocols
from simclr_jax.evaluation.encoder import Encoder

MODES = ('pretrain', 'linear_eval', 'pretrain_then_eval', 'evaluate', 'knn', 'finetune',
         'transfer', 'embed_plot', 'eval_all', 'probe', 'distill')
# The protocols (simclr_jax/evaluation/protocols.py) each evaluation mode runs;
# pretrain_then_eval and evaluate run config.eval.protocols.
MODE_PROTOCOLS = {'linear_eval': ('linear',), 'knn': ('knn',), 'finetune': ('finetune',),
                  'transfer': ('transfer',), 'embed_plot': ('embed_plot',), 'probe': ('probe',),
                  'distill': ('distill',),
                  'eval_all': protocols.ALL}


def _results_path(workdir: str) -> str:
  return os.path.join(workdir, 'results.json')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mode: str = 'pretrain_then_eval') -> dict:
  """Runs `mode` (see MODES) and returns the merged results.json contents."""
  if mode not in MODES:
    raise ValueError(f'unknown mode {mode!r}; use one of {MODES}')
  names = MODE_PROTOCOLS.get(mode, tuple(config.eval.protocols))
  if mode != 'pretrain':
    protocols.check_names(names)  # before any pretraining
  pretrains = mode in ('pretrain', 'pretrain_then_eval')
  if not pretrains:
    config_validation.validate(config)  # pretraining validates it (train.setup), once per run
  metric_writer.makedirs(workdir)  # local or gs://
  results = {}
  state = None
  if pretrains:
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
  if mode == 'pretrain':
    return results
  data = data_lib.load(config.dataset)
  encoder = Encoder(config, workdir, num_classes=data.num_classes,
                    image_shape=data.train.image_shape, state=state)
  if encoder.random_init:
    encoder.calibrate_batch_norm(data.train, seed=config.seed)
  results = protocols.run(
      names, config, workdir, encoder, data,
      on_result=lambda out: metric_writer.write_json(_results_path(workdir), out))
  return results


def summary(results: dict) -> str:
  """The lines the entry point prints at the end."""
  keys = [k for k in ('step', 'train_loss', 'linear_eval_top1', 'linear_sgd_top1',
                      'pixel_baseline_top1',
                      'online_probe_top1', 'random_init_linear_eval_top1', 'knn20_top1',
                      'knn200_top1') if k in results]
  keys += sorted(k for k in results if k.startswith('linear_eval_protocol'))
  keys += sorted(k for k in results if ('finetune' in k or 'transfer' in k or 'pct' in k)
                 and k not in keys and k.endswith('top1'))
  lines = ['results:'] + [f'  {k}: {results[k]:.4f}' if isinstance(results[k], float)
                          else f'  {k}: {results[k]}' for k in keys]
  return '\n'.join(lines)
