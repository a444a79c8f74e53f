"""How noisy is each estimator of the explicit regularizer, per VJP?

``python -m benchmarks.estimator_variance [--draws 256] [--out DIR]``

For an MLP and a character LSTM (the models of :mod:`benchmarks.steps`,
initial weights, one random batch) this draws each stochastic estimator of
:mod:`dropjax.explicit` ``--draws`` times and compares the draws with the
exact Gauss–Newton term (``estimator="gauss_newton"``, ``N K`` VJPs):

* the value: mean / GN (1 for an unbiased estimator, up to the Monte Carlo
  error printed beside it), the relative standard deviation of one draw
  ``SD / GN``, and the *relative variance per pass* ``(SD / GN)² · passes``
  (``passes``: the VJPs or JVPs one draw costs), the number to compare:
  averaging ``S`` draws (``num_samples``) divides the variance by ``S`` and
  multiplies the cost by ``S``;
* the gradient with respect to the parameters (what training uses): the
  total variance ``tr Cov(∇R) / ||∇R_GN||²`` (with the Hessian held
  constant, the gradient every estimator is unbiased for) and its value per
  pass.

``identity_hessian`` and ``identity_hessian_per_site`` estimate another
quantity (the Hessian replaced by ``I / K``); their rows give their mean
relative to GN (the ablation's bias) and their spread relative to their own
mean. For the LSTM it also gives the ratio of the locked Gauss–Newton term
(masks shared over time, as the LM's dropout is) to the element-wise one,
per site.

Writes ``estimator_variance.json`` and ``estimator_variance.md`` to
``--out`` (default: print only).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from benchmarks import steps
from dropjax import explicit as _explicit
from dropjax import sites as _sites
from dropjax.train import write_json_atomic

ESTIMATORS = (
  "sampled_label",
  "curvature_propagation",
  "identity_hessian",
  "identity_hessian_per_site",
)


def _value_fn(model: steps.Model, estimator: str, rates, axes=None):
  x = model.batch[0]

  def value(params, key):
    lin = _sites.linearize_sites(model.apply, params, x, has_aux=model.has_aux)
    return _explicit.explicit_from_linearization(
      lin, rates, estimator=estimator, key=key, broadcast_axes=axes
    )

  return value


def passes(estimator: str, n_sites: int) -> int:
  """VJPs or JVPs one draw costs."""
  return n_sites if estimator == "identity_hessian_per_site" else 1


def moments(model: steps.Model, estimator: str, rates, draws: int, seed: int):
  """Sums over ``draws`` keyed draws of the value and its gradient: mean and
  SD of the value, mean gradient and total gradient variance."""
  vg = jax.value_and_grad(_value_fn(model, estimator, rates))
  flat0, _ = ravel_pytree(model.params)

  @jax.jit
  def run(params, keys):
    def body(acc, key):
      v, g = vg(params, key)
      g = ravel_pytree(g)[0]
      return (acc[0] + v, acc[1] + v * v, acc[2] + g, acc[3] + g * g), None

    z = jnp.zeros((), flat0.dtype)
    zg = jnp.zeros_like(flat0)
    acc, _ = jax.lax.scan(body, (z, z, zg, zg), keys)
    return acc

  keys = jax.random.split(jax.random.key(seed), draws)
  s1, s2, g1, g2 = jax.device_get(run(model.params, keys))
  mean = s1 / draws
  var = max(s2 / draws - mean**2, 0.0) * draws / (draws - 1)
  gmean = g1 / draws
  gvar = np.maximum(g2 / draws - gmean**2, 0.0) * draws / (draws - 1)
  return float(mean), float(math.sqrt(var)), gmean, float(gvar.sum())


def gauss_newton(model: steps.Model, rates, axes=None):
  """The exact term and its gradient (Hessian held constant)."""
  vg = jax.jit(
    jax.value_and_grad(_value_fn(model, "gauss_newton", rates, axes))
  )
  v, g = vg(model.params, jax.random.key(0))
  return float(v), np.asarray(ravel_pytree(g)[0])


def measure(model: steps.Model, draws: int, seed: int = 0) -> dict:
  rates = _sites.resolve_rates(
    model.rates,
    _sites.site_shapes(
      model.apply, model.params, model.batch[0], has_aux=model.has_aux
    ),
  )
  t0 = time.perf_counter()
  gn, ggn = gauss_newton(model, rates)
  gn_norm2 = float(np.sum(ggn**2))
  rows = []
  for est in ESTIMATORS:
    mean, sd, gmean, gvar = moments(model, est, rates, draws, seed)
    p = passes(est, len(rates))
    target = gn if est in ("sampled_label", "curvature_propagation") else mean
    rows.append(
      {
        "estimator": est,
        "passes": p,
        "mean_over_gn": mean / gn,
        "mc_error_of_mean_over_gn": sd / math.sqrt(draws) / gn,
        "relative_sd": sd / target,
        "relative_variance_per_pass": (sd / target) ** 2 * p,
        "grad_bias_over_gn": float(np.linalg.norm(gmean - ggn))
        / math.sqrt(gn_norm2),
        "grad_relative_variance": gvar / gn_norm2,
        "grad_relative_variance_per_pass": gvar / gn_norm2 * p,
      }
    )
  out = {
    "model": model.name,
    "config": model.config,
    "sites": list(rates),
    "gauss_newton": gn,
    "draws": draws,
    "rows": rows,
  }
  if model.broadcast_axes:
    lin = _sites.linearize_sites(
      model.apply, model.params, model.batch[0], has_aux=model.has_aux
    )
    axes = _sites.resolve_broadcast_axes(model.broadcast_axes, rates)
    locked = _explicit.explicit_terms(
      lin, rates, estimator="gauss_newton", broadcast_axes=axes
    )
    plain = _explicit.explicit_terms(lin, rates, estimator="gauss_newton")
    out["locked_over_elementwise"] = {
      s: float(locked[s] / plain[s]) for s in rates if axes[s]
    }
  out["seconds"] = time.perf_counter() - t0
  return out


def markdown(results: list[dict]) -> str:
  lines = [
    "| model | estimator | passes | mean / GN | SD / target | "
    "rel. var. per pass | grad: tr Cov / ‖∇GN‖² | per pass |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    for row in r["rows"]:
      lines.append(
        f"| {r['model']} | {row['estimator']} | {row['passes']} | "
        f"{row['mean_over_gn']:.3f} ± {row['mc_error_of_mean_over_gn']:.3f} | "
        f"{row['relative_sd']:.3f} | {row['relative_variance_per_pass']:.4f} | "
        f"{row['grad_relative_variance']:.3f} | "
        f"{row['grad_relative_variance_per_pass']:.3f} |"
      )
  for r in results:
    if "locked_over_elementwise" in r:
      ratios = ", ".join(
        f"{s} {v:.2f}×" for s, v in r["locked_over_elementwise"].items()
      )
      lines.append("")
      lines.append(
        f"{r['model']}: locked / element-wise Gauss–Newton term: {ratios}."
      )
  return "\n".join(lines) + "\n"


def models(small: bool = False) -> list[steps.Model]:
  if small:
    return [
      steps.mlp(width=16, depth=2, batch=8, d_in=12, n_out=4),
      steps.char_lstm(
        vocab=7, embed_dim=4, hidden=8, layers=1, batch=2, seq_len=4
      ),
    ]
  return [
    steps.mlp(width=256, depth=2, batch=64),
    steps.char_lstm(
      vocab=65, embed_dim=64, hidden=128, layers=1, batch=4, seq_len=16
    ),
  ]


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.estimator_variance",
    description=__doc__.split("\n\n")[0],
  )
  ap.add_argument("--draws", type=int, default=256, help="draws per estimator")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=None, help="directory for JSON and Markdown")
  ap.add_argument(
    "--small", action="store_true", help="tiny models (for the tests)"
  )
  args = ap.parse_args(argv)
  if args.draws < 2:
    ap.error("--draws must be at least 2")
  results = [measure(m, args.draws, args.seed) for m in models(args.small)]
  md = markdown(results)
  print(md)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(
      os.path.join(args.out, "estimator_variance.json"),
      {"backend": jax.default_backend(), "results": results},
    )
    with open(os.path.join(args.out, "estimator_variance.md"), "w") as f:
      f.write(md)
  return results


if __name__ == "__main__":
  main()
