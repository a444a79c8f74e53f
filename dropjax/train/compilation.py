"""How much of a run is compilation: programs compiled, seconds, cache hits.

:class:`CompileStats` listens to the events JAX records for every program it
compiles (``jax.monitoring``): tracing to a jaxpr, lowering to StableHLO and
the backend compile (which, with the persistent compilation cache on, is a
cache read on a hit). Use it as a context manager around a run::

    with CompileStats() as stats:
      ...  # anything that jits
    stats.summary()  # {"programs": ..., "backend_compile_s": ..., ...}

The listeners are removed on exit. The counts are those of this process
(JAX's events are global): run one measured thing at a time.
"""

from __future__ import annotations

import threading

import jax

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"
CACHE_SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"

_DURATIONS = {
  TRACE_EVENT: "trace_s",
  LOWER_EVENT: "lower_s",
  COMPILE_EVENT: "backend_compile_s",
  CACHE_SAVED_EVENT: "cache_saved_s",
}
_COUNTS = {CACHE_HIT_EVENT: "cache_hits", CACHE_MISS_EVENT: "cache_misses"}


class CompileStats:
  """Counts compiled programs and sums compile seconds while active.

  Attributes (after or during the ``with`` block):
    programs: backend compiles (or persistent-cache loads) of XLA programs.
    backend_compile_s: their seconds (XLA's compile, or the cache read).
    trace_s, lower_s: seconds tracing Python to jaxprs and lowering them.
    cache_hits, cache_misses: persistent compilation cache lookups (0 when
      the cache is off).
    cache_saved_s: compile seconds the cache hits saved, as JAX estimates
      them (the original compile time minus the read).
  """

  def __init__(self):
    self._lock = threading.Lock()
    self.programs = 0
    self.backend_compile_s = 0.0
    self.trace_s = 0.0
    self.lower_s = 0.0
    self.cache_hits = 0
    self.cache_misses = 0
    self.cache_saved_s = 0.0

  def _on_duration(self, event: str, duration: float, **_) -> None:
    name = _DURATIONS.get(event)
    if name is None:
      return
    with self._lock:
      setattr(self, name, getattr(self, name) + float(duration))
      if event == COMPILE_EVENT:
        self.programs += 1

  def _on_event(self, event: str, **_) -> None:
    name = _COUNTS.get(event)
    if name is not None:
      with self._lock:
        setattr(self, name, getattr(self, name) + 1)

  def __enter__(self) -> "CompileStats":
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    jax.monitoring.register_event_listener(self._on_event)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._on_duration)
    jax.monitoring.unregister_event_listener(self._on_event)

  def summary(self) -> dict:
    """The counts and seconds as a JSON-ready dict."""
    with self._lock:
      return {
        "programs": self.programs,
        "backend_compile_s": self.backend_compile_s,
        "trace_s": self.trace_s,
        "lower_s": self.lower_s,
        "total_s": self.backend_compile_s + self.trace_s + self.lower_s,
        "cache_hits": self.cache_hits,
        "cache_misses": self.cache_misses,
        "cache_saved_s": self.cache_saved_s,
      }
