r"""The implicit effect of dropout (Wei, Kakade & Ma, ICML 2020, §3).

    python -m experiments.implicit_effect --workdir DIR [--config FILE] [--config.KEY=VALUE ...]

Wei et al.'s first claim: dropout's update noise regularizes by itself.
DROPOUT_k (k masks per step, their gradients averaged: the same expected
update with 1/k of the mask noise; their Algorithm 1) gets worse as k grows,
and restoring the noise (fix-noise, or the implicit regularizer at scale
1 − 1/k) repairs it. This experiment runs that matrix in several *cells*:
model (the Fashion-MNIST MLP, the character LSTM on Shakespeare) × optimizer
(SGD, Adam) × training-set size, because the optimizer, the training length
and the data size are the suspects when the effect does not appear.

Regimens (names shared by both models): ``none``, ``dropout_1``,
``dropout_2``, ``dropout_4``, ``dropout_8``, ``dropout_8_fix_noise``,
``dropout_8_implicit``, ``explicit`` (the k → ∞ limit: the expected update
with no noise) and the larger-batch control ``dropout_1_batch8`` (DROPOUT_1
on 8× the examples per step: averages minibatch noise as well as mask noise,
so it separates the two).

Each cell is one run of an existing experiment with the cell's settings: the
MLP cells run the main job's code (``experiments.compare``; best-validation
parameters, the test split evaluated after training), the LSTM cells the
language-model experiment's (``experiments.language_model``; locked masks,
truncated BPTT). They live in ``DIR/cells/<cell>/`` and resume like those
experiments do. The metric of a run is the test error (%, MLP) or test bits
per character (LSTM) of its best-validation parameters; lower is better.

Writes ``DIR/results.json`` (every cell's per-seed metrics and validation
curves), ``DIR/report.md`` (tables of means, paired differences over seeds
with standard errors, and the verdicts per cell, computed from the numbers)
and ``DIR/curves.png`` (validation curves against steps, the paper's
Figure 1 view).
"""

from __future__ import annotations

import math
import os
import time
import numpy as np

from dropjax.train import files as _files
from dropjax.train import write_json_atomic
from experiments import compare
from experiments import harness
from experiments import language_model as lm
from experiments import stats
from experiments.configs import compare as compare_configs
from experiments.configs import language_model as lm_configs

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
CURVES_PNG = "curves.png"
MODELS = ("mlp", "lstm")
OPTIMIZERS = ("adam", "sgd")
# The contrasts the verdicts rest on: (name, a, b): metric(a) - metric(b).
CONTRASTS = (
  ("k: DROPOUT_8 − DROPOUT_1", "dropout_8", "dropout_1"),
  ("fix-noise − DROPOUT_8", "dropout_8_fix_noise", "dropout_8"),
  ("implicit − DROPOUT_8", "dropout_8_implicit", "dropout_8"),
  ("explicit − DROPOUT_8", "explicit", "dropout_8"),
  ("batch ×8 − DROPOUT_8", "dropout_1_batch8", "dropout_8"),
  ("DROPOUT_1 − none", "dropout_1", "none"),
)
METRIC = {"mlp": "test error (%)", "lstm": "test bits per character"}
# A difference smaller than this is "no difference" whatever the seeds say.
MIN_EFFECT = {"mlp": 0.1, "lstm": 0.005}


# ------------------------------------------------------------------- cells


def _cell(config, name: str):
  cell = config.cells[name]
  if cell.model not in MODELS:
    raise ValueError(
      f"cell {name!r}: model {cell.model!r} is not one of {MODELS} "
      f"(--config.cells.{name}.model)."
    )
  if cell.optimizer not in OPTIMIZERS:
    raise ValueError(
      f"cell {name!r}: optimizer {cell.optimizer!r} is not one of "
      f"{OPTIMIZERS} (--config.cells.{name}.optimizer)."
    )
  return cell


def mlp_config(config, name: str):
  """The main job's config for one MLP cell."""
  cell = _cell(config, name)
  m = config.mlp
  c = compare_configs.get_config("default")
  c.model.layer_sizes = tuple(m.layer_sizes)
  c.batch_size = int(m.batch_size)
  c.chunk_size = int(m.chunk_size)
  c.optimizer = cell.optimizer
  c.learning_rate = float(cell.learning_rate)
  c.analytic_rate = float(m.rate)
  c.regimens = _regimens(config)
  c.seeds = tuple(int(s) for s in config.seeds)
  hp = {
    r: ({"explicit_scale": 1.0} if r == "explicit" else {"rate": float(m.rate)})
    for r in c.regimens
    if r != "none"
  }
  hp["none"] = {}
  c.settings = ("cell",)
  c.cell = compare_configs._setting(
    int(cell.train_size), int(cell.steps), int(m.eval_every), hp
  )
  c.diagnostics.regimens = ()
  c.data.train_eval_size = int(m.train_eval_size)
  c.progress = bool(config.progress)
  c.title = f"Implicit-effect cell {name}"
  c.hparams_note = (
    f"Hyperparameters are fixed: q = {m.rate} at every site, explicit at "
    "scale 1 (Taylor-faithful);"
  )
  return c


