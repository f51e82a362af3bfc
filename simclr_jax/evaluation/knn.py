"""Weighted k-nearest-neighbour classification on frozen features (InstDisc / solo-learn style).

Features are L2-normalised; a test point's k most cosine-similar training points vote for their
labels with weight exp(similarity / temperature); the class with the largest summed weight wins.
No training and no hyper-parameters besides k and the temperature, so it is a cheap monitor of
representation quality (config.eval.knn_k, config.eval.knn_temperature).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _l2_normalise(features: jax.Array) -> jax.Array:
  # The epsilon keeps an all-zero feature (e.g. a dead ReLU output) at zero instead of NaN.
  return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _knn_scores(train_features: jax.Array, train_labels: jax.Array, test_features: jax.Array,
                temperature: jax.Array, *, k: int, num_classes: int) -> jax.Array:
  """Per-class vote totals `[B, C]` for one batch of (normalised) test features `[B, D]`."""
  similarity = test_features @ train_features.T  # [B, N]
  top_similarity, top_index = jax.lax.top_k(similarity, k)  # [B, k], sorted descending
  neighbour_labels = train_labels[top_index]  # [B, k]
  weights = jnp.exp(top_similarity / temperature)
  votes = jax.nn.one_hot(neighbour_labels, num_classes, dtype=weights.dtype) * weights[..., None]
  return votes.sum(axis=1)


def knn_classify(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    k: int,
    temperature: float,
    num_classes: int,
    batch_size: int = 256,
) -> np.ndarray:
  """Predicts a label for every test feature by a similarity-weighted vote of its k neighbours.

  Test features are processed `batch_size` at a time (the similarity block is
  `[batch_size, N]`); the last batch is padded so there is one compilation. Ties between class
  totals go to the smaller class index. `k` is capped at N.

  Args:
    train_features: `[N, D]`.
    train_labels: `[N]` int in `[0, num_classes)`.
    test_features: `[M, D]`.
    k: number of neighbours.
    temperature: vote weight is exp(cosine similarity / temperature).
    num_classes: number of classes C.
    batch_size: test points per similarity block.

  Returns:
    `[M]` int32 predicted labels.
  """
  if k <= 0 or temperature <= 0:
    raise ValueError(f'k and temperature must be positive, got {k} and {temperature}')
  train_features = _l2_normalise(jnp.asarray(train_features, jnp.float32))
  test_features = np.asarray(test_features, np.float32)
  train_labels = jnp.asarray(train_labels, jnp.int32)
  k = min(k, train_features.shape[0])
  num_test = test_features.shape[0]
  predictions = []
  for start in range(0, num_test, batch_size):
    batch = test_features[start:start + batch_size]
    num_real = batch.shape[0]
    if num_real < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - num_real,) + batch.shape[1:],
                                              batch.dtype)])
    scores = _knn_scores(train_features, train_labels, _l2_normalise(jnp.asarray(batch)),
                         jnp.float32(temperature), k=k, num_classes=num_classes)
    predictions.append((jnp.argmax(scores, axis=-1), num_real))
  return np.concatenate([np.asarray(p)[:n] for p, n in predictions]).astype(np.int32)


def knn_eval(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    k: int,
    temperature: float,
    num_classes: int,
    batch_size: int = 256,
) -> float:
  """Top-1 accuracy of `knn_classify` on labelled test features.

  Args:
    train_features: `[N, D]`.
    train_labels: `[N]` int.
    test_features: `[M, D]`.
    test_labels: `[M]` int.
    k: number of neighbours (one entry of config.eval.knn_k).
    temperature: config.eval.knn_temperature.
    num_classes: number of classes C.
    batch_size: test points per similarity block.

  Returns:
    Top-1 accuracy in [0, 1].
  """
  predictions = knn_classify(train_features, train_labels, test_features, k=k,
                             temperature=temperature, num_classes=num_classes,
                             batch_size=batch_size)
  return float(np.mean(predictions == np.asarray(test_labels)))
