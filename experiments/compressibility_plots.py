"""Plots of the compressibility study, from ``results.json`` only."""

from __future__ import annotations

import os

import numpy as np

from experiments import harness
from experiments.compressibility_verdicts import _conditions, _get, _label

PLOTS = (
  "prune_curves_weight.png",
  "prune_curves_unit.png",
  "clusterability.png",
)


def _save(fig, path: str) -> None:
  """Saves a figure as PNG atomically (temp file + ``os.replace``)."""
  harness.save_figure_atomic(fig, path, dpi=120)


def plot(results: dict, workdir: str) -> list[str]:
  """Writes the PNG plots; returns their paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  recs = [r for r in results["records"] if r["status"] == "ok"]
  conds = [
    c for c in _conditions(results) if any(r["condition"] == c for r in recs)
  ]
  colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(conds)}
  paths = []
  for gran in ("weight", "unit"):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in conds:
      curves = [
        _get(r, "unpruned", "prune_curves", gran)
        for r in recs
        if r["condition"] == c
      ]
      curves = [cv for cv in curves if cv]
      if not curves:
        continue
      f = np.asarray(curves[0]["fractions"])
      acc = np.asarray([cv["accuracies"] for cv in curves])
      mean = acc.mean(axis=0)
      sd = acc.std(axis=0, ddof=1) if len(acc) > 1 else np.zeros_like(mean)
      ax.plot(
        f,
        mean,
        marker="o",
        ms=3,
        color=colors[c],
        label=f"{_label(results, c)} (n={len(acc)})",
      )
      ax.fill_between(f, mean - sd, mean + sd, color=colors[c], alpha=0.2)
    ax.set_xlabel(
      f"fraction pruned ({gran} level, one-shot, first and last layer kept)"
    )
    ax.set_ylabel("test accuracy")
    ax.set_title(
      f"{gran.capitalize()}-level prune–accuracy curves (mean ± SD over seeds)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, f"prune_curves_{gran}.png")
    _save(fig, path)
    plt.close(fig)
    paths.append(path)

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  x = np.arange(len(conds))
  w = 0.38
  for ax, (metric, title) in zip(
    axes,
    (
      ("ncut", "n-cut (lower = more clusterable)"),
      ("z", "z vs shuffles (negative = clusterable)"),
    ),
  ):
    ax_lows = []
    for j, stage in enumerate(("unpruned", "pruned")):
      means, sds, shuf = [], [], []
      for c in conds:
        v = np.asarray(
          [
            _get(r, stage, "clusterability", metric)
            for r in recs
            if r["condition"] == c
          ],
          dtype=float,
        )
        v = v[np.isfinite(v)]
        means.append(v.mean() if v.size else np.nan)
        sds.append(v.std(ddof=1) if v.size > 1 else 0.0)
        s = np.asarray(
          [
            _get(r, stage, "clusterability", "shuffled_mean")
            for r in recs
            if r["condition"] == c
          ],
          dtype=float,
        )
        shuf.append(s.mean() if s.size else np.nan)
      ax_lows += [m - s for m, s in zip(means, sds)] + shuf
      pos = x + (j - 0.5) * w
      ax.bar(
        pos,
        means,
        w,
        yerr=sds,
        capsize=3,
        label=stage,
        color=("tab:blue", "tab:orange")[j],
        alpha=0.8,
      )
      if metric == "ncut":
        ax.scatter(
          pos,
          shuf,
          marker="_",
          s=200,
          color="k",
          zorder=3,
          label="shuffled mean" if j == 0 else None,
        )
    if metric == "ncut":
      lows = [v for v in ax_lows if np.isfinite(v)]
      if lows:
        ax.set_ylim(max(0.0, min(lows) - 1.0), None)
    else:
      ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(
      [_label(results, c) for c in conds], rotation=35, ha="right", fontsize=7
    )
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(
    "Clusterability before and after gradual pruning (mean ± SD over seeds)"
  )
  fig.tight_layout()
  path = os.path.join(workdir, "clusterability.png")
  _save(fig, path)
  plt.close(fig)
  paths.append(path)
  return paths