def lstm_config(config, name: str):
  """The language-model experiment's config for one LSTM cell."""
  cell = _cell(config, name)
  s = config.lstm
  c = lm_configs.get_config("default")
  for key in (
    "curve_tokens",
    "eval_tokens",
    "batch_size",
    "bptt",
    "eval_batch_size",
    "eval_bptt",
    "chunk_size",
    "eval_every",
    "checkpoint_every",
  ):
    c[key] = s[key]
  c.model.embed_dim = int(s.embed_dim)
  c.model.hidden_size = int(s.hidden_size)
  c.model.num_layers = int(s.num_layers)
  for site in ("emb", "hidden", "out", "weight"):
    c.rates[site] = float(s.rate)
  c.optimizer = cell.optimizer
  c.learning_rate = float(cell.learning_rate)
  c.clip_norm = float(cell.clip_norm)
  c.momentum = 0.0
  c.train_tokens = int(cell.train_size)
  c.steps = int(cell.steps)
  c.regimens = ",".join(_regimens(config))
  c.seeds = tuple(int(x) for x in config.seeds)
  c.progress = bool(config.progress)
  return c


def _mlp_records(results: dict) -> list[dict]:
  out = []
  for r in results["records"]:
    acc = r["best"]["test"]["accuracy"]
    out.append(
      {
        "regimen": r["regimen"],
        "seed": r["seed"],
        "metric": 100.0 * (1.0 - acc) if math.isfinite(acc) else None,
        "curve": [
          (p["step"], 100.0 * (1.0 - p["validation_accuracy"]))
          for p in r["validation_curve"]
          if p["validation_accuracy"] is not None
        ],
      }
    )
  return out


def _lstm_records(results: dict) -> list[dict]:
  return [
    {
      "regimen": r["regimen"],
      "seed": r["seed"],
      "metric": r["best_test_bpc"] if r["status"] == "ok" else None,
      "curve": [
        (p["step"], p["val_bpc"])
        for p in r["curve"]
        if p["val_bpc"] is not None
      ],
    }
    for r in results["records"]
  ]


def validate(config) -> None:
  """Every cell's sub-config and regimen names, before anything is written.

  Raises:
    harness.ConfigError: naming the cell and key to change.
  """
  with harness.config_errors():
    if not config.cells_to_run:
      raise ValueError("no cell given (--config.cells_to_run).")
    regimens = _regimens(config)
    for name in config.cells_to_run:
      if name not in config.cells:
        raise ValueError(
          f"cell {name!r} has no entry in config.cells; valid: "
          f"{', '.join(config.cells)} (--config.cells_to_run)."
        )
      cell = _cell(config, name)
      if cell.model == "mlp":
        sub = mlp_config(config, name)
        for r in regimens:
          compare.check_hparams(r, sub.cell.hparams[r].to_dict())
        n = int(cell.train_size) or 55000
        per_step = int(sub.batch_size) * max(
          compare.batch_multiplier(r) for r in regimens
        )
        if per_step > n:
          raise ValueError(
            f"cell {name!r}: the larger-batch control needs {per_step} "
            f"examples per step but the cell has {n} "
            f"(--config.mlp.batch_size, --config.cells.{name}.train_size)."
          )
      else:
        lstm_config(config, name)
        lm.parse_regimens(",".join(regimens))


def run(config, workdir: str) -> dict:
  """Runs (or resumes) every cell; returns the results dict.

  Raises:
    harness.ConfigError: a bad cell or regimen, before anything is written.
    harness.ConfigMismatchError: ``workdir`` holds results of another
      config.
  """
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  harness.check_config(workdir, config, ("cells_to_run", "progress"))
  t0 = time.time()
  cells = {}
  for name in config.cells_to_run:
    cell = _cell(config, name)
    cell_dir = os.path.join(workdir, "cells", name)
    print(f"[implicit_effect] cell {name}", flush=True)
    if cell.model == "mlp":
      sub = compare.run(mlp_config(config, name), cell_dir)
      records = _mlp_records(sub)
    else:
      sub = lm.run_experiment(lstm_config(config, name), cell_dir)
      records = _lstm_records(sub)
    cells[name] = {
      "model": cell.model,
      "optimizer": cell.optimizer,
      "train_size": int(cell.train_size),
      "steps": int(cell.steps),
      "learning_rate": float(cell.learning_rate),
      "records": records,
    }
    results = {
      "config": config.to_dict(),
      "cells": cells,
      "wall_seconds": time.time() - t0,
    }
    write_json_atomic(os.path.join(workdir, RESULTS_FILE), results)
  write_report(results, workdir)
  return results


