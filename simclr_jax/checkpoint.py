"""Orbax checkpoints of the train state, atomic and with fallback to an older step.

Orbax writes each step into a temporary folder and renames it only once complete, so a crash while
saving never leaves a step that `restore_latest` would pick up. Old steps are deleted only after a
newer one is complete. If the newest step is unreadable (truncated files, a bad disk), the one
before it is restored, with a warning. The data position needs no saving: the batch of step s is a
pure function of (seed, s) (see simclr_jax/data/pipeline.py), so the restored step is the
position.
"""

import os
import time
from typing import Any, Optional

from absl import logging
import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(RuntimeError):
  """A checkpoint could not be written; the previous one is intact."""


class Checkpointer:
  """Saves and restores a TrainState-like pytree under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir) if '://' not in workdir else workdir,
                                  'checkpoints')
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: PyTree) -> None:
    """Writes `state` (host or device arrays) as `step`; raises CheckpointError on failure."""
    tree = flax.serialization.to_state_dict(jax.device_get(state))
    try:
      self._manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
      self._manager.wait_until_finished()
    except (OSError, ValueError) as e:  # disk full, permissions, ...
      previous = [s for s in self.all_steps() if s != step]
      raise CheckpointError(
          f'could not write the checkpoint of step {step} to {self.directory} ({e}). '
          f'The previous checkpoint (step {previous[-1] if previous else None}) is intact; free '
          'disk space or point --workdir elsewhere, then rerun the same command to resume.') from e

  def restore_latest(self, target: PyTree) -> tuple[Optional[int], PyTree]:
    """Restores the newest readable step into the structure of `target`.

    Returns:
      (step, state), or (None, target) when there is no checkpoint.
    """
    template = flax.serialization.to_state_dict(jax.device_get(target))
    abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), template)
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return step, flax.serialization.from_state_dict(target, restored)
      except Exception as e:  # pylint: disable=broad-except
        kept = self._set_aside(step)
        logging.warning('checkpoint step %d in %s is unreadable (%s: %s); kept as %s, trying the '
                        'previous one', step, self.directory, type(e).__name__, e, kept)
    return None, target

  def _set_aside(self, step: int) -> str:
    """Renames an unreadable step out of Orbax's sight (nothing is deleted), so the resumed run
    can write that step again."""
    from tensorflow.io import gfile  # pylint: disable=g-import-not-at-top  (handles gs://)
    src = os.path.join(self.directory, str(step))
    dst = f'{src}.unreadable-{int(time.time())}'
    gfile.rename(src, dst)
    self._manager.reload()
    return dst

  def close(self) -> None:
    self._manager.close()
