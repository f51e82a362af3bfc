"""Quality benchmark: what a fixed CPU pretraining budget buys on real Fashion-MNIST.

  python benchmarks/quality.py --pretrain_minutes=15 --workdir=/tmp/quality
  # development: half a minute per method, small evaluation subsets
  python benchmarks/quality.py --pretrain_minutes=0.5 --eval_train_examples=2000 \
    --eval_test_examples=1000 --finetune_steps=20
  # the margin over the baselines at 1%, 10% and 100% labels (fine-tuning steps per fraction)
  python benchmarks/quality.py --pretrain_minutes=15 --methods=simclr \
    --rows=ssl,random_init,pixels --fractions=0.01,0.1,1 --finetune_steps=500,1000,2000

Rows (flag --rows; SSL methods with --methods):
  simclr, moco, barlow_twins  configs/{fashion_mnist,moco_fashion_mnist,
                              barlow_twins_fashion_mnist}.py, pretrained for the budget
                              (--simclr_config=fashion_mnist_fast: the simclr row on the fast
                              recipe the other two build on);
  random_init                 the same encoder at its initialisation (--config.init=random);
  pixels                      logistic regression / kNN on raw pixels (no encoder, no fine-tune);
  supervised                  the same encoder trained from scratch with cross-entropy on the
                              labels, same augmentation, optimizer, loop and budget
                              (the simclr row's config with method 'supervised',
                              simclr_jax/methods/supervised.py);
  lightly                     lightly's NTXentLoss + SimCLRProjectionHead on a PyTorch mirror of
                              the encoder (benchmarks/lightly_simclr.py, run as a subprocess),
                              same budget and augmentation; its frozen features go through the
                              same linear / kNN code here, and its encoder weights, loaded into
                              the JAX ResNet (checked: same h to ~1e-5), through the same
                              fine-tuning code. Reported as blocked when lightly does not import.

The budget is wall time inside the trainer (`config.time_budget_minutes`, simclr_jax/
time_budget.py; lightly_simclr.py does the same in PyTorch): each row trains until --pretrain_minutes
have passed since its first (compiling / warm-up) step returned, its learning rate following
the config's warmup + cosine schedule over elapsed time (warmup: the config's 0.3 of 10 epochs,
3 % of the budget), so every row gets the same wall time by construction whatever its speed and
the machine's load; the steps that fitted are reported. (A step count set from a short speed
probe misses the run's rate by up to 20 %: the rate changes with load and over the run.)

Evaluation, the same for every row (the config.eval fields of configs/fashion_mnist.py): h of
the frozen encoder; linear = L-BFGS logistic regression (`linear.linear_eval`, l2_reg, max_iters)
on all 60,000 labels and on a class-balanced 1% (fraction 0.01 = 60 per class;
`linear.label_fraction_eval`: the mean over config.eval.label_subsets subsets, seeds
config.seed, config.seed + 1, ..., since one subset's draw moves the figure by ~0.5 points;
with --l2_reg_grid each probe picks its weight decay by 5-fold cross-validation on its own
labelled examples instead of the fixed l2_reg, recorded as linear_*_l2_reg(s) in the JSON);
kNN-20 (`knn.knn_eval`, k = config.eval.knn_k[0]);
fine-tune 1% = the `finetune` protocol with config.eval.finetune_fractions = (0.01,), the mean of
--finetune_seeds runs (config.seed = 0, 1, ...: label subset, batch order, augmentation and
classifier init change; one run spreads by about a point). Pretrained encoders fine-tune at
config.eval.finetune_learning_rate; the random-init encoder at RANDOM_INIT_FINETUNE_LR, the best
rate of a sweep for training from scratch (docs/benchmarks.md), so that baseline is not weakened
by a rate meant for pretrained weights.

--fractions adds linear-probe and fine-tuning columns at other label fractions (fine-tuning steps
per fraction from --finetune_steps) and a table of each pretrained row's margin there: frozen
probe minus pixels' probe, fine-tuned minus the better of pixels' probe and the random-init
encoder fine-tuned alike (the issue's "largest margin at 1% labels").

Prints the markdown tables and one JSON line (all figures, the step counts and the load average).
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import types

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf

from configs import barlow_twins_fashion_mnist
from configs import fashion_mnist
from configs import fashion_mnist_fast
from configs import moco_fashion_mnist
import quality_tables
from simclr_jax import config_validation
from simclr_jax import defaults
from simclr_jax import optim
from simclr_jax import train
from simclr_jax import xla_setup
from simclr_jax.data import pipeline
from simclr_jax.evaluation import data as data_lib
from simclr_jax.evaluation import knn as knn_lib
from simclr_jax.evaluation import linear as linear_lib
from simclr_jax.evaluation import protocols
from simclr_jax.evaluation import subsets
from simclr_jax.evaluation.encoder import Encoder
from simclr_jax.models import resnet
# pylint: enable=g-import-not-at-top,wrong-import-position

CONFIGS = {'simclr': fashion_mnist, 'moco': moco_fashion_mnist,
           'barlow_twins': barlow_twins_fashion_mnist}
ALL_ROWS = ('ssl', 'random_init', 'pixels', 'supervised', 'lightly')
NUM_PRETRAIN_EXAMPLES = 60000  # Fashion-MNIST's training split, all of it used for pretraining
# Fine-tuning a random-init encoder on 600 labels, swept 0.01..0.2 (docs/benchmarks.md,
# quality): 0.1 was best (0.793, mean of 3 seeds); the pretrained encoders' 0.01 gives it 0.762.
RANDOM_INIT_FINETUNE_LR = 0.1

FLAGS = flags.FLAGS
flags.DEFINE_float('pretrain_minutes', 15.0, 'Wall-clock pretraining budget per row, minutes.')
flags.DEFINE_multi_string('override', [], 'Config overrides of the pretrained rows (simclr, moco, '
                          'barlow_twins, supervised), e.g. --override=model.width_multiplier=0.25; '
                          'values are Python literals.')
flags.DEFINE_enum('simclr_config', 'fashion_mnist', ['fashion_mnist', 'fashion_mnist_fast'],
                  'Config file of the simclr (and supervised) rows: the CPU default, or the '
                  'fast recipe (ImageNet stem, width 0.5, LARS) that the MoCo and Barlow Twins '
                  'rows build on.')
flags.DEFINE_bool('standard_protocol', True, 'Also report every row on a standard protocol '
                  "independent of this project's probes: scikit-learn logistic regression (C=1) on "
                  'standardised features with all labels and on each 1% label subset, and kNN-20 '
                  'with cosine similarity and exp(sim / 0.1) votes (std_* columns).')
flags.DEFINE_list('methods', list(CONFIGS), f'SSL methods to pretrain, of {list(CONFIGS)}.')
flags.DEFINE_list('rows', list(ALL_ROWS), f'Row groups, of {list(ALL_ROWS)} (ssl = --methods).')
flags.DEFINE_string('workdir', '/tmp/simclr_quality', 'Checkpoints, features, results.json.')
flags.DEFINE_integer('eval_train_examples', -1, '> 0: evaluate on the first n training images '
                     '(development only; the 1% subset is then 1% of n).')
flags.DEFINE_integer('eval_test_examples', -1, '> 0: evaluate on the first n test images.')
flags.DEFINE_list('fractions', ['0.01'], 'Label fractions of the few-label columns: linear probe '
                  '(mean over config.eval.label_subsets subsets; 1 = the 100% probe) and '
                  'fine-tuning at each. 0.01,0.1,1 adds the margin-by-label-fraction table.')
flags.DEFINE_list('finetune_steps', [], 'Fine-tuning steps: one value for every fraction or one '
                  'per --fractions entry; empty: config.eval.finetune_steps.')
flags.DEFINE_integer('finetune_seeds', 3, 'Fine-tune runs per row (seeds 0..n-1); the column '
                     'is their mean; 0: no fine-tuning columns.')
flags.DEFINE_integer('seed', 0, 'config.seed of every row (pretraining, batch order, '
                     'augmentation, lightly\'s seed, the first 1% label subset): another value '
                     'replicates the whole table.')
flags.DEFINE_string('torch_python', sys.executable, 'Interpreter with torch (and lightly).')
flags.DEFINE_list('l2_reg_grid', [], 'Weight decays the linear probes of every row choose from by '
                  'cross-validation on their labelled examples (config.eval.l2_reg_grid, '
                  'docs/evaluation.md), e.g. 1e-4,1e-3,3e-3,1e-2,3e-2,0.1,0.3; empty: the '
                  "config's fixed eval.l2_reg.")


def _base_config(method: str = 'simclr'):
  # The supervised baseline: the SimCLR row's config with method 'supervised'.
  simclr = {'fashion_mnist': fashion_mnist, 'fashion_mnist_fast': fashion_mnist_fast}[
      FLAGS.simclr_config]
  config = (simclr if method in ('simclr', 'supervised') else CONFIGS[method]).get_config()
  config.method = method
  for dotted in FLAGS.override:
    defaults.override(config, dotted)
  config.eval.pixel_baseline = False  # its own row
  config.seed = FLAGS.seed
  if FLAGS.l2_reg_grid:
    config.eval.l2_reg_grid = tuple(float(v) for v in FLAGS.l2_reg_grid)
  return config


def _fractions() -> list[float]:
  """--fractions as floats (0.01 = 1% = 60 labels per class of Fashion-MNIST's 60,000)."""
  fractions = [float(f) for f in FLAGS.fractions]
  if not fractions or any(not 0 < f <= 1 for f in fractions):
    raise app.UsageError(f'--fractions must be in (0, 1], got {FLAGS.fractions}')
  return fractions


def _finetune_steps(config) -> dict[float, int]:
  try:
    return quality_tables.finetune_steps(_fractions(), FLAGS.finetune_steps,
                                         config.eval.finetune_steps)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


class _StepTimer:
  """on_step callback: wall time of every step, for a rate without the compiling first step."""

  def __init__(self):
    self.times = []

  def __call__(self, done: int):
    del done
    self.times.append(time.perf_counter())

  def steps_per_s(self) -> float:
    # From the end of the first step, as the budget's clock (lightly_simclr.py: the same).
    t = self.times
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float('nan')


def _timed(config):
  """The config trained for --pretrain_minutes, its own schedule spread over them."""
  config.time_budget_minutes = FLAGS.pretrain_minutes
  return config


def _nominal_steps(config) -> int:
  """The step count whose schedule a timed run spreads over its budget (num_epochs' steps)."""
  return config_validation.total_steps(config, NUM_PRETRAIN_EXAMPLES)


def _fresh_dir(name: str) -> str:
  path = os.path.join(FLAGS.workdir, name)
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  return path


def _pretrain_ssl(method: str, data) -> tuple[dict, Encoder, object]:
  config = _timed(_base_config(method))
  workdir = _fresh_dir(method)
  timer = _StepTimer()
  t0 = time.time()
  out = train.pretrain(config, workdir, on_step=timer)
  minutes = (time.time() - t0) / 60
  encoder = Encoder(config, workdir, num_classes=data.num_classes,
                    image_shape=data.train.image_shape, state=out['state'])
  info = dict(steps=out['step'], pretrain_minutes=minutes,
              images_per_s=timer.steps_per_s() * config.batch_size, train_loss=out['train_loss'])
  return info, encoder, config


def _frozen_feature_metrics(config, train_f, test_f, data) -> dict:
  """Linear 100%, linear at each --fractions < 1 and kNN on frozen features: one protocol for
  every row."""
  _, train_y, _, test_y, num_classes = data.arrays()
  full = linear_lib.linear_eval(train_f, train_y, test_f, test_y, num_classes=num_classes,
                                **linear_lib.probe_kwargs(config))
  out = {'linear_100pct_top1': full['top1'], 'linear_100pct_l2_reg': full['l2_reg'],
         **protocols.label_fraction_metrics(config, train_f, train_y, test_f, test_y, num_classes,
                                      [f for f in _fractions() if f < 1])}
  k = config.eval.knn_k[0]
  out[f'knn{k}_top1'] = knn_lib.knn_eval(train_f, train_y, test_f, test_y, k=k,
                                         temperature=config.eval.knn_temperature,
                                         num_classes=num_classes)
  if FLAGS.standard_protocol:
    out.update(_standard_protocol(config, train_f, train_y, test_f, test_y, num_classes))
  return out


def _standard_protocol(config, train_f, train_y, test_f, test_y, num_classes) -> dict:
  """scikit-learn's logistic regression (C=1, lbfgs) on standardised features (the scaler fitted
  on the labelled examples) with all labels and on each 1 % subset (config.eval.label_subsets
  class-balanced draws, their mean), and kNN-20 with cosine similarity and exp(sim / 0.1) votes."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import pipeline as sk_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top

  def fit_score(x, y):
    model = sk_pipeline.make_pipeline(preprocessing.StandardScaler(),
                                      linear_model.LogisticRegression(C=1.0, max_iter=1000))
    return float(model.fit(x, y).score(test_f, test_y))

  train_f, test_f = np.asarray(train_f, np.float64), np.asarray(test_f, np.float64)
  out = {'std_linear_100pct_top1': fit_score(train_f, train_y)}
  for fraction in [f for f in _fractions() if f < 1]:
    runs = [fit_score(train_f[idx], train_y[idx]) for idx in (
        subsets.label_fraction_indices(train_y, fraction=fraction, seed=config.seed + i)
        for i in range(config.eval.label_subsets))]
    key = f'std_linear_{protocols.percent(fraction)}_top1'
    out.update({key: float(np.mean(runs)), f'{key}_runs': runs})
  out['std_knn20_top1'] = knn_lib.knn_eval(train_f, train_y, test_f, test_y, k=20,
                                           temperature=0.1, num_classes=num_classes)
  return out


def _evaluate_encoder(config, encoder: Encoder, data, workdir: str) -> dict:
  t0 = time.time()
  train_f, test_f = encoder.features(data.train), encoder.features(data.test)
  out = _frozen_feature_metrics(config, train_f, test_f, data)
  out.update(_finetune_metrics(config, encoder, data, workdir))
  out['eval_minutes'] = (time.time() - t0) / 60
  return out


def _finetune_metrics(config, encoder: Encoder, data, workdir: str) -> dict:
  """Fine-tuning at each --fractions: the mean of --finetune_seeds runs of the `finetune`
  protocol (config.seed = 0, 1, ...), each in a workdir of its own."""
  out = {'finetune_learning_rate': config.eval.finetune_learning_rate}
  if FLAGS.finetune_seeds < 1:
    return out  # no fine-tuning columns
  for fraction, steps in _finetune_steps(config).items():
    key = f'finetune_{protocols.percent(fraction)}_top1'
    runs = []
    for seed in range(FLAGS.finetune_seeds):
      seeded = config.copy_and_resolve_references()
      seeded.seed = seed
      seeded.eval.finetune_fractions = (fraction,)
      seeded.eval.finetune_steps = steps
      ft = protocols.finetune(seeded, os.path.join(workdir, f'seed{seed}'), encoder, data)
      runs.append(ft[protocols.prefix(seeded) + key])
    out.update({key: float(np.mean(runs)), f'{key}_runs': runs,
                key.replace('_top1', '_steps'): steps})
  return out


def _lightly_row(data) -> dict:
  """Runs benchmarks/lightly_simclr.py on the same images; evaluates its features here."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lightly_simclr.py')
  # Import check first: writing the data file costs ~0.3 GB of disk for nothing if it fails.
  check = subprocess.run([FLAGS.torch_python, script, '--check_import'], capture_output=True,
                         text=True, check=False)
  if check.returncode != 0:
    lines = [l for l in check.stdout.splitlines() if l.startswith('{')]
    reason = json.loads(lines[-1])['blocked'] if lines else check.stderr.strip()[-500:]
    return {'blocked': reason}
  workdir = _fresh_dir('lightly')
  data_path = os.path.join(workdir, 'data.npz')
  train_x, _, test_x, _, _ = data.arrays()
  # Pretraining uses all 60,000 training images (as the JAX rows); the features are taken of the
  # evaluation images, which are the same unless --eval_*_examples cut them down.
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  pretrain_images = sources.load(_base_config().dataset, 'train').images
  np.savez(data_path, pretrain_images=pretrain_images, train_images=train_x, test_images=test_x)
  feats_path = os.path.join(workdir, 'features.npz')
  weights_path = os.path.join(workdir, 'encoder_weights.npz')
  config = _base_config()
  cifar_stem = config.model.cifar_stem
  if cifar_stem is None:  # the encoder's own rule (simclr_jax.models.resnet)
    cifar_stem = config.dataset.image_size <= resnet.CIFAR_STEM_MAX_SIDE
  mirrored = dict(depth=(18,), head_hidden_dim=(-1,), optimizer=('lars', 'sgd'),
                  lr_scaling=('linear', 'none'))
  actual = dict(depth=config.model.depth, head_hidden_dim=config.model.head_hidden_dim,
                optimizer=config.optimizer.name, lr_scaling=config.optimizer.lr_scaling)
  if any(actual[k] not in allowed for k, allowed in mirrored.items()):
    raise ValueError(f'benchmarks/lightly_simclr.py mirrors {mirrored} only; the config has '
                     f'{actual}: extend the mirror or drop the lightly row (--rows)')
  steps_per_epoch = pipeline.steps_per_epoch(NUM_PRETRAIN_EXAMPLES, config.batch_size)
  warmup_fraction = optim.warmup_steps(config.optimizer, steps_per_epoch) / _nominal_steps(config)
  cmd = [FLAGS.torch_python, script, f'--data={data_path}', f'--out={feats_path}',
         f'--weights_out={weights_path}',
         f'--minutes={FLAGS.pretrain_minutes}',
         f'--batch_size={config.batch_size}', f'--temperature={config.loss.temperature}',
         f'--seed={config.seed}', f'--width_multiplier={config.model.width_multiplier}',
         f'--cifar_stem={int(cifar_stem)}', f'--head_out_dim={config.model.head_out_dim}',
         f'--learning_rate={config.optimizer.learning_rate}',
         f'--lr_scaling={config.optimizer.lr_scaling}', f'--optimizer={config.optimizer.name}',
         f'--weight_decay={config.optimizer.weight_decay}',
         f'--warmup_fraction={warmup_fraction}',
         f'--crop_area_min={config.augment.crop_area_min}',
         f'--color_strength={config.augment.color_strength}']
  logging.info('lightly: %s', ' '.join(cmd))
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  info = json.loads(lines[-1]) if lines else {}
  if proc.returncode != 0 or 'blocked' in info:
    reason = info.get('blocked') or proc.stderr.strip().splitlines()[-1:]
    return {'blocked': reason if isinstance(reason, str) else ' '.join(reason)}
  feats = np.load(feats_path)
  out = _frozen_feature_metrics(config, feats['train_h'], feats['test_h'], data)
  out.update({k: info[k] for k in ('steps', 'pretrain_minutes',
                                   'images_per_s', 'train_loss', 'lightly_version',
                                   'torch_version') if k in info})
  # Fine-tune 1%: lightly's pretrained encoder in our JAX ResNet, then the same fine-tuning code
  # and seeds as every other row. The frozen columns above come from PyTorch's own features.
  encoder = Encoder(config, workdir, num_classes=data.num_classes,
                    image_shape=data.train.image_shape,
                    state=_state_from_torch(config, dict(np.load(weights_path)),
                                            data.num_classes, data.train.image_shape,
                                            info.get('steps', 0)))
  jax_test_h = encoder.features(data.test)
  out['jax_vs_torch_h_max_abs_diff'] = float(np.abs(jax_test_h - feats['test_h']).max())
  # Same weights, same function: h must agree up to float32 summation order. A larger gap means
  # the mirror and the JAX model differ, and fine-tuning would measure something else.
  scale = float(np.abs(feats['test_h']).max())
  if out['jax_vs_torch_h_max_abs_diff'] > 1e-3 * scale:
    raise ValueError(f'lightly encoder loaded into JAX gives h {out["jax_vs_torch_h_max_abs_diff"]}'
                     f' away from PyTorch (scale {scale}): torch_train_step.ResNet18 and '
                     'simclr_jax.models.resnet no longer mirror each other')
  out.update(_finetune_metrics(config, encoder, data, workdir))
  return out


def _state_from_torch(config, torch_weights: dict, num_classes: int, image_shape, step: int):
  """Params and BN statistics of torch_train_step.ResNet18 (a state_dict as numpy arrays) in
  the JAX encoder's variable tree; head and probe keep their initial values (fine-tuning from h
  does not read them). Every torch tensor must be used and every JAX encoder leaf set."""
  config = config.copy_and_resolve_references()
  config.init = 'random'
  variables = Encoder(config, '', num_classes=num_classes, image_shape=image_shape).variables
  params = jax.tree.map(np.asarray, variables['params'])
  stats = jax.tree.map(np.asarray, variables['batch_stats'])
  used, num_set = set(), [0]

  def take(name):
    used.add(name)
    return torch_weights[name]

  def checked(value, template, name):
    if value.shape != template.shape:
      raise ValueError(f'{name}: torch {value.shape} vs JAX {template.shape}')
    num_set[0] += 1
    return value.astype(template.dtype)

  def conv(torch_name, ours):
    ours['kernel'] = checked(take(torch_name + '.weight').transpose(2, 3, 1, 0), ours['kernel'],
                             torch_name)

  def bn(torch_name, ours_params, ours_stats):
    for ours, key, theirs in ((ours_params, 'scale', 'weight'), (ours_params, 'bias', 'bias'),
                              (ours_stats, 'mean', 'running_mean'),
                              (ours_stats, 'var', 'running_var')):
      ours[key] = checked(take(f'{torch_name}.{theirs}'), ours[key], torch_name)
    used.add(torch_name + '.num_batches_tracked')

  enc_p, enc_s = params['encoder'], stats['encoder']
  conv('stem_conv', enc_p['stem_conv'])
  bn('stem_bn', enc_p['stem_bn'], enc_s['stem_bn'])
  for k in range(8):  # torch blocks 0..7 = stage k // 2 + 1, block k % 2 + 1
    name, t = f'stage{k // 2 + 1}_block{k % 2 + 1}', f'blocks.{k}'
    for i in (1, 2):
      conv(f'{t}.conv{i}', enc_p[name][f'conv{i}'])
      bn(f'{t}.bn{i}', enc_p[name][f'bn{i}'], enc_s[name][f'bn{i}'])
    if 'proj_conv' in enc_p[name]:
      conv(f'{t}.proj.0', enc_p[name]['proj_conv'])
      bn(f'{t}.proj.1', enc_p[name]['proj_bn'], enc_s[name]['proj_bn'])
  unused = set(torch_weights) - used
  if unused:
    raise ValueError(f'torch weights not mapped into the JAX encoder: {sorted(unused)}')
  num_leaves = len(jax.tree.leaves(enc_p)) + len(jax.tree.leaves(enc_s))
  if num_set[0] != num_leaves:
    raise ValueError(f'{num_set[0]} of the JAX encoder\'s {num_leaves} leaves set from torch')
  return types.SimpleNamespace(params=params, batch_stats=stats, step=step)


def _pixel_row(data) -> dict:
  train_x, _, test_x, _, _ = data.arrays()
  config = _base_config()
  flat = lambda x: x.reshape(x.shape[0], -1)  # pylint: disable=unnecessary-lambda-assignment
  # pixel_baseline is linear_eval on flattened pixels; _frozen_feature_metrics does exactly that
  # for the 1% and kNN columns too.
  return _frozen_feature_metrics(config, flat(train_x), flat(test_x), data)


def _ssl_row(name, data):
  info, encoder, config = _pretrain_ssl(name, data)
  return {**info, **_evaluate_encoder(config, encoder, data, os.path.join(FLAGS.workdir, name))}


def _random_init_row(name, data):
  config = _base_config()
  config.init = 'random'
  config.eval.finetune_learning_rate = RANDOM_INIT_FINETUNE_LR
  workdir = _fresh_dir(name)
  encoder = Encoder(config, workdir, num_classes=data.num_classes,
                    image_shape=data.train.image_shape)
  # The project's random-init protocol (simclr_jax.run): BN running statistics from the data.
  encoder.calibrate_batch_norm(data.train, seed=config.seed)
  return {'pretrain_minutes': 0.0, **_evaluate_encoder(config, encoder, data, workdir)}


def _supervised_row(name, data):
  info, encoder, config = _pretrain_ssl('supervised', data)
  return {**info, **_evaluate_encoder(config, encoder, data, os.path.join(FLAGS.workdir, name))}


_ROWS = {'lightly': lambda name, data: _lightly_row(data),
         'pixels': lambda name, data: _pixel_row(data),
         'random_init': _random_init_row, 'supervised': _supervised_row,
         **{method: _ssl_row for method in CONFIGS}}


def _row_order() -> list[str]:
  """Cheap and reference rows first, so a run cut short still has the comparisons that matter:
  lightly (an import check when blocked), pixels, random-init, then the first SSL method, the
  supervised encoder, and the other SSL methods."""
  ssl = list(FLAGS.methods) if 'ssl' in FLAGS.rows else []
  order = [r for r in ('lightly', 'pixels', 'random_init') if r in FLAGS.rows]
  order += ssl[:1] + (['supervised'] if 'supervised' in FLAGS.rows else []) + ssl[1:]
  return order


def _load_eval_data():
  config = _base_config()
  data = data_lib.load(config.dataset)
  train_x, train_y, test_x, test_y, num_classes = data.arrays()
  if FLAGS.eval_train_examples > 0:
    data = data_lib.EvalData(data.train.subset(np.arange(FLAGS.eval_train_examples)), data.test)
  if FLAGS.eval_test_examples > 0:
    data = data_lib.EvalData(data.train, data.test.subset(np.arange(FLAGS.eval_test_examples)))
  train_x, train_y, test_x, test_y, num_classes = data.arrays()
  if config.eval.l2_reg_grid:  # a bad grid, or too few labels to cross-validate: say so now
    config_validation.validate(config)
    for fraction in _fractions():
      labels = train_y if fraction == 1 else train_y[subsets.label_fraction_indices(
          train_y, fraction=fraction, seed=config.seed)]
      linear_lib.cv_fold_ids(labels, folds=config.eval.l2_reg_folds, seed=config.seed)
  del train_x, test_x, test_y, num_classes
  return data


def main(argv):
  del argv
  xla_setup.apply_xla_flags(_base_config().xla_flags)  # as simclr_jax.main, before JAX starts
  tf.config.set_visible_devices([], 'GPU')
  unknown = set(FLAGS.methods) - set(CONFIGS) or set(FLAGS.rows) - set(ALL_ROWS)
  if unknown:
    raise app.UsageError(f'unknown --methods/--rows: {sorted(unknown)}')
  os.makedirs(FLAGS.workdir, exist_ok=True)
  load_start = os.getloadavg()
  t_start = time.time()
  data = _load_eval_data()
  rows = {}
  result = dict(
      benchmark='quality_fashion_mnist', date=datetime.date.today().isoformat(),
      command=' '.join([os.path.basename(sys.executable)] + sys.argv),
      pretrain_minutes_budget=FLAGS.pretrain_minutes, budget='wall time (time_budget_minutes)',
      fractions=_fractions(),
      finetune_steps={protocols.percent(f): n for f, n in _finetune_steps(_base_config()).items()},
      finetune_seeds=FLAGS.finetune_seeds, overrides=FLAGS.override,
      eval_train_examples=data.train.num_examples, eval_test_examples=data.test.num_examples,
      load_average_start=load_start, cpu_count=os.cpu_count(), rows=rows)
  for name in _row_order():
    t0 = time.time()
    rows[name] = _ROWS[name](name, data)
    rows[name]['row_minutes'] = (time.time() - t0) / 60
    logging.info('%s: %s', name, rows[name])
    # Written after every row, so an interrupted run keeps what it measured.
    result.update(load_average_end=os.getloadavg(), total_minutes=(time.time() - t_start) / 60)
    with open(os.path.join(FLAGS.workdir, 'quality.json'), 'w') as f:
      json.dump(result, f, indent=1)
    print(quality_tables.table({name: rows[name]}, _fractions()).splitlines()[-1], flush=True)
  print(quality_tables.table(rows, _fractions()))
  margins = quality_tables.margin_table(rows, _fractions())
  if margins:
    print('\nMargins by label fraction (points):\n' + margins)
  standard = quality_tables.standard_table(rows, _fractions())
  if standard:
    print('\nStandard protocol (scikit-learn logistic regression C=1, kNN-20 cosine, T=0.1), %:\n'
          + standard)
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
