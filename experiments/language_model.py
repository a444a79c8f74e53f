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
import json
import math
import os
import time
import traceback
from typing import Any

import numpy as np

from dropjax import objectives as djobj
from dropjax.data import text as djtext
from dropjax.models import lstm as djlstm
from dropjax.models import transformer as djtransformer
from dropjax import train as djtrain
from dropjax.train import make_optimizer, write_json_atomic
from experiments import harness

# The report (and the regimen names it shares with the training code).
from experiments.language_model_report import (  # noqa: F401
  CURVES_PNG,
  FINAL_PNG,
  MIN_EFFECT_BPC,
  REPORT_FILE,
  Diff,
  Regimen,
  Stat,
  claim_analytic_matches,
  claim_k_degrades,
  claim_noise_repairs,
  diff,
  parse_regimen,
  parse_regimens,
  plot_curves,
  plot_final,
  stat,
  write_report,
)

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
RUN_RESULT_FILE = "result.json"
LN2 = math.log(2.0)


def make_objective(reg: Regimen, apply, spec, config):
  """The dropjax objective of a regimen (``has_aux=True``: carries state;
  locked masks at the dropout family's sites, as ``spec`` says, and at the
  analytic regimens' sites for the ``_locked`` ones)."""
  return djobj.from_config(
    reg.objective,
    apply,
    config,
    rates=dict(spec.rates),
    broadcast_axes=dict(spec.broadcast_axes),
    lock_analytic=reg.locked,
    has_aux=True,
    k=reg.k,
  )


# ---------------------------------------------------------------- config/data


# Keys that may change between runs in one work directory: the regimens
# (each keeps its own runs/<regimen>/result.json, independent of the others),
# the progress bar and the devices (sharding changes sums only in the last
# float32 bits). Every other key changes the numbers (the seeds are
# trained together, as one vmapped run per regimen).
VOLATILE_KEYS = ("regimens", "progress", "devices")


def config_to_dict(config) -> dict:
  return harness.config_dict(config)


def fingerprint(config) -> str:
  """Hash of everything that changes a run's numbers (not the regimen list,
  not the progress bar)."""
  return harness.fingerprint(config, VOLATILE_KEYS)


def architecture(config) -> str:
  """``config.model.arch``: ``"lstm"`` (the default when the key is absent)
  or ``"transformer"``.

  Raises:
    ValueError: another name.
  """
  arch = str(config.model.get("arch", "lstm"))
  if arch not in ARCHITECTURES:
    raise ValueError(
      f"unknown --config.model.arch {arch!r}; valid: {', '.join(ARCHITECTURES)}."
    )
  return arch


ARCHITECTURES = ("lstm", "transformer")


def model_kwargs(config) -> dict:
  """The model constructor's arguments from ``config.model`` and
  ``config.rates`` (per site kind)."""
  m, r = config.model, config.rates
  if architecture(config) == "transformer":
    return dict(
      embed_dim=int(m.embed_dim),
      num_heads=int(m.num_heads),
      num_layers=int(m.num_layers),
      ff_dim=int(m.ff_dim),
      max_len=int(m.max_len),
      positions=str(m.positions),
      tie_weights=bool(m.tie_weights),
      dropout_emb=float(r.emb),
      dropout_att=float(r.att),
      dropout_res=float(r.res),
      dropout_ff=float(r.ff),
      dropout_final=float(r.final),
    )
  return dict(
    embed_dim=int(m.embed_dim),
    hidden_size=int(m.hidden_size),
    num_layers=int(m.num_layers),
    tie_weights=bool(m.tie_weights),
    forget_bias=float(m.forget_bias),
    dropout_emb=float(r.emb),
    dropout_hidden=float(r.hidden),
    dropout_out=float(r.out),
    dropout_weight=float(r.weight),
  )


@dataclasses.dataclass
class Data:
  """The corpus cut for training and evaluation."""

  corpus: Any
  train_inputs: np.ndarray
  train_targets: np.ndarray
  curve: djtrain.EvalSet
  validation: djtrain.EvalSet
  test: djtrain.EvalSet


def train_chunks(config, corpus, batch_size: int):
  """``(inputs, targets)`` ``[C, batch_size, bptt]`` of the training text
  (its first ``train_tokens``)."""
  train = corpus.train
  if config.train_tokens:
    train = train[: int(config.train_tokens)]
  return djtext.bptt_batches(
    djtext.batchify(train, int(batch_size)), int(config.bptt)
  )


