"""Report and plots of the main job, computed from ``results.json`` only.

    python -m experiments.compare_report --workdir DIR   # re-render report.md
    python -m experiments.compare_report DIR             # and plots (the same)

Every sentence of the report that states a finding is generated from the
numbers. Differences between regimens are *paired*: the same seed means the
same initialisation and data order in every regimen, so the per-seed
differences are averaged and their standard error is ``SD / sqrt(n)``
(:func:`experiments.stats.paired_difference`). A difference is called
*clear* above two standard errors, otherwise *within noise*. Verdicts use
only runs that trained: a finite test loss and a test accuracy above 1.5x
chance; the report says which runs did not.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np

from dropjax.train import files as _files
from experiments import harness
from experiments import stats

LABELS = {
  "none": "none",
  "dropout": "dropout",
  "gaussian_dropout": "Gaussian dropout",
  "explicit": "explicit",
  "implicit": "implicit",
  "explicit_implicit": "explicit + implicit",
  "l1": "L1",
  "l2": "L2",
  "early_dropout": "early dropout",
  "early_explicit_implicit": "early explicit + implicit",
}
# (metric key, table name, scale, digits, higher is better)
METRICS = (
  ("accuracy", "test accuracy (%)", 100.0, 2, True),
  ("loss", "test NLL (nats)", 1.0, 4, False),
  ("ece", "ECE (%, 15 bins)", 100.0, 2, False),
)


def label(regimen: str) -> str:
  """The name of a regimen in tables and sentences."""
  return LABELS.get(regimen, regimen)


def _hp(rec: dict) -> str:
  hp = rec.get("hparams") or {}
  names = {"rate": "q", "explicit_scale": "exp.", "implicit_scale": "imp."}
  return ", ".join(f"{names.get(k, k)} {v:g}" for k, v in sorted(hp.items()))


def trained(rec: dict, num_classes: int) -> bool:
  """A run that trained: finite test loss, accuracy above 1.5x chance."""
  t = rec["best"]["test"]
  return math.isfinite(t["loss"]) and t["accuracy"] > 1.5 / num_classes


def group(records, setting, regimen, num_classes=None):
  rs = [
    r for r in records if r["setting"] == setting and r["regimen"] == regimen
  ]
  if num_classes is not None:
    rs = [r for r in rs if trained(r, num_classes)]
  return sorted(rs, key=lambda r: r["seed"])


def value(rec, which, metric, split="test"):
  return rec[which][split][metric]


def paired(records, setting, a, b, metric, which="best", num_classes=10):
  """Paired ``a - b`` over the seeds both have (trained runs only)."""
  ra = {r["seed"]: r for r in group(records, setting, a, num_classes)}
  rb = {r["seed"]: r for r in group(records, setting, b, num_classes)}
  seeds = sorted(set(ra) & set(rb))
  return stats.paired_difference(
    [value(ra[s], which, metric) for s in seeds],
    [value(rb[s], which, metric) for s in seeds],
  )


def _fmt(s: stats.Summary, scale=1.0, digits=2, sign=False) -> str:
  if s.n == 0 or not math.isfinite(s.mean):
    return "–"
  m = (
    f"{scale * s.mean:+.{digits}f}" if sign else f"{scale * s.mean:.{digits}f}"
  )
  if not math.isfinite(s.sd):
    return m
  return f"{m} ± {scale * s.sd:.{digits}f}"


def _setting_title(records, setting):
  r = next(r for r in records if r["setting"] == setting)
  return (
    f"{setting}: {r['train_size']} training examples, {r['steps']} steps "
    f"({r['epochs']:.0f} epochs)"
  )


def _metric_table(records, setting, regimens, which, num_classes):
  head = (
    "| regimen | hyperparameters | test accuracy (%) | test NLL | ECE (%) "
    "| entropy (nats) | train−test gap (pp) | best step | wall (s/run) |"
  )
  out = [head, "|---" * 9 + "|"]
  for reg in regimens:
    rs = group(records, setting, reg, num_classes)
    if not rs:
      continue

    def col(metric, split="test", rs=rs):
      return stats.summarize(value(r, which, metric, split) for r in rs)

    gap = stats.summarize(
      value(r, which, "accuracy", "train") - value(r, which, "accuracy")
      for r in rs
    )
    step = (
      stats.summarize(r["best_step"] for r in rs) if which == "best" else None
    )
    out.append(
      f"| {label(reg)} | {_hp(rs[0])} | {_fmt(col('accuracy'), 100)} | "
      f"{_fmt(col('loss'), 1, 4)} | {_fmt(col('ece'), 100)} | "
      f"{_fmt(col('entropy'), 1, 3)} | {_fmt(gap, 100)} | "
      f"{_fmt(step, 1, 0) if step else r_steps(rs)} | "
      f"{rs[0]['train_seconds']:.0f} |"
    )
  return out


def r_steps(rs):
  return str(rs[0]["steps"])


def _paired_table(records, setting, regimens, ref, num_classes):
  out = [
    f"| regimen − {label(ref)} | Δ test accuracy (pp) | Δ test NLL | "
    "Δ ECE (pp) | seeds |",
    "|---|---|---|---|---|",
  ]
  for reg in regimens:
    if reg == ref:
      continue
    cells = []
    n = 0
    for metric, _, scale, digits, _ in METRICS:
      d = paired(records, setting, reg, ref, metric, num_classes=num_classes)
      n = d.n
      cell = _fmt(d, scale, digits, sign=True)
      if stats.is_clear(d.mean, d.sd):
        cell = f"**{cell}**"
      cells.append(cell)
    if n:
      out.append(f"| {label(reg)} | {' | '.join(cells)} | {n} |")
  return out


def overfitting(records: list[dict]) -> dict | None:
  """The mean validation-loss curve's minimum and end, over seeds."""
  if not records:
    return None
  curves = [r["validation_curve"] for r in records]
  loss = np.mean([[c["validation_loss"] for c in cv] for cv in curves], 0)
  i = int(np.argmin(loss))
  r0 = records[0]
  return {
    "min_loss": float(loss[i]),
    "min_step": int(curves[0][i]["step"]),
    "min_epoch": curves[0][i]["step"] * r0["epochs"] / r0["steps"],
    "final_loss": float(loss[-1]),
  }


