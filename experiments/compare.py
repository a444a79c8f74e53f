r"""The main job: dropout against its analytic replacement, converged and tuned.

    python -m experiments.compare --workdir DIR [--config FILE] [--config.KEY=VALUE ...]

Trains every regimen of the config (``experiments/configs/compare.py`` by
default: none, Bernoulli dropout, Gaussian dropout, explicit, implicit,
explicit + implicit, L2) for every seed at every training-set size, with the
regimen's hyperparameters chosen on the validation split by
``python -m experiments.tune``. Every run trains to the end of a warm-up +
cosine learning-rate schedule and keeps its best-validation parameters; the
primary comparison uses those, and the final parameters are reported too.
The test split is evaluated only after training, never to select anything.

Writes into ``DIR``:

* ``results.json`` -- one record per (setting, regimen, seed): the
  hyperparameters, for the best-validation and the final parameters the test
  accuracy, NLL, expected calibration error (15 bins), predictive entropy and
  reliability bins and the training-subset accuracy and loss; the validation
  curve; the run's wall time; and, for the diagnostics regimens, per site the
  Monte-Carlo dropout gap against ``R_exp`` and the dropout gradient noise
  against the implicit regularizer's. Rewritten atomically after every run.
* ``report.md`` -- tables of every metric, paired differences (same seed =
  same initialisation and data order), the diagnostics, and a paragraph
  computed from the numbers (:mod:`experiments.compare_report`).
* ``learning_curves.png``, ``paired_differences.png``, ``reliability.png``.
* ``runs/<setting>/<regimen>/`` -- each run's ``metrics.jsonl`` and orbax
  checkpoints. Re-running the same command resumes: finished runs are skipped,
  an interrupted one continues from its last checkpoint.

A run whose loss becomes NaN/inf stops with a message naming the regimen,
seed and step; it is recorded under ``failures`` and the other runs go on.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax

import dropjax
from dropjax import analysis
from dropjax import data as djdata
from dropjax import metrics as djmetrics
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

# Regimens whose strength is a drop rate (tuned as ``rate``); the analytic
# ones are built at ``config.analytic_rate`` and tuned through their scales.
RATE_TUNED = ("dropout", "gaussian_dropout", "early_dropout")
ANALYTIC = (
  "explicit",
  "implicit",
  "explicit_implicit",
  "early_explicit_implicit",
)
HPARAM_KEYS = {
  "none": (),
  "dropout": ("rate",),
  "gaussian_dropout": ("rate",),
  "explicit": ("explicit_scale",),
  "implicit": ("implicit_scale",),
  "explicit_implicit": ("explicit_scale", "implicit_scale"),
  "l1": ("l1",),
  "l2": ("l2",),
  "early_dropout": ("rate", "until"),
  "early_explicit_implicit": ("explicit_scale", "implicit_scale", "until"),
}
# Early dropout (Liu et al., ICML 2023, arXiv:2303.01500): the base regimen
# at its rate for the first ``until`` fraction of the steps, then none
# (dropjax.schedules.early inside the jitted chunk; the analytic terms follow
# the same rate).
SCHEDULED = {
  "early_dropout": "dropout",
  "early_explicit_implicit": "explicit_implicit",
}


# DROPOUT_k (Wei, Kakade & Ma, arXiv:2002.12915, Algorithm 1) and its
# noise-restoring variants, by name: dropout_K (K masks per step, their
# gradients averaged), dropout_K_fix_noise and dropout_K_implicit (K >= 2);
# and the larger-batch control dropout_1_batchM: DROPOUT_1 with M times the
# batch (M times the examples per step, the same number of steps), which
# averages minibatch noise as well as mask noise. All take the ``rate``.
_DROPOUT_K = re.compile(r"^dropout_(\d+)(_fix_noise|_implicit)?$")
_BATCH_CONTROL = re.compile(r"^dropout_1_batch(\d+)$")


def dropout_k_family(regimen: str) -> tuple[str, int, int] | None:
  """``(objective, k, batch multiplier)`` of a DROPOUT_k-family name
  (``dropout_8``, ``dropout_8_fix_noise``, ``dropout_1_batch8``, ...), or
  ``None`` for any other name."""
  m = _DROPOUT_K.match(regimen)
  if m and int(m.group(1)) >= 1:
    k, suffix = int(m.group(1)), m.group(2) or ""
    if suffix and k < 2:
      return None
    objective = {
      "": "dropout_k",
      "_fix_noise": "dropout_k_fix_noise",
      "_implicit": "dropout_k_implicit",
    }[suffix]
    return (
      ("dropout" if objective == "dropout_k" and k == 1 else objective),
      k,
      1,
    )
  m = _BATCH_CONTROL.match(regimen)
  if m and int(m.group(1)) >= 1:
    return "dropout", 1, int(m.group(1))
  return None


def hparam_keys(regimen: str) -> tuple[str, ...] | None:
  """The hyperparameters a regimen takes, ``None`` for an unknown name."""
  if regimen in HPARAM_KEYS:
    return HPARAM_KEYS[regimen]
  if dropout_k_family(regimen) is not None:
    return ("rate",)
  return None


def batch_multiplier(regimen: str) -> int:
  """How many times ``config.batch_size`` the regimen trains on (1 but for
  the ``dropout_1_batchM`` control)."""
  family = dropout_k_family(regimen)
  return family[2] if family else 1


def setting_config(config, setting: str):
  """``config[setting]``, the block of one setting.

  Raises:
    ValueError: the config has no such block (named, with the flag).
  """
  if setting not in config:
    raise ValueError(
      f"setting {setting!r} has no config block (config.{setting}); "
      "--config.settings lists the blocks to run."
    )
  return config[setting]


def load_setting(config, setting: str) -> djdata.ImageDataset:
  """The dataset of one setting (its training subset, validation, test)."""
  sc = setting_config(config, setting)
  try:
    djdata.parse_source(config.data.source)
  except ValueError as e:
    raise ValueError(f"{e} (--config.data.source)") from None
  try:
    return djdata.load_dataset(
      config.data.source,
      data_dir=config.data.data_dir or None,
      validation_size=int(config.data.validation_size),
      train_size=int(sc.train_size) or None,
      seed=int(config.data.split_seed),
    )
  except djdata.DataError:
    raise
  except ValueError as e:
    raise ValueError(
      f"{e} (set by --config.data.validation_size and "
      f"--config.{setting}.train_size)"
    ) from None


def load_checked(config, setting: str) -> djdata.ImageDataset:
  """:func:`load_setting` then :func:`harness.check_dataset`."""
  ds = load_setting(config, setting)
  harness.check_dataset(config, ds)
  return ds


def schedule(config, steps: int) -> optax.Schedule:
  """Linear warm-up over ``warmup_fraction`` of the steps, cosine to 0."""
  return harness.warmup_cosine(
    float(config.learning_rate), float(config.warmup_fraction), steps
  )


def check_hparams(regimen: str, hparams: Mapping[str, Any]) -> dict:
  """The regimen's hyperparameters as floats; every needed key present.

  Raises:
    ValueError: an unknown regimen, or a missing / unexpected key (named,
      with the config path to set).
  """
  keys = hparam_keys(regimen)
  if keys is None:
    raise ValueError(
      f"unknown regimen {regimen!r} for this job; valid: "
      f"{', '.join(HPARAM_KEYS)}, dropout_K, dropout_K_fix_noise, "
      "dropout_K_implicit (K >= 2 for the last two) and dropout_1_batchM."
    )
  want = set(keys)
  have = set(hparams)
  if want != have:
    raise ValueError(
      f"regimen {regimen!r} takes the hyperparameters {sorted(want)}, got "
      f"{sorted(have)}: set --config.<setting>.hparams.{regimen}.<key>."
    )
  out = {k: float(v) for k, v in hparams.items()}
  if "until" in out and not 0.0 <= out["until"] <= 1.0:
    raise ValueError(
      f"regimen {regimen!r}: until is the fraction of the steps with "
      f"dropout, in [0, 1], got {out['until']} (--config.<setting>.hparams."
      f"{regimen}.until)."
    )
  return out


def regimen_rates(config, site_names, regimen, hparams) -> dict | None:
  """``{site: q}`` a regimen trains with (its tuned ``rate``, or
  ``analytic_rate`` for the analytic ones); ``None`` if it drops nothing."""
  hp = check_hparams(regimen, hparams)
  if regimen in RATE_TUNED or dropout_k_family(regimen):
    rate = hp["rate"]
  elif regimen in ANALYTIC:
    rate = float(config.analytic_rate)
  else:
    return None
  return {s: rate for s in site_names}


def make_objective(config, apply, site_names, regimen, hparams, steps=None):
  """The objective of one regimen at one hyperparameter point (``steps``:
  the run's length, needed by the scheduled regimens).

  Raises:
    ValueError: bad hyperparameters (:func:`check_hparams`).
  """
  options = {"estimator": config.estimator, **check_hparams(regimen, hparams)}
  rates = regimen_rates(config, site_names, regimen, hparams)
  family = dropout_k_family(regimen)
  if family is not None:
    objective, k, _ = family
    return dropjax.objectives.from_config(
      objective, apply, options, rates=rates, k=k
    )
  if regimen not in SCHEDULED:
    return dropjax.objectives.from_config(regimen, apply, options, rates=rates)
  until = options.pop("until")
  if steps is None:
    raise ValueError(f"regimen {regimen!r} needs the run's steps.")
  q = next(iter(rates.values()))
  base = SCHEDULED[regimen]

  def build(rate):
    return dropjax.objectives.from_config(
      base, apply, options, rates={s: rate for s in site_names}
    )

  return dropjax.schedules.scheduled(
    build, dropjax.schedules.early(q, int(round(until * steps)))
  )


class Model:
  """The config's model: ``apply``, ``init`` and its site names."""

  def __init__(self, config):
    if config.model.name != "mlp":
      raise ValueError(
        f"this job builds an MLP from --config.model.layer_sizes; "
        f"--config.model.name={config.model.name!r} is not supported here "
        "(valid: 'mlp')."
      )
    self.layer_sizes = tuple(int(v) for v in config.model.layer_sizes)
    self.apply, _, site_rates = models.make_model(
      config.model.name, layer_sizes=self.layer_sizes
    )
    self.init = models.make_init(
      config.model.name, layer_sizes=self.layer_sizes
    )
    self.sites = tuple(site_rates)


def _unstack(tree, i):
  import jax

  return jax.tree.map(lambda a: np.asarray(a[i]), tree)


def _metrics_json(out: dict, i: int) -> dict:
  return {
    "accuracy": float(out["accuracy"][i]),
    "loss": float(out["loss"][i]),
    "ece": float(out["ece"][i]),
    "entropy": float(out["entropy"][i]),
  }


def _bins_json(out: dict, i: int) -> dict:
  return {k: [float(v) for v in out["bins"][k][i]] for k in out["bins"]}


def train_point(
  config,
  model: Model,
  ds: djdata.ImageDataset,
  setting: str,
  regimen: str,
  hparams: Mapping[str, Any],
  *,
  seeds: Sequence[int],
  run_dir: str | None,
  run_name: str,
  evaluate_test: bool,
) -> tuple[list[dict], Any]:
  """Trains one regimen at one hyperparameter point for every seed.

  The seeds share one vmapped run. Validation accuracy (or loss, by
  ``config.select_metric``) after every ``eval_every`` chunks selects each
  seed's best parameters. After training, the best and the final parameters
  are evaluated on the validation split, the first ``train_eval_size``
  training examples and, when ``evaluate_test``, the test split.

  Returns:
    ``(records, result)``: one record per seed (see the module docstring)
    and the engine's :class:`~dropjax.train.TrainResult`.

  Raises:
    dropjax.train.NonFiniteLossError: a seed's loss became NaN/inf.
  """
  sc = config[setting]
  steps = int(sc.steps)
  objective = make_objective(
    config, model.apply, model.sites, regimen, hparams, steps=steps
  )
  optimizer = djtrain.make_optimizer(config.optimizer, schedule(config, steps))
  tr = ds.train
  n_eval = min(int(config.data.train_eval_size), len(tr))
  res = djtrain.train(
    model.apply,
    objective,
    optimizer,
    model.init,
    (tr.images, tr.labels),
    steps=steps,
    batch_size=int(config.batch_size) * batch_multiplier(regimen),
    seeds=tuple(int(s) for s in seeds),
    chunk_size=int(config.chunk_size),
    eval_data={"validation": (ds.validation.images, ds.validation.labels)},
    eval_every=int(sc.eval_every),
    keep_best=("validation", str(config.select_metric)),
    run_dir=run_dir,
    run_name=run_name,
    devices=int(config.devices) or None,
    progress=bool(config.progress),
  )
  splits = {
    "validation": (ds.validation.images, ds.validation.labels),
    "train": (tr.images[:n_eval], tr.labels[:n_eval]),
  }
  if evaluate_test:
    splits["test"] = (ds.test.images, ds.test.labels)
  evals = {
    which: {
      split: djmetrics.predictive_metrics(
        model.apply, params, x, y, stacked=True
      )
      for split, (x, y) in splits.items()
    }
    for which, params in (
      ("best", res.best_params),
      ("final", res.state.params),
    )
  }
  epoch_len = len(tr) / float(config.batch_size * batch_multiplier(regimen))
  records = []
  for i, seed in enumerate(res.seeds):
    curve = [
      {
        "step": r["step"],
        "epoch": r["epoch"],
        "validation_accuracy": r["eval"]["validation"]["accuracy"][i],
        "validation_loss": r["eval"]["validation"]["loss"][i],
        "train_loss": r["train"]["loss"][i],
      }
      for r in res.history
    ]
    rec = {
      "setting": setting,
      "regimen": regimen,
      "seed": int(seed),
      "hparams": {k: float(v) for k, v in hparams.items()},
      "train_size": len(tr),
      "steps": steps,
      "epochs": steps / epoch_len,
      "best_step": int(res.best_step[int(seed)]),
      "train_seconds": float(res.train_seconds),
      "validation_curve": curve,
    }
    for which, ev in evals.items():
      rec[which] = {split: _metrics_json(out, i) for split, out in ev.items()}
      if "test" in ev:
        rec[which]["test_bins"] = _bins_json(ev["test"], i)
    records.append(rec)
  return records, res


# ------------------------------------------------------------ diagnostics


def diagnose(config, model: Model, ds, regimen, hparams, params_s, seeds):
  """Per seed: the expansion and noise diagnostics of trained nets.

  At the rate the regimen was trained with (dropout: its tuned ``q``; the
  analytic regimens: ``analytic_rate``), on the first
  ``diagnostics.batch_size`` training and test examples:
  :func:`dropjax.analysis.taylor_check` (Monte-Carlo ``E_mask[L̄] - L̄``
  against ``R_exp``, each site alone and all at once); on the first
  ``diagnostics.noise_batch_size`` training examples:
  :func:`dropjax.analysis.gradient_noise_check` (dropout's gradient
  covariance across masks against the implicit regularizer's across signs).
  """
  import jax

  dc = config.diagnostics
  rates = regimen_rates(config, model.sites, regimen, hparams)
  n = int(dc.batch_size)
  batches = {
    "train": (ds.train.images[:n], ds.train.labels[:n]),
    "test": (ds.test.images[:n], ds.test.labels[:n]),
  }
  out = []
  for i, seed in enumerate(seeds):
    params = _unstack(params_s, i)
    key = jax.random.key(10_000 + int(seed))
    rec = {"seed": int(seed), "rate": next(iter(rates.values()))}
    for split, (x, y) in batches.items():
      k1, k2 = jax.random.split(jax.random.fold_in(key, len(split)))
      rec[f"taylor_{split}"] = analysis.taylor_check(
        model.apply,
        params,
        x,
        y,
        rates=rates,
        key=k1,
        num_masks=int(dc.num_masks),
        num_label_samples=int(dc.num_label_samples),
      )
      if split == "train":
        m = min(n, int(dc.noise_batch_size))
        rec["noise_train"] = analysis.gradient_noise_check(
          model.apply,
          params,
          x[:m],
          y[:m],
          rates=rates,
          key=k2,
          num_samples=int(dc.num_noise_samples),
          projection_dim=int(dc.projection_dim),
        )
    out.append(rec)
  return out


# --------------------------------------------------------------- the job


def _load_results(path: str) -> dict:
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"records": [], "failures": [], "diagnostics": []}


