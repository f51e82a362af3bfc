"""Tests for simclr_jax.evaluation.plots."""

import matplotlib.image
import numpy as np

from simclr_jax.evaluation import plots


def test_embed_plot_writes_a_png(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=150)
  features = rng.normal(size=(150, 8)) + 4.0 * np.eye(3, 8)[labels]
  out_path = str(tmp_path / 'sub' / 'tsne.png')
  written = plots.embed_plot(features, labels, title='test', out_path=out_path,
                             class_names=['a', 'b', 'c'], max_points=120, seed=0)
  assert written == out_path
  with open(out_path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  picture = matplotlib.image.imread(out_path)
  assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100
