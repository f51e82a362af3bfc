"""Float64 NumPy references of the formulas, written from the papers, independent of the code."""

import numpy as np


def nt_xent(z_a, z_b, temperature, normalize=True):
  """SimCLR eq. (1): L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)], and dL/dz_a, dL/dz_b.

  Gradient by central finite differences would be slow; this is the analytic gradient of the
  softmax cross-entropy through the cosine similarity, derived by hand.
  """
  z_a = np.asarray(z_a, np.float64)
  z_b = np.asarray(z_b, np.float64)
  n = z_a.shape[0]
  z = np.concatenate([z_a, z_b])  # view k of image i at row i + k*n
  norms = np.linalg.norm(z, axis=1, keepdims=True) if normalize else np.ones((2 * n, 1))
  u = z / norms
  sim = u @ u.T / temperature
  pos = np.concatenate([np.arange(n) + n, np.arange(n)])
  loss = 0.0
  dsim = np.zeros_like(sim)
  for i in range(2 * n):
    others = [k for k in range(2 * n) if k != i]
    row = sim[i, others]
    m = row.max()
    log_denominator = m + np.log(np.exp(row - m).sum())
    loss += -(sim[i, pos[i]] - log_denominator)
    p = np.exp(row - log_denominator)
    for k, pk in zip(others, p):
      dsim[i, k] += pk
    dsim[i, pos[i]] -= 1.0
  loss /= 2 * n
  dsim /= 2 * n
  # sim = u u^T / t  ->  dL/du = (dsim + dsim^T) u / t
  du = (dsim + dsim.T) @ u / temperature
  if normalize:  # u = z/|z|  ->  dz = (du - u (u.du)) / |z|
    dz = (du - u * np.sum(u * du, axis=1, keepdims=True)) / norms
  else:
    dz = du
  return loss, dz[:n], dz[n:]


def batch_norm_stats(x):
  """Mean and biased variance over all axes but the last, as BN's batch statistics."""
  x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
  return x.mean(0), x.var(0)


def info_nce(q, k, queue, temperature):
  """MoCo eq. (1): L = 1/n sum_i -log exp(q_i.k_i/t) / (exp(q_i.k_i/t) + sum_j exp(q_i.queue_j/t)),
  with q and k l2-normalised, and dL/dq (k and the queue are constants).

  Returns:
    (loss, dL/dq [n, d]).
  """
  q = np.asarray(q, np.float64)
  k = np.asarray(k, np.float64)
  queue = np.asarray(queue, np.float64)
  n = q.shape[0]
  q_norms = np.linalg.norm(q, axis=1, keepdims=True)
  u = q / q_norms
  v = k / np.linalg.norm(k, axis=1, keepdims=True)
  loss = 0.0
  du = np.zeros_like(u)
  for i in range(n):
    candidates = np.concatenate([v[i:i + 1], queue])  # row 0 is the positive
    logits = candidates @ u[i] / temperature
    m = logits.max()
    log_denominator = m + np.log(np.exp(logits - m).sum())
    loss += log_denominator - logits[0]
    p = np.exp(logits - log_denominator)
    p[0] -= 1.0
    du[i] = candidates.T @ p / temperature / n
  loss /= n
  dq = (du - u * np.sum(u * du, axis=1, keepdims=True)) / q_norms
  return loss, dq


def barlow_twins(z_a, z_b, lambd, epsilon=1e-5):
  """Barlow Twins eq. (1) and its gradient, written from the paper and the official code.

  Each view is standardised per dimension over the batch: a = (z - mean) / sqrt(var + eps) with
  the biased variance (BatchNorm1d(affine=False)); C = a^T b / N;
  L = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.

  Returns:
    (loss, dL/dz_a [N, d], dL/dz_b [N, d], C [d, d]).
  """
  z_a = np.asarray(z_a, np.float64)
  z_b = np.asarray(z_b, np.float64)
  n, d = z_a.shape

  def standardize(z):
    sigma = np.sqrt(z.var(0) + epsilon)
    return (z - z.mean(0)) / sigma, sigma

  a, sigma_a = standardize(z_a)
  b, sigma_b = standardize(z_b)
  c = a.T @ b / n
  off = ~np.eye(d, dtype=bool)
  loss = np.sum((1.0 - np.diag(c)) ** 2) + lambd * np.sum(c[off] ** 2)
  # dL/dC: -2 (1 - C_ii) on the diagonal, 2 lambd C_ij off it.
  dc = np.where(off, 2.0 * lambd * c, -2.0 * (1.0 - c))
  da = b @ dc.T / n
  db = a @ dc / n

  def standardize_backward(dy, y, sigma):
    # y = (z - mean) / sigma, sigma = sqrt(var + eps): the batch-norm backward pass.
    return (dy - dy.mean(0) - y * np.mean(dy * y, axis=0)) / sigma

  return loss, standardize_backward(da, a, sigma_a), standardize_backward(db, b, sigma_b), c


