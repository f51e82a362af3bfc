"""2-D t-SNE pictures of a representation, coloured by class."""

from collections.abc import Sequence
import io
import os

# Figure + the Agg canvas directly, not pyplot: no global backend switch and no figure registry,
# so this is safe on headless machines and inside long-running jobs.
import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from sklearn.manifold import TSNE


def embed_plot(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    title: str,
    out_path: str,
    class_names: Sequence[str] | None = None,
    max_points: int = 2000,
    seed: int = 0,
) -> str:
  """Writes a PNG scatter of a 2-D t-SNE embedding of `features`, one colour per class.

  At most `max_points` points are embedded (a uniform random subset, fixed by `seed`): t-SNE is
  quadratic-ish in the number of points and a few thousand already show the cluster structure.

  Args:
    features: `[N, D]` representations (e.g. from `extract_features`).
    labels: `[N]` int class labels.
    title: figure title.
    out_path: PNG file to write; parent directories are created.
    class_names: legend entry per class index; default the indices.
    max_points: cap on embedded points.
    seed: subsampling and t-SNE seed.

  Returns:
    `out_path`.
  """
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(f'want features [N, D] and labels [N], got {features.shape} and '
                     f'{labels.shape}')
  if features.shape[0] < 3:
    raise ValueError('t-SNE needs at least 3 points')
  rng = np.random.default_rng(seed)
  if features.shape[0] > max_points:
    keep = np.sort(rng.choice(features.shape[0], max_points, replace=False))
    features, labels = features[keep], labels[keep]
  # sklearn requires perplexity < number of points; 30 is its default.
  perplexity = min(30.0, (features.shape[0] - 1) / 3)
  embedding = TSNE(n_components=2, perplexity=perplexity, init='pca',
                   random_state=seed).fit_transform(features)

  figure = Figure(figsize=(7, 6), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  classes = np.unique(labels)
  colormap = 'tab10' if classes.size <= 10 else 'tab20'
  colours = matplotlib.colormaps[colormap]
  for i, c in enumerate(classes):
    name = class_names[int(c)] if class_names is not None else str(c)
    points = embedding[labels == c]
    axes.scatter(points[:, 0], points[:, 1], s=4, color=colours(i % colours.N), label=name)
  axes.set_title(title)
  axes.set_xticks([])
  axes.set_yticks([])
  axes.legend(markerscale=3, fontsize='small', loc='best')
  # Rendered in memory and written with tf.io.gfile, so that out_path may be gs:// too.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  parent = os.path.dirname(out_path)
  if parent:
    tf.io.gfile.makedirs(parent)
  png = io.BytesIO()
  figure.savefig(png, format='png', bbox_inches='tight')
  with tf.io.gfile.GFile(out_path, 'wb') as f:
    f.write(png.getvalue())
  return out_path
