r"""A hyperparameter sweep as a ``vmap`` axis against one program per point.

    python -m benchmarks.sweep --out runs/sweep.json [--quick]

The tuning run (``experiments/tune.py``) trains every grid point of a
regimen: G values of dropout's ``q`` or of the analytic scales. Rates and
scales may be traced arrays, so the G points can be one program with a
leading grid axis (``jax.vmap`` over the hyperparameter, each point its own
parameters and optimizer state), or G programs with the value baked in, run
one after another. This measures both on the main job's model (MLP
784-256-256-256-256-10, batch 128, Adam), for a chunk of ``steps`` training
steps in one ``lax.scan`` as the engine runs them:

* ``per_point_step_ms``: median wall time of the chunk / (G x steps);
* ``ratio_vmap_to_sequential``: median over rounds of the paired ratio
  (the two modes interleaved, so machine load hits both alike);
* ``compile_s``: one vmapped program against G programs.

Writes ``--out`` (JSON) and ``--out`` with ``.md`` (a table).
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import optax

import dropjax
from benchmarks import timing
from dropjax import models

SIZES = (784, 256, 256, 256, 256, 10)
VALUES = {
  # regimen: (hyperparameter, values to cycle through)
  "dropout": ("rate", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)),
  "explicit_implicit": ("explicit_scale", (0.5, 1.0, 2.0, 0.25, 4.0, 0.125)),
}


def _objective(regimen, apply, sites, value):
  if regimen == "dropout":
    return dropjax.objectives.dropout(apply, rates={s: value for s in sites})
  return dropjax.objectives.explicit_implicit(
    apply, rates={s: 0.5 for s in sites}, explicit_scale=value
  )


def _chunk(regimen, apply, sites, opt, value, params, opt_state, xs, ys, keys):
  obj = _objective(regimen, apply, sites, value)

  def step(carry, batch):
    p, o = carry
    x, y, k = batch
    (loss, _), g = jax.value_and_grad(obj, has_aux=True)(p, (x, y), k)
    u, o = opt.update(g, o, p)
    return (optax.apply_updates(p, u), o), loss

  (params, opt_state), losses = jax.lax.scan(
    step, (params, opt_state), (xs, ys, keys)
  )
  return params, opt_state, losses


def measure(regimen, points, *, steps, repeats, warmup, batch=128):
  """One (regimen, G) pair: both modes, interleaved."""
  apply, _, site_rates = models.make_model("mlp", layer_sizes=SIZES)
  init = models.make_init("mlp", layer_sizes=SIZES)
  sites = tuple(site_rates)
  opt = optax.adam(1e-3)
  name, cycle = VALUES[regimen]
  values = [cycle[i % len(cycle)] for i in range(points)]
  kx, ky, kk = jax.random.split(jax.random.key(0), 3)
  xs = jax.random.normal(kx, (steps, batch, SIZES[0]))
  ys = jax.random.randint(ky, (steps, batch), 0, SIZES[-1])
  keys = jax.random.split(kk, steps)
  params = [init(jax.random.key(i)) for i in range(points)]
  states = [opt.init(p) for p in params]
  chunk = functools.partial(_chunk, regimen, apply, sites, opt)

  stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
  stacked_states = jax.tree.map(lambda *a: jnp.stack(a), *states)
  hp = jnp.asarray(values, jnp.float32)
  vm = jax.jit(jax.vmap(chunk, in_axes=(0, 0, 0, None, None, None)))
  t0 = time.perf_counter()
  vm_c = vm.lower(hp, stacked, stacked_states, xs, ys, keys).compile()
  vm_compile = time.perf_counter() - t0

  seq_c = []
  t0 = time.perf_counter()
  for v, p, s in zip(values, params, states):
    f = jax.jit(functools.partial(chunk, float(v)))
    seq_c.append((f.lower(p, s, xs, ys, keys).compile(), p, s))
  seq_compile = time.perf_counter() - t0

  calls = {
    "vmap": lambda: timing.block(
      vm_c(hp, stacked, stacked_states, xs, ys, keys)
    ),
    "sequential": lambda: timing.block(
      [c(p, s, xs, ys, keys) for c, p, s in seq_c]
    ),
  }
  times = timing.time_interleaved(calls, repeats=repeats, warmup=warmup)
  out = []
  for mode, t in times.items():
    summ = timing.summary(t)
    out.append(
      dict(
        regimen=regimen,
        hyperparameter=name,
        points=points,
        mode=mode,
        steps=steps,
        batch=batch,
        per_point_step_ms=summ["median_ms"] / (points * steps),
        compile_s=vm_compile if mode == "vmap" else seq_compile,
        ratio_vmap_to_sequential=timing.paired_ratio(
          times["vmap"], times["sequential"]
        ),
        **summ,
      )
    )
  return out


def render(records) -> str:
  rows = [r for r in records if r["mode"] == "vmap"]
  seq = {
    (r["regimen"], r["points"]): r for r in records if r["mode"] == "sequential"
  }
  lines = [
    "| regimen | G points | vmap ms / point-step | sequential ms / "
    "point-step | vmap / sequential (paired median) | compile s: vmap | "
    "compile s: G programs |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    s = seq[(r["regimen"], r["points"])]
    lines.append(
      f"| {r['regimen']} | {r['points']} | {r['per_point_step_ms']:.2f} | "
      f"{s['per_point_step_ms']:.2f} | {r['ratio_vmap_to_sequential']:.2f} | "
      f"{r['compile_s']:.1f} | {s['compile_s']:.1f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", required=True, help="JSON file to write")
  ap.add_argument(
    "--quick", action="store_true", help="one G, few repeats (a smoke run)"
  )
  args = ap.parse_args(argv)
  if args.quick:
    plan, steps, repeats, warmup = {"dropout": (2,)}, 2, 2, 1
  else:
    plan = {"dropout": (2, 6, 12), "explicit_implicit": (2, 6)}
    steps, repeats, warmup = 20, 7, 2
  records = []
  for regimen, gs in plan.items():
    for g in gs:
      print(f"[sweep] {regimen}: G = {g}", flush=True)
      records += measure(
        regimen, g, steps=steps, repeats=repeats, warmup=warmup
      )
  result = {"environment": timing.environment(), "records": records}
  timing.write_json_atomic(args.out, result)
  md = os.path.splitext(args.out)[0] + ".md"
  timing.write_text_atomic(md, render(records))
  print(render(records))
  return result


if __name__ == "__main__":
  main()
