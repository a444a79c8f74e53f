"""The tuning run's report: the validation surface and the chosen values.

python -m experiments.tune_report --workdir DIR   # re-render report.md
python -m experiments.tune_report DIR             # and the plot (the same)
"""

from __future__ import annotations

import json
import os

import numpy as np

from dropjax.train import files as _files
from experiments import harness
from experiments import stats


def _records(results, setting, regimen=None, point=None):
  return [
    r
    for r in results["records"]
    if r["setting"] == setting
    and (regimen is None or r["regimen"] == regimen)
    and (point is None or r["point"] == point)
  ]


def overfitting(records: list[dict]) -> dict:
  """Where the mean validation loss over seeds is smallest, and its end.

  Returns:
    ``{"min_loss", "min_step", "min_epoch", "final_loss", "rise",
    "final_train_loss", "best_accuracy", "final_accuracy"}``, means over
    the seeds' curves (all seeds share the evaluation steps).
  """
  curves = [r["validation_curve"] for r in records]
  loss = np.mean([[c["validation_loss"] for c in cv] for cv in curves], 0)
  acc = np.mean([[c["validation_accuracy"] for c in cv] for cv in curves], 0)
  train = np.mean([[c["train_loss"] for c in cv] for cv in curves], 0)
  i = int(np.argmin(loss))
  return {
    "min_loss": float(loss[i]),
    "min_step": int(curves[0][i]["step"]),
    "min_epoch": curves[0][i]["step"]
    * records[0]["epochs"]
    / records[0]["steps"],
    "final_loss": float(loss[-1]),
    "rise": float(loss[-1] - loss[i]),
    "final_train_loss": float(train[-1]),
    "best_accuracy": float(np.max(acc)),
    "final_accuracy": float(acc[-1]),
  }


def edge_axes(config: dict, regimen: str, hparams: dict) -> list[str]:
  """The grid axes of ``regimen`` (with at least 3 values) on whose first or
  last value the chosen ``hparams`` lie."""
  axes = config.get("grid", {}).get(regimen, {})
  out = []
  for name, values in axes.items():
    values = sorted(float(v) for v in values)
    if len(values) >= 3 and float(hparams[name]) in (values[0], values[-1]):
      out.append(f"{name}={float(hparams[name]):g}")
  return out


def tuned_snippet(chosen: dict) -> str:
  """The chosen values as the ``TUNED`` literal of the main job's config."""
  q = json.dumps  # double-quoted strings, as the formatter writes them
  lines = ["TUNED = {"]
  for setting, regs in chosen.items():
    lines.append(f"  {q(setting)}: {{")
    for regimen, c in regs.items():
      hp = ", ".join(f"{q(k)}: {v!r}" for k, v in sorted(c["hparams"].items()))
      lines.append(f"    {q(regimen)}: {{{hp}}},")
    lines.append("  },")
  lines.append("}")
  return "\n".join(lines)


