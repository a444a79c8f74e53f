"""Where the char LSTM's step time goes: scan unrolling and DROPOUT_k's masks.

``python -m benchmarks.lstm_cost --out FILE.json`` times, side by side in one
interleaved group, the char LSTM's steps (``dropjax.models.lstm``, V96-E64,
two layers of 128 units, batch 32 x 32 steps: the ``regimens`` section of
``benchmarks.run``) built several ways:

* ``unroll``: time steps per iteration of each layer's ``lax.scan``
  (``LSTMLanguageModel(unroll=...)``); the same arithmetic;
* DROPOUT_k's ``k`` masks batched by ``vmap`` (``dropout_k8``) or run one
  after another by ``lax.map`` (``dropout_k8_map``); the same losses and
  gradients up to float rounding.

Every ratio is paired per round against the dropout step with ``unroll=1``
(the library's default) and against the dropout step of the same build;
FLOP ratios use the FLOPs the step executes (scans counted per time step,
:func:`benchmarks.steps.flops_executed`), not XLA's compiled count, which
counts a loop body once.

Not tried: tiling the batch ``k`` times instead of ``k`` masks (the
authors' QRNN/Transformer code does that). It is not DROPOUT_k for this
model: its DropConnect sites (``w_hh{i}``) draw one mask per weight matrix
per forward pass, so ``k`` tiled copies would share one recurrent-weight
mask instead of drawing ``k``. For the batched activation sites it is the
same computation as ``vmap`` (one pass over ``k B`` rows).
"""

from __future__ import annotations

import argparse
from typing import Sequence

import jax

from benchmarks import steps, timing

REGIMENS = (
  "dropout",
  "dropout_k8",
  "dropout_k8_map",
  "explicit",
  "implicit",
  "explicit_implicit",
)

CONFIGS = {
  "full": dict(
    lstm=dict(
      vocab=96, embed_dim=64, hidden=128, layers=2, batch=32, seq_len=32
    ),
    unrolls=(1, 4, 8),
    regimens=REGIMENS,
    repeats=10,
    warmup=2,
  ),
  "micro": dict(
    lstm=dict(vocab=11, embed_dim=4, hidden=8, layers=1, batch=2, seq_len=4),
    unrolls=(1, 2),
    regimens=("dropout", "dropout_k2", "dropout_k2_map", "explicit_implicit"),
    repeats=2,
    warmup=1,
  ),
}


def run(cfg: dict, *, log=print) -> dict:
  """Compiles, counts and times every (unroll, regimen) step; the records."""
  opt = steps.optimizer()
  calls, meta = {}, {}
  full = steps.char_lstm(**cfg["lstm"], unroll=True)  # the FLOP counts
  for u in cfg["unrolls"]:
    model = steps.char_lstm(**cfg["lstm"], unroll=u)
    args = steps.step_args(model, opt)
    for r in cfg["regimens"]:
      jitted = jax.jit(steps.make_step(steps.objective(r, model), opt))
      compiled, ms = timing.compile_timed(jitted, *args)
      name = (u, r)
      calls[name] = lambda c=compiled, a=args: timing.block(c(*a))
      meta[name] = dict(
        model=model.name,
        compile_ms=ms,
        flops_compiled=timing.cost(compiled)["flops"],
        flops=steps.flops_executed(r, model, opt, full=full),
      )
      log(f"[lstm_cost] unroll {u} {r}: compiled in {ms / 1e3:.1f} s")
  times = timing.time_interleaved(
    calls, repeats=cfg["repeats"], warmup=cfg["warmup"]
  )
  base = (cfg["unrolls"][0], steps.REFERENCE)
  recs = []
  for (u, r), t in times.items():
    own = (u, steps.REFERENCE)
    m = meta[(u, r)]
    rec = dict(
      experiment="lstm_cost",
      unroll=u,
      regimen=r,
      **cfg["lstm"],
      **timing.summary(t),
      **m,
      ratio_to_default_dropout=timing.paired_ratio(t, times[base]),
      ratio_to_dropout=timing.paired_ratio(t, times[own]),
    )
    f0 = meta[own]["flops"]
    rec["flop_ratio_to_dropout"] = (
      m["flops"] / f0 if m["flops"] and f0 else None
    )
    if rec["flop_ratio_to_dropout"]:
      rec["time_over_flop_ratio"] = (
        rec["ratio_to_dropout"] / rec["flop_ratio_to_dropout"]
      )
    recs.append(rec)
  return {"environment": timing.environment(), "config": cfg, "records": recs}


COLUMNS = [
  ("unroll", "unroll", ""),
  ("regimen", "regimen", ""),
  ("median_ms", "median ms", ".2f"),
  ("ratio_to_default_dropout", "time / dropout (unroll 1)", ".2f"),
  ("ratio_to_dropout", "time / dropout (same unroll)", ".2f"),
  ("flop_ratio_to_dropout", "FLOP / dropout", ".2f"),
  ("time_over_flop_ratio", "time ratio / FLOP ratio", ".2f"),
  ("compile_ms", "compile ms", ".0f"),
]


def main(argv: Sequence[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.lstm_cost", description=__doc__.splitlines()[0]
  )
  ap.add_argument("--out", required=True, help="JSON results file")
  ap.add_argument("--config", choices=sorted(CONFIGS), default="full")
  ap.add_argument("--repeats", type=int, help="rounds (default: the config's)")
  args = ap.parse_args(argv)
  cfg = dict(CONFIGS[args.config])
  if args.repeats:
    cfg["repeats"] = args.repeats
  result = run(cfg)
  timing.write_json_atomic(args.out, result)
  table = timing.markdown_table(result["records"], COLUMNS)
  timing.write_text_atomic(args.out.rsplit(".", 1)[0] + ".md", table + "\n")
  print(table)
  return result


if __name__ == "__main__":
  main()
