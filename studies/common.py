"""What every study script shares: the CPU-sized base config, one cell (pretrain + linear eval),
tables (markdown + JSON) and the --out / --budget_scale flags.

A cell is one pretraining run of the library (`simclr_jax.train.pretrain`) followed by the
library's linear evaluation (the `linear` protocol, exact L-BFGS logistic regression) on
one or more features. Its numbers go to `<out>/runs/<cell>/cell.json`; a rerun of a study skips
cells whose cell.json was written with the same config, so an interrupted study resumes.
"""

import copy
import json
import os
import shutil
import time
from typing import Iterable, Optional, Sequence

from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np

from configs import fashion_mnist_fast
from simclr_jax import metric_writer
from simclr_jax import train
from simclr_jax.evaluation import data as data_lib
from simclr_jax.evaluation import protocols
from simclr_jax.evaluation.encoder import Encoder

flags.DEFINE_string('out', None, 'Folder for the table (.md, .json), the figure (.png) and the '
                    'per-cell runs.')
flags.DEFINE_float('budget_scale', 1.0, 'Multiplies the images each cell trains on: the train '
                   'subset grows up to all 60000 images, then the epochs. 1 = CPU scale; '
                   'try 20-100 on an accelerator.')
flags.DEFINE_integer('seed', 0, 'Seed of every cell (data order, augmentations, init).')
flags.DEFINE_string('compilation_cache', '', 'Persistent XLA compilation cache folder; cells '
                    'with the same model and loss reuse the compiled step. Default: <out>/.jax_cache.')
flags.mark_flags_as_required(['out'])
FLAGS = flags.FLAGS

# CPU scale (budget_scale = 1): a ResNet-18 at width 1/8 with the ImageNet stem (28 -> 7 pixels
# before the first stage: ~16x fewer FLOPs than the CIFAR stem), 4096 training images, 3 epochs
# of batch 256 (48 steps, ~15-40 s on 2 busy cores), linear eval on the same 4096 training images
# and the first 2000 test images.
TRAIN_EXAMPLES = 4096
FULL_TRAIN_EXAMPLES = 60000
EVAL_EXAMPLES = 2000
FULL_EVAL_EXAMPLES = 10000
EPOCHS = 3.0


class _QuietOrbax(logging.logging.Filter):
  """Drops Orbax's INFO records (a dozen per checkpoint, one checkpoint per cell)."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or 'orbax' not in record.pathname


def setup_jax(out: str) -> None:
  """Persistent compilation cache: same HLO (same model, loss, batch) -> no recompilation."""
  logging.get_absl_handler().addFilter(_QuietOrbax())
  cache = FLAGS.compilation_cache or os.path.join(out, '.jax_cache')
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # TF only feeds data


def scaled_budget(budget_scale: float, train_examples: int = TRAIN_EXAMPLES,
                  epochs: float = EPOCHS) -> tuple[int, float]:
  """(train images, epochs) for a budget scale: data first (up to 60000), then epochs."""
  images_seen = train_examples * epochs * budget_scale
  n = int(min(FULL_TRAIN_EXAMPLES, max(train_examples, train_examples * budget_scale)))
  return n, images_seen / n


def base_config(budget_scale: float = 1.0, seed: int = 0) -> ml_collections.ConfigDict:
  """configs/fashion_mnist_fast.py shrunk to the CPU-scale study budget (see module constants)."""
  c = fashion_mnist_fast.get_config()
  n, epochs = scaled_budget(budget_scale)
  c.seed = seed
  c.dataset.max_train_examples = n
  num_eval = int(min(FULL_EVAL_EXAMPLES, EVAL_EXAMPLES * max(1.0, budget_scale)))
  c.dataset.eval_split = f'test[:{num_eval}]' if num_eval < FULL_EVAL_EXAMPLES else 'test'
  c.model.width_multiplier = 0.125
  c.model.cifar_stem = False
  c.model.head_out_dim = 64
  set_epochs(c, epochs, batch_size=256)
  c.log_every_steps = 10
  c.checkpoint_every_steps = 10 ** 6  # one checkpoint at the end: cells are short
  c.keep_checkpoints = 1
  c.eval.pixel_baseline = False  # the same for every cell: reported once per study instead
  c.eval.max_iters = 300
  return c


def base_config_and_data(budget_scale: float, seed: int) -> tuple:
  """The study's base config and its evaluation arrays (see base_config, eval_data)."""
  config = base_config(budget_scale, seed)
  return config, eval_data(config)


