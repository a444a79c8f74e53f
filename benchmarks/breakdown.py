"""Where a training step's time goes: its parts timed on their own.

Usage::

    python -m benchmarks.breakdown [--out breakdown.json] [--micro]

For the MLP of ``benchmarks.run`` (784-1024-1024-10, batch 128, q = 0.5),
each part of the dropout step is jitted and timed alone, with XLA's FLOP
count and the achieved share of the machine's matmul peak
(:mod:`benchmarks.peak`): the bare matmul chain forward and forward +
backward, the model's forward pass, the gradient of the clean loss and of
the dropout loss, the two Bernoulli masks alone, the Adam update alone, and
the whole ``none``, ``dropout``, ``explicit`` and ``explicit_implicit``
steps. Parts are timed one after another (median of ``repeats`` calls after
3 warm-up calls, each ending with ``block_until_ready``), so compare them
within one run only.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp

from benchmarks import peak as _peak
from benchmarks import steps, timing


def parts(model: steps.Model, opt) -> dict:
  """``{name: (fn, args)}`` of the step's parts and of whole steps."""
  args = steps.step_args(model, opt)
  params, opt_state, batch, key = args
  x, _ = batch
  kernels = [params[k]["kernel"] for k in sorted(params)]
  obj = {r: steps.objective(r, model) for r in ("none", "dropout")}
  shapes = [(x.shape[0], k.shape[1]) for k in kernels[:-1]]

  def chain(x, ws):
    for w in ws:
      x = x @ w
    return x

  def loss_grad(regimen):
    return lambda p: jax.grad(lambda p: obj[regimen](p, batch, key)[0])(p)

  out = {
    "matmul chain, forward": (chain, (x, kernels)),
    "matmul chain, forward + backward": (
      lambda x, ws: jax.grad(lambda ws: jnp.sum(chain(x, ws)))(ws),
      (x, kernels),
    ),
    "model forward": (
      lambda p, x: model.apply(p, x, lambda n, v: v),
      (params, x),
    ),
    "gradient, clean loss": (loss_grad("none"), (params,)),
    "gradient, dropout loss": (loss_grad("dropout"), (params,)),
    "Bernoulli masks alone": (
      lambda k: [
        jax.random.bernoulli(jax.random.fold_in(k, i), 0.5, s)
        for i, s in enumerate(shapes)
      ],
      (key,),
    ),
    "Adam update alone": (
      lambda g, s, p: opt.update(g, s, p),
      (params, opt_state, params),
    ),
  }
  for r in ("none", "dropout", "explicit", "explicit_implicit"):
    out[f"step: {r}"] = (
      steps.make_step(steps.objective(r, model), opt),
      args,
    )
  return out


def measure(model: steps.Model, *, repeats: int, peak: float) -> list[dict]:
  recs = []
  for name, (fn, args) in parts(model, steps.optimizer()).items():
    compiled = jax.jit(fn).lower(*args).compile()
    t = timing.median_seconds(
      lambda: timing.block(compiled(*args)), repeats=repeats
    )
    rec = dict(part=name, median_ms=1e3 * t, **timing.cost(compiled))
    recs.append(_peak.with_fraction(rec, peak))
  return recs


def render_markdown(result: dict) -> str:
  lines = [
    f"# Step breakdown: {result['model']}",
    "",
    f"- peak {result['peak_flops_per_s'] / 1e9:.1f} GFLOP/s "
    f"({result['peak_how']}); load average "
    f"{result['environment']['load_average_1min']}",
    f"- command: `{result['command']}`",
    "",
    timing.markdown_table(
      [
        dict(
          r,
          gflop=None if r["flops"] is None else r["flops"] / 1e9,
          gflops_per_s=(
            None
            if r["achieved_flops_per_s"] is None
            else r["achieved_flops_per_s"] / 1e9
          ),
        )
        for r in result["records"]
      ],
      [
        ("part", "part", ""),
        ("median_ms", "median ms", ".2f"),
        ("gflop", "GFLOP", ".3f"),
        ("gflops_per_s", "GFLOP/s", ".1f"),
        ("fraction_of_peak", "of peak", ".1%"),
      ],
    ),
  ]
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.breakdown",
    description="Time the parts of the MLP's dropout step against the "
    "machine's matmul peak.",
  )
  ap.add_argument("--out", help="JSON output path (.md beside it)")
  ap.add_argument("--micro", action="store_true", help="tiny MLP (smoke)")
  ap.add_argument("--repeats", type=int, default=30)
  args = ap.parse_args(argv)
  model = steps.mlp(width=16, batch=8, d_in=20) if args.micro else steps.mlp()
  pk = _peak.measure(micro=args.micro, one_core=False)
  result = {
    "command": "python -m benchmarks.breakdown "
    + " ".join(sys.argv[1:] if argv is None else argv),
    "model": model.name,
    "environment": timing.environment(),
    "peak_flops_per_s": pk["peak_flops_per_s"],
    "peak_how": pk["peak_how"],
    "records": measure(
      model,
      repeats=2 if args.micro else args.repeats,
      peak=pk["peak_flops_per_s"],
    ),
  }
  md = render_markdown(result)
  if args.out:
    timing.write_json_atomic(args.out, result)
    timing.write_text_atomic(os.path.splitext(args.out)[0] + ".md", md)
  print(md)
  return result


if __name__ == "__main__":
  main()