def _pair_similarities(z_a, z_b, normalize):
  """Rows [z_a; z_b] (view v of image i at row i + v*n), their (unit) vectors, norms, s = u u^T."""
  z = np.concatenate([np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)])
  norms = np.linalg.norm(z, axis=1, keepdims=True) if normalize else np.ones((len(z), 1))
  u = z / norms
  return u, norms, u @ u.T


def _similarity_backward(dsim, u, norms, normalize):
  """dL/dz from dL/ds with s = u u^T and u = z/|z| (or u = z)."""
  du = (dsim + dsim.T) @ u
  if normalize:
    return (du - u * np.sum(u * du, axis=1, keepdims=True)) / norms
  return du


def _negatives(i, n):
  """Columns of the 2n - 2 negatives of row i: every other view but its pair."""
  pair = (i + n) % (2 * n)
  return [k for k in range(2 * n) if k not in (i, pair)], pair


def _semi_hard(s_row, pair, negatives):
  """SimCLR sec. 5.1 / FaceNet semi-hard negative: the closest negative that is farther than the
  positive; if every negative is closer than the positive, the farthest negative (TF-Addons'
  triplet_semihard_loss fallback)."""
  farther = [k for k in negatives if s_row[k] < s_row[pair]]
  if farther:
    return max(farther, key=lambda k: s_row[k])
  return min(negatives, key=lambda k: s_row[k])


def _log1p_exp(x):
  """softplus(x) = log(1 + e^x), stable."""
  return np.logaddexp(0.0, x)


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def nt_logistic(z_a, z_b, temperature, normalize=True, semi_hard=False):
  """SimCLR Table 2's NT-Logistic, per anchor i with positive p and negatives K(i):
  l_i = -log sig(s_ip/t) - 1/|K(i)| sum_{k in K(i)} log sig(-s_ik/t), L = mean_i l_i over the 2n
  anchors (positive and negatives weighted equally); K(i) = the 2n - 2 other views, or only the
  semi-hard negative. Returns (L, dL/dz_a, dL/dz_b)."""
  n = np.shape(z_a)[0]
  u, norms, s = _pair_similarities(z_a, z_b, normalize)
  loss = 0.0
  dsim = np.zeros_like(s)
  for i in range(2 * n):
    negatives, pair = _negatives(i, n)
    if semi_hard:
      negatives = [_semi_hard(s[i], pair, negatives)]
    x = s[i, pair] / temperature
    loss += _log1p_exp(-x)
    dsim[i, pair] += -_sigmoid(-x) / temperature  # d softplus(-x)/dx = -sig(-x)
    for k in negatives:
      y = s[i, k] / temperature
      loss += _log1p_exp(y) / len(negatives)
      dsim[i, k] += _sigmoid(y) / temperature / len(negatives)
  loss /= 2 * n
  dsim /= 2 * n
  dz = _similarity_backward(dsim, u, norms, normalize)
  return loss, dz[:n], dz[n:]


def margin_triplet(z_a, z_b, margin, normalize=True, semi_hard=False):
  """SimCLR Table 2's margin triplet, l_i = 1/|K(i)| sum_{k in K(i)} max(s_ik - s_ip + m, 0),
  L = mean_i l_i, K(i) as in `nt_logistic`. Returns (L, dL/dz_a, dL/dz_b, fraction of the used
  triplets with a positive hinge)."""
  n = np.shape(z_a)[0]
  u, norms, s = _pair_similarities(z_a, z_b, normalize)
  loss = 0.0
  active = 0.0
  dsim = np.zeros_like(s)
  for i in range(2 * n):
    negatives, pair = _negatives(i, n)
    if semi_hard:
      negatives = [_semi_hard(s[i], pair, negatives)]
    for k in negatives:
      h = s[i, k] - s[i, pair] + margin
      if h > 0:
        loss += h / len(negatives)
        active += 1.0 / len(negatives)
        dsim[i, k] += 1.0 / len(negatives)
        dsim[i, pair] -= 1.0 / len(negatives)
  loss /= 2 * n
  dsim /= 2 * n
  dz = _similarity_backward(dsim, u, norms, normalize)
  return loss, dz[:n], dz[n:], active / (2 * n)
