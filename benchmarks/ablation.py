"""A/B timing of implementation choices in the analytic (Algorithm-2) step.

``python -m benchmarks.ablation --out FILE.json [--model mlp|lstm]``
times, side by side, training steps whose objective is the explicit +
implicit regularizer (sampled-label ``R_exp``, Rademacher ``R_imp``) built
in different ways from the same public pieces, next to the dropout step and
the library's own :func:`dropjax.objectives.explicit_implicit`:

* ``stacked_vjp``: the sampled-label and true-label site gradients from one
  ``vmap``-ped VJP over the stacked cotangents (the library before this
  benchmark), or from two VJPs through the same forward residuals (now);
* ``packed_signs``: Rademacher signs 32 per random word
  (:func:`dropjax.implicit.packed_rademacher`, now) or one word per sign
  (``jax.random.rademacher``, before).

All variants compute the same math; they differ in the random stream of the
signs (``packed_signs``) and in how XLA schedules the work.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from benchmarks import steps, timing
from dropjax import explicit as _explicit
from dropjax import implicit as _implicit
from dropjax import losses as _losses
from dropjax import sites as _sites


def variant_objective(
  model: steps.Model, *, stacked_vjp: bool, packed_signs: bool
):
  """``L̄ + R_exp + R_imp`` (scale 1, cross-entropy) built one way."""
  loss = "softmax_cross_entropy"

  def objective(params, batch, key):
    x, y = batch
    k_exp, k_imp = jax.random.split(key)
    lin = _sites.linearize_sites(model.apply, params, x, has_aux=model.has_aux)
    rates = _sites.resolve_rates(model.rates, lin.activations)
    data = _losses.mean_loss(loss, lin.outputs, y)
    y_hat = _losses.sample_targets(loss, k_exp, lin.outputs)
    ct_true = _losses.loss_cotangent(loss, lin.outputs, y)
    ct_samp = _losses.loss_cotangent(loss, lin.outputs, y_hat)
    if stacked_vjp:
      g = jax.vmap(lin.vjp)(jnp.stack([ct_true, ct_samp]))
      g_true = jax.tree.map(lambda a: a[0], g)
      g_samp = jax.tree.map(lambda a: a[1], g)
    else:
      g_true, g_samp = lin.vjp(ct_true), lin.vjp(ct_samp)
    if packed_signs:
      signs = _implicit.rademacher_signs(k_imp, lin.activations)
    else:
      signs = {
        n: jax.random.rademacher(_sites.site_key(k_imp, n), v.shape, v.dtype)
        for n, v in lin.activations.items()
      }
    r_exp = _explicit.explicit_from_linearization(
      lin,
      rates,
      estimator="sampled_label",
      loss=loss,
      key=k_exp,
      site_grads=g_samp,
    )
    r_imp = _implicit.implicit_from_linearization(
      lin, rates, y=y, key=k_imp, loss=loss, site_grads=g_true, signs=signs
    )
    total = data + r_exp + r_imp
    return total, {"data_loss": data, "explicit": r_exp, "implicit": r_imp}

  return objective


VARIANTS = {
  "stacked_vjp+rademacher (before)": dict(stacked_vjp=True, packed_signs=False),
  "stacked_vjp+packed_signs": dict(stacked_vjp=True, packed_signs=True),
  "two_vjps+rademacher": dict(stacked_vjp=False, packed_signs=False),
  "two_vjps+packed_signs (now)": dict(stacked_vjp=False, packed_signs=True),
}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.ablation", description=__doc__.splitlines()[0]
  )
  ap.add_argument("--out", required=True)
  ap.add_argument("--model", choices=("mlp", "lstm"), default="mlp")
  ap.add_argument("--repeats", type=int, default=30)
  ap.add_argument("--warmup", type=int, default=3)
  args = ap.parse_args(argv)
  if args.model == "mlp":
    model = steps.mlp()
  else:
    model = steps.char_lstm(hidden=128, batch=32, seq_len=32)
    if model is None:
      sys.exit("dropjax/models/lstm.py does not exist.")
  opt = steps.optimizer()
  sargs = steps.step_args(model, opt)
  objs = {
    "dropout": steps.objective("dropout", model),
    "library explicit_implicit": steps.objective("explicit_implicit", model),
  }
  for name, kw in VARIANTS.items():
    objs[name] = variant_objective(model, **kw)
  # The "now" variant is the library's objective: same value, same key.
  now = [n for n in VARIANTS if n.endswith("(now)")][0]
  a = objs[now](model.params, model.batch, sargs[3])[0]
  b = objs["library explicit_implicit"](model.params, model.batch, sargs[3])[0]
  if abs(float(a) - float(b)) > 1e-5 * max(1.0, abs(float(b))):
    raise AssertionError(
      f"variant {now!r} differs from the library: {a} vs {b}"
    )
  calls, meta = {}, {}
  for name, obj in objs.items():
    compiled, ms = timing.compile_timed(
      jax.jit(steps.make_step(obj, opt)), *sargs
    )
    calls[name] = lambda c=compiled: timing.block(c(*sargs))
    meta[name] = dict(
      compile_ms=ms, **timing.cost(compiled), **timing.memory(compiled)
    )
    print(f"compiled {name}", file=sys.stderr, flush=True)
  times = timing.time_interleaved(
    calls, repeats=args.repeats, warmup=args.warmup
  )
  recs = []
  for name in objs:
    rec = dict(
      experiment="ablation",
      model=model.name,
      variant=name,
      **timing.summary(times[name]),
      ratio_to_dropout=timing.paired_ratio(times[name], times["dropout"]),
      **meta[name],
    )
    rec["flop_ratio_to_dropout"] = rec["flops"] / meta["dropout"]["flops"]
    recs.append(rec)
  result = {"environment": timing.environment(), "records": recs}
  timing.write_json_atomic(args.out, result)
  print(
    timing.markdown_table(
      recs,
      [
        ("model", "model", ""),
        ("variant", "variant", ""),
        ("median_ms", "median ms", ".2f"),
        ("ratio_to_dropout", "time / dropout", ".2f"),
        ("flop_ratio_to_dropout", "FLOP / dropout", ".3f"),
        ("compile_ms", "compile ms", ".0f"),
      ],
    )
  )
  return result


if __name__ == "__main__":
  main()
