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
