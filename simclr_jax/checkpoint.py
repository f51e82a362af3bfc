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


class CheckpointMismatchError(ValueError):
  """A readable checkpoint holds another state than this run's (another config, or a checkpoint
  from an older simclr_jax version); nothing is set aside or overwritten."""


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

    Raises:
      CheckpointMismatchError: the newest readable step holds another tree or other shapes.
    """
    template = flax.serialization.to_state_dict(jax.device_get(target))
    abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), template)
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except
        saved = self._restore_as_saved(step)
        if saved is not None:  # readable: it is this run's state that differs
          raise CheckpointMismatchError(self._mismatch(step, saved, template)) from e
        kept = self._set_aside(step)
        logging.warning('checkpoint step %d in %s is unreadable (%s: %s); kept as %s, trying the '
                        'previous one', step, self.directory, type(e).__name__, e, kept)
        continue
      if _shapes(restored) != _shapes(template):
        raise CheckpointMismatchError(self._mismatch(step, restored, template))
      return step, flax.serialization.from_state_dict(target, restored)
    return None, target

  def restore_latest_parts(self, parts: dict) -> tuple[Optional[int], dict]:
    """Restores only some top-level entries of the newest readable step, e.g. {'params': ...,
    'batch_stats': ...} for evaluation, whatever else (optimizer, method state) it holds.

    Args:
      parts: {name: template pytree}; each is checked against the checkpoint's entry (keys and
        shapes) and restored into its structure.

    Returns:
      (step, {name: restored}), or (None, parts) when there is no checkpoint.

    Raises:
      CheckpointMismatchError: an entry is missing or holds other keys or shapes.
    """
    for step in reversed(self.all_steps()):
      saved = self._restore_as_saved(step)
      if saved is None:
        kept = self._set_aside(step)
        logging.warning('checkpoint step %d in %s is unreadable; kept as %s, trying the previous '
                        'one', step, self.directory, kept)
        continue
      template = {k: flax.serialization.to_state_dict(jax.device_get(v)) for k, v in parts.items()}
      chosen = {k: saved[k] for k in parts if k in saved}
      if _shapes(chosen) != _shapes(template):
        raise CheckpointMismatchError(self._mismatch(step, chosen, template))
      return step, {k: flax.serialization.from_state_dict(v, jax.device_get(chosen[k]))
                    for k, v in parts.items()}
    return None, parts

  def _restore_as_saved(self, step: int) -> Optional[PyTree]:
    """The step's tree as written (no target), or None when it cannot be read."""
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore())
    except Exception:  # pylint: disable=broad-except
      return None

  def _mismatch(self, step: int, saved: PyTree, template: PyTree) -> str:
    saved, wanted = _shapes(saved), _shapes(template)
    only_saved = sorted(set(saved) - set(wanted))
    only_wanted = sorted(set(wanted) - set(saved))
    reshaped = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    details = '; '.join(
        f'{what}: {", ".join(keys[:3])}{" ..." if len(keys) > 3 else ""} ({len(keys)})'
        for what, keys in (('only in the checkpoint', only_saved),
                           ('only in this run', only_wanted),
                           ('other shapes', [f'{k} {saved[k]} vs {wanted[k]}' for k in reshaped]))
        if keys)
    return (f'the checkpoint of step {step} in {self.directory} is readable but holds another '
            f'state than this run builds ({details}). It was written with another config (model, '
            'method, optimizer, time_budget_minutes) or an older simclr_jax: rerun with the '
            'config that wrote it (the workdir\'s config.json), or use a new --workdir. '
            'Nothing in the workdir was changed.')

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


def _shapes(tree: PyTree) -> dict:
  """{'a/b/c': shape} of a nested-dict state."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path): np.shape(leaf)
          for path, leaf in flat}
