r"""Character-level LSTM language model: dropout against its analytic replacement.

    python -m experiments.language_model --workdir DIR [--config FILE] \
        [--config.KEY=VALUE ...]

The setting of Wei, Kakade & Ma (ICML 2020): an LSTM language model with
locked dropout on the embedding / between layers / before the decoder and
DropConnect on the hidden-to-hidden weights (AWD-LSTM's sites, see
:mod:`dropjax.models.lstm`), trained with truncated BPTT on Shakespeare
(:func:`dropjax.data.text.load_corpus`) under these regimens (names as in
``config.regimens``):

* ``none``; ``dropout_1`` (dropout, one mask per step);
* ``dropout_K``: DROPOUT_k, ``K`` masks per step, gradients averaged (Alg. 1);
* ``dropout_K_fix_noise``: DROPOUT_k plus two extra masks that restore
  DROPOUT_1's update noise;
* ``dropout_K_implicit``: DROPOUT_k plus the implicit regularizer at
  covariance scale ``1 - 1/K``;
* ``explicit``, ``implicit``, ``explicit_implicit`` (Alg. 2): the analytic
  regularizers on a clean forward pass.

Every regimen is trained for every seed (seeds are a ``vmap`` axis). ``DIR``
receives:

* ``results.json`` -- ``{"config", "fingerprint", "records", "wall_seconds"}``
  with one record per (regimen, seed): regimen, k, seed, status, validation
  and test bits per character (final parameters, and the parameters with the
  best validation-curve point), final training loss, the validation curve.
* ``report.md`` -- mean ± std over seeds, and one paragraph per claim of the
  paper, written from the numbers.
* ``val_curves.png``, ``final_bpc.png``.
* ``runs/<regimen>/`` -- ``metrics.jsonl``, orbax checkpoints, and
  ``result.json`` once the regimen is finished.

All files are written atomically. Running the same command again skips
finished regimens and resumes an interrupted one from its last checkpoint;
a different config in the same ``DIR`` is refused (except for the list of
regimens, which may grow). A seed whose loss turns NaN stops with a message
naming regimen, seed and step, is recorded as failed, and everything else
goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
import time
import traceback
from typing import Any, Sequence

import numpy as np

from dropjax.train import files as _files

from dropjax import objectives as djobj
from dropjax.data import text as djtext
from dropjax.models import lstm as djlstm
from dropjax import train as djtrain
from dropjax.train import make_optimizer, write_json_atomic

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
CONFIG_FILE = "config.json"
RUN_RESULT_FILE = "result.json"
CURVES_PNG = "val_curves.png"
FINAL_PNG = "final_bpc.png"
LN2 = math.log(2.0)
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
  """
  name: str
  objective: str
  k: int


_DROPOUT_RE = re.compile(r"^dropout_(\d+)(_fix_noise|_implicit)?$")


def parse_regimen(name: str) -> Regimen:
  """Parses a regimen name.

  Raises:
    ValueError: unknown name (the message lists the valid forms).
  """
  name = name.strip()
  if name in ("none", "explicit", "implicit", "explicit_implicit"):
    return Regimen(name, name, 0)
  m = _DROPOUT_RE.match(name)
  if m and int(m.group(1)) >= 1:
    k = int(m.group(1))
    suffix = m.group(2) or ""
    if suffix and k < 2:
      raise ValueError(f"{name!r}: fix-noise / implicit need k >= 2.")
    objective = {"": "dropout_k", "_fix_noise": "dropout_k_fix_noise",
                 "_implicit": "dropout_k_implicit"}[suffix]
    if objective == "dropout_k" and k == 1:
      objective = "dropout"
    return Regimen(name, objective, k)
  raise ValueError(
      f"unknown regimen {name!r}; valid: none, dropout_K, dropout_K_fix_noise, "
      "dropout_K_implicit (K >= 1, >= 2 for the last two), explicit, implicit, "
      "explicit_implicit.")


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


def make_objective(reg: Regimen, apply, spec, config):
  """The dropjax objective of a regimen (``has_aux=True``: carries state;
  locked masks at the dropout family's sites, as ``spec`` says)."""
  return djobj.from_config(reg.objective, apply, config,
                           rates=dict(spec.rates),
                           broadcast_axes=dict(spec.broadcast_axes),
                           has_aux=True, k=reg.k)


