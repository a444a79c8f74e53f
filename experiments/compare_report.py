"""Report and plots of the main job, computed from ``results.json`` only.

    python -m experiments.compare_report --workdir DIR   # re-render report.md
    python -m experiments.compare_report DIR             # and plots (the same)

Every sentence of the report that states a finding is generated from the
numbers: a difference between two regimens is called *clear* when it exceeds
two standard errors of the difference of their seed means
(``sqrt(s1²/n1 + s2²/n2)``), otherwise *within noise*.
"""

from __future__ import annotations

import os

import numpy as np

from dropjax.train import files as _files
from experiments import harness
from experiments import stats


def _stats(values) -> tuple[float, float, int]:
  return tuple(stats.summarize(values))


def summarise(records: list[dict]) -> dict:
  """``{(setting, regimen): {metric: (mean, std, n)}}`` over seeds."""
  groups: dict = {}
  for r in records:
    groups.setdefault((r["setting"], r["regimen"]), []).append(r)
  out = {}
  for key, rs in groups.items():
    gap = [r["train_eval_accuracy"] - r["test_accuracy"] for r in rs]
    out[key] = {
      "test_accuracy": _stats([100 * r["test_accuracy"] for r in rs]),
      "test_loss": _stats([r["test_loss"] for r in rs]),
      "train_accuracy": _stats([100 * r["train_eval_accuracy"] for r in rs]),
      "gap": _stats([100 * g for g in gap]),
      "final_train_loss": _stats([r["final_data_loss"] for r in rs]),
    }
  return out


def compare(summary, setting, a, b, metric="test_accuracy"):
  """``(diff a - b, standard error, clear?)`` or ``None`` if missing."""
  if (setting, a) not in summary or (setting, b) not in summary:
    return None
  ma, sa, na = summary[(setting, a)][metric]
  mb, sb, nb = summary[(setting, b)][metric]
  se = stats.se_of_difference(sa, na, sb, nb)
  diff = ma - mb
  return diff, se, stats.is_clear(diff, se)


def _fmt(stat, digits=2):
  m, s, n = stat
  if n == 0:
    return "–"
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def regimen_label(regimen: str, config) -> str:
  """The name a regimen has in the paper and in tables (e.g. DROPOUT_8)."""
  k = int(config.k)
  return {
    "none": "none",
    "dropout": "dropout",
    "dropout_k": f"DROPOUT_{k}",
    "dropout_k_fix_noise": f"DROPOUT_{k} + fix-noise",
    "dropout_k_implicit": f"DROPOUT_{k} + implicit",
    "explicit": "explicit",
    "implicit": "implicit",
    "explicit_implicit": "explicit + implicit",
    "l1": f"L1 ({config.l1:g})",
    "l2": f"L2 ({config.l2:g})",
  }.get(regimen, regimen)


_label = regimen_label


def _sentence(summary, setting, a, b, config, what, target=None):
  c = compare(summary, setting, a, b)
  if c is None:
    return None
  diff, se, clear = c
  la, lb = _label(a, config), _label(b, config)
  verdict = (
    "a clear difference"
    if clear
    else "within noise (less than two standard errors)"
  )
  s = (
    f"{what}: {la} {'+' if diff >= 0 else '−'}{abs(diff):.2f} pp test "
    f"accuracy relative to {lb} (± {se:.2f} pp standard error; {verdict})"
  )
  if target is not None:
    s += (
      f"; the target |gap| ≤ {target} pp is "
      f"{'met' if abs(diff) <= target else 'not met'}"
    )
  return s + "."


def findings(summary, config) -> list[str]:
  """The report's paragraph, one sentence per comparison, per setting."""
  k = int(config.k)
  out = []
  for setting in config.settings:
    label = {"full": "Full training set", "small": "Small training subset"}.get(
      setting, setting
    )
    ss = []
    for a, b, what, target in (
      ("explicit_implicit", "dropout", "Analytic replacement vs dropout", 0.5),
      ("dropout", "none", "Effect of dropout", None),
      ("dropout_k", "dropout", f"DROPOUT_{k} vs DROPOUT_1", None),
      (
        "dropout_k_fix_noise",
        "dropout_k",
        "Restoring the noise with fix-noise",
        None,
      ),
      (
        "dropout_k_implicit",
        "dropout_k",
        "Restoring the noise with the implicit regularizer",
        None,
      ),
      (
        "explicit",
        "explicit_implicit",
        "Explicit alone vs explicit + implicit",
        None,
      ),
      ("l2", "dropout", "L2 vs dropout", None),
    ):
      s = _sentence(summary, setting, a, b, config, what, target)
      if s:
        ss.append(s)
    if ss:
      out.append(f"**{label}.** " + " ".join(ss))
  return out


