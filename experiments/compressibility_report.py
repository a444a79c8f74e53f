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

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from experiments import stats

REPORT_FILE = "report.md"
PLOTS = ("prune_curves_weight.png", "prune_curves_unit.png",
         "clusterability.png")

# Filan et al. 2021, Fashion-MNIST rows (reference note §2.5): K = 12,
# 50 layer shuffles, 5 nets per row, mean ± SD over nets.
PUBLISHED_FILAN = {
    "none": {
        "unpruned": dict(ncut=(9.885, 0.026), shuffled=10.080, z=(-5.4, 0.4),
                         sig="5/5", acc=0.891),
        "pruned": dict(ncut=(8.687, 0.142), shuffled=9.032, z=(-10.4, 4.7),
                       sig="5/5", acc=0.894)},
    "dropout": {
        "unpruned": dict(ncut=(9.698, 0.029), shuffled=10.052,
                         z=(-10.7, 2.6), sig="5/5", acc=0.872),
        "pruned": dict(ncut=(8.110, 0.087), shuffled=9.131, z=(-24.7, 1.7),
                       sig="5/5", acc=0.867)},
    "l1": {
        "unpruned": dict(ncut=(8.407, 0.153), shuffled=7.214, z=(11.5, 0.7),
                         sig="0/5", acc=0.880),
        "pruned": dict(ncut=(9.943, 0.438), shuffled=4.591, z=(23.8, 3.1),
                       sig="0/5", acc=0.887)},
    "l2": {
        "unpruned": dict(ncut=(9.468, 0.074), shuffled=9.185, z=(4.3, 1.8),
                         sig="0/5", acc=0.879),
        "pruned": dict(ncut=(8.524, 1.094), shuffled=8.746, z=(-3.9, 12.4),
                       sig="3/5", acc=0.892)},
}

# Gomez et al. 2019, Table 2 (ResNet-32 on CIFAR-10; reference note §1.7),
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

# The protocol the study reproduces (for the "deviations" list).
PROTOCOL = {
    "model.layer_sizes": [784, 256, 256, 256, 256, 10],
    "epochs": 20, "prune_epochs": 20, "batch_size": 128,
    "learning_rate": 0.001, "optimizer": "adam",
    "data.validation_size": 0, "data.train_size": 0,
    "pruning.initial_sparsity": 0.5, "pruning.final_sparsity": 0.9,
    "pruning.power": 3.0, "pruning.frequency": 10,
    "cluster.n_clusters": 12, "cluster.n_shuffles": 50,
    "cluster.shuffle": "layer",
}


# ---------------------------------------------------------------------------
# Metrics: functions of one record.
# ---------------------------------------------------------------------------


def _get(rec: dict, *path, default=None):
  node = rec
  for p in path:
    if not isinstance(node, dict) or p not in node:
      return default
    node = node[p]
  return node


def _curve(rec, gran, key):
  return _get(rec, "unpruned", "prune_curves", gran, key)


def _auc_rel(rec, gran):
  c = _get(rec, "unpruned", "prune_curves", gran)
  return None if c is None else c["auc"] - c["baseline"]


def _acc_change(rec):
  a = _get(rec, "unpruned", "eval", "accuracy")
  b = _get(rec, "pruned", "eval", "accuracy")
  return None if a is None or b is None else b - a


@dataclasses.dataclass(frozen=True)
class Metric:
  """A scalar per record.

  Attributes:
    key: short identifier.
    label: what the report calls it.
    fn: ``record -> float or None``.
    better: ``"higher"`` or ``"lower"``: which direction counts as "more"
      of the property the claim is about (sparser, more prunable, more
      clusterable...).
    fmt: format of the numbers.
  """
  key: str
  label: str
  fn: Callable[[dict], Any]
  better: str = "higher"
  fmt: str = ".3f"


M = {m.key: m for m in [
    Metric("acc_unpruned", "test accuracy (unpruned)",
           lambda r: _get(r, "unpruned", "eval", "accuracy"), "higher", ".4f"),
    Metric("acc_pruned", "test accuracy (pruned, 90 %)",
           lambda r: _get(r, "pruned", "eval", "accuracy"), "higher", ".4f"),
    Metric("acc_change", "accuracy change from gradual pruning",
           _acc_change, "higher", "+.4f"),
    Metric("hoyer", "Hoyer sparsity",
           lambda r: _get(r, "unpruned", "sparsity", "hoyer")),
    Metric("gini", "Gini index",
           lambda r: _get(r, "unpruned", "sparsity", "gini")),
    Metric("eps_max", "share of weights ≤ 0.01·layer max",
           lambda r: _get(r, "unpruned", "sparsity", "epsilon_sparsity_max",
                          "0.01")),
    Metric("eps_std", "share of weights ≤ 0.1·layer SD",
           lambda r: _get(r, "unpruned", "sparsity", "epsilon_sparsity_std",
                          "0.1")),
    Metric("bits", "bits/weight (8-bit + zlib)",
           lambda r: _get(r, "unpruned", "sparsity", "bits_per_weight"),
           "lower", ".3f"),
    Metric("bits_pruned", "bits/weight, pruned net",
           lambda r: _get(r, "pruned", "sparsity", "bits_per_weight"),
           "lower", ".3f"),
    Metric("act_zero", "zero ReLU outputs",
           lambda r: _get(r, "unpruned", "activations", "zero_fraction")),
    Metric("dead", "dead units",
           lambda r: _get(r, "unpruned", "activations",
                          "dead_unit_fraction")),
    Metric("w_auc", "weight-curve AUC",
           lambda r: _curve(r, "weight", "auc"), "higher", ".4f"),
    Metric("w_auc_rel", "weight-curve AUC − unpruned acc",
           lambda r: _auc_rel(r, "weight"), "higher", "+.4f"),
    Metric("w_max", "weight: max fraction within tol",
           lambda r: _curve(r, "weight", "max_fraction_within"), "higher",
           ".2f"),
    Metric("u_auc", "unit-curve AUC",
           lambda r: _curve(r, "unit", "auc"), "higher", ".4f"),
    Metric("u_auc_rel", "unit-curve AUC − unpruned acc",
           lambda r: _auc_rel(r, "unit"), "higher", "+.4f"),
    Metric("u_max", "unit: max fraction within tol",
           lambda r: _curve(r, "unit", "max_fraction_within"), "higher",
           ".2f"),
    Metric("ncut_u", "n-cut (unpruned)",
           lambda r: _get(r, "unpruned", "clusterability", "ncut"), "lower"),
    Metric("z_u", "z vs shuffles (unpruned)",
           lambda r: _get(r, "unpruned", "clusterability", "z"), "lower",
           "+.1f"),
    Metric("ncut_p", "n-cut (pruned)",
           lambda r: _get(r, "pruned", "clusterability", "ncut"), "lower"),
    Metric("z_p", "z vs shuffles (pruned)",
           lambda r: _get(r, "pruned", "clusterability", "z"), "lower",
           "+.1f"),
]}