# ---------------------------------------------------------------- config/data


def config_to_dict(config) -> dict:
  return json.loads(config.to_json_best_effort()) if hasattr(
      config, "to_json_best_effort") else dict(config)


def fingerprint(config) -> str:
  """Hash of everything that changes a run's numbers (not the regimen list,
  not the progress bar)."""
  d = config_to_dict(config)
  for k in ("regimens", "progress"):
    d.pop(k, None)
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def model_kwargs(config) -> dict:
  m, r = config.model, config.rates
  return dict(embed_dim=int(m.embed_dim), hidden_size=int(m.hidden_size),
              num_layers=int(m.num_layers), tie_weights=bool(m.tie_weights),
              forget_bias=float(m.forget_bias), dropout_emb=float(r.emb),
              dropout_hidden=float(r.hidden), dropout_out=float(r.out),
              dropout_weight=float(r.weight))


@dataclasses.dataclass
class Data:
  """The corpus cut for training and evaluation."""
  corpus: Any
  train_inputs: np.ndarray
  train_targets: np.ndarray
  curve: djtrain.EvalSet
  validation: djtrain.EvalSet
  test: djtrain.EvalSet


def load_data(config) -> Data:
  corpus = djtext.load_corpus(config.corpus)
  train = corpus.train
  if config.train_tokens:
    train = train[:int(config.train_tokens)]
  x, y = djtext.bptt_batches(djtext.batchify(train, int(config.batch_size)),
                             int(config.bptt))
  limit = lambda n: int(n) if n else None
  eb, et = int(config.eval_batch_size), int(config.eval_bptt)
  return Data(
      corpus, x, y,
      djtrain.make_eval_set(corpus.validation, eb, et, limit(config.curve_tokens)),
      djtrain.make_eval_set(corpus.validation, eb, et, limit(config.eval_tokens)),
      djtrain.make_eval_set(corpus.test, eb, et, limit(config.eval_tokens)))


# ---------------------------------------------------------------------- runs


def _finite_or_none(v):
  v = float(v)
  return v if math.isfinite(v) else None


@dataclasses.dataclass
class Model:
  """The model of the experiment in functional form (shared by all
  regimens, so evaluation compiles once)."""
  apply: Any
  init: Any
  spec: Any
  module: Any


def build_model(config, vocab_size: int) -> Model:
  mkw = model_kwargs(config)
  apply, _, spec, module = djlstm.make_lm(vocab_size, key=0, **mkw)
  return Model(apply, djlstm.make_lm_init(vocab_size, **mkw), spec, module)


