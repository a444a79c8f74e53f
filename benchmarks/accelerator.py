"""One accelerator check: the device, the quick benchmark set, a main-job slice.

    python -m benchmarks.accelerator --out DIR [--data_dir D] [--steps 500]
    bash benchmarks/accelerator.sh DIR [--skip-install] [...]   # installs first

Checks that JAX sees an accelerator (``--allow-cpu`` runs the same path on
a CPU, as the tests do), runs ``python -m benchmarks.run --quick`` (sections
``regimens``, ``scaling``, ``seeds``; the matmul peak first) into
``DIR/bench.json``, times the engine's seed axis
(:mod:`benchmarks.seed_axis`, vmap vs lax.map vs separate), then trains
the main job's slowest regimen (explicit + implicit, 5 seeds vmapped, the
5000-example setting of ``experiments/configs/compare.py``) for ``--steps``
steps through the engine, and writes everything into ``DIR/accelerator.json``
(atomically): the device, the software versions, every benchmark record,
and the slice's wall time, compile-inclusive first chunk and steady-state
time per step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

import jax

from benchmarks import run as bench_run
from benchmarks import timing


def device_info() -> dict:
  """The default backend and every device JAX sees."""
  devs = jax.devices()
  return {
    "backend": jax.default_backend(),
    "devices": [str(d) for d in devs],
    "device_kind": devs[0].device_kind if devs else None,
    "device_count": len(devs),
  }


def main_job_slice(steps: int, *, data_dir: str | None, smoke: bool) -> dict:
  """The main job's slowest regimen for ``steps`` steps, timed per chunk."""
  from dropjax import train as djtrain
  from experiments import compare
  from experiments.configs import compare as compare_config

  config = compare_config.get_config("smoke" if smoke else "default")
  setting = "n5000"
  config.progress = False
  if data_dir:
    config.data.data_dir = data_dir
  regimen = "explicit_implicit"
  model = compare.Model(config)
  ds = compare.load_setting(config, setting)
  hparams = config[setting].hparams[regimen].to_dict()
  objective = compare.make_objective(
    config, model.apply, model.sites, regimen, hparams
  )
  optimizer = djtrain.make_optimizer(
    config.optimizer, compare.schedule(config, steps)
  )
  chunk = min(int(config.chunk_size), steps)
  marks: list[float] = []
  t0 = time.perf_counter()
  res = djtrain.train(
    model.apply,
    objective,
    optimizer,
    model.init,
    (ds.train.images, ds.train.labels),
    steps=steps,
    batch_size=int(config.batch_size),
    seeds=tuple(int(s) for s in config.seeds),
    chunk_size=chunk,
    progress=False,
    callback=lambda *a, **k: marks.append(time.perf_counter()),
  )
  wall = time.perf_counter() - t0
  first = (marks[0] - t0) if marks else wall
  steady = (
    (marks[-1] - marks[0]) / (chunk * (len(marks) - 1))
    if len(marks) > 1
    else float("nan")
  )
  return {
    "regimen": regimen,
    "setting": setting,
    "model": list(config.model.layer_sizes),
    "seeds": len(config.seeds),
    "batch_size": int(config.batch_size),
    "steps": steps,
    "chunk": chunk,
    "wall_s": wall,
    "first_chunk_s": first,
    "steady_ms_per_step": 1e3 * steady,
    "train_seconds": float(res.train_seconds),
  }


def main(argv: Sequence[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.accelerator", description=__doc__.split("\n")[0]
  )
  ap.add_argument("--out", required=True, help="output directory")
  ap.add_argument(
    "--allow-cpu",
    action="store_true",
    help="run even when JAX sees no accelerator (the CI path)",
  )
  ap.add_argument("--steps", type=int, default=500, help="main-job slice")
  ap.add_argument(
    "--data_dir",
    default="",
    help="Fashion-MNIST IDX directory (default: Debian's)",
  )
  ap.add_argument(
    "--micro",
    action="store_true",
    help="tiny benchmark models and the smoke config (a test run)",
  )
  args = ap.parse_args(argv)
  info = device_info()
  print(f"[accelerator] {info}", file=sys.stderr, flush=True)
  if info["backend"] == "cpu" and not args.allow_cpu:
    raise SystemExit(
      "JAX sees no accelerator (backend 'cpu'): install the jax build that "
      "matches the machine (benchmarks/accelerator.sh does), or pass "
      "--allow-cpu to run the CPU path."
    )
  os.makedirs(args.out, exist_ok=True)
  t0 = time.perf_counter()
  bench_json = os.path.join(args.out, "bench.json")
  bench = bench_run.main(
    [
      "--out",
      bench_json,
      "--micro" if args.micro else "--quick",
      "--sections",
      "regimens",
      "scaling",
      "seeds",
    ]
  )
  bench_s = time.perf_counter() - t0
  print("[accelerator] seed axis", file=sys.stderr, flush=True)
  from benchmarks import seed_axis

  sa_cfg = dict(seed_axis.CONFIGS["micro" if args.micro else "full"])
  sa_cfg["repeats"] = min(sa_cfg["repeats"], 3)
  seed_records = seed_axis.measure(
    sa_cfg, log=lambda m: print(m, file=sys.stderr, flush=True)
  )
  print("[accelerator] main-job slice", file=sys.stderr, flush=True)
  sl = main_job_slice(
    args.steps, data_dir=args.data_dir or None, smoke=args.micro
  )
  result = {
    "device": info,
    "environment": timing.environment(),
    "bench_seconds": bench_s,
    "peak": bench.get("peak"),
    "bench_records": bench["records"],
    "seed_axis_records": seed_records,
    "main_job_slice": sl,
    "total_seconds": time.perf_counter() - t0,
  }
  timing.write_json_atomic(os.path.join(args.out, "accelerator.json"), result)
  print(
    f"[accelerator] {info['device_kind']}: benchmarks {bench_s:.0f} s; "
    f"slice {sl['steps']} steps in {sl['wall_s']:.1f} s "
    f"({sl['steady_ms_per_step']:.2f} ms/step after the first chunk)",
    flush=True,
  )
  return result


if __name__ == "__main__":
  main()
