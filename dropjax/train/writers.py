"""Metric writers: where the engine's evaluation records go.

A record (one per evaluation, see :func:`dropjax.train.train`) is a dict
``{"run", "step", "epoch", "seeds", "train_seconds", "train": {metric: [S]},
"eval": {split: {metric: [S]}}}``. A writer has ``start(resume_step)``
(called once, before training; drops what a resumed run will redo),
``write(record)`` and ``close()``:

* :class:`JsonlWriter` -- one JSON line per record (``metrics.jsonl``),
  which :func:`dropjax.train.read_jsonl` reads back. The file is what the
  experiments and the resume logic read.
* :class:`TensorBoardWriter` -- scalars ``train/<metric>/seed_<s>`` and
  ``<split>/<metric>/seed_<s>`` for TensorBoard (needs ``tensorboardX``).
"""

from __future__ import annotations

import math
import os
from typing import Protocol

from dropjax.train import files as _files


class MetricWriter(Protocol):
  """What the engine calls on a writer."""

  def start(self, resume_step: int) -> None: ...

  def write(self, record: dict) -> None: ...

  def close(self) -> None: ...


class JsonlWriter:
  """Records as JSON lines in ``path``.

  ``start(resume_step)`` rewrites the file atomically keeping only the
  records at steps ``<= resume_step`` (none for a fresh run, whose
  ``resume_step`` is 0 and which has no record yet), so a resumed run
  appends exactly what an uninterrupted run would have written.
  """

  def __init__(self, path: str, *, enabled: bool = True):
    self.path = os.fspath(path)
    self.enabled = enabled

  def kept(self, resume_step: int | None) -> list[dict]:
    """The records a run resumed at ``resume_step`` keeps (``None``: a
    fresh run keeps none)."""
    if resume_step is None:
      return []
    return [
      r for r in _files.read_jsonl(self.path) if r.get("step", 0) <= resume_step
    ]

  def start(self, resume_step: int | None) -> list[dict]:
    history = self.kept(resume_step)
    if self.enabled:
      _files.write_jsonl_atomic(self.path, history)
    return history

  def write(self, record: dict) -> None:
    if self.enabled:
      _files.append_jsonl(self.path, record)

  def close(self) -> None:
    pass


class TensorBoardWriter:
  """Records as TensorBoard scalars in ``logdir`` (one event file per
  session; a resumed run rewrites the steps it redoes)."""

  def __init__(self, logdir: str):
    try:
      from tensorboardX import SummaryWriter
    except ImportError as e:  # pragma: no cover - depends on the install
      raise ImportError(
        "TensorBoardWriter needs tensorboardX (pip install tensorboardX)."
      ) from e
    self._writer = SummaryWriter(os.fspath(logdir))

  def start(self, resume_step: int | None) -> None:
    del resume_step

  def write(self, record: dict) -> None:
    step, seeds = int(record["step"]), record["seeds"]
    groups = [("train", record.get("train", {}))]
    groups += list(record.get("eval", {}).items())
    for prefix, metrics in groups:
      for name, values in metrics.items():
        for s, v in zip(seeds, values):
          if v is not None and math.isfinite(v):
            self._writer.add_scalar(f"{prefix}/{name}/seed_{s}", v, step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