def values(records: Sequence[dict], condition: str, metric: Metric
           ) -> np.ndarray:
  """The metric over the finished (``status == "ok"``) seeds of a condition
  (non-finite values dropped)."""
  out = []
  for r in records:
    if r.get("condition") == condition and r.get("status") == "ok":
      v = metric.fn(r)
      if v is not None and np.isfinite(v):
        out.append(float(v))
  return np.asarray(out, dtype=np.float64)


def summary(v: np.ndarray) -> tuple[float, float, int]:
  """``(mean, sample SD, n)``; SD is NaN for fewer than two values."""
  return tuple(stats.summarize(v.tolist(), single_sd=float("nan")))


def fmt_ms(mean: float, sd: float, n: int, f: str = ".3f") -> str:
  """``"0.891 ± 0.003"`` (``"—"`` without values; no ± for one value)."""
  if n == 0 or not np.isfinite(mean):
    return "—"
  if n == 1 or not np.isfinite(sd):
    return format(mean, f)
  return f"{format(mean, f)} ± {format(sd, f.lstrip('+'))}"


# ---------------------------------------------------------------------------
# Comparisons and verdicts.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Comparison:
  """Condition ``a`` against ``b`` on one metric.

  Attributes:
    metric: the :class:`Metric`.
    a, b: condition names.
    mean_a, sd_a, n_a, mean_b, sd_b, n_b: summaries over seeds.
    diff: ``mean_a - mean_b``.
    se: Welch standard error of ``diff``.
    n_se: the threshold in standard errors.
    favours: +1 if ``a`` is significantly "more" (in the metric's
      ``better`` direction) than ``b``, -1 if significantly less, 0 if not
      significant, ``None`` if either side has fewer than two seeds.
  """
  metric: Metric
  a: str
  b: str
  mean_a: float
  sd_a: float
  n_a: int
  mean_b: float
  sd_b: float
  n_b: int
  diff: float
  se: float
  n_se: float
  favours: int | None

  @property
  def outcome(self) -> str:
    if self.favours is None:
      return "n/a (< 2 seeds)"
    word = {"higher": ("higher", "lower"), "lower": ("lower", "higher")}[
        self.metric.better]
    if self.favours == 0:
      return "no significant difference"
    return (f"{self.a} {word[0] if self.favours > 0 else word[1]} "
            f"({'favours' if self.favours > 0 else 'against'} the claim)")


def compare(records: Sequence[dict], a: str, b: str, metric: Metric, *,
            n_se: float = 2.0) -> Comparison:
  """Compares conditions ``a`` and ``b`` on ``metric``.

  Significant when ``|diff| > n_se * SE`` with ``SE = sqrt(sd_a^2/n_a +
  sd_b^2/n_b)`` (sample SDs); with ``SE = 0`` any non-zero difference
  counts. Needs at least two seeds on each side.
  """
  va, vb = values(records, a, metric), values(records, b, metric)
  ma, sa, na = summary(va)
  mb, sb, nb = summary(vb)
  diff = ma - mb
  if na < 2 or nb < 2:
    return Comparison(metric, a, b, ma, sa, na, mb, sb, nb, diff,
                      float("nan"), n_se, None)
  se = stats.se_of_difference(sa, na, sb, nb, min_n=2)
  sig = stats.is_clear(diff, se, n_se=n_se, zero_se_ok=True)
  sign = 1 if metric.better == "higher" else -1
  favours = (1 if diff * sign > 0 else -1) if sig else 0
  return Comparison(metric, a, b, ma, sa, na, mb, sb, nb, diff, se, n_se,
                    favours)


def combine(comps: Sequence[Comparison]) -> str:
  """The verdict from per-metric outcomes.

  * ``"inconclusive"``: some comparison lacks two seeds on a side;
  * ``"supported"``: more than half of the metrics significantly favour the
    claim and none goes significantly against it;
  * ``"not supported"``: none favours it;
  * ``"mixed"``: otherwise.
  """
  if not comps or any(c.favours is None for c in comps):
    return "inconclusive"
  plus = sum(c.favours == 1 for c in comps)
  minus = sum(c.favours == -1 for c in comps)
  if plus * 2 > len(comps) and minus == 0:
    return "supported"
  if plus == 0:
    return "not supported"
  return "mixed"


