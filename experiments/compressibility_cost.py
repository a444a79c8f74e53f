"""Measured cost of a compressibility study and the estimate for its default."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from experiments.compressibility_verdicts import (
  PROTOCOL,
  _conditions,
  _get,
  _label,
  _table,
)

# The default config's size (experiments/configs/compressibility.py).
DEFAULT_TARGET = dict(
  n_train=60000,
  batch_size=128,
  epochs=20,
  prune_epochs=20,
  seeds=3,
  n_shuffles=50,
  n_jobs=2,
  cores=2,
  conditions=(
    "control",
    "dropout",
    "explicit_implicit",
    "explicit",
    "l1",
    "l2",
    "targeted_weight",
    "targeted_unit",
  ),
)


def _steady(chunks: Sequence[dict]) -> tuple[float, float, float]:
  """``(wall, cpu, compile)`` seconds: per step from the chunks after the
  first (which includes compilation), and the first chunk's excess."""
  if not chunks:
    return float("nan"), float("nan"), float("nan")
  rest = chunks[1:] if len(chunks) > 1 else chunks
  steps = sum(c["steps"] for c in rest)
  wall = sum(c["seconds"] for c in rest) / steps
  cpu = sum(c["cpu_seconds"] for c in rest) / steps
  first = chunks[0]
  return wall, cpu, max(0.0, first["seconds"] - wall * first["steps"])


def _clustering_cpu(recs: Sequence[dict], stage: str) -> float:
  """Mean CPU seconds of one clustering (a net or one shuffle) of a stage."""
  per = []
  for r in recs:
    c = _get(r, stage, "clusterability")
    if not c or "cpu_seconds" not in c:
      continue
    n = c["n_shuffles"] + 1
    if c.get("n_jobs", 1) == 1:
      per.append(c["cpu_seconds"] / n)
    else:  # workers' CPU is not counted: assume they were busy throughout
      per.append(c["seconds"] * min(c["n_jobs"], 2) / n)
  return float(np.mean(per)) if per else float("nan")


def cost(results: dict) -> dict:
  """Measured costs per condition and their extrapolation to the default
  config (:data:`DEFAULT_TARGET`) on an idle machine.

  Per condition (from its first finished record): the steady per-step wall
  and CPU time of both phases (all of the run's seeds at once), the
  compilation overhead, and the seed-group size. Clustering and prune
  curves: CPU seconds per clustering and per seed's pair of curves.

  The estimate assumes CPU time scales linearly with the number of vmapped
  seeds, that each phase-1/phase-2 step costs its measured CPU time in wall
  time (an idle machine may do better, down to half, if XLA spreads a step
  over both cores: ``lower_hours``), and that clustering runs ``n_jobs``
  shuffles in parallel on ``cores`` cores.
  """
  recs = [r for r in results["records"] if r["status"] == "ok"]
  per = {}
  for cond in _conditions(results):
    rs = [r for r in recs if r["condition"] == cond]
    if not rs:
      continue
    t = rs[0]["timing"]
    w1, c1, k1 = _steady(t.get("phase1_chunks", []))
    w2, c2, k2 = _steady(t.get("phase2_chunks", []))
    curves = [r["timing"].get("unpruned_prune_curves_cpu_seconds") for r in rs]
    curves = [c for c in curves if c is not None]
    per[cond] = {
      "regimen": rs[0].get("spec", {}).get("regimen"),
      "group": t.get("phase1_group_size", len(rs)),
      "phase1_step_wall": w1,
      "phase1_step_cpu": c1,
      "phase1_compile": k1,
      "phase2_step_wall": w2,
      "phase2_step_cpu": c2,
      "phase2_compile": k2,
      "cluster_cpu_unpruned": _clustering_cpu(rs, "unpruned"),
      "cluster_cpu_pruned": _clustering_cpu(rs, "pruned"),
      "curves_cpu": float(np.mean(curves)) if curves else float("nan"),
    }
  est = None
  cfg = results["config"]
  comparable = (
    list(cfg["model"]["layer_sizes"]) == PROTOCOL["model.layer_sizes"]
    and cfg["batch_size"] == DEFAULT_TARGET["batch_size"]
  )
  if per and comparable:
    tg = DEFAULT_TARGET
    spe = tg["n_train"] // tg["batch_size"]
    mean = lambda k: float(np.nanmean([p[k] for p in per.values()]))
    train = compile_ = clus = curves = 0.0
    by_reg = {p["regimen"]: p for p in per.values()}
    spec = results["config"].get("condition_specs", {})
    for cond in tg["conditions"]:
      reg = spec.get(cond, {}).get("regimen", cond)
      p = per.get(cond) or by_reg.get(reg)
      g = lambda k: p[k] if p is not None and np.isfinite(p[k]) else mean(k)
      scale = tg["seeds"] / (p["group"] if p is not None else mean("group"))
      train += (
        spe
        * (
          tg["epochs"] * g("phase1_step_cpu")
          + tg["prune_epochs"] * g("phase2_step_cpu")
        )
        * scale
      )
      compile_ += g("phase1_compile") + g("phase2_compile")
      clus += (
        tg["seeds"]
        * (tg["n_shuffles"] + 1)
        * (g("cluster_cpu_unpruned") + g("cluster_cpu_pruned"))
      )
      curves += tg["seeds"] * g("curves_cpu")
    par = min(tg["n_jobs"], tg["cores"])
    hours = (train + compile_ + clus / par + curves) / 3600
    est = {
      "train_hours": train / 3600,
      "compile_hours": compile_ / 3600,
      "cluster_cpu_hours": clus / 3600,
      "cluster_wall_hours": clus / par / 3600,
      "curves_hours": curves / 3600,
      "hours": hours,
      "lower_hours": (train / tg["cores"] + compile_ + clus / par + curves)
      / 3600,
      "target": dict(tg, conditions=list(tg["conditions"])),
    }
  return {"per_condition": per, "estimate": est}


