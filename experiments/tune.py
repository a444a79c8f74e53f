r"""Tuning: every regimen's grid on the validation split, the same budget each.

    python -m experiments.tune --workdir DIR [--config FILE] [--config.KEY=VALUE ...]

For every setting of the config (``experiments/configs/tune.py``: the main
job's training-set sizes, model, optimizer and schedule) and every regimen,
trains every point of the regimen's grid on the tuning seeds and records the
best validation accuracy and loss of each seed (the selection the main job
uses). The chosen point of a (setting, regimen) is the one with the highest
mean best-validation accuracy over the seeds (ties: the first in grid
order). The test split is never evaluated here.

The grid points are run one after the other, each a ``vmap`` over the
seeds. Rates and scales may be traced, so a grid axis could be a ``vmap``
axis too; ``python -m benchmarks.sweep`` measured it on this model on the
2-core CPU: 0.87-1.02x the per-step time of separate programs (dropout,
G = 2-12; explicit + implicit 0.96-1.00x) and about 0.8 s of compilation
saved per point, at most ~3 of this run's 23 minutes
(``docs/benchmarks.md``). Not worth a second batch axis in the engine here.

Writes into ``DIR``: ``results.json`` (every point's per-seed records and the
chosen values), ``report.md`` (the validation surface per setting and
regimen, the chosen values, and whether the unregularized net overfits),
``validation_surface.png``, and ``runs/<setting>/<regimen>/<point>/``
(metrics and checkpoints; re-running resumes).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time

import numpy as np

from dropjax import train as djtrain
from experiments import compare
from experiments import harness
from experiments import tune_report

RESULTS_FILE = "results.json"
VOLATILE_KEYS = ("regimens", "settings", "progress")


def grid_points(config, regimen: str) -> list[dict]:
  """The grid of one regimen as a list of ``{hparam: value}`` (product order).

  Raises:
    ValueError: a regimen without a grid, or a grid whose axes are not the
      regimen's hyperparameters (named, with the config key).
  """
  if regimen not in config.grid:
    raise ValueError(
      f"regimen {regimen!r} has no grid: set --config.grid.{regimen}."
    )
  axes = config.grid[regimen].to_dict()
  want = set(compare.hparam_keys(regimen) or ())
  if set(axes) != want:
    raise ValueError(
      f"the grid of {regimen!r} must have the axes {sorted(want)}, got "
      f"{sorted(axes)} (--config.grid.{regimen})."
    )
  names = sorted(axes)
  values = [tuple(axes[k]) for k in names]
  if any(len(v) == 0 for v in values):
    raise ValueError(f"--config.grid.{regimen} has an empty axis.")
  return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def point_name(hparams: dict) -> str:
  """``"rate=0.3"``, ``"explicit_scale=1,implicit_scale=0.5"``, ``"default"``."""
  if not hparams:
    return "default"
  return ",".join(f"{k}={hparams[k]:g}" for k in sorted(hparams))


def choose(records: list[dict], metric: str = "accuracy") -> dict:
  """The chosen point per (setting, regimen) from per-seed records.

  Returns:
    ``{setting: {regimen: {"hparams", "point", "mean", "points": [...]}}}``
    with, for every point in first-seen order, the mean and SD over seeds of
    the best validation ``metric``; the chosen point maximises the mean
    accuracy (or minimises the loss).
  """
  by_key: dict = {}
  for r in records:
    key = (r["setting"], r["regimen"])
    pts = by_key.setdefault(key, {})
    pts.setdefault(r["point"], {"hparams": r["hparams"], "values": []})
    pts[r["point"]]["values"].append(r["best"]["validation"][metric])
  out: dict = {}
  sign = 1.0 if metric == "accuracy" else -1.0
  for (setting, regimen), pts in by_key.items():
    table = []
    for name, p in pts.items():
      v = np.asarray(p["values"], float)
      table.append(
        {
          "point": name,
          "hparams": p["hparams"],
          "mean": float(v.mean()),
          "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
          "n": int(v.size),
        }
      )
    best = max(table, key=lambda t: sign * t["mean"])  # first max wins
    out.setdefault(setting, {})[regimen] = {
      "point": best["point"],
      "hparams": best["hparams"],
      "mean": best["mean"],
      "points": table,
    }
  return out


def _load(path):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"records": [], "failures": []}


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the whole grid; returns the results dict.

  Raises:
    harness.ConfigError: a bad grid or setting (named config key), missing
      or corrupt data, or labels outside the model's outputs, before
      anything is written.
    harness.ConfigMismatchError: ``workdir`` holds another config's results.
  """
  plan = []
  with harness.config_errors():
    model = compare.Model(config)
    for setting in config.settings:
      compare.setting_config(config, setting)
      for regimen in config.regimens:
        for hp in grid_points(config, regimen):
          compare.check_hparams(regimen, hp)
          plan.append((setting, regimen, hp))
    datasets = {s: compare.load_checked(config, s) for s in config.settings}
  os.makedirs(workdir, exist_ok=True)
  harness.check_config(workdir, config, VOLATILE_KEYS)
  path = os.path.join(workdir, RESULTS_FILE)
  results = _load(path)
  results["config"] = config.to_dict()
  done = {(r["setting"], r["regimen"], r["point"]) for r in results["records"]}
  t0 = time.time()
  for i, (setting, regimen, hp) in enumerate(plan):
    name = point_name(hp)
    if (setting, regimen, name) in done:
      continue
    ds = datasets[setting]
    print(f"[tune] {i + 1}/{len(plan)} {setting}/{regimen} {name}", flush=True)
    try:
      records, _ = compare.train_point(
        config,
        model,
        ds,
        setting,
        regimen,
        hp,
        seeds=config.seeds,
        run_dir=os.path.join(workdir, "runs", setting, regimen, name),
        run_name=f"{setting}/{regimen}/{name}",
        evaluate_test=False,
      )
    except djtrain.NonFiniteLossError as err:
      print(f"[tune] {err}", file=sys.stderr)
      results["failures"].append(
        {
          "setting": setting,
          "regimen": regimen,
          "point": name,
          "error": str(err),
        }
      )
      djtrain.write_json_atomic(path, results)
      continue
    for r in records:
      r["point"] = name
    results["records"].extend(records)
    djtrain.write_json_atomic(path, results)
  results["chosen"] = choose(results["records"], str(config.select_metric))
  results["wall_seconds"] = results.get("wall_seconds", 0.0) + (
    time.time() - t0
  )
  results["versions"] = harness.software_versions()
  djtrain.write_json_atomic(path, results)
  tune_report.write_report(results, workdir)
  return results


def _print_done(config, workdir, results):
  del config
  print(f"[tune] wrote {os.path.join(workdir, 'report.md')}")
  print("[tune] chosen values (paste into experiments/configs/compare.py):")
  print(tune_report.tuned_snippet(results["chosen"]))


if __name__ == "__main__":
  harness.main(
    run,
    config=harness.config_path("tune"),
    name="tune",
    after=_print_done,
  )
