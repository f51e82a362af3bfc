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
from jax.sharding import PartitionSpec as P


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


# ----------------------------------------------------------------------------------------------
# The data-parallel form: the training features stay on the devices that computed them.

@functools.lru_cache(maxsize=8)
def _mapped_bank_ops(mesh, ks: tuple, num_classes: int):
  """(write, score): shard_map-ed ops on a feature bank sharded over the mesh's 'batch' axis.

  The bank holds, per device, the features of the rows that device extracted, one block per
  step. A test batch is scored against every shard: each device takes its local top-k (masked
  rows at -inf), the candidates of all devices are gathered, and the global top-k of those is
  exactly the top-k over the whole bank. `score` adds the batch's hits for each k in `ks` and
  its count of real rows to running totals on the devices (one program with collectives per
  step: several in flight at once can deadlock XLA:CPU's simulated devices).
  """
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  axis = parallel.AXIS
  k_max = max(ks)

  def write(bank, bank_labels, bank_mask, features, labels, mask, step):
    rows = features.shape[0]
    start = step * rows
    bank = jax.lax.dynamic_update_slice_in_dim(bank, _l2_normalise(features), start, axis=0)
    bank_labels = jax.lax.dynamic_update_slice_in_dim(bank_labels, labels, start, axis=0)
    bank_mask = jax.lax.dynamic_update_slice_in_dim(bank_mask, mask, start, axis=0)
    return bank, bank_labels, bank_mask

  def score(totals, bank, bank_labels, bank_mask, features, labels, mask, temperature):
    # Every device scores the whole test batch against its own shard.
    test = _l2_normalise(jax.lax.all_gather(features, axis, tiled=True))  # [B, D]
    similarity = jnp.where(bank_mask[None, :], test @ bank.T, -jnp.inf)  # [B, n_local]
    top_similarity, top_index = jax.lax.top_k(similarity, min(k_max, bank.shape[0]))
    top_labels = bank_labels[top_index]
    # [B, devices * local_k] candidates, then the global top-k, sorted descending.
    candidates = jax.lax.all_gather(top_similarity, axis, axis=1, tiled=True)
    candidate_labels = jax.lax.all_gather(top_labels, axis, axis=1, tiled=True)
    top_similarity, top_index = jax.lax.top_k(candidates, min(k_max, candidates.shape[1]))
    neighbour_labels = jnp.take_along_axis(candidate_labels, top_index, axis=1)
    weights = jnp.exp(top_similarity / temperature)  # exp(-inf) = 0: padding never votes
    labels = jax.lax.all_gather(labels, axis, tiled=True)
    mask = jax.lax.all_gather(mask, axis, tiled=True)
    counts = []
    for k in ks:
      k = min(k, neighbour_labels.shape[1])
      votes = jax.nn.one_hot(neighbour_labels[:, :k], num_classes, dtype=weights.dtype)
      votes = (votes * weights[:, :k, None]).sum(axis=1)
      counts.append(jnp.sum((jnp.argmax(votes, axis=-1) == labels) & mask))
    counts.append(jnp.sum(mask))
    return totals + jnp.stack(counts).astype(jnp.int32)

  sharded, replicated = P(axis), P()
  write_fn = jax.jit(jax.shard_map(write, mesh=mesh, in_specs=(sharded,) * 6 + (replicated,),
                                   out_specs=(sharded,) * 3, check_vma=False),
                     donate_argnums=(0, 1, 2))
  score_fn = jax.jit(jax.shard_map(score, mesh=mesh,
                                   in_specs=(replicated,) + (sharded,) * 6 + (replicated,),
                                   out_specs=replicated, check_vma=False), donate_argnums=(0,))
  return write_fn, score_fn


def sharded_knn_eval(train_steps, test_steps, *, num_train_steps: int, ks, temperature: float,
                     num_classes: int, mapper) -> dict[int, float]:
  """kNN top-1 for each k in `ks`, with the training features kept sharded over the devices.

  Args:
    train_steps: iterable of per-step training features as `features.split_features` yields
      them ({'features' [B, D], 'label', 'mask'}, sharded over `mapper`'s mesh), each example of
      the split once, consumed as they come (each step's features go into the bank).
    test_steps: the same for the test split.
    num_train_steps: how many steps `train_steps` yields (`EvalSplit.num_steps`).
    ks: numbers of neighbours.
    temperature: vote weight is exp(cosine similarity / temperature).
    num_classes: number of classes C.
    mapper: the `parallel.Mapper` the features live on.

  Returns:
    {k: top-1 accuracy}; the same as `knn_eval` on the gathered features (ties aside).
  """
  ks = tuple(int(k) for k in ks)
  if min(ks) <= 0 or temperature <= 0:
    raise ValueError(f'k and temperature must be positive, got {ks} and {temperature}')
  write, score = _mapped_bank_ops(mapper.mesh, ks, num_classes)
  bank = None
  for step, out in enumerate(train_steps):
    if bank is None:  # [steps * B, D], each device's rows on that device
      rows, dim = out['features'].shape
      total = rows * num_train_steps
      bank = jax.device_put(np.zeros((total, dim), np.float32), mapper.batch_sharding)
      bank_labels = jax.device_put(np.zeros((total,), np.int32), mapper.batch_sharding)
      bank_mask = jax.device_put(np.zeros((total,), bool), mapper.batch_sharding)
    if step >= num_train_steps:
      raise ValueError(f'train_steps yielded more than num_train_steps={num_train_steps} steps')
    bank, bank_labels, bank_mask = write(bank, bank_labels, bank_mask, out['features'],
                                         out['label'], out['mask'], np.int32(step))
  totals = jax.device_put(np.zeros(len(ks) + 1, np.int32), mapper.replicated)
  for out in test_steps:
    totals = score(totals, bank, bank_labels, bank_mask, out['features'], out['label'],
                   out['mask'], np.float32(temperature))
  totals = [int(x) for x in jax.device_get(totals)]
  return {k: hits / totals[-1] for k, hits in zip(ks, totals)}