def _cost_lines(results: dict) -> list[str]:
  c = cost(results)
  if not c["per_condition"]:
    return []
  env = results.get("versions", {})
  lines = [
    "## 7. Cost",
    "",
    "Measured in this run (steady state, compilation excluded; one "
    "step trains all the run's seeds at once). Load average at the "
    f"end of the run: {env.get('loadavg', '?')} on "
    f"{env.get('cpu_count', '?')} CPUs.",
    "",
  ]
  rows = []
  for cond, p in c["per_condition"].items():
    ms = lambda v: f"{1000 * v:.1f}" if np.isfinite(v) else "—"
    sec = lambda v: f"{v:.2f}" if np.isfinite(v) else "—"
    rows.append(
      [
        _label(results, cond),
        p["group"],
        f"{ms(p['phase1_step_wall'])} / {ms(p['phase1_step_cpu'])}",
        f"{ms(p['phase2_step_wall'])} / {ms(p['phase2_step_cpu'])}",
        f"{sec(p['phase1_compile'])} / {sec(p['phase2_compile'])}",
        f"{sec(p['cluster_cpu_unpruned'])} / {sec(p['cluster_cpu_pruned'])}",
        sec(p["curves_cpu"]),
      ]
    )
  lines += _table(
    [
      "condition",
      "seeds per step",
      "phase-1 step ms (wall / CPU)",
      "phase-2 step ms (wall / CPU)",
      "compile s (phase 1 / 2)",
      "CPU s per clustering (unpruned / pruned)",
      "CPU s per seed's curves",
    ],
    rows,
  )
  e = c["estimate"]
  if e is None:
    return lines + [
      "",
      "No estimate for the default config: this run used "
      "another architecture or batch size.",
      "",
    ]
  tg = e["target"]
  lines += [
    "",
    f"**Estimate for the default config** ({len(tg['conditions'])}"
    f" conditions x {tg['seeds']} seeds, {tg['epochs']} + "
    f"{tg['prune_epochs']} epochs of {tg['n_train'] // tg['batch_size']}"
    f" steps, {tg['n_shuffles']} shuffles, n_jobs {tg['n_jobs']} on "
    f"{tg['cores']} idle cores): about **{e['hours']:.1f} h** "
    f"(training {e['train_hours']:.2f} h + compilation "
    f"{e['compile_hours']:.2f} h + clustering "
    f"{e['cluster_wall_hours']:.2f} h wall = "
    f"{e['cluster_cpu_hours']:.2f} CPU-h + prune curves "
    f"{e['curves_hours']:.2f} h); {e['lower_hours']:.1f} h if XLA "
    "spreads each training step over both cores. Each step is "
    "costed at its measured CPU time (a machine shared with other "
    "jobs is slower in wall time).",
    "",
  ]
  return lines