def _tally(comps: Sequence[Comparison]) -> str:
  plus = sum(c.favours == 1 for c in comps)
  minus = sum(c.favours == -1 for c in comps)
  zero = sum(c.favours == 0 for c in comps)
  return (f"{plus} of {len(comps)} metrics favour the claim, {minus} "
          f"{'goes' if minus == 1 else 'go'} against it, {zero} "
          f"{'shows' if zero == 1 else 'show'} no significant difference")


@dataclasses.dataclass
class Verdict:
  """One claim's verdict.

  Attributes:
    number: 1..5.
    claim: the claim's wording.
    verdict: ``supported`` / ``not supported`` / ``mixed`` /
      ``inconclusive``.
    summary: one or two computed sentences.
    comparisons: the per-metric comparisons (a table in the report).
    extra: further markdown lines (sub-verdicts, classifications).
  """
  number: int
  claim: str
  verdict: str
  summary: str
  comparisons: list
  extra: list = dataclasses.field(default_factory=list)


def conditions_by_regimen(results: dict) -> dict[str, str]:
  """``{regimen: condition}`` for the conditions that ran (first of each)."""
  specs = results["config"].get("condition_specs", {})
  present = {r["condition"] for r in results["records"]}
  out = {}
  for cond in results["config"].get("conditions", []):
    spec = specs.get(cond)
    if spec and cond in present and spec["regimen"] not in out:
      out[spec["regimen"]] = cond
  for r in results["records"]:
    reg = r.get("spec", {}).get("regimen")
    if reg and reg not in out:
      out[reg] = r["condition"]
  return out


def _missing(roles: dict, needed: Sequence[str]) -> list[str]:
  return [n for n in needed if n not in roles]


def _inconclusive(number, claim, missing):
  return Verdict(number, claim, "inconclusive",
                 "Not testable: the run has no "
                 f"{', '.join(missing)} condition.", [])


def verdicts(results: dict) -> list[Verdict]:
  """The five claims' verdicts, computed from ``results["records"]``."""
  recs = results["records"]
  n_se = float(results["config"].get("verdict", {}).get("n_se", 2.0))
  roles = conditions_by_regimen(results)
  cmp = lambda a, b, key: compare(recs, roles[a], roles[b], M[key],
                                  n_se=n_se)
  out = []

  # 1. Dropout leads to sparser weights.
  claim = "Dropout leads to sparser weights."
  if _missing(roles, ["dropout", "none"]):
    out.append(_inconclusive(1, claim, _missing(roles, ["dropout", "none"])))
  else:
    comps = [cmp("dropout", "none", k)
             for k in ("hoyer", "gini", "eps_max", "eps_std")]
    v = combine(comps)
    extra = []
    act = [cmp("dropout", "none", k) for k in ("act_zero", "dead")]
    extra.append("Activation sparsity (not part of the verdict, which is "
                 "about weights): " + "; ".join(
                     f"{c.metric.label}: {_side(c)} → {c.outcome}"
                     for c in act) + ".")
    out.append(Verdict(1, claim, v,
                       f"Dropout vs control on the unpruned nets' weight "
                       f"sparsity: {_tally(comps)}.", comps, extra))

  # 2. Dropout makes networks more prunable / compressible.
  claim = "Dropout makes networks more prunable / compressible."
  if _missing(roles, ["dropout", "none"]):
    out.append(_inconclusive(2, claim, _missing(roles, ["dropout", "none"])))
  else:
    comps = [cmp("dropout", "none", k)
             for k in ("w_max", "u_max", "w_auc_rel", "u_auc_rel",
                       "acc_change", "bits")]
    out.append(Verdict(
        2, claim, combine(comps),
        "Dropout vs control: one-shot pruning robustness relative to each "
        "net's own unpruned accuracy, the accuracy change under gradual "
        f"pruning to 90 %, and compressed size: {_tally(comps)}.", comps))

  # 3. L1 gives more clusterable networks than L2 or dropout.
  claim = "L1 gives more clusterable networks than L2 or dropout."
  need = ["l1", "l2", "dropout"]
  if _missing(roles, need):
    out.append(_inconclusive(3, claim, _missing(roles, need)))
  else:
    absolute = [cmp("l1", o, k) for o in ("l2", "dropout")
                for k in ("ncut_u", "ncut_p")]
    relative = [cmp("l1", o, k) for o in ("l2", "dropout")
                for k in ("z_u", "z_p")]
    va, vr = combine(absolute), combine(relative)
    v = va if va == vr else ("inconclusive" if "inconclusive" in (va, vr)
                             else "mixed")
    extra = [f"- Absolute n-cut (lower = more clusterable): **{va}** — "
             f"{_tally(absolute)}.",
             f"- Relative to shuffled copies (z; negative = more clusterable "
             f"than chance): **{vr}** — {_tally(relative)}."]
    sig = []
    for reg in ("l1", "l2", "dropout"):
      for stage in ("unpruned", "pruned"):
        k, n = _significant_count(recs, roles[reg], stage)
        sig.append(f"{roles[reg]} {stage}: {k}/{n}")
    extra.append("- Nets with n-cut below every shuffle (p = 1/(N+1)): "
                 + "; ".join(sig) + ".")
    near = [f"{roles[reg]} {stage}: {_near_isolated(recs, roles[reg], stage)}"
            for reg in ("l1", "l2", "dropout")
            for stage in ("unpruned", "pruned")]
    extra.append("- Near-isolated nodes per net (degree < 1e-6 × median; "
                 "see §4): " + "; ".join(near) + ".")
    out.append(Verdict(
        3, claim, v,
        "The claim holds only if L1 nets are more clusterable both in "
        "absolute n-cut and relative to their own shuffles (reference note "
        "§2.5: an absolute n-cut can be low simply because L1 concentrates "
        "weight on few edges, which a shuffle reproduces).",
        absolute + relative, extra))

  # 4. Targeted dropout makes networks robust to magnitude pruning.
  claim = "Targeted dropout makes networks robust to magnitude pruning."
  tds = [r for r in ("targeted_weight", "targeted_unit") if r in roles]
  if "none" not in roles or not tds:
    out.append(_inconclusive(4, claim, _missing(
        roles, ["none"]) + ([] if tds else ["targeted dropout"])))
  else:
    comps, extra = [], []
    for td in tds:
      gran = "w" if td == "targeted_weight" else "u"
      sub = [cmp(td, "none", k) for k in (f"{gran}_max", f"{gran}_auc_rel",
                                          "acc_change")]
      comps += sub
      extra.append(f"- {roles[td]} vs control ({'weight' if gran == 'w' else 'unit'}"
                   f"-level pruning, the level it targets): "
                   f"**{combine(sub)}** — {_tally(sub)}.")
    out.append(Verdict(
        4, claim, combine(comps),
        "Targeted dropout vs control on the pruning level each variant "
        "targets (relative one-shot robustness and gradual-pruning accuracy "
        f"change): {_tally(comps)}.", comps, extra))

  # 5. Explicit + implicit reproduces dropout's effects.
  claim = ("The analytic replacement (explicit + implicit) reproduces "
           "dropout's effects on sparsity, prunability and clusterability.")
  need = ["explicit_implicit", "dropout", "none"]
  if _missing(roles, need):
    out.append(_inconclusive(5, claim, _missing(roles, need)))
  else:
    keys = ("hoyer", "gini", "eps_max", "eps_std", "bits", "w_max", "u_max",
            "w_auc_rel", "u_auc_rel", "acc_change", "ncut_u", "z_u",
            "ncut_p", "z_p")
    v, lines, comps = _reproduction(recs, roles, "explicit_implicit", keys,
                                    n_se)
    extra = lines
    if "explicit" in roles:
      ve, lines_e, _ = _reproduction(recs, roles, "explicit", keys, n_se)
      extra = extra + ["", f"For comparison, explicit only ({roles['explicit']}):"
                       f" **{ve}**."] + lines_e
    out.append(Verdict(
        5, claim, v,
        "Each metric on which dropout differs significantly from control is "
        "checked: *reproduced* = explicit + implicit also differs from "
        "control in the same direction and does not differ significantly "
        "from dropout; *direction only* = same direction but significantly "
        "different size; *not reproduced* = otherwise. Supported when every "
        "dropout effect is reproduced, not supported when none is reproduced "
        "even in direction, mixed otherwise.", comps, extra))
  return out


