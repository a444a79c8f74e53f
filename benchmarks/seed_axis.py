"""The engine's seed axis: ``vmap`` vs ``lax.map`` vs separate programs.

Usage::

    python -m benchmarks.seed_axis --out seed_axis.json [--micro]

Trains the main job's network (``experiments/configs/compare.py``: MLP
784-256-256-256-256-10, batch 128, Adam; or with ``--config wide`` the
benchmarks' 784-1024-1024-10) on random data with
:func:`dropjax.train.train` for S seeds three ways, timed side by side in
interleaved rounds (:func:`benchmarks.timing.time_interleaved`):

* ``vmap``: one program, the seeds' steps batched (``seed_axis="vmap"``);
* ``map``: one program, the seeds' steps one after another inside the
  scanned chunk (``seed_axis="map"``, ``jax.lax.map``);
* ``separate``: S calls of :func:`~dropjax.train.train` with one seed each
  (one compiled program shared by every seed).

A round's time is the engine's own ``train_seconds`` (the jitted chunks
only: no initialisation, evaluation or host bookkeeping), summed over the
S calls for ``separate``. Compile time is the first call's wall time minus
a warm call's. The ratios are paired per round, against ``separate``.
Writes ``--out`` (JSON) and the same path with ``.md``, both atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import jax
import numpy as np

from benchmarks import timing
from dropjax import models, objectives
from dropjax import train as djtrain

CONFIGS = {
  "full": dict(
    layer_sizes=(784, 256, 256, 256, 256, 10),
    batch=128,
    n=5000,
    steps=200,
    chunk=100,
    seed_counts=(2, 5),
    regimens=("dropout", "explicit_implicit"),
    repeats=5,
  ),
  # The benchmarks' wide MLP (benchmarks/run.py), where single steps
  # measured vmap slower than sequential.
  "wide": dict(
    layer_sizes=(784, 1024, 1024, 10),
    batch=128,
    n=5000,
    steps=50,
    chunk=50,
    seed_counts=(2,),
    regimens=("dropout", "explicit_implicit"),
    repeats=3,
  ),
  "micro": dict(
    layer_sizes=(20, 16, 16, 10),
    batch=8,
    n=64,
    steps=4,
    chunk=2,
    seed_counts=(2,),
    regimens=("dropout",),
    repeats=2,
  ),
}

MODES = ("vmap", "map", "separate")


def _objective(regimen: str, apply, sites):
  rates = {s: 0.5 for s in sites}
  if regimen == "dropout":
    return objectives.dropout(apply, rates=rates)
  if regimen == "explicit_implicit":
    return objectives.explicit_implicit(apply, rates=rates)
  if regimen == "none":
    return objectives.none(apply)
  raise ValueError(f"unknown regimen {regimen!r} for this benchmark.")


def _runner(mode, *, apply, objective, opt, init, data, cfg, seeds):
  """``() -> seconds`` of the jitted chunks of one training run."""

  def run(ss, axis):
    res = djtrain.train(
      apply,
      objective,
      opt,
      init,
      data,
      steps=cfg["steps"],
      batch_size=cfg["batch"],
      seeds=ss,
      chunk_size=cfg["chunk"],
      seed_axis=axis,
      progress=False,
    )
    jax.block_until_ready(res.state)
    return float(res.train_seconds), res

  if mode == "separate":
    return lambda: sum(run((s,), "map")[0] for s in seeds)
  return lambda: run(tuple(seeds), mode)[0]


def measure(cfg: dict, *, log=print) -> list[dict]:
  """One record per (regimen, S, mode)."""
  sizes = tuple(cfg["layer_sizes"])
  apply, _, site_rates = models.make_model("mlp", layer_sizes=sizes)
  init = models.make_init("mlp", layer_sizes=sizes)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(cfg["n"], sizes[0])).astype(np.float32)
  y = rng.integers(0, sizes[-1], cfg["n"]).astype(np.int32)
  opt = djtrain.make_optimizer("adam", 1e-3)
  records = []
  for regimen in cfg["regimens"]:
    obj = _objective(regimen, apply, tuple(site_rates))
    for s in cfg["seed_counts"]:
      seeds = tuple(range(s))
      calls, compile_s = {}, {}
      for mode in MODES:
        fn = _runner(
          mode,
          apply=apply,
          objective=obj,
          opt=opt,
          init=init,
          data=(x, y),
          cfg=cfg,
          seeds=seeds,
        )
        t0 = time.perf_counter()
        fn()  # compiles
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn()
        compile_s[mode] = max(first - (time.perf_counter() - t0), 0.0)
        calls[mode] = fn
      log(f"[seed_axis] {regimen}, S = {s}")
      # train_seconds, not the wall time of the call: time each round by
      # what the engine reports.
      times = {m: [] for m in MODES}
      for r in range(cfg["repeats"]):
        order = MODES[r % 3 :] + MODES[: r % 3]
        for m in order:
          times[m].append(calls[m]())
      for m in MODES:
        summ = timing.summary(times[m])
        records.append(
          dict(
            experiment="seed_axis",
            model="mlp-" + "-".join(map(str, sizes)),
            regimen=regimen,
            seeds=s,
            mode=m,
            steps=cfg["steps"],
            batch=cfg["batch"],
            **summ,
            ms_per_step=summ["median_ms"] / cfg["steps"],
            ratio_to_separate=timing.paired_ratio(times[m], times["separate"]),
            compile_s=compile_s[m],
          )
        )
  return records


def render_markdown(result: dict) -> str:
  env = result["environment"]
  head = [
    "# Seed axis: vmap vs lax.map vs separate programs",
    "",
    f"- device: {env['device']} ({env['cpu_count']} CPU cores), load "
    f"average at start {env['load_average_1min']}",
    f"- command: `{result['command']}`",
    "- time: the engine's train_seconds of one run of "
    f"{result['config']['steps']} steps (S runs for 'separate'); median of "
    "interleaved rounds; ratios paired per round.",
    "",
  ]
  table = timing.markdown_table(
    result["records"],
    [
      ("regimen", "regimen", ""),
      ("seeds", "S", "d"),
      ("mode", "seed axis", ""),
      ("median_ms", f"ms per {result['config']['steps']} steps", ".0f"),
      ("ms_per_step", "ms per step (all seeds)", ".2f"),
      ("ratio_to_separate", "time / separate", ".2f"),
      ("compile_s", "compile s", ".1f"),
    ],
  )
  return "\n".join(head) + "\n" + table + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.seed_axis",
    description="Time the training engine's seed axis: vmap, lax.map and "
    "separate programs.",
  )
  ap.add_argument("--out", required=True, help="JSON output path (.md beside)")
  ap.add_argument(
    "--config",
    choices=sorted(CONFIGS),
    default="full",
    help="full: the main job's MLP 784-256x4-10; wide: the benchmarks' "
    "784-1024-1024-10; micro: a tiny smoke run",
  )
  ap.add_argument("--micro", action="store_true", help="= --config micro")
  ap.add_argument("--repeats", type=int, default=None)
  args = ap.parse_args(argv)
  name = "micro" if args.micro else args.config
  cfg = dict(CONFIGS[name])
  if args.repeats:
    cfg["repeats"] = args.repeats
  t0 = time.perf_counter()
  env = timing.environment()
  records = measure(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
  result = {
    "config_name": name,
    "command": "python -m benchmarks.seed_axis "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "environment": env,
    "default_seed_axis": djtrain.resolve_seed_axis("auto"),
    "config": {
      k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
    },
    "wall_s": time.perf_counter() - t0,
    "records": records,
  }
  md = render_markdown(result)
  timing.write_json_atomic(args.out, result)
  timing.write_text_atomic(args.out.rsplit(".", 1)[0] + ".md", md)
  print(md)
  return result


if __name__ == "__main__":
  main()