# ------------------------------------------------------------ diagnostics

ALL = "all"  # the diagnostics' entry with every site dropped at once


def _diag_entries(results, setting, regimen):
  for d in results.get("diagnostics", []):
    if d["setting"] == setting and d["regimen"] == regimen:
      return d["seeds"]
  return []


def _over_seeds(entries, path):
  vals = []
  for e in entries:
    v = e
    for p in path:
      v = v.get(p) if isinstance(v, dict) else None
      if v is None:
        break
    if v is not None and math.isfinite(v):
      vals.append(float(v))
  return stats.summarize(vals)


def taylor_rows(results, setting, regimen):
  """Per site: MC gap and R_exp, means over seeds (± SD over seeds)."""
  entries = _diag_entries(results, setting, regimen)
  if not entries:
    return []
  sites = list(entries[0]["taylor_train"])
  rows = []
  for site in sites:
    row = {"site": site}
    for split in ("train", "test"):
      key = f"taylor_{split}"
      for f in ("mc_gap", "mc_se", "r_exp_gauss_newton", "r_exp_sampled_label"):
        row[f"{split}_{f}"] = _over_seeds(entries, (key, site, f))
      ratios = [
        e[key][site]["r_exp_gauss_newton"] / e[key][site]["mc_gap"]
        for e in entries
        if e[key][site]["mc_gap"] != 0
      ]
      row[f"{split}_ratio"] = stats.summarize(ratios)
    rows.append(row)
  return rows