def _side(c: Comparison) -> str:
  f = c.metric.fmt
  return (f"{fmt_ms(c.mean_a, c.sd_a, c.n_a, f)} vs "
          f"{fmt_ms(c.mean_b, c.sd_b, c.n_b, f)}")


def _significant_count(recs, cond, stage) -> tuple[int, int]:
  ok = [r for r in recs if r["condition"] == cond and r["status"] == "ok"]
  k = sum(bool(_get(r, stage, "clusterability", "significant")) for r in ok)
  return k, len(ok)


def _near_isolated(recs, cond, stage) -> str:
  """Mean number of near-isolated nodes (``graph`` stage) per net."""
  v = [_get(r, stage, "graph", "near_isolated_nodes") for r in recs
       if r["condition"] == cond and r["status"] == "ok"]
  v = [x for x in v if x is not None]
  return f"{np.mean(v):.1f}" if v else "—"


def _near_isolated_note(recs) -> list[str]:
  """A warning, computed from the records, when near-isolated nodes occur."""
  hits = {}
  for r in recs:
    if r["status"] != "ok":
      continue
    for stage in ("unpruned", "pruned"):
      n = _get(r, stage, "graph", "near_isolated_nodes")
      if n:
        key = (r["condition"], stage)
        hits[key] = hits.get(key, 0) + 1
  if not hits:
    return []
  where = "; ".join(f"{c} ({s}): {k} net(s)" for (c, s), k in hits.items())
  return ["**Near-isolated nodes.** Some nets have nodes whose degree is "
          "below 1e-6 × the median degree (weights tiny but not exactly "
          f"zero, so the protocol does not delete them): {where}. Spectral "
          "clustering tends to give each such node a cluster of its own, "
          "whose cut / (vol + 1e-8) is then close to 0. That lowers the "
          "n-cut, and z (shuffling spreads the tiny weights, so the "
          "shuffles have no such nodes), without any modular structure: "
          "read these nets' n-cut and z with care.", ""]


