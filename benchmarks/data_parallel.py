"""Data-parallel step over fake CPU devices (run as a subprocess).

``python -m benchmarks.data_parallel --devices 4 ...`` sets
``jax_num_cpu_devices`` before JAX initialises its backend, then times the
same jitted training step (a) on one device and (b) with the batch sharded
over ``devices`` devices (``NamedSharding(mesh, P("data"))``, parameters and
optimizer state replicated; XLA's SPMD partitioner inserts the gradient
all-reduce), side by side. It prints one JSON object on its last stdout
line. :func:`run` starts it from another process and parses that line.

The fake devices share the machine's cores, so this measures the overhead of
the sharded program, not a speed-up: on a 2-core CPU four devices cannot be
faster than one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _measure(args) -> dict:
  import jax

  jax.config.update("jax_num_cpu_devices", args.devices)
  from jax.sharding import NamedSharding, PartitionSpec as P

  from benchmarks import steps, timing

  if jax.device_count() < args.devices:
    raise RuntimeError(
      f"asked for {args.devices} CPU devices, JAX has "
      f"{jax.device_count()} (was the backend initialised "
      "before the flag was set?)."
    )
  model = steps.mlp(width=args.width, batch=args.batch)
  opt = steps.optimizer()
  # Auto axes (sharding propagated by XLA), as dropjax.train.make_mesh uses.
  mesh = jax.make_mesh(
    (args.devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  rep = NamedSharding(mesh, P())
  shard = NamedSharding(mesh, P("data"))
  one = jax.devices()[0]
  records, calls, meta = [], {}, {}
  for regimen in args.regimens:
    step = jax.jit(steps.make_step(steps.objective(regimen, model), opt))
    params, opt_state, batch, key = steps.step_args(model, opt)
    single = jax.device_put((params, opt_state, batch, key), one)
    multi = (
      jax.device_put(params, rep),
      jax.device_put(opt_state, rep),
      jax.device_put(batch, shard),
      jax.device_put(key, rep),
    )
    for tag, a in (("1 device", single), (f"{args.devices} devices", multi)):
      compiled, compile_ms = timing.compile_timed(step, *a)
      name = f"{regimen} [{tag}]"
      calls[name] = lambda c=compiled, a=a: timing.block(c(*a))
      meta[name] = dict(
        regimen=regimen,
        devices=1 if tag == "1 device" else args.devices,
        compile_ms=compile_ms,
        **timing.cost(compiled),
        **timing.memory(compiled),
      )
  times = timing.time_interleaved(
    calls, repeats=args.repeats, warmup=args.warmup
  )
  for name, m in meta.items():
    ref = f"{m['regimen']} [1 device]"
    rec = dict(
      experiment="data_parallel",
      model=model.name,
      regimen=m["regimen"],
      devices=m["devices"],
      batch=args.batch,
      width=args.width,
      **timing.summary(times[name]),
      ratio_to_one_device=timing.paired_ratio(times[name], times[ref]),
    )
    rec.update({k: v for k, v in m.items() if k not in rec})
    records.append(rec)
  return {
    "records": records,
    "device_count": jax.device_count(),
    "device": str(jax.devices()[0].platform),
  }


def run(
  *,
  devices: int = 4,
  width: int = 1024,
  batch: int = 128,
  repeats: int = 10,
  warmup: int = 3,
  regimens=("dropout", "explicit_implicit"),
  timeout: float = 600,
) -> dict:
  """Runs the measurement in a fresh Python process and returns its result.

  Returns ``{"records": [...], ...}``, or ``{"records": [], "error": ...}``
  when the subprocess fails.
  """
  cmd = [
    sys.executable,
    "-m",
    "benchmarks.data_parallel",
    "--devices",
    str(devices),
    "--width",
    str(width),
    "--batch",
    str(batch),
    "--repeats",
    str(repeats),
    "--warmup",
    str(warmup),
    "--regimens",
    *regimens,
  ]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  try:
    proc = subprocess.run(
      cmd, capture_output=True, text=True, timeout=timeout, cwd=root, env=env
    )
  except subprocess.TimeoutExpired:
    return {"records": [], "error": f"timed out after {timeout} s"}
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  if proc.returncode != 0 or not lines:
    return {"records": [], "error": (proc.stderr or proc.stdout)[-2000:]}
  return json.loads(lines[-1])


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--devices", type=int, default=4)
  ap.add_argument("--width", type=int, default=1024)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument(
    "--regimens", nargs="+", default=["dropout", "explicit_implicit"]
  )
  args = ap.parse_args(argv)
  print(json.dumps(_measure(args)))


if __name__ == "__main__":
  main()
