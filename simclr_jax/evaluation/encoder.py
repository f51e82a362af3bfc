"""The encoder every protocol evaluates: a pretrained checkpoint, or a random-init baseline."""

from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from simclr_jax import checkpoint
from simclr_jax import parallel
from simclr_jax import train_step as train_step_lib
from simclr_jax.evaluation import features as features_lib
from simclr_jax.models import build_model


class Encoder:
  """A model in inference form with its variables, from a checkpoint, a state, or random init.

  Args:
    config: the run's config (model, seed, init, init_checkpoint, eval.batch_size).
    workdir: where the pretraining checkpoints are (unless config.init_checkpoint names one).
    num_classes: classes of the model's online probe.
    image_shape: (S, S, C) of the model input.
    state: a pretraining TrainState to take the variables from instead of a checkpoint.
    mapper: the devices feature extraction runs on; None: every device of every process.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, num_classes: int,
               image_shape: tuple, state: Optional[Any] = None,
               mapper: Optional[parallel.Mapper] = None):
    self.model = build_model(config.model, num_classes=num_classes, image_size=image_shape[0],
                             axis_name=None)
    self.mapper = mapper or parallel.Mapper()
    self.batch_size = config.eval.batch_size
    self.step = 0
    self._cache = {}
    if state is not None:
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      self.step = int(state.step)
    else:
      variables = jax.device_get(train_step_lib.init_variables(
          self.model, image_shape=image_shape, seed=config.seed))
      if config.init == 'pretrained':
        variables, self.step = restore_variables(config.init_checkpoint or workdir, variables)
    self.variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    self.random_init = state is None and config.init == 'random'

  def calibrate_batch_norm(self, split, *, seed: int, num_batches: int = 50) -> None:
    """Replaces a random-init encoder's running BN statistics (mean 0, variance 1 at init) by
    statistics of the data: train-mode forward passes over `num_batches` shuffled batches of
    `split` (an `EvalSplit`), no gradient. Without this the random-init baseline measures
    mismatched normalisation rather than random features. With BN momentum 0.9, 50 batches
    leave 0.9**50 < 1% of the initial values."""
    @jax.jit
    def update(variables, x):
      _, new = self.model.apply(variables, x, train=True, mutable=['batch_stats'])
      return {'params': variables['params'], 'batch_stats': new['batch_stats']}

    variables = self.variables
    # Every process reads the same batches (the whole split, as one process would), so all of
    # them end with the same statistics.
    batch_size = min(256, split.num_examples)
    if not split.in_memory:  # whole stream shards per batch
      batch_size = max(split.stream_shards, batch_size // split.stream_shards * split.stream_shards)
    batches = split.train_batches(batch_size, seed=seed, process_index=0, process_count=1)
    for _ in range(num_batches):
      variables = update(variables, next(batches)['image'])
    self.variables = jax.device_get(variables)
    self._cache.clear()

  def features(self, split, feature: str = 'h') -> np.ndarray:
    """Frozen features of an in-memory `EvalSplit`, in its order on every process, computed
    data-parallel once per (split, feature) and shared by the protocols."""
    key = (id(split), feature)
    if key not in self._cache:
      # The split is kept with its features, so its id cannot be reused while cached.
      self._cache[key] = (split, features_lib.extract_features(
          self.model, self.variables, split.images, batch_size=self.batch_size, feature=feature,
          mapper=self.mapper))
    return self._cache[key][1]

  def split_features(self, split, feature: str = 'h'):
    """Per-step features of any `EvalSplit`, left sharded on the devices
    (`features.split_features`)."""
    return features_lib.split_features(self.model, self.variables, split,
                                       batch_size=self.batch_size, feature=feature,
                                       mapper=self.mapper)


def restore_variables(directory: str, variables):
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
