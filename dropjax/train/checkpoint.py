"""Checkpoints of a run: one orbax ``CheckpointManager``.

A checkpoint holds a pytree of arrays (the train state, the batch source's
state, the best parameters so far) and a JSON dict of metadata (step, seeds,
running metric sums, failures, timings), saved together under one step
number. Writes are atomic (orbax finalises a step directory only when it is
complete), so a run killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import os
from typing import Any


class Checkpoints:
  """Saves and restores ``{"state": pytree, "meta": dict}`` by step.

  Args:
    directory: where the step directories go (created if needed).
    keep: how many recent checkpoints to keep.
    async_save: let orbax write in a background thread (the arrays are
      copied to host before training continues); :meth:`close` waits.
  """

  def __init__(self, directory: str, keep: int = 2, async_save: bool = True):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self._mgr = ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True
      ),
    )

  def latest(self) -> int | None:
    """The newest complete step, or ``None``."""
    return self._mgr.latest_step()

  def meta(self, step: int) -> dict:
    """The metadata saved at ``step``."""
    args = self._ocp.args.Composite(meta=self._ocp.args.JsonRestore())
    return self._mgr.restore(step, args=args)["meta"]

  def state(self, step: int, abstract: Any) -> Any:
    """The arrays saved at ``step``, restored into ``abstract``'s structure,
    shapes, dtypes and shardings (``jax.ShapeDtypeStruct`` leaves)."""
    args = self._ocp.args.Composite(
      state=self._ocp.args.StandardRestore(abstract)
    )
    return self._mgr.restore(step, args=args)["state"]

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state`` and ``meta`` as ``step`` (replacing one of that step)."""
    args = self._ocp.args.Composite(
      state=self._ocp.args.StandardSave(state),
      meta=self._ocp.args.JsonSave(meta),
    )
    self._mgr.save(step, args=args, force=True)

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self._mgr.wait_until_finished()
    self._mgr.close()
