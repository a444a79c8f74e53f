"""One bounded cache for the engine's jitted programs.

The engine builds its jitted chunk, initialisation and evaluation functions
from hashable descriptions (objective, optimizer, batch source, mesh, sizes).
:func:`cached` memoises such a factory in a least-recently-used cache of
:data:`MAX_ENTRIES` entries per factory, so that many runs in one process
(every regimen of an experiment) compile each distinct program once without
keeping every model alive forever. :func:`clear` forgets them all.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

MAX_ENTRIES = 32
"""Entries kept per factory."""

_FACTORIES: list = []


def cached(fn: F) -> F:
  """``functools.lru_cache(maxsize=MAX_ENTRIES)`` that skips (does not cache)
  calls with unhashable arguments instead of raising."""
  lru = functools.lru_cache(maxsize=MAX_ENTRIES)(fn)

  @functools.wraps(fn)
  def wrapper(*args):
    try:
      hash(args)
    except TypeError:
      return fn(*args)
    return lru(*args)

  wrapper.cache_clear = lru.cache_clear
  wrapper.cache_info = lru.cache_info
  _FACTORIES.append(wrapper)
  return wrapper  # type: ignore[return-value]


def clear() -> None:
  """Forgets every cached program (they keep their models alive)."""
  for f in _FACTORIES:
    f.cache_clear()
