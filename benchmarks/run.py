"""Benchmarks entry point: what each regimen's training step costs.

Usage::

    python -m benchmarks.run --out results.json [--quick | --micro]

Measures, for a full training step (``jax.jit`` of ``value_and_grad`` + an
Adam update; :mod:`benchmarks.steps`):

* ``regimens``: every regimen on the MLP 784-1024-1024-10 (two sites,
  q = 0.5, batch 128) and on the character LSTM of ``dropjax.models.lstm``
  where it exists: median time, compile time, XLA FLOPs, peak memory, and
  the time and FLOP ratios to the dropout step timed side by side;
* ``torch_peer``: the same MLP and analytic regularizers in eager PyTorch
  (:mod:`benchmarks.torch_peer`), interleaved with the JAX steps;
* ``torch_compile``: dropjax against three PyTorch versions of the same
  step (eager autograd, ``torch.func``, ``torch.compile`` of the
  ``torch.func`` step) on a tiny, the 1024-wide and a 4096-wide MLP and
  (full run) the character LSTM (``none``/``dropout``);
* ``batch_scaling`` / ``width_scaling``: step time against batch size and
  hidden width;
* ``seeds``: ``jax.vmap`` over S seeds against S single-seed steps run one
  after another;
* ``data_parallel``: the batch sharded over 4 fake CPU devices
  (:mod:`benchmarks.data_parallel`, in a subprocess).

Writes ``--out`` (JSON: one record per measured step plus the environment)
and the same path with ``.md`` (Markdown tables), both atomically, and prints
the tables. ``--quick`` (every regimen on the MLP, fewer repeats, one point
per scaling axis, no LSTM) takes about two minutes of CPU time on a 2-core
machine (compiling dominates; longer in wall time when other processes share
the cores); ``--micro`` (tiny MLP, 2 repeats) is the smoke configuration used
by the tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

import jax

from benchmarks import peak as _peak
from benchmarks import steps, timing

CONFIGS: dict[str, dict[str, Any]] = {
  "full": dict(
    repeats=30,
    warmup=3,
    width=1024,
    batch=128,
    d_in=784,
    regimens=steps.REGIMENS,
    lstm=dict(
      vocab=96, embed_dim=64, hidden=128, layers=2, batch=32, seq_len=32
    ),
    lstm_regimens=steps.REGIMENS + ("dropout_k4_map", "dropout_k8_map"),
    lstm_repeats=10,
    transformer=dict(
      vocab=96, embed_dim=128, heads=4, layers=2, batch=32, seq_len=64
    ),
    transformer_regimens=steps.REGIMENS,
    transformer_repeats=10,
    torch_regimens=("dropout", "explicit", "explicit_implicit"),
    torch_threads=(None, 1),
    scaling_regimens=("dropout", "explicit", "explicit_implicit"),
    batch_sizes=(32, 128, 512),
    widths=(256, 1024, 2048),
    scaling_repeats=20,
    seed_counts=(1, 2, 4, 8),
    seed_regimens=("dropout", "explicit_implicit"),
    seed_repeats=10,
    dp_devices=4,
    dp_regimens=("dropout", "explicit_implicit"),
    dp_repeats=20,
    compile_sizes=(
      dict(d_in=20, width=16, batch=8),
      dict(d_in=784, width=1024, batch=128),
      dict(d_in=784, width=4096, batch=128),
    ),
    compile_regimens=("dropout", "explicit", "explicit_implicit"),
    compile_repeats=10,
    compile_lstm=True,
  ),
  "quick": dict(
    repeats=10,
    warmup=3,
    width=1024,
    batch=128,
    d_in=784,
    regimens=steps.REGIMENS,
    lstm=None,
    lstm_regimens=(),
    lstm_repeats=0,
    torch_regimens=("dropout", "explicit_implicit"),
    torch_threads=(None, 1),
    scaling_regimens=("dropout", "explicit_implicit"),
    batch_sizes=(512,),
    widths=(),
    scaling_repeats=5,
    seed_counts=(2,),
    seed_regimens=("explicit_implicit",),
    seed_repeats=3,
    dp_devices=4,
    dp_regimens=("explicit_implicit",),
    dp_repeats=5,
    compile_sizes=(
      dict(d_in=20, width=16, batch=8),
      dict(d_in=784, width=1024, batch=128),
    ),
    compile_regimens=("dropout", "explicit_implicit"),
    compile_repeats=5,
    compile_lstm=False,
  ),
  "micro": dict(
    repeats=2,
    warmup=1,
    width=16,
    batch=8,
    d_in=20,
    regimens=("dropout", "explicit_implicit"),
    lstm=None,
    lstm_regimens=(),
    lstm_repeats=0,
    torch_regimens=("dropout", "explicit_implicit"),
    torch_threads=(1,),
    scaling_regimens=("dropout", "explicit_implicit"),
    batch_sizes=(4,),
    widths=(8,),
    scaling_repeats=2,
    seed_counts=(2,),
    seed_regimens=("explicit_implicit",),
    seed_repeats=2,
    dp_devices=4,
    dp_regimens=("explicit_implicit",),
    dp_repeats=2,
    compile_sizes=(dict(d_in=20, width=16, batch=8),),
    compile_regimens=("dropout",),
    compile_repeats=2,
    compile_lstm=False,
  ),
}

COLUMNS_MAIN = [
  ("model", "model", ""),
  ("regimen", "regimen", ""),
  ("median_ms", "median ms", ".2f"),
  ("p25_ms", "p25", ".2f"),
  ("p75_ms", "p75", ".2f"),
  ("compile_ms", "compile ms", ".0f"),
  ("ratio_to_dropout", "time / dropout", ".2f"),
  ("flops", "GFLOP", ""),
  ("flop_ratio_to_dropout", "FLOP / dropout", ".2f"),
  ("time_over_flop_ratio", "time ratio / FLOP ratio", ".2f"),
  ("gflops_per_s", "GFLOP/s", ".1f"),
  ("fraction_of_peak", "of peak", ".1%"),
  ("peak_mib", "peak MiB", ".1f"),
]


class Suite:
  """Collects the records of one run."""

  def __init__(self, cfg: dict, *, log=print):
    self.cfg = cfg
    self.records: list[dict] = []
    self.notes: list[str] = []
    self.log = log
    self.opt = steps.optimizer()

  # -- one group of steps timed side by side ---------------------------------

  def jax_entries(self, model: steps.Model, regimens: Sequence[str]):
    """``{regimen: (compiled, args, meta)}``, compiled and analysed."""
    out = {}
    args = steps.step_args(model, self.opt)
    full = steps.unrolled(model)  # for the FLOP count of scan models
    for r in regimens:
      jitted = jax.jit(steps.make_step(steps.objective(r, model), self.opt))
      compiled, compile_ms = timing.compile_timed(jitted, *args)
      meta = dict(
        compile_ms=compile_ms,
        **timing.cost(compiled),
        **timing.memory(compiled),
      )
      executed = (
        None
        if full is None
        else steps.flops_executed(r, model, self.opt, full=full)
      )
      if executed is not None:  # scans: count every time step
        meta["flops_compiled"] = meta["flops"]
        meta["flops"] = executed
        meta["flops_source"] = "unoptimised HLO, scans unrolled"
      out[r] = (compiled, args, meta)
    return out

  def time_group(
    self,
    experiment: str,
    model: steps.Model,
    entries: dict,
    repeats: int,
    extra: dict | None = None,
  ) -> list[dict]:
    calls = {
      r: (lambda c=c, a=a: timing.block(c(*a)))
      for r, (c, a, _) in entries.items()
    }
    times = timing.time_interleaved(
      calls, repeats=repeats, warmup=self.cfg["warmup"]
    )
    ref = steps.REFERENCE if steps.REFERENCE in entries else None
    recs = []
    for r, (_, _, meta) in entries.items():
      rec = dict(
        experiment=experiment,
        framework="jax",
        model=model.name,
        regimen=r,
        batch=model.config.get("batch"),
        width=model.config.get("layer_sizes", [None, None])[1],
        **(extra or {}),
        **timing.summary(times[r]),
      )
      rec.update(meta)
      if ref is not None:
        rec["ratio_to_dropout"] = timing.paired_ratio(times[r], times[ref])
        f, f0 = meta.get("flops"), entries[ref][2].get("flops")
        rec["flop_ratio_to_dropout"] = f / f0 if f and f0 else None
        if rec["flop_ratio_to_dropout"]:
          rec["time_over_flop_ratio"] = (
            rec["ratio_to_dropout"] / rec["flop_ratio_to_dropout"]
          )
      recs.append(rec)
    self.records.extend(recs)
    return recs

  # -- experiments ------------------------------------------------------------

  def mlp(self, **kw) -> steps.Model:
    c = self.cfg
    return steps.mlp(
      width=kw.get("width", c["width"]),
      batch=kw.get("batch", c["batch"]),
      d_in=c["d_in"],
    )

  def regimens(self):
    model = self.mlp()
    self.log(
      f"[regimens] {model.name}, batch {self.cfg['batch']}: "
      f"{len(self.cfg['regimens'])} steps"
    )
    entries = self.jax_entries(model, self.cfg["regimens"])
    self.time_group("regimens", model, entries, self.cfg["repeats"])
    self._main = (model, entries)

    if self.cfg["lstm"] is None:
      self.notes.append(
        "char LSTM: not part of this configuration (its "
        "compiles take ~10 s each; run without --quick)."
      )
      return
    lstm = steps.char_lstm(**self.cfg["lstm"])
    if lstm is None:
      note = (
        "char LSTM skipped: dropjax/models/lstm.py does not exist in this tree."
      )
      self.notes.append(note)
      self.records.append(
        dict(
          experiment="regimens",
          framework="jax",
          model="char-lstm",
          regimen=None,
          skipped=True,
          note=note,
        )
      )
      self.log("[regimens] " + note)
      return
    self.log(f"[regimens] {lstm.name}: {len(self.cfg['lstm_regimens'])} steps")
    entries = self.jax_entries(lstm, self.cfg["lstm_regimens"])
    self.time_group(
      "regimens",
      lstm,
      entries,
      self.cfg["lstm_repeats"],
      extra=dict(seq_len=lstm.config["seq_len"]),
    )
    if self.cfg.get("transformer") is None:
      return
    tf = steps.transformer(**self.cfg["transformer"])
    regs = self.cfg["transformer_regimens"]
    self.log(f"[regimens] {tf.name}: {len(regs)} steps")
    self.time_group(
      "regimens",
      tf,
      self.jax_entries(tf, regs),
      self.cfg["transformer_repeats"],
      extra=dict(seq_len=tf.config["seq_len"]),
    )

  def torch_peer(self):
    from benchmarks import torch_peer

    if not torch_peer.available():
      note = "PyTorch peer skipped: torch is not importable (extra [bench])."
      self.notes.append(note)
      self.log("[torch_peer] " + note)
      return
    model, entries = self._main
    regs = self.cfg["torch_regimens"]
    x, y = model.batch
    trainer = torch_peer.PeerTrainer(
      torch_peer.mlp_weights(model.params),
      x,
      y,
      [model.rates[n] for n in sorted(model.rates)],
    )
    # PyTorch at as many threads as XLA uses (every core), and at one
    # thread (often faster on a small, shared CPU): each setting is one
    # group timed side by side with the JAX steps.
    for threads in self.cfg["torch_threads"]:
      threads = torch_peer.set_threads(threads)
      self.log(f"[torch_peer] {model.name}, {threads} torch thread(s)")
      calls = {}
      for r in regs:
        c, a, _ = entries[r]
        calls[("jax", r)] = lambda c=c, a=a: timing.block(c(*a))
        calls[("pytorch", r)] = lambda r=r: trainer.step(r)
      times = timing.time_interleaved(
        calls, repeats=self.cfg["repeats"], warmup=self.cfg["warmup"]
      )
      for (fw, r), t in times.items():
        rec = dict(
          experiment="torch_peer",
          framework=fw,
          model=model.name,
          regimen=r,
          batch=model.config["batch"],
          width=model.config["layer_sizes"][1],
          torch_threads=threads,
          **timing.summary(t),
          ratio_to_dropout=timing.paired_ratio(t, times[(fw, "dropout")]),
          ratio_dropjax_to_pytorch=timing.paired_ratio(
            times[("jax", r)], times[("pytorch", r)]
          ),
        )
        if fw == "jax":
          rec.update(entries[r][2])
        elif entries[r][2].get("flops"):
          # The same math: XLA's count of the JAX step stands for both.
          rec["flops_per_call"] = entries[r][2]["flops"]
        self.records.append(rec)

  def scaling(self):
    c = self.cfg
    for b in c["batch_sizes"]:
      model = self.mlp(batch=b)
      self.log(f"[batch_scaling] batch {b}")
      self.time_group(
        "batch_scaling",
        model,
        self.jax_entries(model, c["scaling_regimens"]),
        c["scaling_repeats"],
      )
    for w in c["widths"]:
      model = self.mlp(width=w)
      self.log(f"[width_scaling] width {w}")
      self.time_group(
        "width_scaling",
        model,
        self.jax_entries(model, c["scaling_regimens"]),
        c["scaling_repeats"],
      )

  def seeds(self):
    c = self.cfg
    model = self.mlp()
    init = jax.jit(
      jax.vmap(
        lambda k: jax.tree.map(
          lambda p: p + 0.01 * jax.random.normal(k, p.shape, p.dtype),
          model.params,
        )
      )
    )
    main = getattr(self, "_main", (None, {}))[1]
    for r in c["seed_regimens"]:
      step = steps.make_step(steps.objective(r, model), self.opt)
      batched = jax.jit(jax.vmap(step, in_axes=(0, 0, None, 0)))
      if r in main:  # the same single-seed step was compiled for the table
        comp_s, _, meta_s = main[r]
        ms_s = meta_s["compile_ms"]
      else:
        comp_s, ms_s = timing.compile_timed(
          jax.jit(step), *steps.step_args(model, self.opt)
        )
      calls, meta = {}, {}
      for s in c["seed_counts"]:
        keys = jax.random.split(jax.random.key(10), s)
        params = init(keys)
        opt_state = jax.vmap(self.opt.init)(params)
        step_keys = jax.random.split(jax.random.key(11), s)
        args = (params, opt_state, model.batch, step_keys)
        comp_v, ms_v = timing.compile_timed(batched, *args)
        per = [
          (
            jax.tree.map(lambda a, i=i: a[i], params),
            jax.tree.map(lambda a, i=i: a[i], opt_state),
            model.batch,
            step_keys[i],
          )
          for i in range(s)
        ]
        calls[("vmap", s)] = lambda cc=comp_v, a=args: timing.block(cc(*a))
        calls[("sequential", s)] = lambda cc=comp_s, per=per: timing.block(
          [cc(*a) for a in per]
        )
        meta[("vmap", s)] = dict(
          compile_ms=ms_v, **timing.cost(comp_v), **timing.memory(comp_v)
        )
        meta[("sequential", s)] = dict(
          compile_ms=ms_s, **timing.cost(comp_s), **timing.memory(comp_s)
        )
      self.log(f"[seeds] {r}: S in {list(c['seed_counts'])}")
      times = timing.time_interleaved(
        calls, repeats=c["seed_repeats"], warmup=c["warmup"]
      )
      for (mode, s), t in times.items():
        summ = timing.summary(t)
        rec = dict(
          experiment="seeds",
          framework="jax",
          model=model.name,
          regimen=r,
          batch=model.config["batch"],
          width=model.config["layer_sizes"][1],
          seeds=s,
          mode=mode,
          **summ,
          per_seed_ms=summ["median_ms"] / s,
          ratio_vmap_to_sequential=timing.paired_ratio(
            times[("vmap", s)], times[("sequential", s)]
          ),
        )
        rec.update(meta[(mode, s)])
        if mode == "sequential":
          rec["note"] = (
            "flops/peak_bytes are those of one single-seed step; it runs S "
            "times (flops_per_call = S * flops)"
          )
          if rec.get("flops"):
            rec["flops_per_call"] = s * rec["flops"]
        self.records.append(rec)

  def torch_compile(self):
    """dropjax against PyTorch eager, torch.func and torch.compile, at three
    MLP sizes and on the LSTM, every framework timed side by side."""
    from benchmarks import torch_peer

    if not torch_peer.available():
      note = "torch.compile peer skipped: torch is not importable ([bench])."
      self.notes.append(note)
      self.log("[torch_compile] " + note)
      return
    c = self.cfg
    threads = torch_peer.set_threads(None)
    for size in c["compile_sizes"]:
      model = steps.mlp(
        width=size["width"], batch=size["batch"], d_in=size["d_in"]
      )
      rates = [model.rates[n] for n in sorted(model.rates)]
      weights = torch_peer.mlp_weights(model.params)
      x, y = model.batch
      regs = c["compile_regimens"]
      peers = {
        "eager": torch_peer.PeerTrainer(weights, x, y, rates),
        "func": torch_peer.mlp_trainer(weights, x, y, rates),
        "compile": torch_peer.mlp_trainer(weights, x, y, rates, compile=True),
      }
      self._torch_group(model, regs, peers, threads, c["compile_repeats"])
    if not c["compile_lstm"]:
      return
    lstm = steps.char_lstm(**c["lstm"])
    if lstm is None:
      return
    (tokens, _), targets = lstm.batch
    layers = lstm.config["layers"]
    peers = {
      v: torch_peer.lstm_trainer(
        lstm.params, tokens, targets, lstm.rates, layers, compile=comp
      )
      for v, comp in (("func", False), ("compile", True))
    }
    self._torch_group(
      lstm, torch_peer.LSTM_REGIMENS, peers, threads, c["lstm_repeats"]
    )

  def _torch_group(self, model, regs, peers, threads, repeats):
    import torch

    # Dynamo caches compiled graphs per code object, and every trainer
    # compiles the same functional_step: past its recompile limit (8) it
    # silently runs eager. A fresh cache per group keeps every graph.
    torch._dynamo.reset()
    self.log(
      f"[torch_compile] {model.name}: {', '.join(regs)} x "
      f"jax + {', '.join(peers)}"
    )
    entries = self.jax_entries(model, regs)
    calls, compile_ms = {}, {}
    for r in regs:
      c, a, _ = entries[r]
      calls[("jax", r)] = lambda c=c, a=a: timing.block(c(*a))
      for v, peer in peers.items():
        if r not in peer.REGIMENS:
          continue
        t0 = time.perf_counter()
        peer.step(r)  # torch.compile compiles here
        compile_ms[(v, r)] = 1e3 * (time.perf_counter() - t0)
        calls[(v, r)] = lambda peer=peer, r=r: peer.step(r)
    times = timing.time_interleaved(
      calls, repeats=repeats, warmup=self.cfg["warmup"]
    )
    for (fw, r), t in times.items():
      rec = dict(
        experiment="torch_compile",
        framework="jax" if fw == "jax" else f"pytorch-{fw}",
        model=model.name,
        regimen=r,
        batch=model.config.get("batch"),
        torch_threads=threads,
        **timing.summary(t),
        ratio_dropjax_to_framework=timing.paired_ratio(times[("jax", r)], t),
      )
      meta = entries[r][2]
      if fw == "jax":
        rec.update(meta)
      else:
        rec["first_call_ms"] = compile_ms[(fw, r)]
        if meta.get("flops"):
          rec["flops_per_call"] = meta["flops"]
      self.records.append(rec)

  def data_parallel(self):
    from benchmarks import data_parallel

    c = self.cfg
    self.log(f"[data_parallel] {c['dp_devices']} fake CPU devices (subprocess)")
    res = data_parallel.run(
      devices=c["dp_devices"],
      width=c["width"],
      batch=c["batch"],
      repeats=c["dp_repeats"],
      warmup=c["warmup"],
      regimens=c["dp_regimens"],
    )
    if res.get("error"):
      note = "data-parallel measurement failed: " + res["error"][-500:]
      self.notes.append(note)
      self.log("[data_parallel] " + note)
    self.records.extend(res.get("records", []))


# ---------------------------------------------------------------- reporting


def _gflop(rec):
  f = rec.get("flops")
  return None if f is None else f"{f / 1e9:.3f}"


def _rows(records, experiment):
  rows = []
  for r in records:
    if r.get("experiment") != experiment:
      continue
    row = dict(r)
    row["flops"] = _gflop(r)
    ach = r.get("achieved_flops_per_s")
    row["gflops_per_s"] = None if ach is None else ach / 1e9
    pb = r.get("peak_bytes")
    row["peak_mib"] = None if pb is None else pb / 2**20
    rows.append(row)
  return rows


def render_markdown(result: dict) -> str:
  """All tables of a result as Markdown."""
  env, recs = result["environment"], result["records"]
  out = [
    f"# dropjax benchmarks ({result['config_name']})",
    "",
    f"- device: {env['device']} ({env['cpu_count']} CPU cores, "
    f"{env['cpu']}), load average at start "
    f"{env['load_average_1min']}",
    "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
    f"- timestamp: {env['timestamp']}",
    f"- command: `{result['command']}`",
    "- step: jit(value_and_grad(objective) + Adam update); median of "
    "interleaved rounds after warm-up; ratios are paired per round; "
    "FLOPs are XLA's cost analysis of the compiled step (for models with "
    "scans, of the step lowered with every scan unrolled: the compiled "
    "count takes a loop body once); peak = "
    "memory_analysis temp + argument + output - alias.",
    "",
  ]
  for n in result.get("notes", []):
    out.append(f"> {n}")
  out.append("")
  if result.get("peak"):
    out += [
      "## The ceiling",
      "",
      _peak.render_markdown(result["peak"]),
      "Every step's GFLOP/s is XLA's FLOP count of the compiled step over "
      "its median time; 'of peak' divides it by the peak above.",
      "",
    ]
  main = [r for r in _rows(recs, "regimens") if not r.get("skipped")]
  if main:
    out += ["## Regimens", "", timing.markdown_table(main, COLUMNS_MAIN), ""]
  peer = _rows(recs, "torch_peer")
  if peer:
    out += [
      "## PyTorch peer (same MLP, same math, same CPU threads)",
      "",
      timing.markdown_table(
        peer,
        [
          ("framework", "framework", ""),
          ("torch_threads", "torch threads", "d"),
          ("regimen", "regimen", ""),
          ("median_ms", "median ms", ".2f"),
          ("ratio_to_dropout", "time / own dropout", ".2f"),
          ("ratio_dropjax_to_pytorch", "dropjax / PyTorch", ".3f"),
          ("gflops_per_s", "GFLOP/s", ".1f"),
          ("fraction_of_peak", "of peak", ".1%"),
        ],
      ),
      "",
    ]
  rows = _rows(recs, "torch_compile")
  if rows:
    out += [
      "## PyTorch eager, torch.func and torch.compile (same math, same CPU)",
      "",
      timing.markdown_table(
        rows,
        [
          ("model", "model", ""),
          ("regimen", "regimen", ""),
          ("framework", "framework", ""),
          ("median_ms", "median ms", ".3f"),
          ("ratio_dropjax_to_framework", "dropjax / this", ".2f"),
          ("compile_ms", "jax compile ms", ".0f"),
          ("first_call_ms", "torch first call ms", ".0f"),
          ("gflops_per_s", "GFLOP/s", ".1f"),
          ("fraction_of_peak", "of peak", ".1%"),
        ],
      ),
      "",
    ]
  for exp, title in (
    ("batch_scaling", "Batch size"),
    ("width_scaling", "Width"),
  ):
    rows = _rows(recs, exp)
    if rows:
      out += [
        f"## Scaling: {title.lower()}",
        "",
        timing.markdown_table(
          rows,
          [
            ("model", "model", ""),
            ("batch", "batch", "d"),
            ("regimen", "regimen", ""),
            ("median_ms", "median ms", ".2f"),
            ("ratio_to_dropout", "time / dropout", ".2f"),
            ("flops", "GFLOP", ""),
            ("flop_ratio_to_dropout", "FLOP / dropout", ".2f"),
            ("fraction_of_peak", "of peak", ".1%"),
            ("peak_mib", "peak MiB", ".1f"),
          ],
        ),
        "",
      ]
  rows = _rows(recs, "seeds")
  if rows:
    out += [
      "## Seeds: vmap over S seeds vs S steps one after another",
      "",
      timing.markdown_table(
        rows,
        [
          ("regimen", "regimen", ""),
          ("seeds", "S", "d"),
          ("mode", "mode", ""),
          ("median_ms", "median ms", ".2f"),
          ("per_seed_ms", "ms per seed", ".2f"),
          ("ratio_vmap_to_sequential", "vmap / sequential", ".2f"),
          ("fraction_of_peak", "of peak", ".1%"),
          ("compile_ms", "compile ms", ".0f"),
          ("peak_mib", "peak MiB", ".1f"),
        ],
      ),
      "",
    ]
  rows = _rows(recs, "data_parallel")
  if rows:
    out += [
      "## Data parallel (fake CPU devices sharing the same cores)",
      "",
      timing.markdown_table(
        rows,
        [
          ("regimen", "regimen", ""),
          ("devices", "devices", "d"),
          ("median_ms", "median ms", ".2f"),
          ("ratio_to_one_device", "time / 1 device", ".2f"),
          ("compile_ms", "compile ms", ".0f"),
          ("flops", "GFLOP", ""),
          ("peak_mib", "peak MiB", ".1f"),
        ],
      ),
      "",
    ]
  return "\n".join(out) + "\n"


SINGLE_THREAD_FLAGS = (
  "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)


def _single_thread_xla() -> None:
  """Pins this process to one CPU (and sets XLA's single-thread flags).

  The flags alone do not do it: XLA's CPU client ran a 2048 matmul on both
  cores with them (process CPU time / wall 1.96; ``benchmarks/peak.py``).
  """
  from jax._src import xla_bridge

  if xla_bridge.backends_are_initialized():
    raise RuntimeError(
      "--single-thread must be set before JAX starts its "
      "backend (run benchmarks.run as a fresh process)."
    )
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_FLAGS
  ).strip()
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


SECTIONS = (
  "regimens",
  "torch_peer",
  "torch_compile",
  "scaling",
  "seeds",
  "data_parallel",
)


def main(argv: Sequence[str] | None = None) -> dict:
  """Runs the benchmarks; returns the result dict (also written to --out)."""
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.run",
    description="Time every dropjax regimen's training step.",
  )
  ap.add_argument(
    "--out",
    required=True,
    help="JSON output path; the Markdown table goes next to it (.md).",
  )
  size = ap.add_mutually_exclusive_group()
  size.add_argument(
    "--quick",
    action="store_true",
    help="fewer repeats and scaling points (~2 min, 2 cores)",
  )
  size.add_argument(
    "--micro", action="store_true", help="tiny models, 2 repeats (smoke test)"
  )
  ap.add_argument(
    "--sections",
    nargs="+",
    choices=SECTIONS,
    default=list(SECTIONS),
    help="what to run (default: all)",
  )
  ap.add_argument(
    "--repeats",
    type=int,
    default=None,
    help="override the number of timed rounds",
  )
  ap.add_argument(
    "--single-thread",
    action="store_true",
    help="XLA and PyTorch on one CPU (the process pinned to one core "
    "before JAX starts its backend)",
  )
  ap.add_argument(
    "--peak-flops",
    type=float,
    default=None,
    help="the machine's peak FLOP/s for fraction_of_peak (default: "
    "measured first, python -m benchmarks.peak)",
  )
  args = ap.parse_args(argv)
  if args.single_thread:
    _single_thread_xla()
  name = "micro" if args.micro else "quick" if args.quick else "full"
  cfg = dict(CONFIGS[name])
  if args.repeats:
    cfg["repeats"] = args.repeats
  if args.single_thread:
    cfg["torch_threads"] = (1,)
  t0 = time.perf_counter()
  env = timing.environment()
  env["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
  log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
  if args.peak_flops:
    peak = {
      "peak_flops_per_s": float(args.peak_flops),
      "peak_how": "given on the command line (--peak-flops)",
      "device": env["device"],
      "records": [],
      "env": {},
    }
  else:
    log("[peak] float32 matmul FLOP/s (XLA, numpy; all cores and one)")
    peak = _peak.measure(micro=name == "micro")
  suite = Suite(cfg, log=log)
  sections = list(args.sections)
  if "torch_peer" in sections and "regimens" not in sections:
    sections.insert(0, "regimens")
  for s in SECTIONS:
    if s in sections:
      getattr(suite, s)()
  for rec in suite.records:
    _peak.with_fraction(rec, peak["peak_flops_per_s"])
  result = {
    "config_name": name,
    "command": "python -m benchmarks.run "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "environment": env,
    "device": env["device"],
    "versions": env["versions"],
    "timestamp": env["timestamp"],
    "config": {
      k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
    },
    "notes": suite.notes,
    "peak": peak,
    "peak_flops_per_s": peak["peak_flops_per_s"],
    "wall_s": time.perf_counter() - t0,
    "records": suite.records,
  }
  md = render_markdown(result)
  timing.write_json_atomic(args.out, result)
  md_path = os.path.splitext(args.out)[0] + ".md"
  timing.write_text_atomic(md_path, md)
  print(md)
  print(
    f"wrote {args.out} and {md_path} ({result['wall_s']:.0f} s)",
    file=sys.stderr,
  )
  return result


if __name__ == "__main__":
  main()
