r"""Does dropout make networks simpler? Pruning, sparsity and clusterability.

    python -m experiments.compressibility --workdir DIR [--config FILE] \
        [--config.KEY=VALUE ...]

For every condition of the config (``experiments/configs/compressibility.py``
by default: control, dropout, explicit + implicit, explicit, L1, L2, targeted
weight and targeted unit dropout) and every seed, the study

1. trains the MLP (phase 1, :func:`dropjax.train.train`, seeds vmapped) --
   the *unpruned* net;
2. continues training under gradual magnitude pruning (phase 2, the same
   engine with a masked optimizer and a re-masking ``hook`` run inside the
   jitted scan before each update): per-layer masks over every kernel, TF-MOT's
   cubic schedule, masks recomputed every ``frequency`` steps and pruned
   weights held at zero after every update -- the *pruned* net;
3. measures both nets: test accuracy and loss, the sparsity report
   (:func:`dropjax.analysis.sparsity_report`), ReLU activation sparsity,
   one-shot prune-accuracy curves at weight and unit level (unpruned net
   only; first and last layer excluded, no fine-tuning) with their AUC and
   largest fraction within 1 pp, and clusterability (n-cut against shuffled
   copies, :func:`dropjax.analysis.clusterability`).

Files written into ``DIR``:

* ``results.json`` -- the config and one record per (condition, seed) with
  every metric and curve (``status`` ``"ok"`` or ``"failed"``), rewritten
  atomically after every finished run;
* ``report.md`` and PNG plots (:mod:`experiments.compressibility_report`):
  tables (mean ± std over seeds), the published numbers side by side, and a
  verdict computed from the numbers on each of the five claims;
* ``records/<condition>/seed_<s>.json`` -- each run's record (a partial one
  while its analysis is under way), ``params/<condition>/seed_<s>_*.npz`` --
  the unpruned and pruned parameters, ``runs/<condition>/...`` -- phase-1
  and phase-2 metrics (JSONL) and orbax checkpoints.

Re-running the same command resumes: finished (condition, seed) runs are
skipped, saved parameters are reused, finished analysis stages are kept, and
an interrupted phase continues from its last checkpoint. A run whose loss
becomes NaN/inf stops with a message naming the condition, seed, phase and
step; its record says so and the other runs go on.

Both phases checkpoint and resume (``runs/<condition>/phase{1,2}_seeds_*``).
Phase 2's pieces (schedule, masked optimizer, re-masking hook) are the
library's :mod:`dropjax.analysis.gradual`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from dropjax import analysis as an
from dropjax import data as djdata
from dropjax import models
from dropjax import objectives
from dropjax import train as djtrain
from dropjax.analysis.gradual import PruningSchedule
from dropjax.analysis.gradual import last_update_step
from dropjax.analysis.gradual import masked_optimizer
from dropjax.analysis.gradual import pruning_hook
from dropjax.tree import load_params
from dropjax.tree import save_params
from experiments import harness
from experiments.compressibility_measure import Measurer
from experiments.compressibility_measure import cluster_key
from experiments.compressibility_measure import graph_stats
from experiments.compressibility_measure import sparsity_entry

Array = jax.Array

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
CONFIG_FILE = "config.json"
LOSS = "softmax_cross_entropy"

# Config keys that may change between sessions of one study without
# invalidating finished runs (they do not change any number): the seeds and
# conditions (every (condition, seed) keeps its own record, and each record
# checks its condition's spec itself), and the keys of speed and display;
# ``fast_thresholds`` is retired (the library's thresholds are the fast
# ones now) and stays here so that work dirs whose config.json has it resume.
VOLATILE_KEYS = (
  "seeds",
  "conditions",
  "condition_specs",
  "cluster.n_jobs",
  "progress",
  "retry_failed",
  "checkpoint_every",
  "chunk_size",
  "eval_batch_size",
  "fast_thresholds",
)

STAGES_UNPRUNED = (
  "eval",
  "sparsity",
  "activations",
  "prune_curves",
  "graph",
  "clusterability",
)
STAGES_PRUNED = ("eval", "sparsity", "activations", "graph", "clusterability")


def _log(msg: str) -> None:
  print(f"[compressibility] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Conditions.
# ---------------------------------------------------------------------------

_RATE_REGIMENS = (
  "dropout",
  "explicit",
  "implicit",
  "explicit_implicit",
  "dropout_k",
  "dropout_k_fix_noise",
  "dropout_k_implicit",
)


def make_condition_objective(
  spec: Mapping[str, Any], apply, site_names: Sequence[str]
):
  """The training objective of one condition.

  Args:
    spec: ``{"regimen": name, ...}``: a :data:`dropjax.objectives.REGIMENS`
      name and its keyword arguments; ``rate`` (for the dropout-like
      regimens) is applied at every site in ``site_names``.
    apply: the model.
    site_names: the model's dropout sites (the hidden layers).

  Returns:
    ``objective(params, batch, key) -> (loss, aux)``.

  Raises:
    ValueError: unknown regimen or missing ``rate``.
  """
  kw = dict(spec)
  regimen = kw.pop("regimen")
  if regimen in _RATE_REGIMENS:
    if "rate" not in kw:
      raise ValueError(f"regimen {regimen!r} needs a 'rate'.")
    rate = float(kw.pop("rate"))
    kw["rates"] = {s: rate for s in site_names}
  return objectives.make_objective(regimen, apply, **kw)


def condition_label(name: str, spec: Mapping[str, Any]) -> str:
  """A short human-readable label, e.g. ``"L1 (5e-05)"``."""
  r = spec["regimen"]
  if r == "none":
    return "control"
  if r in ("dropout", "explicit", "explicit_implicit", "implicit"):
    base = {
      "dropout": "dropout",
      "explicit": "explicit",
      "explicit_implicit": "explicit + implicit",
      "implicit": "implicit",
    }[r]
    return f"{base} (q={spec['rate']:g})"
  if r in ("l1", "l2"):
    return f"{r.upper()} ({spec['coef']:g})"
  if r.startswith("targeted"):
    return f"TD {r.split('_')[1]} (α={spec['alpha']:g}, γ={spec['gamma']:g})"
  return name


# ---------------------------------------------------------------------------
# Phase 2: gradual magnitude pruning.
# ---------------------------------------------------------------------------


def _chunk_times(marks) -> list[dict]:
  """Per chunk ``{"steps", "seconds", "cpu_seconds"}`` from callback marks
  ``(wall, cpu, step)`` (the first chunk includes compilation)."""
  return [
    {"steps": b[2] - a[2], "seconds": b[0] - a[0], "cpu_seconds": b[1] - a[1]}
    for a, b in zip(marks, marks[1:])
  ]


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def _json_safe(obj):
  """A JSON round trip: tuples become lists, float keys strings."""
  return json.loads(json.dumps(obj, default=djtrain.files.to_builtin))


def _stack(trees: Sequence[Any]):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _index(tree, i: int):
  return jax.tree.map(lambda a: a[i], tree)


# ---------------------------------------------------------------------------
# The study.
# ---------------------------------------------------------------------------


def _check_config(workdir: str, config_dict: dict) -> None:
  """Refuses to resume a study made with different numbers-defining keys."""
  harness.check_config(workdir, config_dict, VOLATILE_KEYS)


class Study:
  """One compressibility study in a work directory (see the module doc)."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = os.fspath(workdir)
    # "--config.conditions=control,l1" arrives as ("control,l1",).
    split = lambda items: tuple(
      x.strip() for item in items for x in str(item).split(",") if x.strip()
    )
    self.seeds = tuple(int(s) for s in split(config.seeds))
    self.conditions = split(config.conditions)
    for c in self.conditions:
      if c not in config.condition_specs:
        raise ValueError(
          f"condition {c!r} has no entry in config.condition_specs."
        )
    self.specs = {
      c: dict(config.condition_specs[c].to_dict()) for c in self.conditions
    }

  # ---- paths
  def record_path(self, cond: str, seed: int) -> str:
    return os.path.join(self.workdir, "records", cond, f"seed_{seed}.json")

  def params_path(self, cond: str, seed: int, which: str) -> str:
    return os.path.join(
      self.workdir, "params", cond, f"seed_{seed}_{which}.npz"
    )

  def load_record(self, cond: str, seed: int) -> dict | None:
    path = self.record_path(cond, seed)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      rec = json.load(f)
    if rec.get("spec") != _json_safe(self.specs[cond]):
      raise ValueError(
        f"{path} was made with condition spec {rec.get('spec')!r}, the "
        f"config now says {self.specs[cond]!r}; use another --workdir."
      )
    return rec

  def save_record(self, rec: dict) -> None:
    djtrain.write_json_atomic(
      self.record_path(rec["condition"], rec["seed"]), _json_safe(rec)
    )

  def all_records(self) -> list[dict]:
    root = os.path.join(self.workdir, "records")
    out = []
    if not os.path.isdir(root):
      return out
    for cond in sorted(os.listdir(root)):
      d = os.path.join(root, cond)
      for name in sorted(os.listdir(d)):
        if name.endswith(".json"):
          with open(os.path.join(d, name)) as f:
            rec = json.load(f)
          if rec.get("status") in ("ok", "failed"):
            out.append(rec)
    order = {c: i for i, c in enumerate(self.conditions)}
    out.sort(
      key=lambda r: (
        order.get(r["condition"], len(order)),
        r["condition"],
        r["seed"],
      )
    )
    return out

  # ---- run
  def prepare(self) -> None:
    """Loads and checks the data, builds the model, optimizer and pruning
    schedule: everything that can fail on a bad config, before anything is
    written.

    Raises:
      ValueError, KeyError, dropjax.data.DataError: naming the config key
        or the data to change.
    """
    cfg = self.config
    ds = djdata.load_dataset(
      cfg.data.source,
      data_dir=cfg.data.data_dir or None,
      validation_size=int(cfg.data.validation_size),
      train_size=int(cfg.data.train_size) or None,
      seed=int(cfg.data.split_seed),
    )
    harness.check_dataset(cfg, ds)
    self.dataset = ds
    self.train_data = (ds.train.images, ds.train.labels)
    self.provenance = getattr(ds, "provenance", "")
    layer_sizes = tuple(int(s) for s in cfg.model.layer_sizes)
    self.apply, _, site_rates = models.make_model(
      "mlp", layer_sizes=layer_sizes
    )
    self.site_names = tuple(site_rates)
    self.init = models.make_init("mlp", layer_sizes=layer_sizes)
    self.optimizer = djtrain.make_optimizer(
      cfg.optimizer, float(cfg.learning_rate)
    )
    n = len(ds.train)
    if int(cfg.batch_size) > n:
      raise ValueError(
        f"batch_size {cfg.batch_size} is larger than the {n} training "
        "examples (--config.batch_size, --config.data.train_size)."
      )
    self.steps_per_epoch = n // int(cfg.batch_size)
    self.steps1 = int(cfg.epochs) * self.steps_per_epoch
    self.steps2 = int(cfg.prune_epochs) * self.steps_per_epoch
    end = int(cfg.pruning.end_step)
    if end < 0:
      end = last_update_step(self.steps2, int(cfg.pruning.frequency))
    self.schedule = PruningSchedule(
      end_step=end,
      initial=float(cfg.pruning.initial_sparsity),
      final=float(cfg.pruning.final_sparsity),
      power=float(cfg.pruning.power),
      frequency=int(cfg.pruning.frequency),
    )
    self.mask_fn = an.layerwise_magnitude_masks

  def run(self) -> dict:
    cfg = self.config
    t_start = time.time()
    with harness.config_errors():
      self.prepare()
    os.makedirs(self.workdir, exist_ok=True)
    _check_config(self.workdir, cfg.to_dict())
    prev = {}
    rpath = os.path.join(self.workdir, RESULTS_FILE)
    if os.path.exists(rpath):
      with open(rpath) as f:
        prev = json.load(f)
    ds = self.dataset
    self.measurer = Measurer(self.apply, (ds.test.images, ds.test.labels), cfg)
    _log(
      f"data: {len(ds.train)} train / {len(ds.test)} test; "
      f"{self.steps1} + {self.steps2} steps per run; pruning to "
      f"{self.schedule.final} at step {self.schedule.end_step}."
    )

    for cond in self.conditions:
      self.run_condition(cond)
      self.write_results(prev, t_start)
    results = self.write_results(prev, t_start)
    from experiments import compressibility_report

    compressibility_report.write_report(results, self.workdir)
    _log(f"wrote {os.path.join(self.workdir, REPORT_FILE)}")
    return results

  def write_results(self, prev: dict, t_start: float) -> dict:
    config = _json_safe(self.config.to_dict())
    config["seeds"], config["conditions"] = (
      list(self.seeds),
      list(self.conditions),
    )
    results = {
      "study": "compressibility",
      "config": config,
      "data": self.provenance,
      "steps_per_epoch": self.steps_per_epoch,
      "pruning_schedule": dataclasses.asdict(self.schedule),
      "records": self.all_records(),
      "wall_seconds": float(prev.get("wall_seconds", 0.0))
      + (time.time() - t_start),
      "versions": _versions(),
    }
    djtrain.write_json_atomic(os.path.join(self.workdir, RESULTS_FILE), results)
    return results

  def _new_record(self, cond: str, seed: int) -> dict:
    return {
      "condition": cond,
      "seed": int(seed),
      "status": "partial",
      "spec": _json_safe(self.specs[cond]),
      "label": condition_label(cond, self.specs[cond]),
      "unpruned": {},
      "pruned": {},
      "timing": {},
    }

  def _fail(self, rec: dict, phase: int, step: int, detail: str) -> None:
    msg = (
      f"condition {rec['condition']!r}, seed {rec['seed']}: non-finite "
      f"loss or gradient in phase {phase} "
      f"({'training' if phase == 1 else 'pruning'}) at step {step}"
      f"{detail}; this run stopped, the others go on."
    )
    _log(msg)
    rec.update(status="failed", phase=phase, step=int(step), message=msg)
    self.save_record(rec)

  def _fail_from(self, rec: dict, phase: int, failure: dict) -> None:
    m = failure["metrics"]
    self._fail(
      rec,
      phase,
      failure["step"],
      f" (loss={m.get('loss')}, grad_norm={m.get('grad_norm')})",
    )

  def run_condition(self, cond: str) -> None:
    cfg = self.config
    recs = {}
    for s in self.seeds:
      rec = self.load_record(cond, s)
      if rec is not None and rec["status"] == "failed":
        if not cfg.retry_failed:
          continue
        rec = None
      if (
        rec is not None
        and rec["status"] == "ok"
        and all(st in rec["unpruned"] for st in STAGES_UNPRUNED)
        and all(st in rec["pruned"] for st in STAGES_PRUNED)
      ):
        continue
      # A new record, a partial one, or a finished one that lacks a stage
      # added since (its saved parameters are reused; nothing is retrained).
      recs[s] = rec or self._new_record(cond, s)
    if not recs:
      _log(f"{cond}: all seeds finished earlier, skipped.")
      return
    objective = make_condition_objective(
      self.specs[cond], self.apply, self.site_names
    )

    # Phase 1: ordinary training (the engine, seeds vmapped; a seed whose
    # loss becomes non-finite is recorded as failed, the others go on).
    todo = [
      s
      for s in recs
      if not os.path.exists(self.params_path(cond, s, "unpruned"))
    ]
    if todo:
      run_dir = os.path.join(
        self.workdir, "runs", cond, "phase1_seeds_" + "-".join(map(str, todo))
      )
      marks = [(time.perf_counter(), time.process_time(), 0)]
      res = djtrain.train(
        self.apply,
        objective,
        self.optimizer,
        self.init,
        self.train_data,
        steps=self.steps1,
        batch_size=int(cfg.batch_size),
        seeds=todo,
        chunk_size=int(cfg.chunk_size) or self.steps_per_epoch,
        on_nan="drop_seed",
        run_dir=run_dir,
        run_name=f"{cond} phase 1",
        checkpoint_every=int(cfg.checkpoint_every),
        devices=1,
        progress=bool(cfg.progress),
        callback=lambda info: marks.append(
          (time.perf_counter(), time.process_time(), info["step"])
        ),
      )
      chunks = _chunk_times(marks)
      for i, s in enumerate(res.seeds):
        if s in res.failures:
          self._fail_from(recs.pop(s), 1, res.failures[s])
          continue
        save_params(
          self.params_path(cond, s, "unpruned"), _index(res.state.params, i)
        )
        recs[s]["timing"]["phase1_seconds_group"] = res.train_seconds
        recs[s]["timing"]["phase1_group_size"] = len(res.seeds)
        recs[s]["timing"]["phase1_chunks"] = chunks
        recs[s]["final_train_loss_phase1"] = float(
          res.history[-1]["train"]["loss"][i]
        )
        self.save_record(recs[s])
    if not recs:
      return

    # Analysis of the unpruned nets.
    self.analyse(cond, recs, "unpruned", STAGES_UNPRUNED)

    # Phase 2: gradual magnitude pruning: the same engine with the masked
    # optimizer and the re-masking hook inside the jitted scan.
    todo = [
      s for s in recs if not os.path.exists(self.params_path(cond, s, "pruned"))
    ]
    if todo:
      p1 = _stack(
        [load_params(self.params_path(cond, s, "unpruned")) for s in todo]
      )
      off = int(cfg.phase2_seed_offset)
      marks = [(time.perf_counter(), time.process_time(), 0)]
      res = djtrain.train(
        self.apply,
        objective,
        masked_optimizer(self.optimizer),
        p1,
        self.train_data,
        steps=self.steps2,
        batch_size=int(cfg.batch_size),
        seeds=[s + off for s in todo],
        chunk_size=int(cfg.chunk_size) or self.steps_per_epoch,
        hook=pruning_hook(self.schedule, self.mask_fn),
        on_nan="drop_seed",
        run_dir=os.path.join(
          self.workdir, "runs", cond, "phase2_seeds_" + "-".join(map(str, todo))
        ),
        run_name=f"{cond} phase 2",
        checkpoint_every=int(cfg.checkpoint_every),
        devices=1,
        progress=bool(cfg.progress),
        callback=lambda info: marks.append(
          (time.perf_counter(), time.process_time(), info["step"])
        ),
      )
      chunks = _chunk_times(marks)
      for i, s in enumerate(todo):
        if s + off in res.failures:
          self._fail_from(recs.pop(s), 2, res.failures[s + off])
          continue
        save_params(
          self.params_path(cond, s, "pruned"), _index(res.state.params, i)
        )
        recs[s]["timing"]["phase2_seconds_group"] = res.train_seconds
        recs[s]["timing"]["phase2_group_size"] = len(todo)
        recs[s]["timing"]["phase2_chunks"] = chunks
        recs[s]["final_train_loss_phase2"] = float(
          res.history[-1]["train"]["loss"][i]
        )
        self.save_record(recs[s])

    # Analysis of the pruned nets.
    self.analyse(cond, recs, "pruned", STAGES_PRUNED)
    for rec in recs.values():
      rec["status"] = "ok"
      self.save_record(rec)
      _log(
        f"{cond} seed {rec['seed']}: test accuracy "
        f"{rec['unpruned']['eval']['accuracy']:.4f} -> "
        f"{rec['pruned']['eval']['accuracy']:.4f} (pruned); n-cut "
        f"{rec['unpruned']['clusterability']['ncut']:.3f} "
        f"(z {rec['unpruned']['clusterability']['z']:+.1f}) -> "
        f"{rec['pruned']['clusterability']['ncut']:.3f} "
        f"(z {rec['pruned']['clusterability']['z']:+.1f})"
      )

  def analyse(
    self, cond: str, recs: dict, which: str, stages: Sequence[str]
  ) -> None:
    """Runs the missing analysis stages of ``which`` net for every seed."""
    seeds = [s for s in recs if any(st not in recs[s][which] for st in stages)]
    if not seeds:
      return
    params = {s: load_params(self.params_path(cond, s, which)) for s in seeds}
    stacked = _stack([params[s] for s in seeds])
    bar = None
    if self.config.progress:
      try:
        from tqdm.auto import tqdm

        bar = tqdm(
          total=len(seeds) * len(stages),
          desc=f"{cond} analysis ({which})",
          dynamic_ncols=True,
        )
      except ImportError:
        bar = None
    m = self.measurer
    try:
      for stage in stages:
        pending = [s for s in seeds if stage not in recs[s][which]]
        t0 = time.perf_counter()
        if stage == "eval" and pending:
          ev = m.evaluate(stacked)
          for i, s in enumerate(seeds):
            recs[s][which]["eval"] = {
              "accuracy": ev["accuracy"][i],
              "loss": ev["loss"][i],
            }
        elif stage == "activations" and pending:
          acts = m.activations(stacked)
          for i, s in enumerate(seeds):
            recs[s][which]["activations"] = acts[i]
        for s in pending:
          t1, c1 = time.perf_counter(), time.process_time()
          if stage == "sparsity":
            recs[s][which]["sparsity"] = sparsity_entry(params[s])
          elif stage == "graph":
            recs[s][which]["graph"] = graph_stats(params[s])
          elif stage == "prune_curves":
            recs[s][which]["prune_curves"] = m.prune_curves(params[s])
          elif stage == "clusterability":
            recs[s][which]["clusterability"] = m.clusterability(
              params[s], cluster_key(s, cond, which)
            )
          if stage not in ("eval", "activations"):
            recs[s]["timing"][f"{which}_{stage}_seconds"] = (
              time.perf_counter() - t1
            )
            recs[s]["timing"][f"{which}_{stage}_cpu_seconds"] = (
              time.process_time() - c1
            )
          else:
            recs[s]["timing"][f"{which}_{stage}_seconds_group"] = (
              time.perf_counter() - t0
            )
          self.save_record(recs[s])
          if bar is not None:
            bar.update(1)
    finally:
      if bar is not None:
        bar.close()


def _versions() -> dict[str, Any]:
  return harness.software_versions("sklearn")


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the study described by ``config`` in ``workdir``.

  Returns:
    The results dict written to ``workdir/results.json``.
  """
  with harness.config_errors():
    study = Study(config, workdir)
  return study.run()


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


if __name__ == "__main__":
  harness.main(
    run, config=harness.config_path("compressibility"), name="compressibility"
  )
