r"""The main job: dropout, DROPOUT_k and the analytic regularizers on real data.

    python -m experiments.compare --workdir DIR [--config FILE] [--config.KEY=VALUE ...]

Trains every regimen of the config (``experiments/configs/compare.py`` by
default) for every seed, in every setting (the full training set and a small
subset), and writes into ``DIR``:

* ``results.json`` -- one record per (setting, regimen, seed): test accuracy
  and loss, training-subset accuracy and loss (for the train–test gap), final
  training loss, the validation curve; plus failed runs, the config and the
  wall time. Rewritten atomically after every finished run.
* ``report.md`` -- mean ± std over seeds per regimen and setting, and a
  paragraph computed from those numbers.
* ``learning_curves.png``, ``test_accuracy.png``.
* ``runs/<setting>/<regimen>/`` -- each run's ``metrics.jsonl`` and orbax
  checkpoints. Re-running the same command resumes: finished runs are skipped,
  an interrupted one continues from its last checkpoint.

A run whose loss becomes NaN/inf stops with a message naming the regimen,
seed and step; it is recorded under ``failures`` and the other runs go on.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import dropjax
from dropjax import data as djdata
from dropjax import models
from dropjax import train as djtrain
from experiments import compare_report
from experiments import harness

RESULTS_FILE = "results.json"
# Keys that may change between runs in one work directory: the lists of
# regimens and settings (each (setting, regimen) is one run with its own
# records, independent of the others) and the progress bar. The seeds are
# not: they are trained together in one vmapped run per (setting, regimen),
# so a finished run holds the records of the old seed list.
VOLATILE_KEYS = ("regimens", "settings", "progress")


def load_setting(config, setting: str) -> djdata.ImageDataset:
  sc = config[setting]
  return djdata.load_dataset(
    config.data.source,
    data_dir=config.data.data_dir or None,
    validation_size=config.data.validation_size,
    train_size=int(sc.train_size) or None,
    seed=config.data.split_seed,
  )


def _records_for(
  history: list[dict], seeds, setting, regimen, result_secs, steps
) -> list[dict]:
  """Per-seed result records from a run's evaluation history."""
  final = history[-1]
  out = []
  for i, seed in enumerate(seeds):
    curve = [
      {
        "step": r["step"],
        "epoch": r["epoch"],
        "validation_accuracy": r["eval"]["validation"]["accuracy"][i],
        "validation_loss": r["eval"]["validation"]["loss"][i],
        "train_loss": r["train"]["loss"][i],
      }
      for r in history
    ]
    out.append(
      {
        "setting": setting,
        "regimen": regimen,
        "seed": int(seed),
        "steps": int(steps),
        "test_accuracy": final["eval"]["test"]["accuracy"][i],
        "test_loss": final["eval"]["test"]["loss"][i],
        "validation_accuracy": final["eval"]["validation"]["accuracy"][i],
        "train_eval_accuracy": final["eval"]["train"]["accuracy"][i],
        "train_eval_loss": final["eval"]["train"]["loss"][i],
        "final_train_loss": final["train"]["loss"][i],
        "final_data_loss": final["train"].get("data_loss", [None] * len(seeds))[
          i
        ],
        "train_seconds": result_secs,
        "validation_curve": curve,
      }
    )
  return out


def _load_results(path: str) -> dict:
  if os.path.exists(path):
    import json

    with open(path) as f:
      return json.load(f)
  return {"records": [], "failures": []}


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the whole comparison; returns the results dict.

  Raises:
    harness.ConfigMismatchError: ``workdir`` holds results of a config that
      differs in a key outside :data:`VOLATILE_KEYS`.
  """
  os.makedirs(workdir, exist_ok=True)
  harness.check_config(workdir, config, VOLATILE_KEYS)
  path = os.path.join(workdir, RESULTS_FILE)
  results = _load_results(path)
  results["config"] = config.to_dict()
  done = {(r["setting"], r["regimen"]) for r in results["records"]}
  results["failures"] = [
    f
    for f in results.get("failures", [])
    if (f["setting"], f["regimen"]) not in done
  ]
  t0 = time.time()
  layer_sizes = tuple(config.model.layer_sizes)
  apply, _, site_rates = models.make_model(
    config.model.name, layer_sizes=layer_sizes
  )
  init = models.make_init(config.model.name, layer_sizes=layer_sizes)
  rates = {site: float(config.rate) for site in site_rates}
  optimizer = djtrain.make_optimizer(config.optimizer, config.learning_rate)
  seeds = tuple(int(s) for s in config.seeds)
  devices = int(config.devices) or None

  # One objective per regimen, shared by the settings: the trainer caches its
  # compiled chunk on the objective, so equal-sized settings compile once.
  objectives = {
    r: dropjax.objectives.from_config(r, apply, config, rates=rates)
    for r in config.regimens
  }

  for setting in config.settings:
    if setting not in config:
      raise ValueError(
        f"setting {setting!r} has no config block (config.{setting})."
      )
    ds = load_setting(config, setting)
    tr = ds.train
    for split, labels in (
      ("training", tr.labels),
      ("validation", ds.validation.labels),
      ("test", ds.test.labels),
    ):
      try:
        dropjax.losses.check_labels(
          labels,
          layer_sizes[-1],
          what=f"the {split} labels of {config.data.source!r}",
        )
      except ValueError as e:
        raise ValueError(
          f"{e} Fix the data, or the model's output size (the last entry "
          "of --config.model.layer_sizes)."
        ) from None
    n_eval = min(int(config.data.train_eval_size), len(tr))
    eval_data = {
      "validation": (ds.validation.images, ds.validation.labels),
      "test": (ds.test.images, ds.test.labels),
      "train": (tr.images[:n_eval], tr.labels[:n_eval]),
    }
    for regimen in config.regimens:
      if (setting, regimen) in done:
        print(f"[compare] {setting}/{regimen}: finished earlier, skipped.")
        continue
      objective = objectives[regimen]
      run_dir = os.path.join(workdir, "runs", setting, regimen)
      try:
        res = djtrain.train(
          apply,
          objective,
          optimizer,
          init,
          (tr.images, tr.labels),
          steps=int(config[setting].steps),
          batch_size=config.batch_size,
          seeds=seeds,
          chunk_size=config.chunk_size,
          eval_data=eval_data,
          eval_every=int(config[setting].eval_every),
          run_dir=run_dir,
          run_name=f"{setting}/{regimen}",
          devices=devices,
          progress=config.progress,
        )
      except djtrain.NonFiniteLossError as err:
        print(f"[compare] {err}", file=sys.stderr)
        results["failures"].append(
          {"setting": setting, "regimen": regimen, "error": str(err)}
        )
        djtrain.write_json_atomic(path, results)
        continue
      results["records"].extend(
        _records_for(
          res.history,
          res.seeds,
          setting,
          regimen,
          res.train_seconds,
          config[setting].steps,
        )
      )
      djtrain.write_json_atomic(path, results)
  # Accumulated over sessions when the job is resumed.
  results["wall_seconds"] = results.get("wall_seconds", 0.0) + (
    time.time() - t0
  )
  results["versions"] = _versions()
  djtrain.write_json_atomic(path, results)

  compare_report.write_report(results, workdir, config)
  return results


def _versions() -> dict[str, Any]:
  return harness.software_versions()


def _print_done(config, workdir, results):
  del config, results
  print(f"[compare] wrote {os.path.join(workdir, 'report.md')}")


if __name__ == "__main__":
  harness.main(
    run,
    config=harness.config_path("compare"),
    name="compare",
    after=_print_done,
  )