def noise_rows(results, setting, regimen):
  entries = _diag_entries(results, setting, regimen)
  if not entries:
    return []
  sites = list(entries[0]["noise_train"])
  rows = []
  for site in sites:
    row = {"site": site}
    for f in (
      "trace_dropout",
      "trace_implicit",
      "trace_ratio",
      "relative_distance",
      "noise_floor",
    ):
      row[f] = _over_seeds(entries, ("noise_train", site, f))
    rows.append(row)
  return rows


def _diagnostics_md(results, setting, regimens):
  out = []
  for reg in regimens:
    trows = taylor_rows(results, setting, reg)
    if not trows:
      continue
    rate = _diag_entries(results, setting, reg)[0]["rate"]
    out.append(
      f"**{label(reg)}-trained nets, q = {rate:g}** (best-validation "
      "parameters; mean ± SD over seeds):"
    )
    out.append("")
    out.append(
      "| site | batch | MC E[L̄(mask)] − L̄ (± MC SE) | R_exp Gauss–Newton | "
      "R_exp sampled-label | Gauss–Newton / MC |"
    )
    out.append("|---|---|---|---|---|---|")
    for row in trows:
      for split in ("train", "test"):
        out.append(
          f"| {row['site']} | {split} | "
          f"{_fmt(row[f'{split}_mc_gap'], 1, 4)} "
          f"(± {row[f'{split}_mc_se'].mean:.4f}) | "
          f"{_fmt(row[f'{split}_r_exp_gauss_newton'], 1, 4)} | "
          f"{_fmt(row[f'{split}_r_exp_sampled_label'], 1, 4)} | "
          f"{_fmt(row[f'{split}_ratio'], 1, 2)} |"
        )
    out.append("")
    nrows = noise_rows(results, setting, reg)
    if nrows:
      out.append(
        "| site | tr Cov(dropout grad) | tr Cov(∇R_imp) | ratio | rel. "
        "Frobenius distance (projected) | noise floor |"
      )
      out.append("|---|---|---|---|---|---|")
      for row in nrows:
        out.append(
          f"| {row['site']} | {_fmt(row['trace_dropout'], 1, 4)} | "
          f"{_fmt(row['trace_implicit'], 1, 4)} | "
          f"{_fmt(row['trace_ratio'], 1, 2)} | "
          f"{_fmt(row['relative_distance'], 1, 2)} | "
          f"{_fmt(row['noise_floor'], 1, 2)} |"
        )
      out.append("")
  return out


# --------------------------------------------------------------- findings


def _diff_phrase(d: stats.Summary, scale, digits, unit, higher_better):
  if d.n == 0 or not math.isfinite(d.mean):
    return "not measured"
  clear = stats.is_clear(d.mean, d.sd)
  better = (d.mean > 0) == higher_better
  word = ("better" if better else "worse") if clear else "within noise"
  return (
    f"{scale * d.mean:+.{digits}f}{unit} (± {scale * d.sd:.{digits}f}, {word})"
  )


def compare_sentence(records, setting, a, b, num_classes) -> str | None:
  parts = []
  for metric, name, scale, digits, hb in METRICS:
    d = paired(records, setting, a, b, metric, num_classes=num_classes)
    if d.n == 0:
      return None
    unit = " pp" if scale == 100 else ""
    short = name.split(" (")[0]
    parts.append(f"{short} {_diff_phrase(d, scale, digits, unit, hb)}")
  return f"{label(a)} − {label(b)}: " + "; ".join(parts) + "."


def _describes(ratio: float, what: str, tol: float = 0.2) -> str:
  if abs(ratio - 1) <= tol:
    return f"describes {what} to within {tol:.0%}"
  return ("understates " if ratio < 1 else "overstates ") + what


