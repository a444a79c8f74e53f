"""Run files: atomic JSON writes and JSONL metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Iterable

import jax
import numpy as np


def to_builtin(obj):
  """``json.dumps`` ``default=``: arrays to lists, numpy scalars to numbers."""
  if isinstance(obj, (np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return dataclasses.asdict(obj)
  if isinstance(obj, (set, frozenset)):
    return sorted(obj)
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` via a temp file in the same directory and
  ``os.replace``; the temp file is removed on any error."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
  )
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise


def write_json_atomic(path: str, obj: Any, *, indent: int | None = 2) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (temp file + ``os.replace``).

  Readers see either the old file or the complete new one, never a partial
  write; on any error (e.g. an unserialisable object) the temp file is
  removed and an existing ``path`` is left untouched. numpy / JAX arrays and
  scalars become lists / numbers; non-finite floats are written as Python's
  ``json`` writes them (``NaN``, ``Infinity``, which ``json.load`` reads).

  Args:
    path: destination file; its directory is created if needed.
    obj: a JSON-serialisable object (dicts, lists, numbers, strings, arrays).
    indent: ``json.dumps`` indentation (``None`` for one line).

  Raises:
    TypeError: for an object that cannot be serialised (nothing is written).
    OSError: if the file cannot be written.

  Example:

  >>> import json, os, tempfile
  >>> d = tempfile.mkdtemp()
  >>> write_json_atomic(os.path.join(d, "r.json"), {"acc": [0.5, 0.75]})
  >>> json.load(open(os.path.join(d, "r.json")))
  {'acc': [0.5, 0.75]}
  >>> os.listdir(d)
  ['r.json']
  """
  text = json.dumps(obj, indent=indent, default=to_builtin)
  write_text_atomic(path, text + "\n")


def jsonl_line(record: dict) -> str:
  """One JSONL line (with the newline)."""
  return json.dumps(record, default=to_builtin) + "\n"


def write_jsonl_atomic(path: str, records: Iterable[dict]) -> None:
  """Replaces ``path`` atomically with ``records``, one JSON object a line."""
  write_text_atomic(path, "".join(jsonl_line(r) for r in records))


def append_jsonl(path: str, record: dict) -> None:
  """Appends one record as a line to ``path`` and flushes it."""
  with open(path, "a") as f:
    f.write(jsonl_line(record))
    f.flush()


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSONL file; a missing file gives ``[]``.

  A line cut short (the process was killed while writing it) is skipped.
  """
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out


_write_text_atomic = write_text_atomic  # old private name, kept for callers
