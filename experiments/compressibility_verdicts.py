"""Metrics, comparisons and claim verdicts of the compressibility study.

Functions of the records in ``results.json`` only (no training code): the
scalar metrics per record (:data:`M`), their summaries over seeds, the
comparison of two conditions (:func:`compare`, the 2-SE rule of
:mod:`experiments.stats`) and the verdict on each claim (:func:`verdicts`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from experiments import stats

# The protocol the study reproduces (for the "deviations" list).
PROTOCOL = {
  "model.layer_sizes": [784, 256, 256, 256, 256, 10],
  "epochs": 20,
  "prune_epochs": 20,
  "batch_size": 128,
  "learning_rate": 0.001,
  "optimizer": "adam",
  "data.validation_size": 0,
  "data.train_size": 0,
  "pruning.initial_sparsity": 0.5,
  "pruning.final_sparsity": 0.9,
  "pruning.power": 3.0,
  "pruning.frequency": 10,
  "cluster.n_clusters": 12,
  "cluster.n_shuffles": 50,
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


M = {
  m.key: m
  for m in [
    Metric(
      "acc_unpruned",
      "test accuracy (unpruned)",
      lambda r: _get(r, "unpruned", "eval", "accuracy"),
      "higher",
      ".4f",
    ),
    Metric(
      "acc_pruned",
      "test accuracy (pruned, 90 %)",
      lambda r: _get(r, "pruned", "eval", "accuracy"),
      "higher",
      ".4f",
    ),
    Metric(
      "acc_change",
      "accuracy change from gradual pruning",
      _acc_change,
      "higher",
      "+.4f",
    ),
    Metric(
      "hoyer",
      "Hoyer sparsity",
      lambda r: _get(r, "unpruned", "sparsity", "hoyer"),
    ),
    Metric(
      "gini", "Gini index", lambda r: _get(r, "unpruned", "sparsity", "gini")
    ),
    Metric(
      "eps_max",
      "share of weights ≤ 0.01·layer max",
      lambda r: _get(r, "unpruned", "sparsity", "epsilon_sparsity_max", "0.01"),
    ),
    Metric(
      "eps_std",
      "share of weights ≤ 0.1·layer SD",
      lambda r: _get(r, "unpruned", "sparsity", "epsilon_sparsity_std", "0.1"),
    ),
    Metric(
      "bits",
      "bits/weight (8-bit + zlib)",
      lambda r: _get(r, "unpruned", "sparsity", "bits_per_weight"),
      "lower",
      ".3f",
    ),
    Metric(
      "bits_pruned",
      "bits/weight, pruned net",
      lambda r: _get(r, "pruned", "sparsity", "bits_per_weight"),
      "lower",
      ".3f",
    ),
    Metric(
      "act_zero",
      "zero ReLU outputs",
      lambda r: _get(r, "unpruned", "activations", "zero_fraction"),
    ),
    Metric(
      "dead",
      "dead units",
      lambda r: _get(r, "unpruned", "activations", "dead_unit_fraction"),
    ),
    Metric(
      "w_auc",
      "weight-curve AUC",
      lambda r: _curve(r, "weight", "auc"),
      "higher",
      ".4f",
    ),
    Metric(
      "w_auc_rel",
      "weight-curve AUC − unpruned acc",
      lambda r: _auc_rel(r, "weight"),
      "higher",
      "+.4f",
    ),
    Metric(
      "w_max",
      "weight: max fraction within tol",
      lambda r: _curve(r, "weight", "max_fraction_within"),
      "higher",
      ".2f",
    ),
    Metric(
      "u_auc",
      "unit-curve AUC",
      lambda r: _curve(r, "unit", "auc"),
      "higher",
      ".4f",
    ),
    Metric(
      "u_auc_rel",
      "unit-curve AUC − unpruned acc",
      lambda r: _auc_rel(r, "unit"),
      "higher",
      "+.4f",
    ),
    Metric(
      "u_max",
      "unit: max fraction within tol",
      lambda r: _curve(r, "unit", "max_fraction_within"),
      "higher",
      ".2f",
    ),
    Metric(
      "ncut_u",
      "n-cut (unpruned)",
      lambda r: _get(r, "unpruned", "clusterability", "ncut"),
      "lower",
    ),
    Metric(
      "z_u",
      "z vs shuffles (unpruned)",
      lambda r: _get(r, "unpruned", "clusterability", "z"),
      "lower",
      "+.1f",
    ),
    Metric(
      "ncut_p",
      "n-cut (pruned)",
      lambda r: _get(r, "pruned", "clusterability", "ncut"),
      "lower",
    ),
    Metric(
      "z_p",
      "z vs shuffles (pruned)",
      lambda r: _get(r, "pruned", "clusterability", "z"),
      "lower",
      "+.1f",
    ),
  ]
}


def values(
  records: Sequence[dict], condition: str, metric: Metric
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
      self.metric.better
    ]
    if self.favours == 0:
      return "no significant difference"
    return (
      f"{self.a} {word[0] if self.favours > 0 else word[1]} "
      f"({'favours' if self.favours > 0 else 'against'} the claim)"
    )


def compare(
  records: Sequence[dict], a: str, b: str, metric: Metric, *, n_se: float = 2.0
) -> Comparison:
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
    return Comparison(
      metric, a, b, ma, sa, na, mb, sb, nb, diff, float("nan"), n_se, None
    )
  se = stats.se_of_difference(sa, na, sb, nb, min_n=2)
  sig = stats.is_clear(diff, se, n_se=n_se, zero_se_ok=True)
  sign = 1 if metric.better == "higher" else -1
  favours = (1 if diff * sign > 0 else -1) if sig else 0
  return Comparison(
    metric, a, b, ma, sa, na, mb, sb, nb, diff, se, n_se, favours
  )


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
  return (
    f"{plus} of {len(comps)} metrics favour the claim, {minus} "
    f"{'goes' if minus == 1 else 'go'} against it, {zero} "
    f"{'shows' if zero == 1 else 'show'} no significant difference"
  )


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
  return Verdict(
    number,
    claim,
    "inconclusive",
    f"Not testable: the run has no {', '.join(missing)} condition.",
    [],
  )


def verdicts(results: dict) -> list[Verdict]:
  """The five claims' verdicts, computed from ``results["records"]``."""
  recs = results["records"]
  n_se = float(results["config"].get("verdict", {}).get("n_se", 2.0))
  roles = conditions_by_regimen(results)
  cmp = lambda a, b, key: compare(recs, roles[a], roles[b], M[key], n_se=n_se)
  out = []

  # 1. Dropout leads to sparser weights.
  claim = "Dropout leads to sparser weights."
  if _missing(roles, ["dropout", "none"]):
    out.append(_inconclusive(1, claim, _missing(roles, ["dropout", "none"])))
  else:
    comps = [
      cmp("dropout", "none", k) for k in ("hoyer", "gini", "eps_max", "eps_std")
    ]
    v = combine(comps)
    extra = []
    act = [cmp("dropout", "none", k) for k in ("act_zero", "dead")]
    extra.append(
      "Activation sparsity (not part of the verdict, which is "
      "about weights): "
      + "; ".join(f"{c.metric.label}: {_side(c)} → {c.outcome}" for c in act)
      + "."
    )
    out.append(
      Verdict(
        1,
        claim,
        v,
        f"Dropout vs control on the unpruned nets' weight "
        f"sparsity: {_tally(comps)}.",
        comps,
        extra,
      )
    )

  # 2. Dropout makes networks more prunable / compressible.
  claim = "Dropout makes networks more prunable / compressible."
  if _missing(roles, ["dropout", "none"]):
    out.append(_inconclusive(2, claim, _missing(roles, ["dropout", "none"])))
  else:
    comps = [
      cmp("dropout", "none", k)
      for k in (
        "w_max",
        "u_max",
        "w_auc_rel",
        "u_auc_rel",
        "acc_change",
        "bits",
      )
    ]
    out.append(
      Verdict(
        2,
        claim,
        combine(comps),
        "Dropout vs control: one-shot pruning robustness relative to each "
        "net's own unpruned accuracy, the accuracy change under gradual "
        f"pruning to 90 %, and compressed size: {_tally(comps)}.",
        comps,
      )
    )

  # 3. L1 gives more clusterable networks than L2 or dropout.
  claim = "L1 gives more clusterable networks than L2 or dropout."
  need = ["l1", "l2", "dropout"]
  if _missing(roles, need):
    out.append(_inconclusive(3, claim, _missing(roles, need)))
  else:
    absolute = [
      cmp("l1", o, k) for o in ("l2", "dropout") for k in ("ncut_u", "ncut_p")
    ]
    relative = [
      cmp("l1", o, k) for o in ("l2", "dropout") for k in ("z_u", "z_p")
    ]
    va, vr = combine(absolute), combine(relative)
    v = (
      va
      if va == vr
      else ("inconclusive" if "inconclusive" in (va, vr) else "mixed")
    )
    extra = [
      f"- Absolute n-cut (lower = more clusterable): **{va}** — "
      f"{_tally(absolute)}.",
      f"- Relative to shuffled copies (z; negative = more clusterable "
      f"than chance): **{vr}** — {_tally(relative)}.",
    ]
    sig = []
    for reg in ("l1", "l2", "dropout"):
      for stage in ("unpruned", "pruned"):
        k, n = _significant_count(recs, roles[reg], stage)
        sig.append(f"{roles[reg]} {stage}: {k}/{n}")
    extra.append(
      "- Nets with n-cut below every shuffle (p = 1/(N+1)): "
      + "; ".join(sig)
      + "."
    )
    near = [
      f"{roles[reg]} {stage}: {_near_isolated(recs, roles[reg], stage)}"
      for reg in ("l1", "l2", "dropout")
      for stage in ("unpruned", "pruned")
    ]
    extra.append(
      "- Near-isolated nodes per net (degree < 1e-6 × median; "
      "see §4): " + "; ".join(near) + "."
    )
    out.append(
      Verdict(
        3,
        claim,
        v,
        "The claim holds only if L1 nets are more clusterable both in "
        "absolute n-cut and relative to their own shuffles (Filan et al., "
        "arXiv:2103.03386: an absolute n-cut can be low simply because L1 concentrates "
        "weight on few edges, which a shuffle reproduces).",
        absolute + relative,
        extra,
      )
    )

  # 4. Targeted dropout makes networks robust to magnitude pruning.
  claim = "Targeted dropout makes networks robust to magnitude pruning."
  tds = [r for r in ("targeted_weight", "targeted_unit") if r in roles]
  if "none" not in roles or not tds:
    out.append(
      _inconclusive(
        4,
        claim,
        _missing(roles, ["none"]) + ([] if tds else ["targeted dropout"]),
      )
    )
  else:
    comps, extra = [], []
    for td in tds:
      gran = "w" if td == "targeted_weight" else "u"
      sub = [
        cmp(td, "none", k)
        for k in (f"{gran}_max", f"{gran}_auc_rel", "acc_change")
      ]
      comps += sub
      extra.append(
        f"- {roles[td]} vs control ({'weight' if gran == 'w' else 'unit'}"
        f"-level pruning, the level it targets): "
        f"**{combine(sub)}** — {_tally(sub)}."
      )
    out.append(
      Verdict(
        4,
        claim,
        combine(comps),
        "Targeted dropout vs control on the pruning level each variant "
        "targets (relative one-shot robustness and gradual-pruning accuracy "
        f"change): {_tally(comps)}.",
        comps,
        extra,
      )
    )

  # 5. Explicit + implicit reproduces dropout's effects.
  claim = (
    "The analytic replacement (explicit + implicit) reproduces "
    "dropout's effects on sparsity, prunability and clusterability."
  )
  need = ["explicit_implicit", "dropout", "none"]
  if _missing(roles, need):
    out.append(_inconclusive(5, claim, _missing(roles, need)))
  else:
    keys = (
      "hoyer",
      "gini",
      "eps_max",
      "eps_std",
      "bits",
      "w_max",
      "u_max",
      "w_auc_rel",
      "u_auc_rel",
      "acc_change",
      "ncut_u",
      "z_u",
      "ncut_p",
      "z_p",
    )
    v, lines, comps = _reproduction(
      recs, roles, "explicit_implicit", keys, n_se
    )
    extra = lines
    if "explicit" in roles:
      ve, lines_e, _ = _reproduction(recs, roles, "explicit", keys, n_se)
      extra = (
        extra
        + [
          "",
          f"For comparison, explicit only ({roles['explicit']}): **{ve}**.",
        ]
        + lines_e
      )
    out.append(
      Verdict(
        5,
        claim,
        v,
        "Each metric on which dropout differs significantly from control is "
        "checked: *reproduced* = explicit + implicit also differs from "
        "control in the same direction and does not differ significantly "
        "from dropout; *direction only* = same direction but significantly "
        "different size; *not reproduced* = otherwise. Supported when every "
        "dropout effect is reproduced, not supported when none is reproduced "
        "even in direction, mixed otherwise.",
        comps,
        extra,
      )
    )
  return out


