"""Class-balanced labelled subsets for semi-supervised evaluation (1% / 10% of the labels)."""

import numpy as np


def label_fraction_indices(
    labels: np.ndarray,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int,
) -> np.ndarray:
  """Picks the same number of examples from every class, reproducibly.

  The count per class is `per_class`, or `round(fraction * N / num_classes)` where
  `num_classes` is the number of distinct labels present. `fraction=1.0` is the full labelled set
  and returns every index even when the classes are unbalanced (there is nothing to pick).
  The draw depends only on `(labels, count, seed)`: each class, in increasing label order, takes
  the first `count` entries of a permutation of its indices from `np.random.default_rng(seed)`.

  Args:
    labels: `[N]` int class labels.
    fraction: share of the training set to keep, in (0, 1]; exclusive with `per_class`.
    per_class: examples to keep per class; exclusive with `fraction`.
    seed: RNG seed.

  Returns:
    Sorted int64 indices into `labels`, `[count * num_classes]`.

  Raises:
    ValueError: both or neither of `fraction`/`per_class` given, a count of zero, or a class with
      fewer than `count` examples.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f'labels must be a non-empty [N] array, got shape {labels.shape}')
  if (fraction is None) == (per_class is None):
    raise ValueError('give exactly one of fraction and per_class')
  classes, class_counts = np.unique(labels, return_counts=True)
  if fraction is not None:
    if not 0 < fraction <= 1:
      raise ValueError(f'fraction must be in (0, 1], got {fraction}')
    if fraction == 1:
      return np.arange(labels.size, dtype=np.int64)
    count = round(fraction * labels.size / classes.size)
  else:
    count = per_class
  if count <= 0:
    raise ValueError(f'{count} examples per class: fraction={fraction} is too small for '
                     f'{labels.size} examples in {classes.size} classes')
  too_small = classes[class_counts < count]
  if too_small.size:
    raise ValueError(f'classes {too_small.tolist()} have fewer than {count} examples')
  rng = np.random.default_rng(seed)
  chosen = [rng.permutation(np.flatnonzero(labels == c))[:count] for c in classes]
  return np.sort(np.concatenate(chosen)).astype(np.int64)
