"""Metrics to TensorBoard event files and a one-line console progress (process 0 only)."""

import json
import time
from typing import Mapping, Optional

from absl import logging
import jax
import numpy as np


class MetricWriter:
  """Writes scalars under `workdir` with tf.summary; other processes write nothing."""

  def __init__(self, workdir: Optional[str], *, total_steps: Optional[int],
               global_batch_size: int):
    """workdir: where the event files go; None: the console line only. total_steps: the run's
    length for the ETA and the progress line; None when the run ends on a time budget (the loop
    then passes its own `eta_minutes`)."""
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self._writer = None
    self._last_time: Optional[float] = None
    self._last_step: Optional[int] = None
    if self.enabled and workdir is not None:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._tf = tf
      self._writer = tf.summary.create_file_writer(workdir)

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = 'train') -> dict:
    """Writes `prefix/name` scalars, adds speed and ETA for train metrics; returns them."""
    out = {f'{prefix}/{k}': float(v) for k, v in metrics.items()}
    now = time.time()
    if prefix == 'train' and self._last_time is not None and step > self._last_step:
      steps_per_s = (step - self._last_step) / (now - self._last_time)
      out['train/steps_per_s'] = steps_per_s
      out['train/images_per_s'] = steps_per_s * self.global_batch_size
      if self.total_steps is not None:
        out['train/eta_minutes'] = (self.total_steps - step) / max(steps_per_s, 1e-9) / 60
    if prefix == 'train':
      self._last_time, self._last_step = now, step
    if not self.enabled:
      return out
    if self._writer is not None:
      with self._writer.as_default():
        for k, v in out.items():
          self._tf.summary.scalar(k, v, step=step)
      self._writer.flush()
    if prefix == 'train':
      shown = ' '.join(f'{k.split("/")[1]}={v:.4g}' for k, v in out.items()
                       if k.split('/')[1] in ('loss', 'contrast_accuracy', 'probe_accuracy',
                                              'learning_rate', 'images_per_s', 'eta_minutes'))
      of = f'/{self.total_steps}' if self.total_steps is not None else ''
      logging.info('step %d%s %s', step, of, shown)
    return out

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()


def makedirs(path: str) -> None:
  """`os.makedirs(path, exist_ok=True)` that also takes gs:// (and other tf.io.gfile) paths."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(path)


def write_json(path: str, payload: Mapping, *, merge: bool = True) -> dict:
  """Writes (merging into an existing file) a JSON file atomically, from process 0 only.

  `path` may be local or gs://: tf.io.gfile does the I/O. Locally the rename of the temporary file
  is atomic; on GCS an object appears whole or not at all, so a reader never sees half a file.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  data = {}
  if merge and tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      data = json.load(f)
  data.update({k: _plain(v) for k, v in payload.items()})
  if jax.process_index() == 0:
    tmp = path + '.tmp'
    with tf.io.gfile.GFile(tmp, 'w') as f:
      json.dump(data, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  return data


def _plain(v):
  if isinstance(v, (np.generic, np.ndarray)):
    return v.tolist()
  if isinstance(v, dict):
    return {k: _plain(x) for k, x in v.items()}
  return v