def render_markdown(results: dict, config) -> str:
  summary = summarise(results["records"])
  lines = ["# Dropout vs its analytic replacement", ""]
  cfg = results.get("config", {})
  model = cfg.get("model", {})
  lines += [
    f"Data: `{cfg.get('data', {}).get('source')}`; model "
    f"`{model.get('name')}` {tuple(model.get('layer_sizes', ()))}; drop "
    f"rate q = {cfg.get('rate')} at every hidden site; "
    f"{cfg.get('optimizer')} lr {cfg.get('learning_rate')}, batch "
    f"{cfg.get('batch_size')}; seeds {list(cfg.get('seeds', []))}; "
    f"explicit estimator `{cfg.get('estimator')}` at scale "
    f"{cfg.get('explicit_scale')}, implicit scale "
    f"{cfg.get('implicit_scale')}. Numbers are mean ± std over seeds, at the "
    "end of training (no early stopping). The train–test gap is accuracy "
    "on a fixed subset of the training examples minus test accuracy, in "
    "percentage points.",
    "",
  ]
  if "wall_seconds" in results:
    lines += [
      f"Wall time of the whole job: {results['wall_seconds'] / 60:.1f} min.",
      "",
    ]
  for setting in config.settings:
    steps = cfg.get(setting, {}).get("steps")
    size = cfg.get(setting, {}).get("train_size") or "all"
    lines += [
      f"## Setting `{setting}` (train size {size}, {steps} steps)",
      "",
      "| regimen | test acc (%) | test loss | train acc (%) | "
      "train–test gap (pp) | final train loss |",
      "|---|---|---|---|---|---|",
    ]
    for regimen in config.regimens:
      s = summary.get((setting, regimen))
      if s is None:
        continue
      lines.append(
        f"| {_label(regimen, config)} | {_fmt(s['test_accuracy'])} | "
        f"{_fmt(s['test_loss'], 4)} | {_fmt(s['train_accuracy'])} | "
        f"{_fmt(s['gap'])} | {_fmt(s['final_train_loss'], 4)} |"
      )
    lines.append("")
  lines += ["## What the numbers show", ""]
  lines += [p + "\n" for p in findings(summary, config)]
  if results.get("failures"):
    lines += ["## Failed runs", ""]
    lines += [
      f"- `{f['setting']}/{f['regimen']}`: {f['error']}"
      for f in results["failures"]
    ]
    lines.append("")
  lines += [
    "Plots: `learning_curves.png` (validation accuracy, mean over "
    "seeds), `test_accuracy.png` (mean ± std over seeds).",
    "",
  ]
  return "\n".join(lines)


def plot(results: dict, workdir: str, config) -> list[str]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = results["records"]
  settings = [
    s for s in config.settings if any(r["setting"] == s for r in records)
  ]
  if not settings:
    return []
  paths = []
  fig, axes = plt.subplots(
    1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False
  )
  for ax, setting in zip(axes[0], settings):
    for regimen in config.regimens:
      rs = [
        r
        for r in records
        if r["setting"] == setting and r["regimen"] == regimen
      ]
      if not rs:
        continue
      ep = [p["epoch"] for p in rs[0]["validation_curve"]]
      acc = np.mean(
        [
          [100 * p["validation_accuracy"] for p in r["validation_curve"]]
          for r in rs
        ],
        axis=0,
      )
      ax.plot(ep, acc, marker=".", label=_label(regimen, config))
    ax.set_title(f"{setting}: validation accuracy (mean over seeds)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  p = os.path.join(workdir, "learning_curves.png")
  harness.save_figure_atomic(fig, p, dpi=120)
  plt.close(fig)
  paths.append(p)

  summary = summarise(records)
  fig, axes = plt.subplots(
    1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False
  )
  for ax, setting in zip(axes[0], settings):
    regs = [r for r in config.regimens if (setting, r) in summary]
    m = [summary[(setting, r)]["test_accuracy"][0] for r in regs]
    s = [summary[(setting, r)]["test_accuracy"][1] for r in regs]
    ax.bar(range(len(regs)), m, yerr=s, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(regs)))
    ax.set_xticklabels(
      [_label(r, config) for r in regs], rotation=35, ha="right", fontsize=8
    )
    lo = min(mm - ss for mm, ss in zip(m, s))
    hi = max(mm + ss for mm, ss in zip(m, s))
    ax.set_ylim(lo - 0.6 * (hi - lo + 0.5), hi + 0.3 * (hi - lo + 0.5))
    ax.set_title(f"{setting}: test accuracy (mean ± std over seeds)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  p = os.path.join(workdir, "test_accuracy.png")
  harness.save_figure_atomic(fig, p, dpi=120)
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
  import ml_collections

  return write_report(
    results, workdir, ml_collections.ConfigDict(results["config"])
  )


if __name__ == "__main__":
  harness.report_main(render, name="compare_report")
