"""The machine's ceiling: sustained FLOP/s of a large float32 matmul.

Usage::

    python -m benchmarks.peak [--out peak.json] [--micro]

``measure()`` times ``jax.jit(lambda a, b: a @ b)`` on square float32
matrices of a few sizes (every call ends with ``block_until_ready``; warm-up
calls first; the median of the timed calls) and takes the best size as the
*peak*: ``2 n^3 / median seconds``. This is the number every benchmark
record's ``fraction_of_peak`` divides by. For reference it also times
numpy's matmul (the BLAS numpy was built with, named from
``numpy.show_config``), and both again on one core, in a subprocess pinned
to one CPU with ``sched_setaffinity`` (XLA's single-thread flags do not stop
its CPU client from using every core; see :func:`_one_core`).
The environment variables that steer OpenBLAS on these machines
(``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``, ``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS``) are recorded as found.

On a GPU the same program measures the accelerator's matmul peak at JAX's
default float32 matmul precision (on NVIDIA GPUs since Ampere that lets XLA
use TF32 tensor cores; ``precision`` is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing

SIZES = (1024, 2048, 4096)
"""Square matmul sizes tried; the best sustained rate is the peak."""

ENV_VARS = (
  "OPENBLAS_CORETYPE",
  "OPENBLAS_L2_SIZE",
  "OPENBLAS_NUM_THREADS",
  "OMP_NUM_THREADS",
  "MKL_NUM_THREADS",
  "XLA_FLAGS",
)


def _repeats_for(n: int, micro: bool) -> int:
  if micro:
    return 2
  return {1024: 20, 2048: 8, 4096: 4}.get(n, 5)


def blas_name() -> str | None:
  """The BLAS numpy was built with (``numpy.show_config``), if it says."""
  try:
    cfg = np.show_config(mode="dicts")
    blas = cfg.get("Build Dependencies", {}).get("blas", {})
    name = blas.get("name")
    version = blas.get("version")
    return f"{name} {version}".strip() if name else None
  except Exception:  # older numpy: no dicts mode
    return None


def matmul_rates(
  sizes: Sequence[int] = SIZES, *, micro: bool = False, numpy: bool = True
) -> list[dict]:
  """FLOP/s of an ``[n, n] @ [n, n]`` float32 matmul per size and library.

  Returns:
    One record per (library, n): ``library`` (``"xla"`` or ``"numpy"``),
    ``n``, ``median_s``, ``flops`` (``2 n^3``) and ``flops_per_s``.
  """
  out = []
  rng = np.random.default_rng(0)
  mm = jax.jit(lambda a, b: a @ b)
  for n in sizes:
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    reps = _repeats_for(n, micro)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    t = timing.median_seconds(
      lambda: mm(ja, jb).block_until_ready(), repeats=reps, warmup=2
    )
    out.append(
      dict(library="xla", n=n, median_s=t, flops=flops, flops_per_s=flops / t)
    )
    if numpy:
      t = timing.median_seconds(lambda: a @ b, repeats=reps, warmup=2)
      out.append(
        dict(
          library="numpy", n=n, median_s=t, flops=flops, flops_per_s=flops / t
        )
      )
  return out


def _best(records, library):
  recs = [r for r in records if r["library"] == library]
  return max(recs, key=lambda r: r["flops_per_s"]) if recs else None


def _one_core(micro: bool) -> dict:
  """The same measurement on one core, in a fresh subprocess pinned to one
  CPU (``sched_setaffinity``).

  Pinning is what limits XLA: its CPU client ran a 2048 matmul on both
  cores of this machine (process CPU time / wall time 1.96) even with
  ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``.
  The thread-count variables are set as well, for numpy's BLAS.
  """
  env = dict(os.environ)
  env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"
  env["MKL_NUM_THREADS"] = "1"
  if not hasattr(os, "sched_setaffinity"):
    return {"records": [], "error": "no sched_setaffinity on this platform"}
  cpu = min(os.sched_getaffinity(0))
  # The child pins itself before it imports JAX (no preexec_fn: forking a
  # process that runs JAX's threads is unsafe).
  code = (
    f"import os, runpy, sys; os.sched_setaffinity(0, {{{cpu}}}); "
    "sys.argv = ['benchmarks.peak', '--rates-only'] + sys.argv[1:]; "
    "runpy.run_module('benchmarks.peak', run_name='__main__')"
  )
  cmd = [sys.executable, "-c", code] + (["--micro"] if micro else [])
  try:
    p = subprocess.run(
      cmd, env=env, capture_output=True, text=True, timeout=900, check=True
    )
    return {"records": json.loads(p.stdout), "cpu": cpu}
  except (subprocess.SubprocessError, ValueError) as e:
    return {"records": [], "error": f"{type(e).__name__}: {e}"[-500:]}


def measure(*, micro: bool = False, one_core: bool = True) -> dict:
  """The peak and how it was obtained.

  Returns:
    ``{"peak_flops_per_s", "peak_how", "device", "precision", "sizes",
    "records", "numpy_blas", "env", "one_core"}``; ``peak_flops_per_s`` is
    the best XLA rate over :data:`SIZES` on this process's devices and
    threads. On CPU, ``one_core`` has the single-thread rates (XLA and
    numpy) with their own best. ``micro`` measures small sizes only (a
    smoke test; not a peak).
  """
  sizes = (128, 256) if micro else SIZES
  dev = jax.devices()[0]
  records = matmul_rates(sizes, micro=micro, numpy=dev.platform == "cpu")
  best = _best(records, "xla")
  out = {
    "peak_flops_per_s": best["flops_per_s"],
    "peak_how": (
      f"jax.jit(a @ b), float32 [{best['n']}, {best['n']}] @ "
      f"[{best['n']}, {best['n']}] (best of n in {list(sizes)}), "
      "median after warm-up, 2 n^3 FLOPs, block_until_ready"
    ),
    "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
    "precision": str(jax.config.jax_default_matmul_precision or "default"),
    "sizes": list(sizes),
    "records": records,
    "numpy_blas": blas_name(),
    "env": {k: os.environ.get(k) for k in ENV_VARS},
  }
  nb = _best(records, "numpy")
  if nb is not None:
    out["numpy_flops_per_s"] = nb["flops_per_s"]
  if one_core and dev.platform == "cpu":
    oc = _one_core(micro)
    for lib in ("xla", "numpy"):
      b = _best(oc["records"], lib)
      if b is not None:
        oc[f"{lib}_flops_per_s"] = b["flops_per_s"]
    out["one_core"] = oc
  return out


def with_fraction(record: dict, peak_flops_per_s: float | None) -> dict:
  """Adds ``achieved_flops_per_s`` (XLA's FLOP count over the median time)
  and ``fraction_of_peak`` to a step record that has ``flops`` (or
  ``flops_per_call``, where the timed call runs more than the compiled
  step's FLOPs, or another framework's step of the same math) and
  ``median_ms``; leaves them ``None`` where either is missing."""
  f = record.get("flops_per_call") or record.get("flops")
  ms = record.get("median_ms")
  ach = f / (ms / 1e3) if f and ms else None
  record["achieved_flops_per_s"] = ach
  record["fraction_of_peak"] = (
    ach / peak_flops_per_s if ach and peak_flops_per_s else None
  )
  return record


def render_markdown(peak: dict) -> str:
  g = 1e9
  lines = [
    f"Peak: **{peak['peak_flops_per_s'] / g:.1f} GFLOP/s** "
    f"({peak['device']}; {peak['peak_how']}).",
    "",
    "| library | threads | n | GFLOP/s |",
    "|---|---|---|---|",
  ]
  for r in peak["records"]:
    lines.append(
      f"| {r['library']} | all | {r['n']} | {r['flops_per_s'] / g:.1f} |"
    )
  for r in peak.get("one_core", {}).get("records", []):
    lines.append(
      f"| {r['library']} | 1 | {r['n']} | {r['flops_per_s'] / g:.1f} |"
    )
  oc = peak.get("one_core", {})
  if oc.get("error"):
    lines.append(f"\none core: not measured ({oc['error']})")
  lines += [
    "",
    f"numpy BLAS: {peak.get('numpy_blas')}; environment: "
    + ", ".join(f"{k}={v}" for k, v in peak["env"].items() if v is not None)
    + ("" if any(v is not None for v in peak["env"].values()) else "none set"),
  ]
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict | list:
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.peak",
    description="Measure the sustained float32 matmul FLOP/s of this machine "
    "through XLA (and numpy's BLAS), on all cores and on one.",
  )
  ap.add_argument("--out", help="JSON output path (.md beside it)")
  ap.add_argument("--micro", action="store_true", help="small sizes (smoke)")
  ap.add_argument("--rates-only", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.rates_only:  # the one-core subprocess
    recs = matmul_rates((128, 256) if args.micro else SIZES, micro=args.micro)
    print(json.dumps(recs))
    return recs
  peak = measure(micro=args.micro)
  peak["environment"] = timing.environment()
  if args.out:
    timing.write_json_atomic(args.out, peak)
    timing.write_text_atomic(
      os.path.splitext(args.out)[0] + ".md", render_markdown(peak)
    )
  print(render_markdown(peak))
  return peak


if __name__ == "__main__":
  main()