# ------------------------------------------------------------------ report


def _by_seed(records, regimen) -> dict[int, float]:
  return {
    r["seed"]: r["metric"]
    for r in records
    if r["regimen"] == regimen and r["metric"] is not None
  }


def contrast(records, a: str, b: str) -> stats.Summary | None:
  """Paired ``metric(a) − metric(b)`` over the seeds both have."""
  xa, xb = _by_seed(records, a), _by_seed(records, b)
  seeds = sorted(set(xa) & set(xb))
  if not seeds:
    return None
  return stats.paired_difference([xa[s] for s in seeds], [xb[s] for s in seeds])


def _clear(d: stats.Summary | None, model: str) -> bool:
  return d is not None and stats.is_clear(
    d.mean, d.sd, min_effect=MIN_EFFECT[model]
  )


def _fmt(d: stats.Summary | None, model: str) -> str:
  if d is None:
    return "—"
  digits = 2 if model == "mlp" else 4
  text = f"{d.mean:+.{digits}f} ± {d.sd:.{digits}f}"
  return f"**{text}**" if _clear(d, model) else text


def verdict(cell: dict) -> str:
  """One paragraph per cell, from the contrasts."""
  recs, model = cell["records"], cell["model"]
  c = {name: contrast(recs, a, b) for name, a, b in CONTRASTS}
  out = []
  reg = c["DROPOUT_1 − none"]
  if reg is not None:
    if _clear(reg, model) and reg.mean < 0:
      out.append(
        f"Dropout regularizes here (DROPOUT_1 − none {_fmt(reg, model)}), "
        "so the cell can show an implicit effect."
      )
    else:
      how = "hurts" if _clear(reg, model) else "has no resolved benefit"
      out.append(
        f"Dropout {how} here (DROPOUT_1 − none {_fmt(reg, model)}): not a "
        "regime where dropout regularizes, so the contrasts below say little "
        "about the paper's claim."
      )
  k = c["k: DROPOUT_8 − DROPOUT_1"]
  if k is None:
    out.append("Degradation with k: not testable (no DROPOUT_1 or DROPOUT_8).")
  elif _clear(k, model) and k.mean > 0:
    out.append(
      f"**DROPOUT_8 is worse than DROPOUT_1** ({_fmt(k, model)}): the "
      "implicit effect is there."
    )
  elif _clear(k, model):
    out.append(
      f"**DROPOUT_8 is better than DROPOUT_1** ({_fmt(k, model)}): reversed; "
      "less update noise helps here."
    )
  else:
    out.append(f"DROPOUT_8 and DROPOUT_1 do not differ ({_fmt(k, model)}).")
  for name, what in (
    ("fix-noise − DROPOUT_8", "fix-noise"),
    ("implicit − DROPOUT_8", "the implicit term"),
  ):
    d = c[name]
    if d is None:
      continue
    if _clear(d, model):
      better = d.mean < 0
      out.append(
        f"Adding {what} to DROPOUT_8 makes it "
        f"{'better' if better else 'worse'} ({_fmt(d, model)})"
        + (
          ", as restoring the noise should where the effect exists."
          if better
          else "."
        )
      )
    else:
      out.append(f"Adding {what} changes nothing resolved ({_fmt(d, model)}).")
  d = c["explicit − DROPOUT_8"]
  if d is not None:
    out.append(
      "Explicit alone (the k → ∞ limit) against DROPOUT_8: "
      + (
        f"{'better' if d.mean < 0 else 'worse'} ({_fmt(d, model)})."
        if _clear(d, model)
        else f"no resolved difference ({_fmt(d, model)})."
      )
    )
  d = c["batch ×8 − DROPOUT_8"]
  if d is not None:
    out.append(
      "The larger-batch control (8× the batch, one mask per example) against "
      "DROPOUT_8 (8 masks, one batch): "
      + (
        f"{'better' if d.mean < 0 else 'worse'} ({_fmt(d, model)})."
        if _clear(d, model)
        else f"no resolved difference ({_fmt(d, model)})."
      )
    )
  return " ".join(out)