def run_regimen(reg: Regimen, config, data: Data, model: Model, workdir: str,
                fp: str) -> list[dict]:
  """Trains one regimen for every seed and evaluates it; returns records.

  Writes ``runs/<name>/result.json`` (atomically) when done.
  """
  run_dir = os.path.join(workdir, "runs", reg.name)
  apply, init, spec = model.apply, model.init, model.spec
  init_carry = model.module.initial_carry
  objective = make_objective(reg, apply, spec, config)
  optimizer = make_optimizer(
      config.optimizer, float(config.learning_rate),
      momentum=float(config.momentum), weight_decay=float(config.weight_decay),
      clip_norm=float(config.clip_norm) if config.clip_norm else None)
  seeds = tuple(int(s) for s in config.seeds)
  t0 = time.perf_counter()
  res = djtrain.train(
      apply, objective, optimizer, init,
      djtrain.bptt_stream(data.train_inputs, data.train_targets, init_carry),
      steps=int(config.steps), seeds=seeds,
      chunk_size=int(config.chunk_size),
      eval_data=djtrain.StreamEvaluator(apply, {"curve": data.curve},
                                        init_carry),
      eval_every=int(config.eval_every), keep_best=("curve", "loss"),
      on_nan="drop_seed", run_dir=run_dir, run_name=reg.name,
      checkpoint_every=int(config.checkpoint_every),
      devices=int(config.get("devices", 0)) or None,
      progress=bool(config.progress))
  evals = {}
  for which, params in (("final", res.state.params),
                        ("best", res.best_params)):
    for split, es in (("val", data.validation), ("test", data.test)):
      evals[which, split] = djtrain.evaluate_stream(
          apply, params, es, init_carry, stacked=True)
  wall = time.perf_counter() - t0
  last_train = res.history[-1]["train"] if res.history else {}
  records = []
  for j, seed in enumerate(seeds):
    fail = res.failures.get(seed)
    curve = [{"step": h["step"],
              "val_bpc": _finite_or_none(h["eval"]["curve"]["bpc"][j])}
             for h in res.history if "eval" in h]
    rec = {
        "regimen": reg.name, "objective": reg.objective, "k": reg.k,
        "seed": seed, "status": "failed" if fail else "ok",
        "steps": int(config.steps),
        "val_bpc": None, "test_bpc": None, "best_val_bpc": None,
        "best_test_bpc": None, "best_step": res.best_step.get(seed),
        "train_loss": None, "train_bpc": None, "curve": curve,
        "train_seconds": res.train_seconds, "wall_seconds": wall,
        "failure": fail, "fingerprint": fp,
    }
    if not fail:
      rec.update(
          val_bpc=float(evals["final", "val"][j] / LN2),
          test_bpc=float(evals["final", "test"][j] / LN2),
          best_val_bpc=float(evals["best", "val"][j] / LN2),
          best_test_bpc=float(evals["best", "test"][j] / LN2))
      if "data_loss" in last_train:
        rec["train_loss"] = _finite_or_none(last_train["data_loss"][j])
        if rec["train_loss"] is not None:
          rec["train_bpc"] = rec["train_loss"] / LN2
    records.append(rec)
  write_json_atomic(os.path.join(run_dir, RUN_RESULT_FILE),
                    {"regimen": reg.name, "fingerprint": fp,
                     "records": records})
  return records