def _reproduction(recs, roles, cand, keys, n_se):
  """Classifies, per metric, whether ``cand`` reproduces dropout's effect."""
  d, c, ctl = roles["dropout"], roles[cand], roles["none"]
  lines, comps = [], []
  counts = {"reproduced": 0, "direction only": 0, "not reproduced": 0}
  spurious = []
  inconclusive = False
  for k in keys:
    e_d = compare(recs, d, ctl, M[k], n_se=n_se)
    e_c = compare(recs, c, ctl, M[k], n_se=n_se)
    vs = compare(recs, c, d, M[k], n_se=n_se)
    comps += [e_d, e_c]
    if None in (e_d.favours, e_c.favours, vs.favours):
      inconclusive = True
      continue
    if e_d.favours == 0:
      if e_c.favours != 0:
        spurious.append(M[k].label)
      continue
    if e_c.favours == e_d.favours and vs.favours == 0:
      cls = "reproduced"
    elif e_c.favours == e_d.favours:
      cls = "direction only"
    else:
      cls = "not reproduced"
    counts[cls] += 1
    lines.append(f"- {M[k].label}: dropout − control = "
                 f"{e_d.diff:{M[k].fmt}}, {c} − control = "
                 f"{e_c.diff:{M[k].fmt}}, {c} − dropout = "
                 f"{vs.diff:{M[k].fmt}} (2 SE = {n_se * vs.se:.3g}) → "
                 f"**{cls}**")
  n_eff = sum(counts.values())
  if inconclusive:
    v = "inconclusive"
  elif n_eff == 0:
    v = "inconclusive"
    lines.append("- Dropout differs significantly from control on none of "
                 "the metrics, so there is no effect to reproduce.")
  elif counts["reproduced"] == n_eff:
    v = "supported"
  elif counts["reproduced"] + counts["direction only"] == 0:
    v = "not supported"
  else:
    v = "mixed"
  lines.insert(0, f"Dropout effects: {n_eff}; reproduced "
                  f"{counts['reproduced']}, direction only "
                  f"{counts['direction only']}, not reproduced "
                  f"{counts['not reproduced']}.")
  if spurious:
    lines.append(f"- {c} differs from control where dropout does not: "
                 f"{', '.join(spurious)}.")
  return v, lines, comps


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
    out.append(f"{len(seeds)} seed(s) (this study asks for at least 3; "
               "Filan et al. used 5)")
  return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return lines


def _conditions(results: dict) -> list[str]:
  seen = []
  for r in results["records"]:
    if r["condition"] not in seen:
      seen.append(r["condition"])
  return seen


