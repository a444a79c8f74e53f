r"""Report of the compressibility study: tables, published numbers, verdicts, plots.

    python -m experiments.compressibility_report --workdir DIR

reads ``DIR/results.json`` (written by :mod:`experiments.compressibility`)
and (re)writes ``DIR/report.md``, ``DIR/prune_curves_weight.png``,
``DIR/prune_curves_unit.png`` and ``DIR/clusterability.png``.

Every verdict is computed here from the records; nothing in the report's
conclusions is written by hand. The rule (:func:`compare`): two conditions
differ on a metric when ``|mean_A - mean_B| > n_se * SE`` with the Welch
standard error ``SE = sqrt(sd_A^2 / n_A + sd_B^2 / n_B)`` (sample SDs over
seeds, ``n_se = 2`` by default); each claim lists its metrics and how the
per-metric outcomes combine (:func:`combine`).
"""

from __future__ import annotations

import os

import numpy as np

from experiments import harness
from experiments.compressibility_cost import (  # noqa: F401
  _clustering_cpu,
  cost,
  _cost_lines,
  DEFAULT_TARGET,
  _steady,
)
from experiments.compressibility_plots import (  # noqa: F401
  plot,
  PLOTS,
  _save,
)
from experiments.compressibility_verdicts import (  # noqa: F401
  _acc_change,
  _auc_rel,
  combine,
  compare,
  Comparison,
  _conditions,
  conditions_by_regimen,
  _curve,
  fmt_ms,
  _get,
  _inconclusive,
  _label,
  M,
  Metric,
  _missing,
  _near_isolated,
  _near_isolated_note,
  PROTOCOL,
  _reproduction,
  _side,
  _significant_count,
  summary,
  _table,
  _tally,
  values,
  Verdict,
  verdicts,
)

REPORT_FILE = "report.md"

# Filan et al. 2021 (arXiv:2103.03386), Fashion-MNIST rows of
# results/clustering_factors_mlp.csv in dfilan/clusterability_in_neural_networks: K = 12,
# 50 layer shuffles, 5 nets per row, mean ± SD over nets.
PUBLISHED_FILAN = {
  "none": {
    "unpruned": dict(
      ncut=(9.885, 0.026), shuffled=10.080, z=(-5.4, 0.4), sig="5/5", acc=0.891
    ),
    "pruned": dict(
      ncut=(8.687, 0.142), shuffled=9.032, z=(-10.4, 4.7), sig="5/5", acc=0.894
    ),
  },
  "dropout": {
    "unpruned": dict(
      ncut=(9.698, 0.029), shuffled=10.052, z=(-10.7, 2.6), sig="5/5", acc=0.872
    ),
    "pruned": dict(
      ncut=(8.110, 0.087), shuffled=9.131, z=(-24.7, 1.7), sig="5/5", acc=0.867
    ),
  },
  "l1": {
    "unpruned": dict(
      ncut=(8.407, 0.153), shuffled=7.214, z=(11.5, 0.7), sig="0/5", acc=0.880
    ),
    "pruned": dict(
      ncut=(9.943, 0.438), shuffled=4.591, z=(23.8, 3.1), sig="0/5", acc=0.887
    ),
  },
  "l2": {
    "unpruned": dict(
      ncut=(9.468, 0.074), shuffled=9.185, z=(4.3, 1.8), sig="0/5", acc=0.879
    ),
    "pruned": dict(
      ncut=(8.524, 1.094), shuffled=8.746, z=(-3.9, 12.4), sig="3/5", acc=0.892
    ),
  },
}

# Gomez et al. 2019, arXiv:1905.13678, Table 2 (ResNet-32 on CIFAR-10),
# test accuracy (%) at prune fractions 0, 0.5, 0.7, 0.8, 0.9.
PUBLISHED_TD_FRACTIONS = (0.0, 0.5, 0.7, 0.8, 0.9)
PUBLISHED_TD = {
  "weight": {
    "none": (93.71, 92.20, 81.88, 32.02, 14.63),
    "dropout α=.25": (93.62, 93.07, 72.29, 19.84, 10.05),
    "TD α=.66 γ=.75": (92.64, 92.65, 92.66, 91.86, 67.58),
  },
  "unit": {
    "none": (93.69, 12.63, 11.70, 9.99, 9.85),
    "dropout α=.25": (92.43, 9.97, 10.01, 9.95, 9.98),
    "TD α=.66 γ=.75": (89.38, 84.86, 75.47, 28.99, 9.97),
    "TD α=.90 γ=.75": (89.78, 90.05, 90.03, 34.18, 10.04),
  },
}