def load_data(config) -> Data:
  corpus = djtext.load_corpus(config.corpus)
  x, y = train_chunks(config, corpus, int(config.batch_size))
  limit = lambda n: int(n) if n else None
  eb, et = int(config.eval_batch_size), int(config.eval_bptt)
  return Data(
    corpus,
    x,
    y,
    djtrain.make_eval_set(
      corpus.validation, eb, et, limit(config.curve_tokens)
    ),
    djtrain.make_eval_set(corpus.validation, eb, et, limit(config.eval_tokens)),
    djtrain.make_eval_set(corpus.test, eb, et, limit(config.eval_tokens)),
  )


# ---------------------------------------------------------------------- runs


def _finite_or_none(v):
  v = float(v)
  return v if math.isfinite(v) else None


@dataclasses.dataclass
class Model:
  """The model of the experiment in functional form (shared by all
  regimens, so evaluation compiles once): ``apply(params, (tokens, carry),
  sites) -> (logits, new_carry)`` and ``initial_carry(batch_size)``."""

  apply: Any
  init: Any
  spec: Any
  initial_carry: Any


def _no_carry(apply):
  """A Transformer's ``apply(params, tokens, sites)`` in the LM's
  ``(tokens, carry) -> (logits, carry)`` form with an empty carry: every
  BPTT chunk is its own context (no memory across chunks)."""

  def with_carry(params, x, sites):
    tokens, carry = x
    return apply(params, tokens, sites), carry

  return with_carry


def build_model(config, vocab_size: int) -> Model:
  mkw = model_kwargs(config)
  if architecture(config) == "transformer":
    if int(config.eval_bptt) > int(config.model.max_len) or int(
      config.bptt
    ) > int(config.model.max_len):
      raise ValueError(
        f"--config.bptt ({config.bptt}) and --config.eval_bptt "
        f"({config.eval_bptt}) must be <= --config.model.max_len "
        f"({config.model.max_len}), the Transformer's longest context."
      )
    apply, _, spec, _ = djtransformer.make_lm(vocab_size, key=0, **mkw)
    init = djtransformer.make_lm_init(vocab_size, **mkw)
    return Model(_no_carry(apply), init, spec, lambda batch_size: ())
  apply, _, spec, module = djlstm.make_lm(vocab_size, key=0, **mkw)
  return Model(
    apply, djlstm.make_lm_init(vocab_size, **mkw), spec, module.initial_carry
  )


def learning_rate(config):
  """``config.learning_rate``, constant; with ``config.warmup_fraction`` set
  (the Transformer configs), linear warm-up then cosine decay to 0 over
  ``config.steps`` (:func:`experiments.harness.warmup_cosine`)."""
  if config.get("warmup_fraction") is None:
    return float(config.learning_rate)
  return harness.warmup_cosine(
    float(config.learning_rate),
    float(config.warmup_fraction),
    int(config.steps),
  )


