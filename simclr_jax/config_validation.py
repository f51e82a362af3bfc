"""Checks a config before anything is compiled, with errors that name the field and the fix."""

import math
from typing import Iterable

import ml_collections

from simclr_jax import defaults
from simclr_jax import methods
from simclr_jax.data import pipeline

_DEPTHS = (18, 34, 50, 101, 152, 200)
_CHOICES = {
    'init': ('pretrained', 'random'),
    'augment.preset': ('imagenet', 'cifar', 'fashion_mnist', 'none'),
    'augment.crop_sampler': ('inception', 'tf_bounding_box'),
    'eval.linear_augment': ('crop_flip', 'flip', 'none'),
    'model.dtype': ('float32', 'bfloat16', 'auto'),
    'model.head_mode': ('none', 'linear', 'nonlinear'),
    'optimizer.name': ('lars', 'sgd', 'adamw'),
    'optimizer.lr_scaling': ('linear', 'sqrt', 'none'),
    'loss.name': ('nt_xent', 'nt_logistic', 'margin_triplet'),
    'loss.negative_mining': ('none', 'semi_hard'),
}


ConfigError = defaults.ConfigError


def _flatten(cfg, prefix=''):
  for key, value in cfg.items():
    name = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flatten(value, name + '.')
    else:
      yield name, value


def _get(cfg, dotted: str):
  for part in dotted.split('.'):
    cfg = cfg[part]
  return cfg


def check_known_fields(config: ml_collections.ConfigDict,
                       extra_known: Iterable[str] = ()) -> None:
  """Every field must exist in simclr_jax/defaults.py (catches typos in config files)."""
  known = dict(_flatten(defaults.get_config()))
  allowed_prefixes = tuple(extra_known)
  for name, value in _flatten(config):
    if name in known or name.startswith(allowed_prefixes):
      continue
    raise ConfigError(f'unknown config field {name!r}; the known fields are in '
                      'simclr_jax/defaults.py')
  for name, default in known.items():
    try:
      value = _get(config, name)
    except (KeyError, AttributeError):
      continue  # a field a config leaves out is read with its default where it is used
    if default is None or value is None:
      continue
    numeric = (int, float)
    if isinstance(default, bool) != isinstance(value, bool) or (
        isinstance(default, numeric) and not isinstance(value, numeric)) or (
            isinstance(default, str) and not isinstance(value, str)):
      raise ConfigError(f'config field {name!r} should be {type(default).__name__}, '
                        f'got {value!r} ({type(value).__name__})')


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1,
             extra_known: Iterable[str] = ()) -> None:
  """Raises ConfigError on the first field that cannot work, before any compilation."""
  check_known_fields(config, extra_known)
  for name, choices in _CHOICES.items():
    value = _get(config, name)
    if value not in choices:
      raise ConfigError(f'config.{name}={value!r} is not one of {list(choices)}')
  if config.method not in methods.available():
    raise ConfigError(f'config.method={config.method!r} is unknown; use one of '
                      f'{methods.available()}')
  if config.model.depth not in _DEPTHS:
    raise ConfigError(f'config.model.depth={config.model.depth} is not one of {list(_DEPTHS)}')
  if not config.model.width_multiplier > 0:
    raise ConfigError('config.model.width_multiplier must be > 0 (1, 2, 4, or 0.25 for CPU)')
  if config.batch_size <= 0 or config.batch_size % num_devices:
    raise ConfigError(f'config.batch_size={config.batch_size} must be a positive multiple of '
                      f'the {num_devices} devices; e.g. --config.batch_size='
                      f'{max(1, config.batch_size // num_devices) * num_devices}')
  if 'temperature' in config.loss and not config.loss.temperature > 0:
    raise ConfigError(f'config.loss.temperature={config.loss.temperature} must be > 0 '
                      '(paper: 0.1 ImageNet, 0.5 CIFAR-10)')
  if config.method == 'moco' and config.moco.queue_size % config.batch_size:
    raise ConfigError(f'config.moco.queue_size={config.moco.queue_size} must be a multiple of '
                      f'config.batch_size={config.batch_size} (the queue takes whole batches)')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError('set config.num_epochs > 0 or config.num_train_steps > 0')
  if config.time_budget_minutes < 0:
    raise ConfigError('config.time_budget_minutes must be >= 0 (0: train for the step count)')
  if config.optimizer.learning_rate <= 0:
    raise ConfigError('config.optimizer.learning_rate must be > 0')
  if config.optimizer.warmup_epochs < 0:
    raise ConfigError('config.optimizer.warmup_epochs must be >= 0')
  if config.log_every_steps <= 0 or config.checkpoint_every_steps <= 0:
    raise ConfigError('config.log_every_steps and config.checkpoint_every_steps must be > 0')
  if config.dataset.name == 'image_folder' and not config.dataset.folder:
    raise ConfigError("config.dataset.name='image_folder' needs config.dataset.folder=<root>")
  if config.dataset.image_size <= 0:
    raise ConfigError('config.dataset.image_size must be > 0')
  if any(v < 0 for v in config.eval.l2_reg_grid) or (
      config.eval.l2_reg_grid and config.eval.l2_reg_folds < 2):
    raise ConfigError(f'config.eval.l2_reg_grid={tuple(config.eval.l2_reg_grid)} must hold '
                      f'weight decays >= 0, with config.eval.l2_reg_folds >= 2 (now '
                      f'{config.eval.l2_reg_folds}); () uses the fixed config.eval.l2_reg')
  if config.eval.finetune_epochs and (
      len(config.eval.finetune_epochs) != len(config.eval.finetune_fractions)):
    raise ConfigError(f'config.eval.finetune_epochs={tuple(config.eval.finetune_epochs)} needs '
                      'one value per fraction of config.eval.finetune_fractions='
                      f'{tuple(config.eval.finetune_fractions)} (or () to use finetune_steps)')
  if not all(0 < f <= 1 for f in config.eval.finetune_fractions):
    raise ConfigError(f'config.eval.finetune_fractions={tuple(config.eval.finetune_fractions)} '
                      'must be fractions in (0, 1]')


def total_steps(config, num_train_examples: int) -> int:
  """Optimizer steps of the run: num_train_steps when > 0, else epochs (rounded up)."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(math.ceil(config.num_epochs * pipeline.steps_per_epoch(num_train_examples, config.batch_size)))


def check_schedule(config, num_train_examples: int) -> None:
  """The warmup must fit in the run."""
  warmup = config.optimizer.warmup_epochs * pipeline.steps_per_epoch(num_train_examples, config.batch_size)
  steps = total_steps(config, num_train_examples)
  if warmup > steps:
    raise ConfigError(
        f'the learning-rate warmup ({config.optimizer.warmup_epochs} epochs = {warmup:.0f} steps) '
        f'is longer than the run ({steps} steps); lower config.optimizer.warmup_epochs or train '
        'longer (config.num_epochs / config.num_train_steps)')
  if config.batch_size > num_train_examples:
    raise ConfigError(f'config.batch_size={config.batch_size} exceeds the {num_train_examples} '
                      'training images; lower it')
