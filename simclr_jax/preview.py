r"""Writes a PNG grid of real training images and the two augmented views the model sees.

  python -m simclr_jax.preview --config=configs/fashion_mnist.py --out=views.png

Rows are examples; columns are (original, view 1, view 2), taken from the first pretraining
batch, so the picture shows exactly the views of the config's first step (drawn as the train
step draws them when `augment.on_device` is set).
"""

from __future__ import annotations

import textwrap
from typing import Optional

import numpy as np

from simclr_jax import train_step
from simclr_jax.data import augment
from simclr_jax.data import pipeline
from simclr_jax.data import sources


def preview_grid(config, *, num_examples: int = 8, seed: Optional[int] = None) -> np.ndarray:
  """Originals and their two views as one float32 image grid.

  Args:
    config: the full config (uses config.dataset, config.augment, config.seed).
    num_examples: rows of the grid.
    seed: overrides config.seed.

  Returns:
    float32 [num_examples * S, 3 * S, C] in [0, 1], S = config.dataset.image_size: per row the
    original (eval-preprocessed), view 1, view 2.
  """
  seed = config.seed if seed is None else seed
  on_device = bool(config.augment.get('on_device', False))
  batch = next(pipeline.pretrain_batches(config.dataset, config.augment,
                                         global_batch_size=num_examples, seed=seed,
                                         device_augment=on_device))
  if on_device:  # The views the train step draws at step 0.
    batch = {'views': np.asarray(train_step.batch_views(batch, train_step.run_key(seed), 0,
                                                        config))}
  # Recover the originals by re-running the pipeline with no augmentation: same (seed, step)
  # gives the same example order, and preset 'none' returns the image itself.
  plain = config.augment.copy_and_resolve_references()
  with plain.unlocked():
    plain.preset, plain.ops, plain.ops_view2 = 'none', (), ()
  originals = next(pipeline.pretrain_batches(config.dataset, plain,
                                             global_batch_size=num_examples, seed=seed))
  rows = [np.concatenate([originals['views'][i, 0], batch['views'][i, 0], batch['views'][i, 1]],
                         axis=1) for i in range(num_examples)]
  return np.concatenate(rows, axis=0)


def save_grid(grid: np.ndarray, path: str, title: str = '') -> None:
  """Saves a [H, W, C] grid in [0, 1] as a PNG (matplotlib, Agg backend: no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  height, width = grid.shape[:2]
  fig, ax = plt.subplots(figsize=(max(4.5, width / 40), max(4.5, height / 40)))
  if grid.shape[-1] == 1:
    ax.imshow(grid[..., 0], cmap='gray', vmin=0., vmax=1., interpolation='nearest')
  else:
    ax.imshow(np.clip(grid, 0., 1.), interpolation='nearest')
  ax.set_xticks([width / 6, width / 2, 5 * width / 6], ['original', 'view 1', 'view 2'])
  ax.set_yticks([])
  if title:
    ax.set_title(textwrap.fill(title, 50), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_preview(config, out: str, *, num_examples: int) -> str:
  """Writes the grid of `num_examples` images and their two views to the PNG `out`."""
  grid = preview_grid(config, num_examples=num_examples)
  ops1, ops2 = augment.view_ops(config.augment)
  title = f'{config.dataset.name}: view 1 {"+".join(ops1) or "none"}'
  if ops2 != ops1:
    title += f' | view 2 {"+".join(ops2) or "none"}'
  save_grid(grid, out, title)
  return out


if __name__ == '__main__':
  # Command-line entry (python -m simclr_jax.preview --config=... --out=...): the flags are
  # defined and read only here; the library function takes plain arguments.
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
  _OUT = flags.DEFINE_string('out', 'views.png', 'PNG to write.')
  _NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 8, 'Examples (rows) to show.')
  flags.mark_flags_as_required(['config'])
  app.run(lambda argv: print(
      f'Wrote {write_preview(_CONFIG.value, _OUT.value, num_examples=_NUM_EXAMPLES.value)}'))