def diagnostics_sentence(results, setting, regimen) -> str | None:
  """What the expansion and noise checks say, from the numbers."""
  rows = taylor_rows(results, setting, regimen)
  if not rows:
    return None
  entries = _diag_entries(results, setting, regimen)
  q = entries[0].get("rate")
  per_site = [r for r in rows if r["site"] != ALL]
  joint = next((r for r in rows if r["site"] == ALL), None)
  train_nll = [
    r["best"]["train"]["loss"]
    for r in results["records"]
    if r["setting"] == setting and r["regimen"] == regimen
  ]
  out = f"On {label(regimen)}-trained nets (q = {q:g}"
  if train_nll:
    out += f"; clean training NLL {np.mean(train_nll):.4f} nats"
  out += "), on training data, "
  if per_site:
    ratios = [r["train_ratio"].mean for r in per_site]
    out += (
      f"R_exp (Gauss–Newton) is {min(ratios):.2f}–{max(ratios):.2f}x the "
      "Monte-Carlo dropout loss increase with one site dropped at a time"
    )
  if joint is not None:
    jr = joint["train_ratio"].mean
    out += (
      f"{'; ' if per_site else ''}with every site dropped at once it is "
      f"{jr:.2f}x ({joint['train_r_exp_gauss_newton'].mean:.4f} against "
      f"{joint['train_mc_gap'].mean:.4f} nats): the second-order term "
      + _describes(jr, "the expected loss increase that dropout trains on")
    )
  out += "."
  nrows = {r["site"]: r for r in noise_rows(results, setting, regimen)}
  if nrows:
    site_tr = [r["trace_ratio"].mean for k, r in nrows.items() if k != ALL]
    parts = []
    if site_tr:
      parts.append(f"{min(site_tr):.2f}–{max(site_tr):.2f}x dropout's per site")
    if ALL in nrows:
      parts.append(
        f"{nrows[ALL]['trace_ratio'].mean:.2f}x with every site dropped"
      )
    out += (
      " The implicit regularizer's gradient-noise covariance trace is "
      + " and ".join(parts)
    )
    if ALL in nrows:
      a = nrows[ALL]
      out += (
        f" (projected relative distance {a['relative_distance'].mean:.2f}, "
        f"sampling floor {a['noise_floor'].mean:.2f})"
      )
    out += "."
  c = compounding(results, setting, regimen)
  if c is not None:
    out += (
      " Dropping every site at once gives "
      f"{c['gap']:.2f}x the sum of the single-site loss increases and "
      f"{c['noise_dropout']:.2f}x the sum of the single-site gradient-noise "
      f"traces, against {c['noise_implicit']:.2f}x for the implicit term"
      + (
        ": the layers' dropout noises compound, which terms additive over "
        "sites (R_exp exactly, R_imp by construction) cannot represent."
        if c["noise_dropout"] > 1.2 or c["gap"] > 1.2
        else ": the sites' effects add up, as the analytic terms assume."
      )
    )
  return out


def compounding(results, setting, regimen) -> dict | None:
  """All-sites value / sum of the single-site values (means over seeds) of
  the Monte-Carlo loss increase and of both gradient-noise traces."""
  entries = _diag_entries(results, setting, regimen)
  if not entries or ALL not in entries[0].get("taylor_train", {}):
    return None
  out = {}
  for key, field, path in (
    ("gap", "mc_gap", "taylor_train"),
    ("noise_dropout", "trace_dropout", "noise_train"),
    ("noise_implicit", "trace_implicit", "noise_train"),
  ):
    vals = []
    for e in entries:
      d = e.get(path, {})
      sites = [k for k in d if k != ALL]
      total = sum(d[k][field] for k in sites)
      if sites and ALL in d and total > 0:
        vals.append(d[ALL][field] / total)
    if not vals:
      return None
    out[key] = float(np.mean(vals))
  return out