def _side(c: Comparison) -> str:
  f = c.metric.fmt
  return (
    f"{fmt_ms(c.mean_a, c.sd_a, c.n_a, f)} vs "
    f"{fmt_ms(c.mean_b, c.sd_b, c.n_b, f)}"
  )


def _significant_count(recs, cond, stage) -> tuple[int, int]:
  ok = [r for r in recs if r["condition"] == cond and r["status"] == "ok"]
  k = sum(bool(_get(r, stage, "clusterability", "significant")) for r in ok)
  return k, len(ok)


def _near_isolated(recs, cond, stage) -> str:
  """Mean number of near-isolated nodes (``graph`` stage) per net."""
  v = [
    _get(r, stage, "graph", "near_isolated_nodes")
    for r in recs
    if r["condition"] == cond and r["status"] == "ok"
  ]
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
  return [
    "**Near-isolated nodes.** Some nets have nodes whose degree is "
    "below 1e-6 × the median degree (weights tiny but not exactly "
    f"zero, so the protocol does not delete them): {where}. Spectral "
    "clustering tends to give each such node a cluster of its own, "
    "whose cut / (vol + 1e-8) is then close to 0. That lowers the "
    "n-cut, and z (shuffling spreads the tiny weights, so the "
    "shuffles have no such nodes), without any modular structure: "
    "read these nets' n-cut and z with care.",
    "",
  ]


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
    lines.append(
      f"- {M[k].label}: dropout − control = "
      f"{e_d.diff:{M[k].fmt}}, {c} − control = "
      f"{e_c.diff:{M[k].fmt}}, {c} − dropout = "
      f"{vs.diff:{M[k].fmt}} (2 SE = {n_se * vs.se:.3g}) → "
      f"**{cls}**"
    )
  n_eff = sum(counts.values())
  if inconclusive:
    v = "inconclusive"
  elif n_eff == 0:
    v = "inconclusive"
    lines.append(
      "- Dropout differs significantly from control on none of "
      "the metrics, so there is no effect to reproduce."
    )
  elif counts["reproduced"] == n_eff:
    v = "supported"
  elif counts["reproduced"] + counts["direction only"] == 0:
    v = "not supported"
  else:
    v = "mixed"
  lines.insert(
    0,
    f"Dropout effects: {n_eff}; reproduced "
    f"{counts['reproduced']}, direction only "
    f"{counts['direction only']}, not reproduced "
    f"{counts['not reproduced']}.",
  )
  if spurious:
    lines.append(
      f"- {c} differs from control where dropout does not: "
      f"{', '.join(spurious)}."
    )
  return v, lines, comps


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = [
    "| " + " | ".join(header) + " |",
    "|" + "|".join("---" for _ in header) + "|",
  ]
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
