"""The timing protocol, XLA cost/memory analysis and result files.

Protocol (JAX's "Benchmarking and profiling" guidance):

* the whole step is one ``jax.jit``; its compile time is measured separately
  as ``jitted.lower(*args).compile()`` (tracing + lowering + XLA compile);
* every call ends with ``jax.block_until_ready`` (JAX dispatches
  asynchronously; without it one would time the dispatch);
* ``warmup`` calls of every step are made first and discarded;
* then ``repeats`` *rounds*: in each round every step of a group runs once,
  in an order rotated from round to round, so slow drift of the machine
  (other processes, frequency changes) hits all steps alike;
* a step's time is the median over rounds; its ratio to a reference step is
  the median over rounds of the per-round ratio (paired, so drift between
  rounds cancels).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import jax


# ----------------------------------------------------------------- compiling


def compile_timed(jitted, *args) -> tuple[Any, float]:
  """``(compiled, compile_ms)`` for ``jitted.lower(*args).compile()``."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, 1e3 * (time.perf_counter() - t0)


def _first(analysis):
  if isinstance(analysis, (list, tuple)):
    return analysis[0] if analysis else {}
  return analysis or {}


def cost(compiled) -> dict[str, float | None]:
  """XLA's cost analysis of a compiled step: ``flops`` and ``bytes_accessed``.

  The FLOP count is XLA's static estimate for the optimised HLO: a multiply
  and an add each count one (a ``[m, k] @ [k, n]`` matmul is ``2 m k n``),
  element-wise and random-number ops count too. ``None`` where the backend
  gives no estimate.
  """
  try:
    ca = _first(compiled.cost_analysis())
  except Exception:  # some backends do not implement it
    ca = {}
  flops = ca.get("flops")
  acc = ca.get("bytes accessed")
  return {
    "flops": None if flops is None else float(flops),
    "bytes_accessed": None if acc is None else float(acc),
  }


def lowered_flops(jitted, *args) -> float | None:
  """XLA's FLOP count of the *unoptimised* HLO of ``jitted(*args)``.

  ``cost`` counts the optimised program, where the body of a ``while`` loop
  (``lax.scan``, ``lax.map``) counts once, not once per iteration: for the
  char LSTM's 32-step scans the compiled count of a dropout step is 0.72
  GFLOP against 1.51 GFLOP actually executed, and the explicit + implicit
  step's ratio to it comes out 3.05 instead of 4.07. Lowering a version
  with every scan unrolled (``unroll=True``) counts every time step; the
  lowering takes about a second, where compiling that version takes
  minutes. ``None`` where the backend gives no estimate.
  """
  try:
    ca = _first(jitted.lower(*args).cost_analysis())
  except Exception:  # some backends do not implement it
    ca = {}
  flops = ca.get("flops")
  return None if flops is None else float(flops)


def memory(compiled) -> dict[str, Any]:
  """Peak-memory estimate of a compiled step.

  ``peak_bytes = temp + argument + output - alias`` from
  ``compiled.memory_analysis()`` (XLA's buffer assignment; arguments and
  outputs that alias each other are counted once). ``peak_bytes_source``
  says so. Device memory statistics are not used: the CPU backend has none
  (``device.memory_stats()`` is ``None``).
  """
  try:
    m = compiled.memory_analysis()
  except Exception:
    m = None
  if m is None:
    return {"peak_bytes": None, "peak_bytes_source": "unavailable"}
  temp = int(m.temp_size_in_bytes)
  arg = int(m.argument_size_in_bytes)
  out = int(m.output_size_in_bytes)
  alias = int(getattr(m, "alias_size_in_bytes", 0))
  return {
    "peak_bytes": temp + arg + out - alias,
    "temp_bytes": temp,
    "argument_bytes": arg,
    "output_bytes": out,
    "alias_bytes": alias,
    "peak_bytes_source": "memory_analysis: temp + argument + output - alias",
  }


# ------------------------------------------------------------------- timing


def time_interleaved(
  calls: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 3
) -> dict[str, list[float]]:
  """Times several steps side by side.

  Args:
    calls: ``{name: fn}``; ``fn()`` runs one step *and blocks* until its
      result is ready (e.g. ``lambda: jax.block_until_ready(step(*args))``).
    repeats: number of rounds; each round runs every step once.
    warmup: calls of every step made first and discarded.

  Returns:
    ``{name: [seconds per round]}``.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}.")
  names = list(calls)
  for _ in range(warmup):
    for n in names:
      calls[n]()
  times: dict[str, list[float]] = {n: [] for n in names}
  for r in range(repeats):
    shift = r % len(names)
    for n in names[shift:] + names[:shift]:
      t0 = time.perf_counter()
      calls[n]()
      times[n].append(time.perf_counter() - t0)
  return times


def median_seconds(fn: Callable[[], Any], *, repeats: int, warmup: int = 3):
  """Median seconds of ``fn()`` (which blocks) over ``repeats`` calls after
  ``warmup`` (:func:`time_interleaved` with one step)."""
  ts = time_interleaved({"fn": fn}, repeats=repeats, warmup=warmup)["fn"]
  return statistics.median(ts)


def summary(seconds: Sequence[float]) -> dict[str, float]:
  """Median, quartiles and minimum in milliseconds, and the run count."""
  ms = sorted(1e3 * s for s in seconds)
  if len(ms) >= 2:
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
  else:
    q1 = q3 = ms[0]
  return {
    "median_ms": statistics.median(ms),
    "p25_ms": q1,
    "p75_ms": q3,
    "min_ms": ms[0],
    "n_runs": len(ms),
  }


def paired_ratio(seconds: Sequence[float], reference: Sequence[float]) -> float:
  """Median over rounds of ``seconds[r] / reference[r]``."""
  return statistics.median(a / b for a, b in zip(seconds, reference))


def block(x):
  """``jax.block_until_ready`` (named for use in lambdas)."""
  return jax.block_until_ready(x)


# --------------------------------------------------------------- environment


def _version(module: str) -> str | None:
  try:
    mod = __import__(module)
  except Exception:
    return None
  return getattr(mod, "__version__", None)


def environment() -> dict[str, Any]:
  """Device, CPU, library versions and a UTC timestamp."""
  dev = jax.devices()[0]
  return {
    "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
    "device_count": jax.device_count(),
    "cpu": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(),
    "load_average_1min": (
      os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ),
    "python": platform.python_version(),
    "versions": {
      m: _version(m)
      for m in ("jax", "jaxlib", "flax", "optax", "numpy", "torch")
    },
    "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"
    ),
  }


# ------------------------------------------------------------------- output


def _write_atomic(path: str, text: str) -> None:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=d, prefix=".tmp-", suffix=os.path.basename(path)
  )
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON via a temporary file and ``os.replace``."""
  _write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``text`` via a temporary file and ``os.replace``."""
  _write_atomic(path, text)


def _fmt(v, spec: str) -> str:
  if v is None:
    return "—"
  if isinstance(v, str):
    return v
  return format(v, spec)


def markdown_table(
  rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]
) -> str:
  """A Markdown table; ``columns`` are ``(key, header, format spec)``."""
  head = "| " + " | ".join(h for _, h, _ in columns) + " |"
  rule = "|" + "|".join("---" for _ in columns) + "|"
  lines = [head, rule]
  for r in rows:
    lines.append(
      "| " + " | ".join(_fmt(r.get(k), s) for k, _, s in columns) + " |"
    )
  return "\n".join(lines)