def findings(results: dict, config) -> list[str]:
  """The verdict paragraph, one sentence per fact, per setting."""
  records = results["records"]
  k = int(config["model"]["layer_sizes"][-1])
  regimens = list(config["regimens"])
  out = []
  for setting in config["settings"]:
    if not any(r["setting"] == setting for r in records):
      continue
    s = [f"**{setting}.**"]
    untrained = sorted(
      {
        f"{label(r['regimen'])} seed {r['seed']}"
        for r in records
        if r["setting"] == setting and not trained(r, k)
      }
    )
    if untrained:
      s.append(
        "These runs did not train (non-finite loss or accuracy at most 1.5x "
        f"chance) and are left out of every verdict: {', '.join(untrained)}."
      )
    o = overfitting(group(records, setting, "none", k))
    if o:
      rises = o["final_loss"] > 1.05 * o["min_loss"]
      s.append(
        "Without regularization the validation loss "
        + (
          f"passes its minimum ({o['min_loss']:.3f}, epoch "
          f"{o['min_epoch']:.0f}) and rises to {o['final_loss']:.3f}: the "
          "network overfits."
          if rises
          else f"ends within 5% of its minimum ({o['final_loss']:.3f}): no "
          "clear overfitting."
        )
      )
    for a, b in (
      ("dropout", "none"),
      ("explicit_implicit", "dropout"),
      ("explicit_implicit", "none"),
      ("gaussian_dropout", "dropout"),
      ("explicit", "dropout"),
      ("implicit", "none"),
      ("l2", "none"),
      ("early_dropout", "none"),
      ("early_dropout", "dropout"),
      ("early_explicit_implicit", "early_dropout"),
      ("early_explicit_implicit", "none"),
    ):
      if a in regimens and b in regimens:
        sent = compare_sentence(records, setting, a, b, k)
        if sent:
          s.append(sent)
    for metric, name, _, _, hb in METRICS:
      means = {
        reg: np.mean([value(r, "best", metric) for r in rs])
        for reg in regimens
        if (rs := group(records, setting, reg, k))
      }
      if means:
        best = (max if hb else min)(means, key=means.get)
        s.append(f"Best mean {name.split(' (')[0]}: {label(best)}.")
    for reg in config.get("diagnostics", {}).get("regimens", ()):
      sent = diagnostics_sentence(results, setting, reg)
      if sent:
        s.append(sent)
    out.append(" ".join(s))
  return out


# ------------------------------------------------------------- markdown


def render_markdown(results: dict, config) -> str:
  config = config.to_dict() if hasattr(config, "to_dict") else config
  records = results["records"]
  k = int(config["model"]["layer_sizes"][-1])
  regimens = list(config["regimens"])
  title = config.get(
    "title", "Dropout vs its analytic replacement, converged and tuned"
  )
  out = [f"# {title}", ""]
  ls = "-".join(str(v) for v in config["model"]["layer_sizes"])
  out.append(
    f"Fashion-MNIST ({config['data']['source']}), MLP {ls}, "
    f"{config['optimizer']} with a {config['warmup_fraction']:.0%} linear "
    f"warm-up and cosine decay to 0 from {config['learning_rate']}, batch "
    f"{config['batch_size']}, seeds {list(config['seeds'])} (the same "
    "initialisation and data order in every regimen). "
    + config.get(
      "hparams_note",
      "Hyperparameters were tuned on the validation split by "
      "`python -m experiments.tune` (other seeds);",
    )
    + " every run keeps its best-validation-"
    f"{config['select_metric']} parameters, used for the primary "
    "comparison; the test split is only evaluated after training. "
    f"Analytic regimens at q = {config['analytic_rate']}, estimator "
    f"{config['estimator']}. Paired differences: mean ± SE over seeds; "
    "**bold** = beyond 2 SE."
  )
  out.append("")
  out.append("## Verdict")
  out.append("")
  for p in findings(results, config):
    out.append(p)
    out.append("")
  for setting in config["settings"]:
    if not any(r["setting"] == setting for r in records):
      continue
    out.append(f"## {_setting_title(records, setting)}")
    out.append("")
    out.append("Best-validation parameters (primary):")
    out.append("")
    out += _metric_table(records, setting, regimens, "best", k)
    out.append("")
    out.append("Final parameters (end of the schedule):")
    out.append("")
    out += _metric_table(records, setting, regimens, "final", k)
    out.append("")
    for ref in ("none", "dropout"):
      if ref in regimens:
        out.append(
          f"Paired differences against {label(ref)} (best-validation):"
        )
        out.append("")
        out += _paired_table(records, setting, regimens, ref, k)
        out.append("")
    diag = _diagnostics_md(
      results, setting, config.get("diagnostics", {}).get("regimens", ())
    )
    if diag:
      out.append(f"### Diagnostics ({setting})")
      out.append("")
      out += diag
  if results.get("failures"):
    out.append("## Failed runs")
    out.append("")
    for f in results["failures"]:
      out.append(f"- {f['setting']}/{f['regimen']}: {f['error']}")
    out.append("")
  out.append(
    f"Wall time of the job: {results.get('wall_seconds', 0.0) / 60:.1f} min."
  )
  out.append("")
  comp = results.get("compilation")
  if comp:
    out.append(compilation_sentence(comp))
    out.append("")
  return "\n".join(out)