def load_finished(workdir: str, reg: Regimen, fp: str) -> list[dict] | None:
  path = os.path.join(workdir, "runs", reg.name, RUN_RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  if saved.get("fingerprint") != fp:
    return None
  return saved["records"]


def run_experiment(config, workdir: str, *, log=print) -> dict:
  """Runs (or resumes) the whole experiment; returns the results dict.

  Raises:
    ValueError: an unknown regimen, or ``workdir`` holding results of a
      different config.
  """
  regimens = parse_regimens(config.regimens)
  os.makedirs(workdir, exist_ok=True)
  fp = fingerprint(config)
  cfg_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      old = json.load(f)
    if old.get("fingerprint") != fp:
      raise ValueError(
          f"{workdir} holds results of a different config (fingerprint "
          f"{old.get('fingerprint')} vs {fp}); use another --workdir.")
  write_json_atomic(cfg_path, {"fingerprint": fp,
                               "config": config_to_dict(config)})
  t_start = time.perf_counter()
  data = load_data(config)
  log(f"corpus {data.corpus!r}; train chunks {data.train_inputs.shape}, "
      f"curve {data.curve.num_tokens} tokens, validation "
      f"{data.validation.num_tokens}, test {data.test.num_tokens}")
  model = build_model(config, data.corpus.vocab_size)
  all_records: list[dict] = []
  errors: dict[str, str] = {}
  prev_wall = 0.0
  res_path = os.path.join(workdir, RESULTS_FILE)
  if os.path.exists(res_path):
    with open(res_path) as f:
      prev = json.load(f)
    if prev.get("fingerprint") == fp:
      prev_wall = float(prev.get("wall_seconds_total", 0.0))
  for reg in regimens:
    recs = load_finished(workdir, reg, fp)
    if recs is not None:
      log(f"[{reg.name}] finished earlier: skipped")
    else:
      log(f"[{reg.name}] training {len(config.seeds)} seed(s) for "
          f"{config.steps} steps")
      try:
        recs = run_regimen(reg, config, data, model, workdir, fp)
      except Exception as e:  # noqa: BLE001 -- keep the other regimens going
        errors[reg.name] = f"{type(e).__name__}: {e}"
        log(f"[{reg.name}] FAILED: {errors[reg.name]}\n"
            f"{traceback.format_exc()}")
        continue
      for r in recs:
        if r["status"] == "ok":
          log(f"[{reg.name}] seed {r['seed']}: val {r['val_bpc']:.4f} bpc, "
              f"test {r['test_bpc']:.4f} bpc ({r['wall_seconds']:.0f} s)")
        else:
          log(f"[{reg.name}] seed {r['seed']}: {r['failure']['message']}")
    all_records.extend(recs)
    results = {"fingerprint": fp, "config": config_to_dict(config),
               "records": all_records, "errors": errors,
               "wall_seconds_this_call": time.perf_counter() - t_start,
               "wall_seconds_total": prev_wall + time.perf_counter() - t_start}
    write_json_atomic(res_path, results)
  results = {"fingerprint": fp, "config": config_to_dict(config),
             "records": all_records, "errors": errors,
             "wall_seconds_this_call": time.perf_counter() - t_start,
             "wall_seconds_total": prev_wall + time.perf_counter() - t_start}
  write_json_atomic(res_path, results)
  write_report(workdir, results, regimens)
  return results


# -------------------------------------------------------------------- report


@dataclasses.dataclass
class Stat:
  """Mean, sample std and count of one metric over seeds."""
  mean: float
  std: float
  n: int

  @property
  def se(self) -> float:
    return self.std / math.sqrt(self.n) if self.n > 1 else float("nan")

  def fmt(self) -> str:
    if self.n == 0:
      return "–"
    if self.n == 1:
      return f"{self.mean:.4f}"
    return f"{self.mean:.4f} ± {self.std:.4f}"


def stat(records: list[dict], regimen: str, key: str) -> Stat:
  vals = [r[key] for r in records
          if r["regimen"] == regimen and r["status"] == "ok"
          and r.get(key) is not None]
  if not vals:
    return Stat(float("nan"), float("nan"), 0)
  a = np.asarray(vals, np.float64)
  return Stat(float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0,
              int(a.size))


@dataclasses.dataclass
class Diff:
  """``a - b`` with its standard error and whether it is resolved."""
  d: float
  se: float

  @property
  def resolved(self) -> bool:
    """``|d|`` above both ``2 se`` and :data:`MIN_EFFECT_BPC`."""
    bar = MIN_EFFECT_BPC
    if math.isfinite(self.se):
      bar = max(bar, 2 * self.se)
    return abs(self.d) > bar

  def fmt(self) -> str:
    se = f"{self.se:.4f}" if math.isfinite(self.se) else "n/a"
    return f"{self.d:+.4f} bpc (standard error {se})"


def diff(a: Stat, b: Stat) -> Diff | None:
  if a.n == 0 or b.n == 0:
    return None
  se = math.sqrt((a.se ** 2 if a.n > 1 else math.nan)
                 + (b.se ** 2 if b.n > 1 else math.nan))
  return Diff(a.mean - b.mean, se)


METRIC = "val_bpc"
METRIC_NAME = "final validation bits per character"


def claim_k_degrades(records, names) -> str:
  ks = sorted({r["k"] for r in records if r["objective"] in
               ("dropout", "dropout_k")})
  by_k = {k: stat(records, "dropout_1" if k == 1 else f"dropout_{k}", METRIC)
          for k in ks}
  by_k = {k: s for k, s in by_k.items() if s.n}
  head = ("**Claim 1 — DROPOUT_k degrades as k grows** (same expected update, "
          "1/k of the dropout noise). ")
  if len(by_k) < 2 or 1 not in by_k:
    return head + ("Not testable here: it needs DROPOUT_1 and at least one "
                   "k > 1 with finished seeds.")
  kmax = max(by_k)
  seq = ", ".join(f"k={k}: {s.mean:.4f}" for k, s in sorted(by_k.items()))
  d = diff(by_k[kmax], by_k[1])
  steps = [diff(by_k[b], by_k[a]) for a, b in zip(sorted(by_k),
                                                    sorted(by_k)[1:])]
  ups = sum(1 for s in steps if s.resolved and s.d > 0)
  downs = sum(1 for s in steps if s.resolved and s.d < 0)
  text = (f"Mean {METRIC_NAME}: {seq}. DROPOUT_{kmax} minus DROPOUT_1: "
          f"{d.fmt()}. ")
  if d.resolved and d.d > 0 and downs == 0:
    verdict = (f"**Supported**: larger k is worse, and no step from one k to "
               f"the next goes the other way by more than the noise "
               f"({ups} of {len(steps)} steps are resolved increases).")
  elif d.resolved and d.d > 0:
    verdict = (f"**Partly supported**: DROPOUT_{kmax} is worse than "
               f"DROPOUT_1, but the trend is not monotone ({downs} resolved "
               "decrease(s) between consecutive k).")
  elif d.resolved and d.d < 0:
    verdict = (f"**Not supported — reversed**: DROPOUT_{kmax} is *better* "
               "than DROPOUT_1 in this setting.")
  else:
    verdict = ("**Not supported**: the difference is within the seed noise "
               f"(or below {MIN_EFFECT_BPC} bpc).")
  return head + text + verdict


def claim_noise_repairs(records, names) -> str:
  head = ("**Claim 2 — restoring the update noise repairs DROPOUT_k** "
          "(fix-noise adds DROPOUT_1's noise back with two extra masks; the "
          "implicit regularizer adds its Taylor approximation). ")
  ks = sorted({r["k"] for r in records if r["objective"] in
               ("dropout_k_fix_noise", "dropout_k_implicit")})
  if not ks:
    return head + "Not testable here: no fix-noise / implicit regimen ran."
  k = max(ks)
  d1 = stat(records, "dropout_1", METRIC)
  dk = stat(records, f"dropout_{k}", METRIC)
  if d1.n == 0 or dk.n == 0:
    return head + (f"Not testable here: it needs DROPOUT_1 and DROPOUT_{k} "
                   "with finished seeds.")
  gap = diff(dk, d1)
  parts = [f"Mean {METRIC_NAME}: DROPOUT_1 {d1.mean:.4f}, DROPOUT_{k} "
           f"{dk.mean:.4f} (gap {gap.fmt()})."]
  premise = gap.resolved and gap.d > 0
  verdicts = []
  for suffix, label in (("fix_noise", "fix-noise"), ("implicit",
                                                     "+ implicit")):
    s = stat(records, f"dropout_{k}_{suffix}", METRIC)
    if s.n == 0:
      continue
    vs_k = diff(s, dk)
    vs_1 = diff(s, d1)
    frac = (dk.mean - s.mean) / gap.d if gap.d else float("nan")
    parts.append(f"DROPOUT_{k} {label}: {s.mean:.4f} ({vs_k.fmt()} against "
                 f"DROPOUT_{k}, {vs_1.fmt()} against DROPOUT_1"
                 + (f"; it recovers {100 * frac:.0f}% of the gap" if premise
                    else "") + ").")
    if not premise:
      if gap.resolved and vs_k.resolved and vs_k.d > 0:
        verdicts.append(f"{label} undoes {100 * frac:.0f}% of DROPOUT_{k}'s "
                        "advantage")
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
    tail = (f"**Not testable as stated**: DROPOUT_{k} is not resolvably worse "
            "than DROPOUT_1 here, so there is no degradation to repair ("
            + "; ".join(verdicts) + ").")
    if gap.resolved and any("undoes" in v for v in verdicts):
      tail += (f" The update noise is still what separates DROPOUT_{k} from "
               "DROPOUT_1 — restoring it moves DROPOUT_{k} back towards "
               "DROPOUT_1 — but in this setting the noise hurts instead of "
               "helping.").replace("{k}", str(k))
  else:
    tail = "**Verdict** — " + "; ".join(verdicts) + "."
  return head + " ".join(parts) + " " + tail


def claim_analytic_matches(records, names) -> str:
  head = ("**Claim 3 — explicit + implicit matches dropout** (Algorithm 2 "
          "replaces the dropout masks by the two analytic terms). ")
  ei = stat(records, "explicit_implicit", METRIC)
  d1 = stat(records, "dropout_1", METRIC)
  if ei.n == 0 or d1.n == 0:
    return head + ("Not testable here: it needs explicit_implicit and "
                   "dropout_1 with finished seeds.")
  none = stat(records, "none", METRIC)
  ex = stat(records, "explicit", METRIC)
  d = diff(ei, d1)
  parts = [f"Mean {METRIC_NAME}: dropout {d1.mean:.4f}, explicit + implicit "
           f"{ei.mean:.4f} (difference {d.fmt()})."]
  d_none = diff(d1, none) if none.n else None
  if none.n:
    parts.append(f"No regularization: {none.mean:.4f} (dropout minus none "
                 f"{d_none.fmt()}).")
  if ex.n:
    parts.append(f"Explicit alone: {ex.mean:.4f} ({diff(ex, d1).fmt()} "
                 "against dropout).")
  if not d.resolved:
    if d_none is not None and d_none.resolved and d_none.d < 0:
      ei_none = diff(ei, none)
      tail = ("**Supported**: the analytic replacement is within the noise "
              "of dropout, and dropout itself is resolvably better than no "
              "regularization" + (" (so is the replacement)." if
                                  ei_none.resolved and ei_none.d < 0 else
                                  ", though the replacement is not resolvably"
                                  " better than none."))
    else:
      tail = ("**Supported only weakly**: the two are within the noise of "
              "each other, but dropout does not resolvably beat no "
              "regularization here, so matching it says little.")
  elif d.d > 0:
    tail = ("**Not supported**: the analytic replacement is resolvably worse "
            "than dropout.")
  else:
    tail = ("**Not supported as a match — it is better**: the analytic "
            "replacement is resolvably better than dropout here.")
  return head + " ".join(parts) + " " + tail


def write_report(workdir: str, results: dict, regimens: list[Regimen]):
  """Writes ``report.md`` and the two PNGs from ``results``."""
  records = results["records"]
  cfg = results["config"]
  names = [r.name for r in regimens]
  lines = [
      "# Character-level LSTM language model: dropout vs its analytic "
      "replacement", "",
      f"Corpus `{cfg['corpus']}` (first {cfg['train_tokens'] or 'all'} "
      f"training characters), LSTM {cfg['model']['num_layers']} x "
      f"{cfg['model']['hidden_size']} (embedding {cfg['model']['embed_dim']}"
      f", tied={cfg['model']['tie_weights']}), rates emb/h/out/w_hh = "
      f"{cfg['rates']['emb']}/{cfg['rates']['hidden']}/{cfg['rates']['out']}/"
      f"{cfg['rates']['weight']}, {cfg['optimizer']} lr "
      f"{cfg['learning_rate']}, {cfg['steps']} steps of "
      f"{cfg['batch_size']} x {cfg['bptt']} characters, seeds "
      f"{list(cfg['seeds'])}. Explicit estimator `{cfg['estimator']}`, "
      f"explicit scale {cfg['explicit_scale']} (1 = Taylor-faithful "
      f"q/(2(1-q))), implicit scale {cfg['implicit_scale']}. Wall time "
      f"{results['wall_seconds_total'] / 60:.1f} min.", "",
      "Bits per character (mean ± std over seeds; *final*: parameters after "
      "the last step; *best*: parameters at the best point of the "
      "validation curve, evaluated on the full splits). Train bpc: mean "
      "training loss (with the regimen's noise) over the last evaluation "
      "interval.", "",
      "| regimen | k | seeds ok | val bpc (final) | test bpc (final) | "
      "val bpc (best) | test bpc (best) | train bpc |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for reg in regimens:
    n_all = sum(1 for r in records if r["regimen"] == reg.name)
    if n_all == 0:
      lines.append(f"| {reg.name} | {reg.k} | not run | | | | | |")
      continue
    s = {k: stat(records, reg.name, k) for k in
         ("val_bpc", "test_bpc", "best_val_bpc", "best_test_bpc",
          "train_bpc")}
    lines.append(
        f"| {reg.name} | {reg.k} | {s['val_bpc'].n}/{n_all} | "
        f"{s['val_bpc'].fmt()} | {s['test_bpc'].fmt()} | "
        f"{s['best_val_bpc'].fmt()} | {s['best_test_bpc'].fmt()} | "
        f"{s['train_bpc'].fmt()} |")
  failed = [r for r in records if r["status"] != "ok"]
  if failed or results.get("errors"):
    lines += ["", "## Failures", ""]
    lines += [f"- {r['failure']['message']}" for r in failed]
    lines += [f"- regimen {k}: {v}" for k, v in results["errors"].items()]
  lines += [
      "", "## The paper's claims, checked against these numbers", "",
      f"A difference is called *resolved* when it exceeds both twice its "
      f"standard error (from the seed-to-seed spread) and {MIN_EFFECT_BPC} "
      f"bpc; the metric is the {METRIC_NAME}.", "",
      claim_k_degrades(records, names), "",
      claim_noise_repairs(records, names), "",
      claim_analytic_matches(records, names), "",
      f"![validation curves]({CURVES_PNG})", "",
      f"![final bpc]({FINAL_PNG})", ""]
  _write_text(os.path.join(workdir, REPORT_FILE), "\n".join(lines))
  plot_curves(os.path.join(workdir, CURVES_PNG), records, regimens)
  plot_final(os.path.join(workdir, FINAL_PNG), records, regimens)


def _write_text(path: str, text: str):
  """Writes ``text`` atomically (temp file in the same directory + rename)."""
  _files.write_text_atomic(path, text)


def _savefig_atomic(fig, path: str):
  """Saves a figure atomically (temp PNG in the same directory + rename)."""
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                             suffix=".png", dir=os.path.dirname(path) or ".")
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def plot_curves(path: str, records, regimens):
  """Validation curves: all steps (left) and the second half, zoomed (right)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  zoom_vals = []
  for reg in regimens:
    rs = [r for r in records if r["regimen"] == reg.name
          and r["status"] == "ok" and r["curve"]]
    if not rs:
      continue
    steps = np.array([p["step"] for p in rs[0]["curve"]])
    vals = np.array([[p["val_bpc"] if p["val_bpc"] is not None else np.nan
                      for p in r["curve"]] for r in rs], np.float64)
    mean = np.nanmean(vals, 0)
    style = "--" if reg.objective.startswith(("explicit", "implicit")) else "-"
    half = steps >= steps.max() / 2
    zoom_vals.extend(vals[:, half].ravel().tolist())
    for ax in axes:
      line, = ax.plot(steps, mean, marker=".", label=reg.name,
                      linestyle=style)
      if len(rs) > 1:
        ax.fill_between(steps, np.nanmin(vals, 0), np.nanmax(vals, 0),
                        color=line.get_color(), alpha=0.15)
  zoom = np.asarray(zoom_vals, np.float64)
  zoom = zoom[np.isfinite(zoom)]
  if zoom.size:
    pad = 0.1 * max(zoom.max() - zoom.min(), 1e-3)
    axes[1].set_ylim(zoom.min() - pad, zoom.max() + pad)
    xmax = max(p["step"] for r in records if r["status"] == "ok"
               for p in r["curve"])
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
  for off, key, label in ((-0.2, "val_bpc", "validation"),
                          (0.2, "test_bpc", "test")):
    st = [stat(records, n, key) for n in names]
    ax.bar(x + off, [s.mean if s.n else 0 for s in st], width=0.4,
           yerr=[s.std if s.n > 1 else 0 for s in st], capsize=3,
           label=label)
  vals = [stat(records, n, k).mean for n in names
          for k in ("val_bpc", "test_bpc") if stat(records, n, k).n]
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


# ---------------------------------------------------------------------- main


def main(argv):
  from absl import flags
  from absl import logging
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  FLAGS = flags.FLAGS
  if not FLAGS.workdir:
    raise SystemExit("--workdir is required.")
  config = FLAGS.config
  results = run_experiment(config, FLAGS.workdir)
  print(f"wrote {os.path.join(FLAGS.workdir, REPORT_FILE)} "
        f"({results['wall_seconds_this_call']:.0f} s this call)")


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  here = os.path.dirname(os.path.abspath(__file__))
  flags.DEFINE_string("workdir", None, "Output directory.")
  config_flags.DEFINE_config_file(
      "config", os.path.join(here, "configs", "language_model.py"),
      "Experiment config file (ml_collections).")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