def _label(results: dict, cond: str) -> str:
  for r in results["records"]:
    if r["condition"] == cond and r.get("label"):
      return r["label"]
  return cond


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
      f"{results.get('data', '')}.", ""]
  if devs:
    lines += ["**Reduced run.** This configuration departs from the "
              "published protocol, so its numbers are not comparable "
              "one-to-one with the published ones:", ""]
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
      "seeds.", ""]

  lines += ["## 1. Accuracy", ""]
  lines += _table(
      ["condition", "seeds ok", "test acc (unpruned)",
       "test acc (pruned)", "change"],
      [[_label(results, c), _n_ok(recs, c), _cell(recs, c, "acc_unpruned"),
        _cell(recs, c, "acc_pruned"), _cell(recs, c, "acc_change")]
       for c in conds])
  lines += [""]

  lines += ["## 2. Sparsity of the weights and activations (unpruned nets)",
            "", "All kernels pooled (biases excluded); bits/weight = 8-bit "
            "symmetric quantisation per layer + zlib. Activations: ReLU "
            "outputs of the hidden layers on the test set.", ""]
  lines += _table(
      ["condition", "Hoyer", "Gini", "share ≤0.01·max", "share ≤0.1·sd",
       "bits/weight", "bits/weight (pruned)", "zero ReLU outputs",
       "dead units"],
      [[_label(results, c)] + [_cell(recs, c, k) for k in (
          "hoyer", "gini", "eps_max", "eps_std", "bits", "bits_pruned",
          "act_zero", "dead")] for c in conds])
  lines += [""]
  # Exactness of gradual pruning.
  lay = []
  for r in ok:
    for L in _get(r, "pruned", "sparsity", "layers", default=[]) or []:
      lay.append(L["exact_sparsity"])
  if lay:
    lines += [f"Per-layer exact sparsity of the pruned nets: min "
              f"{min(lay):.4f}, max {max(lay):.4f} (target "
              f"{sched.get('final', '?')}).", ""]

  lines += ["## 3. Prunability (one-shot magnitude pruning of the unpruned "
            "nets)", ""]
  lines += _table(
      ["condition", "weight AUC", "weight AUC − acc", "weight max frac",
       "unit AUC", "unit AUC − acc", "unit max frac"],
      [[_label(results, c)] + [_cell(recs, c, k) for k in (
          "w_auc", "w_auc_rel", "w_max", "u_auc", "u_auc_rel", "u_max")]
       for c in conds])
  lines += ["", "Accuracy at selected prune fractions (weight / unit level):",
            ""]
  fracs = [f for f in (0.5, 0.7, 0.8, 0.9, 0.95)
           if f in cfg["curves"]["fractions"]]
  lines += _table(
      ["condition"] + [f"w {f:g}" for f in fracs] + [f"u {f:g}"
                                                      for f in fracs],
      [[_label(results, c)] + [_curve_at(recs, c, "weight", f)
                               for f in fracs]
       + [_curve_at(recs, c, "unit", f) for f in fracs] for c in conds])
  lines += [""]

  lines += ["## 4. Clusterability", "",
            "n-cut of the weight graph's spectral clustering (lower = more "
            "clusterable), the mean n-cut of shuffled copies, z = (n-cut − "
            "shuffled mean) / shuffled SD (negative = more clusterable than "
            "chance), and how many nets beat every shuffle.", ""]
  rows = []
  for c in conds:
    row = [_label(results, c)]
    for stage, nk, zk in (("unpruned", "ncut_u", "z_u"),
                          ("pruned", "ncut_p", "z_p")):
      sm = Metric("sm", "", lambda r, s=stage: _get(r, s, "clusterability",
                                                    "shuffled_mean"))
      k, n = _significant_count(recs, c, stage)
      row += [_cell(recs, c, nk),
              fmt_ms(*summary(values(recs, c, sm)), ".3f"),
              _cell(recs, c, zk), f"{k}/{n}", _near_isolated(recs, c, stage)]
    rows.append(row)
  lines += _table(["condition", "n-cut", "shuffled", "z", "sig.",
                   "near-isol.", "n-cut pruned", "shuffled", "z", "sig.",
                   "near-isol."], rows)
  lines += [""] + _near_isolated_note(recs)

  lines += ["## 5. Side by side with Filan et al. (2021), Fashion-MNIST", "",
            "Published: 5 nets per row, K = 12, 50 layer shuffles "
            "(reference note §2.5). Their L2 nets carried L1 on the first "
            "layer (a bug in their code); ours are pure L2.", ""]
  roles = conditions_by_regimen(results)
  rows = []
  for reg, name in (("none", "control"), ("dropout", "dropout"),
                    ("l1", "L1"), ("l2", "L2")):
    pub = PUBLISHED_FILAN[reg]
    cond = roles.get(reg)
    for stage, nk, zk, ak in (("unpruned", "ncut_u", "z_u", "acc_unpruned"),
                              ("pruned", "ncut_p", "z_p", "acc_pruned")):
      p = pub[stage]
      if cond:
        k, n = _significant_count(recs, cond, stage)
        ours = [_cell(recs, cond, nk), _cell(recs, cond, zk), f"{k}/{n}",
                _cell(recs, cond, ak)]
      else:
        ours = ["not run"] * 4
      rows.append([name, stage, ours[0], f"{p['ncut'][0]:.3f} ± "
                   f"{p['ncut'][1]:.3f}", ours[1],
                   f"{p['z'][0]:+.1f} ± {p['z'][1]:.1f}", ours[2], p["sig"],
                   ours[3], f"{p['acc']:.3f}"])
  lines += _table(["condition", "net", "n-cut (ours)", "n-cut (published)",
                   "z (ours)", "z (published)", "sig. (ours)",
                   "sig. (published)", "acc (ours)", "acc (published)"],
                  rows)
  lines += ["", "Targeted dropout, for shape only (Gomez et al. 2019 "
            "Table 2: ResNet-32 on CIFAR-10, accuracy % at prune fractions "
            f"{', '.join(f'{f:g}' for f in PUBLISHED_TD_FRACTIONS)}; "
            "reference note §1.7). Ours in the same columns (accuracy as a "
            "fraction):", ""]
  rows = []
  for gran in ("weight", "unit"):
    for name, accs in PUBLISHED_TD[gran].items():
      rows.append([gran, f"published: {name}"] + [f"{a:.2f}" for a in accs])
    for c in conds:
      if c in (roles.get("none"), roles.get("dropout"),
               roles.get("targeted_weight"), roles.get("targeted_unit")):
        rows.append([gran, f"ours: {_label(results, c)}"] + [
            _curve_at(recs, c, gran, f) if f in cfg["curves"]["fractions"]
            else "—" for f in PUBLISHED_TD_FRACTIONS])
  lines += _table(["level", "net"] + [f"{f:g}" for f in
                                      PUBLISHED_TD_FRACTIONS], rows)
  lines += [""]

  lines += ["## 6. Verdicts", "",
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
            "shown*, not as *equal*.", ""]
  for v in verdicts(results):
    lines += [f"### Claim {v.number}: {v.claim}", "",
              f"**Verdict: {v.verdict}.** {v.summary}", ""]
    if v.comparisons:
      lines += _table(
          ["metric", "A", "A: mean ± sd (n)", "B", "B: mean ± sd (n)",
           "A − B", "2 SE", "outcome"],
          [[c.metric.label + (" ↓" if c.metric.better == "lower" else " ↑"),
            c.a, f"{fmt_ms(c.mean_a, c.sd_a, c.n_a, c.metric.fmt)} ({c.n_a})",
            c.b, f"{fmt_ms(c.mean_b, c.sd_b, c.n_b, c.metric.fmt)} ({c.n_b})",
            (format(c.diff, c.metric.fmt) if np.isfinite(c.diff) else "—"),
            (f"{c.n_se * c.se:.3g}" if np.isfinite(c.se) else "—"),
            c.outcome] for c in v.comparisons])
      lines += ["", "(↑ / ↓: the direction that counts as *more* sparse, "
                "prunable or clusterable.)", ""]
    lines += v.extra + [""]

  lines += _cost_lines(results)
  lines += ["## Plots", ""]
  lines += [f"- `{p}`" for p in PLOTS] + [""]
  if failed:
    lines += ["## Failed runs", ""]
    lines += [f"- {r.get('message', r)}" for r in failed] + [""]
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Cost, and the estimate for the default config.
# ---------------------------------------------------------------------------

# The default config's size (experiments/configs/compressibility.py).
DEFAULT_TARGET = dict(n_train=60000, batch_size=128, epochs=20,
                      prune_epochs=20, seeds=3, n_shuffles=50, n_jobs=2,
                      cores=2,
                      conditions=("control", "dropout", "explicit_implicit",
                                  "explicit", "l1", "l2", "targeted_weight",
                                  "targeted_unit"))


def _steady(chunks: Sequence[dict]) -> tuple[float, float, float]:
  """``(wall, cpu, compile)`` seconds: per step from the chunks after the
  first (which includes compilation), and the first chunk's excess."""
  if not chunks:
    return float("nan"), float("nan"), float("nan")
  rest = chunks[1:] if len(chunks) > 1 else chunks
  steps = sum(c["steps"] for c in rest)
  wall = sum(c["seconds"] for c in rest) / steps
  cpu = sum(c["cpu_seconds"] for c in rest) / steps
  first = chunks[0]
  return wall, cpu, max(0.0, first["seconds"] - wall * first["steps"])