def compilation_sentence(comp: Mapping) -> str:
  """One sentence on the last session's compilation (``results["compilation"]``:
  :meth:`dropjax.train.CompileStats.summary` plus ``session_wall_s`` and
  ``persistent_cache``)."""
  wall = comp.get("session_wall_s") or 0.0
  share = f" ({100 * comp['total_s'] / wall:.0f} % of it)" if wall else ""
  cache = comp.get("persistent_cache")
  if cache:
    c = (
      f"persistent compilation cache on: {comp['cache_hits']} programs "
      f"loaded from it (saving about {max(comp['cache_saved_s'], 0.0):.0f} s), "
      f"{comp['cache_misses']} compiled and added."
    )
  else:
    c = "persistent compilation cache off."
  return (
    f"Compilation in the last session: {comp['programs']} XLA programs, "
    f"{comp['total_s']:.0f} s of tracing, lowering and compiling out of "
    f"{wall:.0f} s{share}; {c}"
  )


# ------------------------------------------------------------------ plots


def plot(results: dict, workdir: str, config) -> list[str]:
  """``learning_curves.png``, ``paired_differences.png``, ``reliability.png``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  config = config.to_dict() if hasattr(config, "to_dict") else config
  records = results["records"]
  k = int(config["model"]["layer_sizes"][-1])
  settings = [
    s for s in config["settings"] if any(r["setting"] == s for r in records)
  ]
  regimens = list(config["regimens"])
  if not settings:
    return []
  paths = []

  fig, axes = plt.subplots(
    2, len(settings), figsize=(6 * len(settings), 7.5), squeeze=False
  )
  for j, s in enumerate(settings):
    ax, ax_loss = axes[0, j], axes[1, j]
    for reg in regimens:
      rs = group(records, s, reg, k)
      if not rs:
        continue
      steps = [c["step"] for c in rs[0]["validation_curve"]]
      acc = np.mean(
        [[c["validation_accuracy"] for c in r["validation_curve"]] for r in rs],
        0,
      )
      loss = np.mean(
        [[c["validation_loss"] for c in r["validation_curve"]] for r in rs],
        0,
      )
      (line,) = ax.plot(steps, 100 * acc, label=label(reg), lw=1.2)
      ax_loss.plot(
        steps, loss, label=label(reg), lw=1.2, color=line.get_color()
      )
      bs = np.mean([r["best_step"] for r in rs])
      bv = np.mean([r["best"]["validation"]["accuracy"] for r in rs])
      ax.plot([bs], [100 * bv], "o", color=line.get_color(), ms=5)
    ax.set_title(f"{s}: validation accuracy (dot: mean best-validation point)")
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy (%)")
    lo = np.percentile(
      [
        100 * c["validation_accuracy"]
        for r in records
        if r["setting"] == s
        for c in r["validation_curve"]
      ],
      20,
    )
    ax.set_ylim(bottom=lo)
    ax.legend(fontsize=7)
    ax_loss.set_title(f"{s}: validation NLL (mean over seeds)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("validation NLL (nats, log scale)")
    ax_loss.set_yscale("log")
  fig.tight_layout()
  p = os.path.join(workdir, "learning_curves.png")
  harness.save_figure_atomic(fig, p, dpi=110)
  plt.close(fig)
  paths.append(p)

  fig, axes = plt.subplots(
    len(settings),
    len(METRICS),
    figsize=(4 * len(METRICS), 3 * len(settings)),
    squeeze=False,
  )
  for i, s in enumerate(settings):
    for j, (metric, name, scale, _, _) in enumerate(METRICS):
      ax = axes[i][j]
      ys, labels_ = [], []
      for ref, color in (("none", "tab:gray"), ("dropout", "tab:blue")):
        if ref not in regimens:
          continue
        for reg in regimens:
          if reg == ref:
            continue
          d = paired(records, s, reg, ref, metric, num_classes=k)
          if d.n == 0:
            continue
          y = len(ys)
          ax.errorbar(
            scale * d.mean,
            y,
            xerr=2 * scale * d.sd if math.isfinite(d.sd) else None,
            fmt="o",
            color=color,
            capsize=3,
          )
          ys.append(y)
          labels_.append(f"{label(reg)} − {label(ref)}")
      ax.axvline(0, color="k", lw=0.8)
      ax.set_yticks(ys, labels_, fontsize=7)
      ax.set_title(f"{s}: Δ {name} (± 2 SE)", fontsize=9)
  fig.tight_layout()
  p = os.path.join(workdir, "paired_differences.png")
  harness.save_figure_atomic(fig, p, dpi=110)
  plt.close(fig)
  paths.append(p)

  fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4.5))
  axes = np.atleast_1d(axes)
  for ax, s in zip(axes, settings):
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for reg in ("none", "dropout", "explicit_implicit"):
      rs = group(records, s, reg, k)
      if not rs or "test_bins" not in rs[0]["best"]:
        continue
      count = np.sum([r["best"]["test_bins"]["count"] for r in rs], 0)
      conf = np.sum(
        [
          np.multiply(
            r["best"]["test_bins"]["confidence"],
            r["best"]["test_bins"]["count"],
          )
          for r in rs
        ],
        0,
      )
      acc = np.sum(
        [
          np.multiply(
            r["best"]["test_bins"]["accuracy"], r["best"]["test_bins"]["count"]
          )
          for r in rs
        ],
        0,
      )
      ok = count > 0
      ax.plot(conf[ok] / count[ok], acc[ok] / count[ok], "o-", label=label(reg))
    ax.set_xlabel("confidence (15 equal-width bins)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{s}: reliability, test, all seeds pooled")
    ax.legend(fontsize=8)
  fig.tight_layout()
  p = os.path.join(workdir, "reliability.png")
  harness.save_figure_atomic(fig, p, dpi=110)
  plt.close(fig)
  paths.append(p)
  return paths


def write_report(results: dict, workdir: str, config) -> str:
  """Writes ``report.md`` (atomically) and the PNG plots; returns the text."""
  text = render_markdown(results, config)
  _files.write_text_atomic(os.path.join(workdir, "report.md"), text)
  plot(results, workdir, config)
  return text


def render(results: dict, workdir: str) -> str:
  """Re-renders the report of ``results`` (with its own config)."""
  return write_report(results, workdir, results["config"])


if __name__ == "__main__":
  harness.report_main(render, name="compare_report")