def run_regimen(
  reg: Regimen, config, data: Data, model: Model, workdir: str, fp: str
) -> list[dict]:
  """Trains one regimen for every seed and evaluates it; returns records.

  Writes ``runs/<name>/result.json`` (atomically) when done.
  """
  run_dir = os.path.join(workdir, "runs", reg.name)
  apply, init, spec = model.apply, model.init, model.spec
  init_carry = model.initial_carry
  objective = make_objective(reg, apply, spec, config)
  optimizer = make_optimizer(
    config.optimizer,
    learning_rate(config),
    momentum=float(config.momentum),
    weight_decay=float(config.weight_decay),
    clip_norm=float(config.clip_norm) if config.clip_norm else None,
  )
  seeds = tuple(int(s) for s in config.seeds)
  inputs_targets = (data.train_inputs, data.train_targets)
  if reg.batch_multiplier > 1:  # the larger-batch control
    inputs_targets = train_chunks(
      config, data.corpus, int(config.batch_size) * reg.batch_multiplier
    )
  t0 = time.perf_counter()
  res = djtrain.train(
    apply,
    objective,
    optimizer,
    init,
    djtrain.bptt_stream(*inputs_targets, init_carry),
    steps=int(config.steps),
    seeds=seeds,
    chunk_size=int(config.chunk_size),
    eval_data=djtrain.StreamEvaluator(apply, {"curve": data.curve}, init_carry),
    eval_every=int(config.eval_every),
    keep_best=("curve", "loss"),
    on_nan="drop_seed",
    run_dir=run_dir,
    run_name=reg.name,
    checkpoint_every=int(config.checkpoint_every),
    devices=int(config.devices) or None,
    progress=bool(config.progress),
  )
  evals = {}
  for which, params in (("final", res.state.params), ("best", res.best_params)):
    for split, es in (("val", data.validation), ("test", data.test)):
      evals[which, split] = djtrain.evaluate_stream(
        apply, params, es, init_carry, stacked=True
      )
  wall = time.perf_counter() - t0
  last_train = res.history[-1]["train"] if res.history else {}
  records = []
  for j, seed in enumerate(seeds):
    fail = res.failures.get(seed)
    curve = [
      {
        "step": h["step"],
        "val_bpc": _finite_or_none(h["eval"]["curve"]["bpc"][j]),
      }
      for h in res.history
      if "eval" in h
    ]
    rec = {
      "regimen": reg.name,
      "objective": reg.objective,
      "k": reg.k,
      "seed": seed,
      "status": "failed" if fail else "ok",
      "steps": int(config.steps),
      "val_bpc": None,
      "test_bpc": None,
      "best_val_bpc": None,
      "best_test_bpc": None,
      "best_step": res.best_step.get(seed),
      "train_loss": None,
      "train_bpc": None,
      "curve": curve,
      "train_seconds": res.train_seconds,
      "wall_seconds": wall,
      "failure": fail,
      "fingerprint": fp,
    }
    if not fail:
      rec.update(
        val_bpc=float(evals["final", "val"][j] / LN2),
        test_bpc=float(evals["final", "test"][j] / LN2),
        best_val_bpc=float(evals["best", "val"][j] / LN2),
        best_test_bpc=float(evals["best", "test"][j] / LN2),
      )
      if "data_loss" in last_train:
        rec["train_loss"] = _finite_or_none(last_train["data_loss"][j])
        if rec["train_loss"] is not None:
          rec["train_bpc"] = rec["train_loss"] / LN2
    records.append(rec)
  write_json_atomic(
    os.path.join(run_dir, RUN_RESULT_FILE),
    {"regimen": reg.name, "fingerprint": fp, "records": records},
  )
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
    harness.ConfigError: an unknown regimen, or a missing or corrupt
      corpus, before anything is written.
    harness.ConfigMismatchError: ``workdir`` holds results of a different
      config.
  """
  t_start = time.perf_counter()
  with harness.config_errors():  # every check before anything is written
    regimens = parse_regimens(config.regimens)
    data = load_data(config)
    model = build_model(config, data.corpus.vocab_size)
  os.makedirs(workdir, exist_ok=True)
  harness.check_config(workdir, config, VOLATILE_KEYS)
  fp = fingerprint(config)
  log(
    f"corpus {data.corpus!r}; train chunks {data.train_inputs.shape}, "
    f"curve {data.curve.num_tokens} tokens, validation "
    f"{data.validation.num_tokens}, test {data.test.num_tokens}"
  )
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
      log(
        f"[{reg.name}] training {len(config.seeds)} seed(s) for "
        f"{config.steps} steps"
      )
      try:
        recs = run_regimen(reg, config, data, model, workdir, fp)
      except Exception as e:  # noqa: BLE001 -- keep the other regimens going
        errors[reg.name] = f"{type(e).__name__}: {e}"
        log(
          f"[{reg.name}] FAILED: {errors[reg.name]}\n{traceback.format_exc()}"
        )
        continue
      for r in recs:
        if r["status"] == "ok":
          log(
            f"[{reg.name}] seed {r['seed']}: val {r['val_bpc']:.4f} bpc, "
            f"test {r['test_bpc']:.4f} bpc ({r['wall_seconds']:.0f} s)"
          )
        else:
          log(f"[{reg.name}] seed {r['seed']}: {r['failure']['message']}")
    all_records.extend(recs)
    results = {
      "fingerprint": fp,
      "config": config_to_dict(config),
      "records": all_records,
      "errors": errors,
      "wall_seconds_this_call": time.perf_counter() - t_start,
      "wall_seconds_total": prev_wall + time.perf_counter() - t_start,
    }
    write_json_atomic(res_path, results)
  results = {
    "fingerprint": fp,
    "config": config_to_dict(config),
    "records": all_records,
    "errors": errors,
    "wall_seconds_this_call": time.perf_counter() - t_start,
    "wall_seconds_total": prev_wall + time.perf_counter() - t_start,
  }
  write_json_atomic(res_path, results)
  write_report(workdir, results, regimens)
  return results


# ---------------------------------------------------------------------- main


def _print_done(config, workdir, results):
  del config
  print(
    f"wrote {os.path.join(workdir, REPORT_FILE)} "
    f"({results['wall_seconds_this_call']:.0f} s this call)"
  )


if __name__ == "__main__":
  harness.main(
    run_experiment,
    config=harness.config_path("language_model"),
    name="language_model",
    after=_print_done,
  )