def render_markdown(results: dict) -> str:
  config = results["config"]
  cells = results["cells"]
  out = ["# The implicit effect of dropout (Wei et al. §3, Algorithm 1)", ""]
  out.append(
    f"Seeds {list(config['seeds'])}; regimens "
    f"{', '.join(_regimens(config))}. MLP {list(config['mlp']['layer_sizes'])} "
    f"on Fashion-MNIST subsets, q = {config['mlp']['rate']}, batch "
    f"{config['mlp']['batch_size']}; character LSTM "
    f"{config['lstm']['num_layers']} × {config['lstm']['hidden_size']} "
    f"(embedding {config['lstm']['embed_dim']}) on the first N characters of "
    f"Shakespeare, q = {config['lstm']['rate']} at every site (locked "
    f"emb/out, DropConnect w_hh), {config['lstm']['batch_size']} streams × "
    f"{config['lstm']['bptt']}. Metric: {METRIC['mlp']} (MLP) or "
    f"{METRIC['lstm']} (LSTM) of each run's best-validation parameters; "
    "lower is better. Differences are paired over seeds (mean ± SE); "
    f"**bold** = beyond 2 SE and above {MIN_EFFECT['mlp']} pp / "
    f"{MIN_EFFECT['lstm']} bpc."
  )
  out.append("")
  out.append("## Verdicts")
  out.append("")
  for name, cell in cells.items():
    out.append(f"**{_title(name, cell)}.** {verdict(cell)}")
    out.append("")
  out.append("## Paired differences")
  out.append("")
  out.append("| cell | " + " | ".join(n for n, _, _ in CONTRASTS) + " |")
  out.append("|---|" + "---|" * len(CONTRASTS))
  for name, cell in cells.items():
    row = [
      _fmt(contrast(cell["records"], a, b), cell["model"])
      for _, a, b in CONTRASTS
    ]
    out.append(f"| {name} | " + " | ".join(row) + " |")
  out.append("")
  out.append("## Means over seeds")
  out.append("")
  regs = _regimens(config)
  out.append("| cell | metric | " + " | ".join(regs) + " |")
  out.append("|---|---|" + "---|" * len(regs))
  for name, cell in cells.items():
    vals = []
    for r in regs:
      s = stats.summarize(list(_by_seed(cell["records"], r).values()))
      digits = 2 if cell["model"] == "mlp" else 4
      vals.append(f"{s.mean:.{digits}f}" if s.n else "—")
    out.append(
      f"| {name} | {METRIC[cell['model']]} | " + " | ".join(vals) + " |"
    )
  out.append("")
  out.append(f"![validation curves]({CURVES_PNG})")
  out.append("")
  out.append(f"Wall time: {results.get('wall_seconds', 0.0) / 60:.1f} min.")
  out.append("")
  return "\n".join(out)


def _regimens(config) -> tuple[str, ...]:
  """The regimen names of a config or its dict (a tuple, or one
  comma-separated string).

  Raises:
    ValueError: no regimen.
  """
  items = config["regimens"]
  if isinstance(items, str):
    items = (items,)
  names = tuple(
    n.strip() for item in items for n in str(item).split(",") if n.strip()
  )
  if not names:
    raise ValueError("no regimen given (--config.regimens).")
  return names


def _title(name: str, cell: dict) -> str:
  size = (
    f"{cell['train_size']} examples"
    if cell["model"] == "mlp"
    else f"{cell['train_size']} characters"
  )
  return (
    f"{name} ({cell['model'].upper()}, {cell['optimizer']}, {size}, "
    f"{cell['steps']} steps)"
  )


def plot(results: dict, path: str) -> None:
  """Mean validation curves per regimen, one panel per cell."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cells = results["cells"]
  n = len(cells)
  cols = min(n, 4)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows))
  axes = np.atleast_1d(axes).ravel()
  for ax, (name, cell) in zip(axes, cells.items()):
    for reg in _regimens(results["config"]):
      curves = [r["curve"] for r in cell["records"] if r["regimen"] == reg]
      curves = [c for c in curves if c]
      if not curves:
        continue
      length = min(len(c) for c in curves)
      steps = [p[0] for p in curves[0][:length]]
      mean = np.mean([[p[1] for p in c[:length]] for c in curves], 0)
      style = "--" if reg.startswith(("explicit", "none")) else "-"
      ax.plot(steps, mean, style, label=reg, linewidth=1.2)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(
      "validation error (%)" if cell["model"] == "mlp" else "validation bpc"
    )
  for ax in axes[n:]:
    ax.axis("off")
  axes[0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(results: dict, workdir: str) -> str:
  text = render_markdown(results)
  _files.write_text_atomic(os.path.join(workdir, REPORT_FILE), text)
  plot(results, os.path.join(workdir, CURVES_PNG))
  return text


def render(results: dict, workdir: str) -> str:
  return write_report(results, workdir)


if __name__ == "__main__":
  harness.main(
    run, config=harness.config_path("implicit_effect"), name="implicit_effect"
  )
