r"""Report of the language-model experiment, from ``results.json`` only.

    python -m experiments.language_model_report --workdir DIR

(re)writes ``DIR/report.md``, ``DIR/{val_curves,final_bpc}.png``: the table
of bits per character (mean ± std over seeds) and one paragraph per claim of
the paper, each verdict computed from the numbers. A difference is
*resolved* when it exceeds both twice its standard error (from the
seed-to-seed spread, :mod:`experiments.stats`) and :data:`MIN_EFFECT_BPC`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Sequence

import numpy as np

from experiments import harness
from experiments import stats

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
CURVES_PNG = "val_curves.png"
FINAL_PNG = "final_bpc.png"
# Threshold below which a difference in bits per character is called "no
# difference" whatever the seeds say.
MIN_EFFECT_BPC = 0.005


# ------------------------------------------------------------------ regimens


@dataclasses.dataclass(frozen=True)
class Regimen:
  """One regimen of the experiment.

  Attributes:
    name: as in ``config.regimens`` (e.g. ``"dropout_8_fix_noise"``).
    objective: the :data:`dropjax.objectives.REGIMENS` key.
    k: masks per step (1 for the non-DROPOUT_k regimens, 0 for ``none`` and
      the analytic ones, which use no mask).
    locked: an analytic regimen whose regularizers treat the locked sites
      as locked (``broadcast_axes``; the ``_locked`` suffix), instead of
      element-wise as the paper's code does.
    batch_multiplier: the larger-batch control ``dropout_1_batchM``:
      DROPOUT_1 on ``M`` times the streams per step (minibatch noise
      averaged as well as mask noise), the same number of steps.
  """

  name: str
  objective: str
  k: int
  locked: bool = False
  batch_multiplier: int = 1


_DROPOUT_RE = re.compile(r"^dropout_(\d+)(_fix_noise|_implicit)?$")
_BATCH_RE = re.compile(r"^dropout_1_batch(\d+)$")


def parse_regimen(name: str) -> Regimen:
  """Parses a regimen name.

  Raises:
    ValueError: unknown name (the message lists the valid forms).
  """
  name = name.strip()
  if name in ("none", "explicit", "implicit", "explicit_implicit"):
    return Regimen(name, name, 0)
  base = name.removesuffix("_locked")
  if base != name and base in ("explicit", "implicit", "explicit_implicit"):
    return Regimen(name, base, 0, locked=True)
  m = _BATCH_RE.match(name)
  if m and int(m.group(1)) >= 1:
    return Regimen(name, "dropout", 1, batch_multiplier=int(m.group(1)))
  m = _DROPOUT_RE.match(name)
  if m and int(m.group(1)) >= 1:
    k = int(m.group(1))
    suffix = m.group(2) or ""
    if suffix and k < 2:
      raise ValueError(f"{name!r}: fix-noise / implicit need k >= 2.")
    objective = {
      "": "dropout_k",
      "_fix_noise": "dropout_k_fix_noise",
      "_implicit": "dropout_k_implicit",
    }[suffix]
    if objective == "dropout_k" and k == 1:
      objective = "dropout"
    return Regimen(name, objective, k)
  raise ValueError(
    f"unknown regimen {name!r}; valid: none, dropout_K, dropout_K_fix_noise, "
    "dropout_K_implicit (K >= 1, >= 2 for the last two), explicit, implicit, "
    "explicit_implicit, and the last three with _locked (regularizers of the "
    "locked masks), dropout_1_batchM (DROPOUT_1 on M times the streams)."
  )


def parse_regimens(spec: str | Sequence[str]) -> list[Regimen]:
  """Parses ``"a,b,c"`` (or a sequence of names), keeping order, no repeats."""
  names = spec.split(",") if isinstance(spec, str) else list(spec)
  out, seen = [], set()
  for n in names:
    if not n.strip():
      continue
    r = parse_regimen(n)
    if r.name in seen:
      raise ValueError(f"regimen {r.name!r} is listed twice.")
    seen.add(r.name)
    out.append(r)
  if not out:
    raise ValueError("no regimen given.")
  return out


# -------------------------------------------------------------------- report


@dataclasses.dataclass
class Stat:
  """Mean, sample std and count of one metric over seeds."""

  mean: float
  std: float
  n: int

  def fmt(self) -> str:
    if self.n == 0:
      return "–"
    if self.n == 1:
      return f"{self.mean:.4f}"
    return f"{self.mean:.4f} ± {self.std:.4f}"


def stat(records: list[dict], regimen: str, key: str) -> Stat:
  vals = [
    r[key]
    for r in records
    if r["regimen"] == regimen
    and r["status"] == "ok"
    and r.get(key) is not None
  ]
  return Stat(*stats.summarize(vals))


@dataclasses.dataclass
class Diff:
  """``a - b`` with its standard error and whether it is resolved."""

  d: float
  se: float

  @property
  def resolved(self) -> bool:
    """``|d|`` above both ``2 se`` and :data:`MIN_EFFECT_BPC`."""
    return stats.is_clear(
      self.d,
      self.se,
      min_effect=MIN_EFFECT_BPC,
      zero_se_ok=True,
      unknown_se_ok=True,
    )

  def fmt(self) -> str:
    se = f"{self.se:.4f}" if math.isfinite(self.se) else "n/a"
    return f"{self.d:+.4f} bpc (standard error {se})"


def diff(a: Stat, b: Stat) -> Diff | None:
  if a.n == 0 or b.n == 0:
    return None
  se = stats.se_of_difference(a.std, a.n, b.std, b.n, min_n=2)
  return Diff(a.mean - b.mean, se)


METRIC = "val_bpc"
METRIC_NAME = "final validation bits per character"


def claim_k_degrades(records, names) -> str:
  ks = sorted(
    {r["k"] for r in records if r["objective"] in ("dropout", "dropout_k")}
  )
  by_k = {
    k: stat(records, "dropout_1" if k == 1 else f"dropout_{k}", METRIC)
    for k in ks
  }
  by_k = {k: s for k, s in by_k.items() if s.n}
  head = (
    "**Claim 1 — DROPOUT_k degrades as k grows** (same expected update, "
    "1/k of the dropout noise). "
  )
  if len(by_k) < 2 or 1 not in by_k:
    return head + (
      "Not testable here: it needs DROPOUT_1 and at least one "
      "k > 1 with finished seeds."
    )
  kmax = max(by_k)
  seq = ", ".join(f"k={k}: {s.mean:.4f}" for k, s in sorted(by_k.items()))
  d = diff(by_k[kmax], by_k[1])
  steps = [
    diff(by_k[b], by_k[a]) for a, b in zip(sorted(by_k), sorted(by_k)[1:])
  ]
  ups = sum(1 for s in steps if s.resolved and s.d > 0)
  downs = sum(1 for s in steps if s.resolved and s.d < 0)
  text = (
    f"Mean {METRIC_NAME}: {seq}. DROPOUT_{kmax} minus DROPOUT_1: {d.fmt()}. "
  )
  if d.resolved and d.d > 0 and downs == 0:
    verdict = (
      f"**Supported**: larger k is worse, and no step from one k to "
      f"the next goes the other way by more than the noise "
      f"({ups} of {len(steps)} steps are resolved increases)."
    )
  elif d.resolved and d.d > 0:
    verdict = (
      f"**Partly supported**: DROPOUT_{kmax} is worse than "
      f"DROPOUT_1, but the trend is not monotone ({downs} resolved "
      "decrease(s) between consecutive k)."
    )
  elif d.resolved and d.d < 0:
    verdict = (
      f"**Not supported — reversed**: DROPOUT_{kmax} is *better* "
      "than DROPOUT_1 in this setting."
    )
  else:
    verdict = (
      "**Not supported**: the difference is within the seed noise "
      f"(or below {MIN_EFFECT_BPC} bpc)."
    )
  return head + text + verdict


def claim_noise_repairs(records, names) -> str:
  head = (
    "**Claim 2 — restoring the update noise repairs DROPOUT_k** "
    "(fix-noise adds DROPOUT_1's noise back with two extra masks; the "
    "implicit regularizer adds its Taylor approximation). "
  )
  ks = sorted(
    {
      r["k"]
      for r in records
      if r["objective"] in ("dropout_k_fix_noise", "dropout_k_implicit")
    }
  )
  if not ks:
    return head + "Not testable here: no fix-noise / implicit regimen ran."
  k = max(ks)
  d1 = stat(records, "dropout_1", METRIC)
  dk = stat(records, f"dropout_{k}", METRIC)
  if d1.n == 0 or dk.n == 0:
    return head + (
      f"Not testable here: it needs DROPOUT_1 and DROPOUT_{k} "
      "with finished seeds."
    )
  gap = diff(dk, d1)
  parts = [
    f"Mean {METRIC_NAME}: DROPOUT_1 {d1.mean:.4f}, DROPOUT_{k} "
    f"{dk.mean:.4f} (gap {gap.fmt()})."
  ]
  premise = gap.resolved and gap.d > 0
  verdicts = []
  for suffix, label in (("fix_noise", "fix-noise"), ("implicit", "+ implicit")):
    s = stat(records, f"dropout_{k}_{suffix}", METRIC)
    if s.n == 0:
      continue
    vs_k = diff(s, dk)
    vs_1 = diff(s, d1)
    frac = (dk.mean - s.mean) / gap.d if gap.d else float("nan")
    parts.append(
      f"DROPOUT_{k} {label}: {s.mean:.4f} ({vs_k.fmt()} against "
      f"DROPOUT_{k}, {vs_1.fmt()} against DROPOUT_1"
      + (f"; it recovers {100 * frac:.0f}% of the gap" if premise else "")
      + ")."
    )
    if not premise:
      if gap.resolved and vs_k.resolved and vs_k.d > 0:
        verdicts.append(
          f"{label} undoes {100 * frac:.0f}% of DROPOUT_{k}'s advantage"
        )
      else:
        verdicts.append(f"{label}: nothing to repair")
    elif vs_k.resolved and vs_k.d < 0 and frac >= 0.5:
      verdicts.append(f"{label}: supported")
    elif vs_k.resolved and vs_k.d < 0:
      verdicts.append(f"{label}: partly supported (less than half the gap)")
    else:
      verdicts.append(f"{label}: not supported")
  if len(parts) == 1:
    return head + "Not testable here: no fix-noise / implicit seeds finished."
  if not premise:
    tail = (
      f"**Not testable as stated**: DROPOUT_{k} is not resolvably worse "
      "than DROPOUT_1 here, so there is no degradation to repair ("
      + "; ".join(verdicts)
      + ")."
    )
    if gap.resolved and any("undoes" in v for v in verdicts):
      tail += (
        f" The update noise is still what separates DROPOUT_{k} from "
        "DROPOUT_1 — restoring it moves DROPOUT_{k} back towards "
        "DROPOUT_1 — but in this setting the noise hurts instead of "
        "helping."
      ).replace("{k}", str(k))
  else:
    tail = "**Verdict** — " + "; ".join(verdicts) + "."
  return head + " ".join(parts) + " " + tail


def claim_analytic_matches(records, names) -> str:
  head = (
    "**Claim 3 — explicit + implicit matches dropout** (Algorithm 2 "
    "replaces the dropout masks by the two analytic terms). "
  )
  ei = stat(records, "explicit_implicit", METRIC)
  d1 = stat(records, "dropout_1", METRIC)
  if ei.n == 0 or d1.n == 0:
    return head + (
      "Not testable here: it needs explicit_implicit and "
      "dropout_1 with finished seeds."
    )
  none = stat(records, "none", METRIC)
  ex = stat(records, "explicit", METRIC)
  d = diff(ei, d1)
  parts = [
    f"Mean {METRIC_NAME}: dropout {d1.mean:.4f}, explicit + implicit "
    f"{ei.mean:.4f} (difference {d.fmt()})."
  ]
  d_none = diff(d1, none) if none.n else None
  if none.n:
    parts.append(
      f"No regularization: {none.mean:.4f} (dropout minus none {d_none.fmt()})."
    )
  if ex.n:
    parts.append(
      f"Explicit alone: {ex.mean:.4f} ({diff(ex, d1).fmt()} against dropout)."
    )
  if not d.resolved:
    if d_none is not None and d_none.resolved and d_none.d < 0:
      ei_none = diff(ei, none)
      tail = (
        "**Supported**: the analytic replacement is within the noise "
        "of dropout, and dropout itself is resolvably better than no "
        "regularization"
        + (
          " (so is the replacement)."
          if ei_none.resolved and ei_none.d < 0
          else ", though the replacement is not resolvably better than none."
        )
      )
    else:
      tail = (
        "**Supported only weakly**: the two are within the noise of "
        "each other, but dropout does not resolvably beat no "
        "regularization here, so matching it says little."
      )
  elif d.d > 0:
    tail = (
      "**Not supported**: the analytic replacement is resolvably worse "
      "than dropout."
    )
  else:
    tail = (
      "**Not supported as a match — it is better**: the analytic "
      "replacement is resolvably better than dropout here."
    )
  return head + " ".join(parts) + " " + tail


def _arch_title(cfg: dict) -> str:
  return "Transformer" if cfg["model"].get("arch") == "transformer" else "LSTM"


def _model_line(cfg: dict) -> str:
  m, r = cfg["model"], cfg["rates"]
  if m.get("arch") == "transformer":
    return (
      f"decoder-only Transformer {m['num_layers']} x {m['embed_dim']} "
      f"({m['num_heads']} heads, feed-forward {m['ff_dim']}, {m['positions']} "
      f"positions, context {m['max_len']}, tied={m['tie_weights']}), rates "
      f"emb/att/res/ff/final = {r['emb']}/{r['att']}/{r['res']}/{r['ff']}/"
      f"{r['final']}"
    )
  return (
    f"LSTM {m['num_layers']} x {m['hidden_size']} (embedding "
    f"{m['embed_dim']}, tied={m['tie_weights']}), rates emb/h/out/w_hh = "
    f"{r['emb']}/{r['hidden']}/{r['out']}/{r['weight']}"
  )


def _schedule_line(cfg: dict) -> str:
  w = cfg.get("warmup_fraction")
  if w is None:
    return ""
  return f" ({w:.0%} linear warm-up, cosine decay to 0)"


def write_report(workdir: str, results: dict, regimens: list[Regimen]):
  """Writes ``report.md`` and the two PNGs from ``results``."""
  records = results["records"]
  cfg = results["config"]
  names = [r.name for r in regimens]
  lines = [
    f"# Character-level {_arch_title(cfg)} language model: dropout vs its "
    "analytic replacement",
    "",
    f"Corpus `{cfg['corpus']}` (first {cfg['train_tokens'] or 'all'} "
    f"training characters), {_model_line(cfg)}, {cfg['optimizer']} lr "
    f"{cfg['learning_rate']}{_schedule_line(cfg)}, {cfg['steps']} steps of "
    f"{cfg['batch_size']} x {cfg['bptt']} characters, seeds "
    f"{list(cfg['seeds'])}. Explicit estimator `{cfg['estimator']}`, "
    f"explicit scale {cfg['explicit_scale']} (1 = Taylor-faithful "
    f"q/(2(1-q))), implicit scale {cfg['implicit_scale']}. Wall time "
    f"{results['wall_seconds_total'] / 60:.1f} min.",
    "",
    "Bits per character (mean ± std over seeds; *final*: parameters after "
    "the last step; *best*: parameters at the best point of the "
    "validation curve, evaluated on the full splits). Train bpc: mean "
    "training loss (with the regimen's noise) over the last evaluation "
    "interval.",
    "",
    "| regimen | k | seeds ok | val bpc (final) | test bpc (final) | "
    "val bpc (best) | test bpc (best) | train bpc |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for reg in regimens:
    n_all = sum(1 for r in records if r["regimen"] == reg.name)
    if n_all == 0:
      lines.append(f"| {reg.name} | {reg.k} | not run | | | | | |")
      continue
    s = {
      k: stat(records, reg.name, k)
      for k in (
        "val_bpc",
        "test_bpc",
        "best_val_bpc",
        "best_test_bpc",
        "train_bpc",
      )
    }
    lines.append(
      f"| {reg.name} | {reg.k} | {s['val_bpc'].n}/{n_all} | "
      f"{s['val_bpc'].fmt()} | {s['test_bpc'].fmt()} | "
      f"{s['best_val_bpc'].fmt()} | {s['best_test_bpc'].fmt()} | "
      f"{s['train_bpc'].fmt()} |"
    )
  failed = [r for r in records if r["status"] != "ok"]
  if failed or results.get("errors"):
    lines += ["", "## Failures", ""]
    lines += [f"- {r['failure']['message']}" for r in failed]
    lines += [f"- regimen {k}: {v}" for k, v in results["errors"].items()]
  lines += [
    "",
    "## The paper's claims, checked against these numbers",
    "",
    f"A difference is called *resolved* when it exceeds both twice its "
    f"standard error (from the seed-to-seed spread) and {MIN_EFFECT_BPC} "
    f"bpc; the metric is the {METRIC_NAME}.",
    "",
    claim_k_degrades(records, names),
    "",
    claim_noise_repairs(records, names),
    "",
    claim_analytic_matches(records, names),
    "",
    f"![validation curves]({CURVES_PNG})",
    "",
    f"![final bpc]({FINAL_PNG})",
    "",
  ]
  _write_text(os.path.join(workdir, REPORT_FILE), "\n".join(lines))
  plot_curves(os.path.join(workdir, CURVES_PNG), records, regimens)
  plot_final(os.path.join(workdir, FINAL_PNG), records, regimens)


def _write_text(path: str, text: str):
  """Writes ``text`` atomically (temp file in the same directory + rename)."""
  harness.write_text_atomic(path, text)


def _savefig_atomic(fig, path: str):
  """Saves a figure atomically (temp PNG in the same directory + rename)."""
  harness.save_figure_atomic(fig, path, dpi=110, bbox_inches="tight")


def plot_curves(path: str, records, regimens):
  """Validation curves: all steps (left) and the second half, zoomed (right)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  zoom_vals = []
  for reg in regimens:
    rs = [
      r
      for r in records
      if r["regimen"] == reg.name and r["status"] == "ok" and r["curve"]
    ]
    if not rs:
      continue
    steps = np.array([p["step"] for p in rs[0]["curve"]])
    vals = np.array(
      [
        [
          p["val_bpc"] if p["val_bpc"] is not None else np.nan
          for p in r["curve"]
        ]
        for r in rs
      ],
      np.float64,
    )
    mean = np.nanmean(vals, 0)
    style = "--" if reg.objective.startswith(("explicit", "implicit")) else "-"
    half = steps >= steps.max() / 2
    zoom_vals.extend(vals[:, half].ravel().tolist())
    for ax in axes:
      (line,) = ax.plot(
        steps, mean, marker=".", label=reg.name, linestyle=style
      )
      if len(rs) > 1:
        ax.fill_between(
          steps,
          np.nanmin(vals, 0),
          np.nanmax(vals, 0),
          color=line.get_color(),
          alpha=0.15,
        )
  zoom = np.asarray(zoom_vals, np.float64)
  zoom = zoom[np.isfinite(zoom)]
  if zoom.size:
    pad = 0.1 * max(zoom.max() - zoom.min(), 1e-3)
    axes[1].set_ylim(zoom.min() - pad, zoom.max() + pad)
    xmax = max(
      p["step"] for r in records if r["status"] == "ok" for p in r["curve"]
    )
    axes[1].set_xlim(xmax / 2 * 0.95, xmax * 1.02)
  axes[0].set_title("Validation curves (mean over seeds, band: min–max)")
  axes[1].set_title("Second half, zoomed")
  for ax in axes:
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("validation bits per character (curve subset)")
  axes[1].legend(fontsize=8, ncol=2)
  _savefig_atomic(fig, path)
  plt.close(fig)