# ---------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def deviations(config: dict) -> list[str]:
  """Where ``config`` departs from the published protocol."""
  flat = _flat(config)
  out = []
  for k, v in PROTOCOL.items():
    got = flat.get(k)
    if isinstance(got, (list, tuple)):
      got = list(got)
    if got != v:
      out.append(f"`{k}` = {got!r} (protocol: {v!r})")
  seeds = flat.get("seeds", ())
  if len(seeds) < 3:
    out.append(
      f"{len(seeds)} seed(s) (this study asks for at least 3; "
      "Filan et al. used 5)"
    )
  return out


def _cell(recs, cond, key) -> str:
  m = M[key]
  return fmt_ms(*summary(values(recs, cond, m)), m.fmt)


def _n_ok(recs, cond) -> int:
  return sum(r["condition"] == cond and r["status"] == "ok" for r in recs)


def _curve_at(recs, cond, gran, frac) -> str:
  vals = []
  for r in recs:
    if r["condition"] == cond and r["status"] == "ok":
      c = _get(r, "unpruned", "prune_curves", gran)
      if c and frac in c["fractions"]:
        vals.append(c["accuracies"][c["fractions"].index(frac)])
  return fmt_ms(*summary(np.asarray(vals, dtype=np.float64)), ".3f")


def render(results: dict) -> str:
  """The markdown report."""
  recs = results["records"]
  cfg = results["config"]
  conds = _conditions(results)
  lines = ["# Does dropout make networks simpler? Compressibility study", ""]
  ok = [r for r in recs if r["status"] == "ok"]
  failed = [r for r in recs if r["status"] == "failed"]
  devs = deviations(cfg)
  lines += [
    f"Generated from `results.json`: {len(ok)} finished runs, "
    f"{len(failed)} failed, {len(conds)} conditions; wall time so far "
    f"{results.get('wall_seconds', 0) / 3600:.2f} h. Data: "
    f"{results.get('data', '')}.",
    "",
  ]
  if devs:
    lines += [
      "**Reduced run.** This configuration departs from the "
      "published protocol, so its numbers are not comparable "
      "one-to-one with the published ones:",
      "",
    ]
    lines += [f"- {d}" for d in devs] + [""]
  sched = results.get("pruning_schedule", {})
  lines += [
    "Protocol: MLP "
    f"{'-'.join(str(s) for s in cfg['model']['layer_sizes'])}, "
    f"{cfg['optimizer']} {cfg['learning_rate']:g}, batch "
    f"{cfg['batch_size']}, {cfg['epochs']} epochs (the *unpruned* net), "
    f"then {cfg['prune_epochs']} epochs of gradual magnitude pruning "
    f"(per-layer masks over all kernels, sparsity "
    f"{sched.get('initial', '?')} → {sched.get('final', '?')}, power "
    f"{sched.get('power', '?')}, masks every {sched.get('frequency', '?')} "
    f"steps up to step {sched.get('end_step', '?')}; the *pruned* net). "
    f"Seeds: {', '.join(str(s) for s in cfg['seeds'])}. Clusterability: "
    f"K = {cfg['cluster']['n_clusters']}, {cfg['cluster']['n_shuffles']} "
    f"'{cfg['cluster']['shuffle']}' shuffles. Prune curves: one-shot, no "
    f"fine-tuning, kernels {tuple(cfg['curves']['exclude'])} excluded, "
    f"tolerance {cfg['curves']['tolerance']:g}. Mean ± sample SD over "
    "seeds.",
    "",
  ]

  lines += ["## 1. Accuracy", ""]
  lines += _table(
    [
      "condition",
      "seeds ok",
      "test acc (unpruned)",
      "test acc (pruned)",
      "change",
    ],
    [
      [
        _label(results, c),
        _n_ok(recs, c),
        _cell(recs, c, "acc_unpruned"),
        _cell(recs, c, "acc_pruned"),
        _cell(recs, c, "acc_change"),
      ]
      for c in conds
    ],
  )
  lines += [""]

  lines += [
    "## 2. Sparsity of the weights and activations (unpruned nets)",
    "",
    "All kernels pooled (biases excluded); bits/weight = 8-bit "
    "symmetric quantisation per layer + zlib. Activations: ReLU "
    "outputs of the hidden layers on the test set.",
    "",
  ]
  lines += _table(
    [
      "condition",
      "Hoyer",
      "Gini",
      "share ≤0.01·max",
      "share ≤0.1·sd",
      "bits/weight",
      "bits/weight (pruned)",
      "zero ReLU outputs",
      "dead units",
    ],
    [
      [_label(results, c)]
      + [
        _cell(recs, c, k)
        for k in (
          "hoyer",
          "gini",
          "eps_max",
          "eps_std",
          "bits",
          "bits_pruned",
          "act_zero",
          "dead",
        )
      ]
      for c in conds
    ],
  )
  lines += [""]
  # Exactness of gradual pruning.
  lay = []
  for r in ok:
    for L in _get(r, "pruned", "sparsity", "layers", default=[]) or []:
      lay.append(L["exact_sparsity"])
  if lay:
    lines += [
      f"Per-layer exact sparsity of the pruned nets: min "
      f"{min(lay):.4f}, max {max(lay):.4f} (target "
      f"{sched.get('final', '?')}).",
      "",
    ]

  lines += [
    "## 3. Prunability (one-shot magnitude pruning of the unpruned nets)",
    "",
  ]
  lines += _table(
    [
      "condition",
      "weight AUC",
      "weight AUC − acc",
      "weight max frac",
      "unit AUC",
      "unit AUC − acc",
      "unit max frac",
    ],
    [
      [_label(results, c)]
      + [
        _cell(recs, c, k)
        for k in ("w_auc", "w_auc_rel", "w_max", "u_auc", "u_auc_rel", "u_max")
      ]
      for c in conds
    ],
  )
  lines += [
    "",
    "Accuracy at selected prune fractions (weight / unit level):",
    "",
  ]
  fracs = [
    f for f in (0.5, 0.7, 0.8, 0.9, 0.95) if f in cfg["curves"]["fractions"]
  ]
  lines += _table(
    ["condition"] + [f"w {f:g}" for f in fracs] + [f"u {f:g}" for f in fracs],
    [
      [_label(results, c)]
      + [_curve_at(recs, c, "weight", f) for f in fracs]
      + [_curve_at(recs, c, "unit", f) for f in fracs]
      for c in conds
    ],
  )
  lines += [""]

  lines += [
    "## 4. Clusterability",
    "",
    "n-cut of the weight graph's spectral clustering (lower = more "
    "clusterable), the mean n-cut of shuffled copies, z = (n-cut − "
    "shuffled mean) / shuffled SD (negative = more clusterable than "
    "chance), and how many nets beat every shuffle.",
    "",
  ]
  rows = []
  for c in conds:
    row = [_label(results, c)]
    for stage, nk, zk in (
      ("unpruned", "ncut_u", "z_u"),
      ("pruned", "ncut_p", "z_p"),
    ):
      sm = Metric(
        "sm",
        "",
        lambda r, s=stage: _get(r, s, "clusterability", "shuffled_mean"),
      )
      k, n = _significant_count(recs, c, stage)
      row += [
        _cell(recs, c, nk),
        fmt_ms(*summary(values(recs, c, sm)), ".3f"),
        _cell(recs, c, zk),
        f"{k}/{n}",
        _near_isolated(recs, c, stage),
      ]
    rows.append(row)
  lines += _table(
    [
      "condition",
      "n-cut",
      "shuffled",
      "z",
      "sig.",
      "near-isol.",
      "n-cut pruned",
      "shuffled",
      "z",
      "sig.",
      "near-isol.",
    ],
    rows,
  )
  lines += [""] + _near_isolated_note(recs)

  lines += [
    "## 5. Side by side with Filan et al. (2021), Fashion-MNIST",
    "",
    "Published: 5 nets per row, K = 12, 50 layer shuffles "
    "(Filan et al., arXiv:2103.03386; the Fashion-MNIST rows of "
    "results/clustering_factors_mlp.csv in their code). Their L2 nets carried L1 on the first "
    "layer (a bug in their code); ours are pure L2.",
    "",
  ]
  roles = conditions_by_regimen(results)
  rows = []
  for reg, name in (
    ("none", "control"),
    ("dropout", "dropout"),
    ("l1", "L1"),
    ("l2", "L2"),
  ):
    pub = PUBLISHED_FILAN[reg]
    cond = roles.get(reg)
    for stage, nk, zk, ak in (
      ("unpruned", "ncut_u", "z_u", "acc_unpruned"),
      ("pruned", "ncut_p", "z_p", "acc_pruned"),
    ):
      p = pub[stage]
      if cond:
        k, n = _significant_count(recs, cond, stage)
        ours = [
          _cell(recs, cond, nk),
          _cell(recs, cond, zk),
          f"{k}/{n}",
          _cell(recs, cond, ak),
        ]
      else:
        ours = ["not run"] * 4
      rows.append(
        [
          name,
          stage,
          ours[0],
          f"{p['ncut'][0]:.3f} ± {p['ncut'][1]:.3f}",
          ours[1],
          f"{p['z'][0]:+.1f} ± {p['z'][1]:.1f}",
          ours[2],
          p["sig"],
          ours[3],
          f"{p['acc']:.3f}",
        ]
      )
  lines += _table(
    [
      "condition",
      "net",
      "n-cut (ours)",
      "n-cut (published)",
      "z (ours)",
      "z (published)",
      "sig. (ours)",
      "sig. (published)",
      "acc (ours)",
      "acc (published)",
    ],
    rows,
  )
  lines += [
    "",
    "Targeted dropout, for shape only (Gomez et al. 2019 "
    "Table 2: ResNet-32 on CIFAR-10, accuracy % at prune fractions "
    f"{', '.join(f'{f:g}' for f in PUBLISHED_TD_FRACTIONS)}; "
    "arXiv:1905.13678). Ours in the same columns (accuracy as a "
    "fraction):",
    "",
  ]
  rows = []
  for gran in ("weight", "unit"):
    for name, accs in PUBLISHED_TD[gran].items():
      rows.append([gran, f"published: {name}"] + [f"{a:.2f}" for a in accs])
    for c in conds:
      if c in (
        roles.get("none"),
        roles.get("dropout"),
        roles.get("targeted_weight"),
        roles.get("targeted_unit"),
      ):
        rows.append(
          [gran, f"ours: {_label(results, c)}"]
          + [
            _curve_at(recs, c, gran, f)
            if f in cfg["curves"]["fractions"]
            else "—"
            for f in PUBLISHED_TD_FRACTIONS
          ]
        )
  lines += _table(
    ["level", "net"] + [f"{f:g}" for f in PUBLISHED_TD_FRACTIONS], rows
  )
  lines += [""]

  lines += [
    "## 6. Verdicts",
    "",
    f"Rule: two conditions differ on a metric when |difference of "
    f"means| > {float(cfg.get('verdict', {}).get('n_se', 2.0)):g} "
    "Welch standard errors (sqrt(sd_A²/n_A + sd_B²/n_B), sample SDs "
    "over seeds). A claim is *supported* when more than half of its "
    "metrics significantly favour it and none goes against it, *not "
    "supported* when none favours it, *mixed* otherwise, "
    "*inconclusive* when a condition is missing or has fewer than "
    "two finished seeds. With 3 seeds this is a coarse test: "
    "differences smaller than about two standard deviations are "
    "often missed, so read *no significant difference* as *not "
    "shown*, not as *equal*.",
    "",
  ]
  for v in verdicts(results):
    lines += [
      f"### Claim {v.number}: {v.claim}",
      "",
      f"**Verdict: {v.verdict}.** {v.summary}",
      "",
    ]
    if v.comparisons:
      lines += _table(
        [
          "metric",
          "A",
          "A: mean ± sd (n)",
          "B",
          "B: mean ± sd (n)",
          "A − B",
          "2 SE",
          "outcome",
        ],
        [
          [
            c.metric.label + (" ↓" if c.metric.better == "lower" else " ↑"),
            c.a,
            f"{fmt_ms(c.mean_a, c.sd_a, c.n_a, c.metric.fmt)} ({c.n_a})",
            c.b,
            f"{fmt_ms(c.mean_b, c.sd_b, c.n_b, c.metric.fmt)} ({c.n_b})",
            (format(c.diff, c.metric.fmt) if np.isfinite(c.diff) else "—"),
            (f"{c.n_se * c.se:.3g}" if np.isfinite(c.se) else "—"),
            c.outcome,
          ]
          for c in v.comparisons
        ],
      )
      lines += [
        "",
        "(↑ / ↓: the direction that counts as *more* sparse, "
        "prunable or clusterable.)",
        "",
      ]
    lines += v.extra + [""]

  lines += _cost_lines(results)
  lines += ["## Plots", ""]
  lines += [f"- `{p}`" for p in PLOTS] + [""]
  if failed:
    lines += ["## Failed runs", ""]
    lines += [f"- {r.get('message', r)}" for r in failed] + [""]
  return "\n".join(lines)


def write_report(results: dict, workdir: str) -> str:
  """Writes ``report.md`` and the plots into ``workdir``; returns the
  report's path."""
  from dropjax.train import files

  plot(results, workdir)
  path = os.path.join(workdir, REPORT_FILE)
  files.write_text_atomic(path, render(results) + "\n")
  return path


if __name__ == "__main__":
  harness.report_main(write_report, name="compressibility_report")
