"""Small real-data fixtures shared by tests (real Fashion-MNIST, never noise)."""

import functools
import os

import numpy as np

from simclr_jax import defaults
from simclr_jax.data import sources


@functools.lru_cache(maxsize=None)
def fashion_mnist(split: str = 'train', n: int = 512):
  """First n real Fashion-MNIST images as float32 [n, 28, 28, 1] in [0, 1] and int32 labels."""
  cfg = defaults.get_config().dataset
  src = sources.load(cfg, f'{split}[:{n}]')
  return src.images.astype(np.float32) / 255.0, src.labels.astype(np.int32)


def subprocess_xla_flags(num_devices: int | None) -> str:
  """This process's XLA_FLAGS (conftest.py's, so a subprocess compiles the same programs) with
  `num_devices` simulated CPU devices, or the real single CPU device for None."""
  count = '--xla_force_host_platform_device_count'
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split() if not f.startswith(count + '=')]
  if num_devices is not None:
    flags.insert(0, f'{count}={num_devices}')
  return ' '.join(flags)


def simple_views(images: np.ndarray) -> np.ndarray:
  """Two cheap deterministic views [n, 2, H, W, C] (a flip and a 2-pixel shift), for tests of the
  step's maths that must not depend on the augmentation code."""
  flipped = images[:, :, ::-1]
  shifted = np.roll(images, 2, axis=1)
  return np.stack([flipped, shifted], axis=1).astype(np.float32)


def tiny_eval_config(**overrides):
  """tiny_config pretraining 2 steps of 16 on 600 training images, evaluated on 300 test images
  with every protocol cut down (the mode tests' checkpoint)."""
  c = tiny_config(num_train_steps=2, batch_size=16, num_devices=1, **overrides)
  c.dataset.train_split = 'train[:600]'
  c.dataset.eval_split = 'test[:300]'
  c.eval.max_iters = 50
  c.eval.finetune_steps = 3
  c.eval.finetune_batch_size = 16
  c.eval.label_fractions = (0.1, 1.0)
  c.eval.label_subsets = 2
  c.eval.finetune_fractions = (0.1,)
  return c


def tiny_config(**overrides):
  """A config 'for tests only': ResNet-18 at width 1/8 on 28x28 Fashion-MNIST."""
  c = defaults.get_config()
  c.model.depth = 18
  c.model.width_multiplier = 0.125
  c.model.head_out_dim = 16
  c.dataset.image_size = 28
  c.augment.preset = 'fashion_mnist'
  c.batch_size = 16
  c.num_train_steps = 3
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.learning_rate = 0.5
  c.loss.temperature = 0.5
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  for k, v in overrides.items():
    node = c
    parts = k.split('.')
    for part in parts[:-1]:
      node = node[part]
    node[parts[-1]] = v
  return c