def _clustering_cpu(recs: Sequence[dict], stage: str) -> float:
  """Mean CPU seconds of one clustering (a net or one shuffle) of a stage."""
  per = []
  for r in recs:
    c = _get(r, stage, "clusterability")
    if not c or "cpu_seconds" not in c:
      continue
    n = c["n_shuffles"] + 1
    if c.get("n_jobs", 1) == 1:
      per.append(c["cpu_seconds"] / n)
    else:  # workers' CPU is not counted: assume they were busy throughout
      per.append(c["seconds"] * min(c["n_jobs"], 2) / n)
  return float(np.mean(per)) if per else float("nan")


def cost(results: dict) -> dict:
  """Measured costs per condition and their extrapolation to the default
  config (:data:`DEFAULT_TARGET`) on an idle machine.

  Per condition (from its first finished record): the steady per-step wall
  and CPU time of both phases (all of the run's seeds at once), the
  compilation overhead, and the seed-group size. Clustering and prune
  curves: CPU seconds per clustering and per seed's pair of curves.

  The estimate assumes CPU time scales linearly with the number of vmapped
  seeds, that each phase-1/phase-2 step costs its measured CPU time in wall
  time (an idle machine may do better, down to half, if XLA spreads a step
  over both cores: ``lower_hours``), and that clustering runs ``n_jobs``
  shuffles in parallel on ``cores`` cores.
  """
  recs = [r for r in results["records"] if r["status"] == "ok"]
  per = {}
  for cond in _conditions(results):
    rs = [r for r in recs if r["condition"] == cond]
    if not rs:
      continue
    t = rs[0]["timing"]
    w1, c1, k1 = _steady(t.get("phase1_chunks", []))
    w2, c2, k2 = _steady(t.get("phase2_chunks", []))
    curves = [r["timing"].get("unpruned_prune_curves_cpu_seconds")
              for r in rs]
    curves = [c for c in curves if c is not None]
    per[cond] = {
        "regimen": rs[0].get("spec", {}).get("regimen"),
        "group": t.get("phase1_group_size", len(rs)),
        "phase1_step_wall": w1, "phase1_step_cpu": c1, "phase1_compile": k1,
        "phase2_step_wall": w2, "phase2_step_cpu": c2, "phase2_compile": k2,
        "cluster_cpu_unpruned": _clustering_cpu(rs, "unpruned"),
        "cluster_cpu_pruned": _clustering_cpu(rs, "pruned"),
        "curves_cpu": float(np.mean(curves)) if curves else float("nan"),
    }
  est = None
  cfg = results["config"]
  comparable = (list(cfg["model"]["layer_sizes"])
                == PROTOCOL["model.layer_sizes"]
                and cfg["batch_size"] == DEFAULT_TARGET["batch_size"])
  if per and comparable:
    tg = DEFAULT_TARGET
    spe = tg["n_train"] // tg["batch_size"]
    mean = lambda k: float(np.nanmean([p[k] for p in per.values()]))
    train = compile_ = clus = curves = 0.0
    by_reg = {p["regimen"]: p for p in per.values()}
    spec = results["config"].get("condition_specs", {})
    for cond in tg["conditions"]:
      reg = spec.get(cond, {}).get("regimen", cond)
      p = per.get(cond) or by_reg.get(reg)
      g = lambda k: (p[k] if p is not None and np.isfinite(p[k]) else mean(k))
      scale = tg["seeds"] / (p["group"] if p is not None else
                             mean("group"))
      train += spe * (tg["epochs"] * g("phase1_step_cpu")
                      + tg["prune_epochs"] * g("phase2_step_cpu")) * scale
      compile_ += g("phase1_compile") + g("phase2_compile")
      clus += tg["seeds"] * (tg["n_shuffles"] + 1) * (
          g("cluster_cpu_unpruned") + g("cluster_cpu_pruned"))
      curves += tg["seeds"] * g("curves_cpu")
    par = min(tg["n_jobs"], tg["cores"])
    hours = (train + compile_ + clus / par + curves) / 3600
    est = {"train_hours": train / 3600, "compile_hours": compile_ / 3600,
           "cluster_cpu_hours": clus / 3600,
           "cluster_wall_hours": clus / par / 3600,
           "curves_hours": curves / 3600, "hours": hours,
           "lower_hours": (train / tg["cores"] + compile_ + clus / par
                           + curves) / 3600,
           "target": dict(tg, conditions=list(tg["conditions"]))}
  return {"per_condition": per, "estimate": est}