def save_figure(fig, path: str) -> None:
  """Writes a matplotlib figure as PNG and frees it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def set_epochs(config, epochs: float, *, batch_size: int) -> None:
  """Batch size and run length in epochs of the train subset (config.num_epochs is an int, so
  the length is set in steps); the warmup is 10% of the run, at most 0.3 epochs."""
  steps_per_epoch = max(1, config.dataset.max_train_examples // batch_size)
  config.batch_size = batch_size
  config.num_train_steps = max(1, int(round(epochs * steps_per_epoch)))
  config.optimizer.warmup_epochs = min(0.3, epochs / 10)


def epochs_of(config) -> float:
  """Epochs of the train subset that config.num_train_steps makes."""
  return config.num_train_steps / max(1, config.dataset.max_train_examples // config.batch_size)


def eval_data(config) -> data_lib.EvalData:
  """The labelled train/test splits every cell is evaluated on (in memory)."""
  return data_lib.load(config.dataset)


def pixel_baseline(config, data) -> float:
  """Logistic regression on raw pixels of the same train/test images (the floor to beat)."""
  from simclr_jax.evaluation import linear as linear_lib  # pylint: disable=g-import-not-at-top
  train_x, train_y, test_x, test_y, num_classes = data.arrays()
  return float(linear_lib.pixel_baseline(train_x, train_y, test_x, test_y,
                                         num_classes=num_classes,
                                         **linear_lib.probe_kwargs(config))['top1'])


def random_init_baseline(config, data, out: str) -> float:
  """Linear eval of h from a random-init encoder of the same architecture (the floor that
  pretraining must clear; at CPU scale it is a high one)."""
  c = config.copy_and_resolve_references()
  c.init = 'random'
  encoder = Encoder(c, out, num_classes=data.num_classes, image_shape=data.train.image_shape)
  workdir = os.path.join(out, 'runs', 'random_init')
  os.makedirs(workdir, exist_ok=True)
  return float(protocols.linear(c, workdir, encoder, data)['random_init_linear_eval_top1'])


def baselines_line(config, data, out: str) -> tuple[str, dict]:
  """The sentence and numbers of both baselines, for every study's table."""
  pixels = pixel_baseline(config, data)
  random_init = random_init_baseline(config, data, out)
  return (f'Baselines on the same images: raw-pixel logistic regression {100 * pixels:.1f}, '
          f'random-init encoder (h) {100 * random_init:.1f}.',
          dict(pixel_baseline_top1=pixels, random_init_top1=random_init))


def run_cell(name: str, config: ml_collections.ConfigDict, out: str, data: data_lib.EvalData,
             features: Sequence[str] = ('h',)) -> dict:
  """Pretrains with `config`, then linear-evaluates each feature ('h', 'head_<i>').

  Returns:
    dict(name, top1={feature: accuracy}, train_loss, contrast_accuracy, steps, pretrain_s,
    eval_s, config_json); also written to <out>/runs/<name>/cell.json.
  """
  workdir = os.path.join(out, 'runs', name)
  cell_path = os.path.join(workdir, 'cell.json')
  config_json = config.to_json(sort_keys=True)
  if os.path.exists(cell_path):
    with open(cell_path) as f:
      cell = json.load(f)
    if cell.get('config_json') == config_json and set(features) <= set(cell['top1']):
      logging.info('cell %s: done before, reusing %s', name, cell_path)
      return cell
  if _stored_config(workdir) != json.loads(json.dumps(config.to_dict())):
    shutil.rmtree(workdir, ignore_errors=True)  # a changed config must not resume an old run
  t0 = time.time()
  out_train = train.pretrain(config, workdir)
  if out_train['preempted']:
    # The checkpoint is saved; rerunning the study resumes this cell. Not a finished cell.
    raise SystemExit(f'stopped by a signal in cell {name}; rerun the same command to resume')
  pretrain_s = time.time() - t0
  encoder = Encoder(config, workdir, num_classes=data.num_classes,
                    image_shape=data.train.image_shape, state=out_train['state'])
  top1 = {}
  t1 = time.time()
  for feature in features:
    eval_config = copy.deepcopy(config)
    eval_config.eval.feature = feature
    top1[feature] = float(protocols.linear(eval_config, workdir, encoder,
                                           data)['linear_eval_top1'])
  metrics = out_train['train_metrics']
  cell = dict(name=name, top1=top1, train_loss=_float(out_train['train_loss']),
              contrast_accuracy=_float(metrics.get('train/contrast_accuracy')),
              steps=int(out_train['step']), pretrain_s=pretrain_s, eval_s=time.time() - t1,
              config_json=config_json)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'), ignore_errors=True)  # cell.json is the record
  metric_writer.write_json(cell_path, cell, merge=False)
  logging.info('cell %s: top-1 %s (%d steps, %.0f s pretrain)', name, top1, cell['steps'],
               pretrain_s)
  return cell


def _stored_config(workdir: str) -> Optional[dict]:
  """The config.json that `train.pretrain` wrote into workdir, if any."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _float(x) -> Optional[float]:
  return None if x is None else float(x)


def pct(x: Optional[float]) -> str:
  """An accuracy in [0, 1] as a percentage with one decimal ('' for None)."""
  return '' if x is None else f'{100 * x:.1f}'


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
  """A GitHub markdown table; floats get 3 significant digits (use `pct` for accuracies)."""
  def fmt(v):
    if isinstance(v, float):
      return f'{v:.3g}'
    return '' if v is None else str(v)
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def write_outputs(out: str, stem: str, markdown: str, payload: dict) -> None:
  """<out>/<stem>.md and <out>/<stem>.json (payload + the budget it ran with)."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f'{stem}.md'), 'w') as f:
    f.write(markdown)
  payload = dict(payload, budget_scale=FLAGS.budget_scale, seed=FLAGS.seed,
                 devices=[str(d) for d in jax.devices()])
  for cell in payload.get('cells', []):
    cell.pop('config_json', None)  # in runs/<cell>/cell.json; too long for the summary
  with open(os.path.join(out, f'{stem}.json'), 'w') as f:
    json.dump(payload, f, indent=2, default=_json_default)
  print(markdown)


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  raise TypeError(f'not JSON serialisable: {type(x)}')


def budget_note(config, seconds: float, num_cells: int) -> str:
  """One line saying what each cell trained on, for the table's caption."""
  return (f'ResNet-18 x{config.model.width_multiplier:g} (stem: '
          f'{"CIFAR" if config.model.cifar_stem else "ImageNet"}), '
          f'{config.dataset.max_train_examples} Fashion-MNIST train images, '
          f'{epochs_of(config):g} epochs of batch {config.batch_size} unless varied, linear eval '
          f'on {config.dataset.eval_split}; {num_cells} cells in {seconds / 60:.1f} min on '
          f'{jax.devices()[0].platform}.')
