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