def _cost_lines(results: dict) -> list[str]:
  c = cost(results)
  if not c["per_condition"]:
    return []
  env = results.get("versions", {})
  lines = ["## 7. Cost", "",
           "Measured in this run (steady state, compilation excluded; one "
           "step trains all the run's seeds at once). Load average at the "
           f"end of the run: {env.get('loadavg', '?')} on "
           f"{env.get('cpu_count', '?')} CPUs.", ""]
  rows = []
  for cond, p in c["per_condition"].items():
    ms = lambda v: f"{1000 * v:.1f}" if np.isfinite(v) else "—"
    sec = lambda v: f"{v:.2f}" if np.isfinite(v) else "—"
    rows.append([_label(results, cond), p["group"],
                 f"{ms(p['phase1_step_wall'])} / {ms(p['phase1_step_cpu'])}",
                 f"{ms(p['phase2_step_wall'])} / {ms(p['phase2_step_cpu'])}",
                 f"{sec(p['phase1_compile'])} / {sec(p['phase2_compile'])}",
                 f"{sec(p['cluster_cpu_unpruned'])} / "
                 f"{sec(p['cluster_cpu_pruned'])}", sec(p["curves_cpu"])])
  lines += _table(["condition", "seeds per step", "phase-1 step ms "
                   "(wall / CPU)", "phase-2 step ms (wall / CPU)",
                   "compile s (phase 1 / 2)", "CPU s per clustering "
                   "(unpruned / pruned)", "CPU s per seed's curves"], rows)
  e = c["estimate"]
  if e is None:
    return lines + ["", "No estimate for the default config: this run used "
                    "another architecture or batch size.", ""]
  tg = e["target"]
  lines += ["", f"**Estimate for the default config** ({len(tg['conditions'])}"
            f" conditions x {tg['seeds']} seeds, {tg['epochs']} + "
            f"{tg['prune_epochs']} epochs of {tg['n_train'] // tg['batch_size']}"
            f" steps, {tg['n_shuffles']} shuffles, n_jobs {tg['n_jobs']} on "
            f"{tg['cores']} idle cores): about **{e['hours']:.1f} h** "
            f"(training {e['train_hours']:.2f} h + compilation "
            f"{e['compile_hours']:.2f} h + clustering "
            f"{e['cluster_wall_hours']:.2f} h wall = "
            f"{e['cluster_cpu_hours']:.2f} CPU-h + prune curves "
            f"{e['curves_hours']:.2f} h); {e['lower_hours']:.1f} h if XLA "
            "spreads each training step over both cores. Each step is "
            "costed at its measured CPU time (a machine shared with other "
            "jobs is slower in wall time).", ""]
  return lines


# ---------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------


def _save(fig, path: str) -> None:
  """Saves a figure as PNG atomically (temp file + ``os.replace``)."""
  tmp = f"{path}.{os.getpid()}.tmp.png"
  try:
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def plot(results: dict, workdir: str) -> list[str]:
  """Writes the PNG plots; returns their paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  recs = [r for r in results["records"] if r["status"] == "ok"]
  conds = [c for c in _conditions(results)
           if any(r["condition"] == c for r in recs)]
  colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(conds)}
  paths = []
  for gran in ("weight", "unit"):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in conds:
      curves = [_get(r, "unpruned", "prune_curves", gran) for r in recs
                if r["condition"] == c]
      curves = [cv for cv in curves if cv]
      if not curves:
        continue
      f = np.asarray(curves[0]["fractions"])
      acc = np.asarray([cv["accuracies"] for cv in curves])
      mean = acc.mean(axis=0)
      sd = acc.std(axis=0, ddof=1) if len(acc) > 1 else np.zeros_like(mean)
      ax.plot(f, mean, marker="o", ms=3, color=colors[c],
              label=f"{_label(results, c)} (n={len(acc)})")
      ax.fill_between(f, mean - sd, mean + sd, color=colors[c], alpha=0.2)
    ax.set_xlabel(f"fraction pruned ({gran} level, one-shot, first and last "
                  "layer kept)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{gran.capitalize()}-level prune–accuracy curves "
                 "(mean ± SD over seeds)")
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
  for ax, (metric, title) in zip(axes, (("ncut", "n-cut (lower = more "
                                          "clusterable)"),
                                         ("z", "z vs shuffles (negative = "
                                          "clusterable)"))):
    ax_lows = []
    for j, stage in enumerate(("unpruned", "pruned")):
      means, sds, shuf = [], [], []
      for c in conds:
        v = np.asarray([_get(r, stage, "clusterability", metric)
                        for r in recs if r["condition"] == c], dtype=float)
        v = v[np.isfinite(v)]
        means.append(v.mean() if v.size else np.nan)
        sds.append(v.std(ddof=1) if v.size > 1 else 0.0)
        s = np.asarray([_get(r, stage, "clusterability", "shuffled_mean")
                        for r in recs if r["condition"] == c], dtype=float)
        shuf.append(s.mean() if s.size else np.nan)
      ax_lows += [m - s for m, s in zip(means, sds)] + shuf
      pos = x + (j - 0.5) * w
      ax.bar(pos, means, w, yerr=sds, capsize=3,
             label=stage, color=("tab:blue", "tab:orange")[j], alpha=0.8)
      if metric == "ncut":
        ax.scatter(pos, shuf, marker="_", s=200, color="k", zorder=3,
                   label="shuffled mean" if j == 0 else None)
    if metric == "ncut":
      lows = [v for v in ax_lows if np.isfinite(v)]
      if lows:
        ax.set_ylim(max(0.0, min(lows) - 1.0), None)
    else:
      ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([_label(results, c) for c in conds], rotation=35,
                       ha="right", fontsize=7)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("Clusterability before and after gradual pruning "
               "(mean ± SD over seeds)")
  fig.tight_layout()
  path = os.path.join(workdir, "clusterability.png")
  _save(fig, path)
  plt.close(fig)
  paths.append(path)
  return paths


def write_report(results: dict, workdir: str) -> str:
  """Writes ``report.md`` and the plots into ``workdir``; returns the
  report's path."""
  from dropjax.train import files
  plot(results, workdir)
  path = os.path.join(workdir, REPORT_FILE)
  files.write_text_atomic(path, render(results) + "\n")
  return path


def main(argv):
  from absl import app
  from absl import flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = flags.FLAGS.workdir
  if not workdir:
    raise app.UsageError("--workdir is required.")
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  print(write_report(results, workdir))


if __name__ == "__main__":
  from absl import app
  from absl import flags
  flags.DEFINE_string("workdir", None, "Study directory with results.json.")
  app.run(main)