def plot_final(path: str, records, regimens):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = [r.name for r in regimens]
  fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4.5))
  x = np.arange(len(names))
  for off, key, label in (
    (-0.2, "val_bpc", "validation"),
    (0.2, "test_bpc", "test"),
  ):
    st = [stat(records, n, key) for n in names]
    ax.bar(
      x + off,
      [s.mean if s.n else 0 for s in st],
      width=0.4,
      yerr=[s.std if s.n > 1 else 0 for s in st],
      capsize=3,
      label=label,
    )
  vals = [
    stat(records, n, k).mean
    for n in names
    for k in ("val_bpc", "test_bpc")
    if stat(records, n, k).n
  ]
  if vals:
    lo, hi = min(vals), max(vals)
    pad = max(0.05, 0.5 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
  ax.set_xticks(x, names, rotation=30, ha="right")
  ax.set_ylabel("bits per character (final parameters)")
  ax.set_title("Final bpc, mean ± std over seeds")
  ax.grid(axis="y", alpha=0.3)
  ax.legend()
  _savefig_atomic(fig, path)
  plt.close(fig)


def render(results: dict, workdir: str) -> None:
  """Re-renders the report of ``results`` (its config's regimens)."""
  write_report(workdir, results, parse_regimens(results["config"]["regimens"]))


if __name__ == "__main__":
  harness.report_main(render, name="language_model_report")