def validate(config) -> tuple[Model, dict]:
  """Everything that can be checked before training, in one place: the
  model, the settings and their hyperparameters, and each setting's data
  (loaded here, image size and label range checked).

  Returns:
    ``(model, {setting: dataset})``.

  Raises:
    harness.ConfigError: the first problem, with the ``--config`` key or the
      data to change.
  """
  with harness.config_errors():
    model = Model(config)
    for setting in config.settings:
      hp = setting_config(config, setting).hparams
      for regimen in config.regimens:
        check_hparams(regimen, hp[regimen].to_dict() if regimen in hp else {})
    datasets = {s: load_checked(config, s) for s in config.settings}
  return model, datasets


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the whole comparison; returns the results dict.

  Raises:
    harness.ConfigMismatchError: ``workdir`` holds results of a config that
      differs in a key outside :data:`VOLATILE_KEYS`.
    harness.ConfigError: a bad config (named key), missing or corrupt data,
      or labels outside the model's outputs, before any training and before
      anything is written (:func:`validate`).
  """
  model, datasets = validate(config)
  os.makedirs(workdir, exist_ok=True)
  harness.check_config(workdir, config, VOLATILE_KEYS)
  path = os.path.join(workdir, RESULTS_FILE)
  results = _load_results(path)
  results["config"] = config.to_dict()
  results.setdefault("diagnostics", [])
  done = {(r["setting"], r["regimen"]) for r in results["records"]}
  results["failures"] = [
    f
    for f in results.get("failures", [])
    if (f["setting"], f["regimen"]) not in done
  ]
  t0 = time.time()
  seeds = tuple(int(s) for s in config.seeds)
  with djtrain.CompileStats() as compile_stats:
    _run_settings(config, model, datasets, seeds, results, done, workdir)
  # Accumulated over sessions when the job is resumed.
  wall = time.time() - t0
  results["wall_seconds"] = results.get("wall_seconds", 0.0) + wall
  # This session's compilation (a resumed job compiles again).
  results["compilation"] = {
    **compile_stats.summary(),
    "session_wall_s": wall,
    "persistent_cache": jax.config.jax_compilation_cache_dir or None,
  }
  results["versions"] = harness.software_versions()
  djtrain.write_json_atomic(path, results)

  compare_report.write_report(results, workdir, config)
  return results


def _run_settings(
  config, model, datasets, seeds, results, done, workdir
) -> None:
  """Trains (and diagnoses) every unfinished (setting, regimen) of
  ``config``, writing ``results`` to ``workdir/results.json`` after each."""
  path = os.path.join(workdir, RESULTS_FILE)
  for setting in config.settings:
    ds = datasets[setting]
    for regimen in config.regimens:
      if (setting, regimen) in done:
        print(f"[compare] {setting}/{regimen}: finished earlier, skipped.")
        continue
      hparams = config[setting].hparams[regimen].to_dict()
      run_dir = os.path.join(workdir, "runs", setting, regimen)
      try:
        records, res = train_point(
          config,
          model,
          ds,
          setting,
          regimen,
          hparams,
          seeds=seeds,
          run_dir=run_dir,
          run_name=f"{setting}/{regimen}",
          evaluate_test=True,
        )
      except djtrain.NonFiniteLossError as err:
        print(f"[compare] {err}", file=sys.stderr)
        results["failures"].append(
          {"setting": setting, "regimen": regimen, "error": str(err)}
        )
        djtrain.write_json_atomic(path, results)
        continue
      if regimen in config.diagnostics.regimens:
        t_diag = time.time()
        diag = diagnose(
          config, model, ds, regimen, hparams, res.best_params, res.seeds
        )
        results["diagnostics"].append(
          {
            "setting": setting,
            "regimen": regimen,
            "seconds": time.time() - t_diag,
            "seeds": diag,
          }
        )
      results["records"].extend(records)
      djtrain.write_json_atomic(path, results)


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