def render_markdown(results: dict) -> str:
  config = results["config"]
  chosen = results.get("chosen", {})
  out = ["# Tuning on the validation split", ""]
  seeds = config["seeds"]
  out.append(
    f"Every regimen's grid, trained on the tuning seeds {list(seeds)} "
    "(disjoint from the main job's), selection by the best validation "
    f"{config['select_metric']} of each run (mean over seeds). The test "
    "split was not evaluated. The analytic regimens are built at "
    f"q = {config['analytic_rate']}. Schedule: linear warm-up over "
    f"{config['warmup_fraction']:.0%} of the steps, cosine decay to 0, "
    f"peak learning rate {config['learning_rate']} ({config['optimizer']}), "
    f"batch {config['batch_size']}."
  )
  out.append("")
  for setting in config["settings"]:
    recs = _records(results, setting)
    if not recs:
      continue
    r0 = recs[0]
    out.append(
      f"## {setting}: {r0['train_size']} training examples, {r0['steps']} "
      f"steps ({r0['epochs']:.0f} epochs)"
    )
    out.append("")
    none = _records(results, setting, "none")
    if none:
      o = overfitting(none)
      verdict = (
        "overfits: its validation loss passes its minimum and rises"
        if o["rise"] > 0.05 * o["min_loss"]
        else "does not clearly overfit (validation loss within 5% of its "
        "minimum at the end)"
      )
      out.append(
        f"Without regularization the network {verdict}: minimum "
        f"{o['min_loss']:.4f} at step {o['min_step']} (epoch "
        f"{o['min_epoch']:.0f}), {o['final_loss']:.4f} at the end; final "
        f"training loss {o['final_train_loss']:.2g}; validation accuracy "
        f"best {o['best_accuracy']:.4f}, final {o['final_accuracy']:.4f}."
      )
      out.append("")
    out.append(
      "| regimen | point | best val. accuracy (mean ± SD) | best val. "
      "loss | best step | |"
    )
    out.append("|---|---|---|---|---|---|")
    for regimen in config["regimens"]:
      c = chosen.get(setting, {}).get(regimen)
      if c is None:
        continue
      for p in c["points"]:
        rs = _records(results, setting, regimen, p["point"])
        loss = stats.summarize(r["best"]["validation"]["loss"] for r in rs)
        step = np.mean([r["best_step"] for r in rs])
        mark = "**chosen**" if p["point"] == c["point"] else ""
        out.append(
          f"| {regimen} | {p['point']} | {p['mean']:.4f} ± {p['sd']:.4f} | "
          f"{loss.mean:.4f} | {step:.0f} | {mark} |"
        )
    out.append("")
    edges = [
      f"{regimen} ({', '.join(axes)})"
      for regimen, c in chosen.get(setting, {}).items()
      if (axes := edge_axes(config, regimen, c["hparams"]))
    ]
    if edges:
      out.append(
        "Chosen at the edge of its grid (the optimum may lie outside; widen "
        f"the grid to be sure): {'; '.join(edges)}."
      )
      out.append("")
    regs = chosen.get(setting, {})
    if "none" in regs and "dropout" in regs:
      d = regs["dropout"]["mean"] - regs["none"]["mean"]
      out.append(
        f"Tuned dropout ({regs['dropout']['point']}) vs none on validation: "
        f"{100 * d:+.2f} pp best-validation accuracy."
      )
      out.append("")
  if results.get("failures"):
    out.append("## Failed points")
    out.append("")
    for f in results["failures"]:
      out.append(f"- {f['setting']}/{f['regimen']}/{f['point']}: {f['error']}")
    out.append("")
  out.append("## Chosen values")
  out.append("")
  out.append("The main job's defaults (`experiments/configs/compare.py`):")
  out.append("")
  out.append("```python")
  out.append(tuned_snippet(chosen))
  out.append("```")
  out.append("")
  out.append(
    f"Wall time {results.get('wall_seconds', 0.0) / 60:.1f} min "
    f"({len(results['records'])} seed-runs)."
  )
  out.append("")
  return "\n".join(out)


def plot(results: dict, workdir: str) -> str | None:
  """``validation_surface.png``: best validation accuracy per grid point."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  config = results["config"]
  chosen = results.get("chosen", {})
  settings = [s for s in config["settings"] if s in chosen]
  regimens = [
    r
    for r in config["regimens"]
    if r != "none" and any(r in chosen[s] for s in settings)
  ]
  if not settings or not regimens:
    return None
  fig, axes = plt.subplots(
    len(settings),
    len(regimens),
    figsize=(3 * len(regimens), 2.6 * len(settings)),
    squeeze=False,
  )
  for i, s in enumerate(settings):
    base = chosen[s].get("none")
    for j, r in enumerate(regimens):
      ax = axes[i][j]
      c = chosen[s].get(r)
      if c is None:
        ax.axis("off")
        continue
      names = sorted(c["points"][0]["hparams"])
      x_axis = names[0]
      groups: dict = {}
      for p in c["points"]:
        rest = tuple((k, p["hparams"][k]) for k in names[1:])
        groups.setdefault(rest, []).append(p)
      for rest, pts in groups.items():
        xs = [p["hparams"][x_axis] for p in pts]
        ys = [p["mean"] for p in pts]
        es = [p["sd"] for p in pts]
        label = ", ".join(f"{k}={v:g}" for k, v in rest) or None
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=2, label=label)
      if x_axis != "rate":
        ax.set_xscale("log")
        ticks = sorted({p["hparams"][x_axis] for p in c["points"]})
        ax.minorticks_off()
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
      if base is not None:
        ax.axhline(base["mean"], color="gray", ls="--", lw=1, label="none")
      ax.set_title(f"{s}: {r} (mean ± SD over seeds)", fontsize=8)
      ax.set_xlabel(x_axis, fontsize=8)
      if j == 0:
        ax.set_ylabel("best val. accuracy", fontsize=8)
      ax.tick_params(labelsize=7)
      ax.legend(fontsize=6)
  fig.tight_layout()
  path = os.path.join(workdir, "validation_surface.png")
  harness.save_figure_atomic(fig, path, dpi=110)
  plt.close(fig)
  return path


def write_report(results: dict, workdir: str) -> str:
  path = os.path.join(workdir, "report.md")
  _files.write_text_atomic(path, render_markdown(results))
  plot(results, workdir)
  return path


def render(results: dict, workdir: str) -> str:
  return write_report(results, workdir)


if __name__ == "__main__":
  harness.report_main(render, name="tune_report")
