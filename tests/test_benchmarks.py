"""Benchmarks harness: a micro run writes the results, the PyTorch peer
computes dropjax's values."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import data_parallel, run, steps, timing, torch_peer

REQUIRED_RECORD = (
  "model",
  "regimen",
  "median_ms",
  "compile_ms",
  "ratio_to_dropout",
  "flops",
  "flop_ratio_to_dropout",
  "peak_bytes",
)


def test_micro_run_writes_json_and_markdown(tmp_path):
  out = str(tmp_path / "micro.json")
  result = run.main(
    [
      "--out",
      out,
      "--micro",
      "--sections",
      "regimens",
      "torch_peer",
      "--peak-flops",
      "1e11",
    ]
  )
  with open(out) as f:
    data = json.load(f)
  assert data["config_name"] == "micro"
  assert data["device"].startswith("cpu")
  assert {"jax", "jaxlib", "flax", "optax", "torch"} <= set(data["versions"])
  assert data["timestamp"]
  main = [r for r in data["records"] if r["experiment"] == "regimens"]
  assert [r["regimen"] for r in main] == list(run.CONFIGS["micro"]["regimens"])
  for r in main:
    for k in REQUIRED_RECORD:
      assert k in r, (k, r)
    assert r["median_ms"] > 0 and r["compile_ms"] > 0
    assert r["flops"] > 0 and r["peak_bytes"] > 0
    assert r["n_runs"] == 2
    # achieved = XLA's FLOPs / median time; fraction = that / the peak given
    assert r["achieved_flops_per_s"] == pytest.approx(
      r["flops"] / (r["median_ms"] / 1e3)
    )
    assert r["fraction_of_peak"] == pytest.approx(
      r["achieved_flops_per_s"] / 1e11
    )
  assert data["peak_flops_per_s"] == 1e11
  ref = next(r for r in main if r["regimen"] == "dropout")
  assert ref["ratio_to_dropout"] == 1.0 and ref["flop_ratio_to_dropout"] == 1.0
  ei = next(r for r in main if r["regimen"] == "explicit_implicit")
  assert ei["flop_ratio_to_dropout"] > 1.0  # double backward costs FLOPs
  md = open(str(tmp_path / "micro.md")).read()
  assert "| mlp-20-16-16-10 | explicit_implicit |" in md
  assert result["records"] == data["records"]
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
  if torch_peer.available():
    peer = [r for r in data["records"] if r["experiment"] == "torch_peer"]
    assert {(r["framework"], r["regimen"]) for r in peer} == {
      (fw, reg)
      for fw in ("jax", "pytorch")
      for reg in ("dropout", "explicit_implicit")
    }
    assert all(r["ratio_dropjax_to_pytorch"] > 0 for r in peer)


def test_peak_measures_all_cores_and_one_core():
  from benchmarks import peak

  got = peak.measure(micro=True)
  assert got["peak_flops_per_s"] == max(
    r["flops_per_s"] for r in got["records"] if r["library"] == "xla"
  )
  assert {r["library"] for r in got["records"]} == {"xla", "numpy"}
  one = got["one_core"]
  assert "error" not in one, one.get("error")
  assert {r["library"] for r in one["records"]} == {"xla", "numpy"}
  assert peak.with_fraction({"flops": 2e9, "median_ms": 10.0}, 4e11) == {
    "flops": 2e9,
    "median_ms": 10.0,
    "achieved_flops_per_s": 2e11,
    "fraction_of_peak": 0.5,
  }
  assert peak.with_fraction({"median_ms": 1.0}, 1e9)["fraction_of_peak"] is None


def test_seed_axis_benchmark_micro(tmp_path):
  from benchmarks import seed_axis

  out = str(tmp_path / "sa.json")
  res = seed_axis.main(["--out", out, "--micro"])
  modes = {r["mode"]: r for r in res["records"]}
  assert set(modes) == {"vmap", "map", "separate"}
  assert modes["separate"]["ratio_to_separate"] == 1.0
  assert all(r["median_ms"] > 0 for r in res["records"])
  assert os.path.exists(str(tmp_path / "sa.md"))


def test_data_parallel_subprocess_uses_fake_devices():
  res = data_parallel.run(
    devices=2,
    width=8,
    batch=8,
    repeats=2,
    warmup=1,
    regimens=("none",),
    timeout=300,
  )
  assert not res.get("error"), res.get("error")
  assert res["device_count"] == 2
  assert sorted(r["devices"] for r in res["records"]) == [1, 2]
  for r in res["records"]:
    assert r["median_ms"] > 0 and r["experiment"] == "data_parallel"


def test_interleaved_timing_rotates_and_ratios_are_paired():
  order = []
  calls = {n: (lambda n=n: order.append(n)) for n in "abc"}
  times = timing.time_interleaved(calls, repeats=3, warmup=1)
  assert order[:3] == list("abc")  # warm-up
  assert order[3:] == list("abc") + list("bca") + list("cab")
  assert all(len(t) == 3 for t in times.values())
  assert timing.paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
  s = timing.summary([0.001, 0.003, 0.002])
  assert s["median_ms"] == pytest.approx(2.0) and s["n_runs"] == 3


def test_compiled_step_cost_and_memory():
  model = steps.mlp(width=8, batch=4, d_in=6, n_out=3)
  opt = steps.optimizer()
  jitted = jax.jit(steps.make_step(steps.objective("none", model), opt))
  compiled, ms = timing.compile_timed(jitted, *steps.step_args(model, opt))
  c = timing.cost(compiled)
  # Forward + backward matmuls alone: 2 * 4 * (6*8 + 8*8 + 8*3) * 3 - the
  # input gradient of the first layer (not needed) = 2*4*(136*3 - 48).
  assert c["flops"] >= 2 * 4 * (136 * 3 - 48)
  m = timing.memory(compiled)
  assert m["peak_bytes"] >= m["argument_bytes"] > 0 and ms > 0


def _peer_inputs():
  model = steps.mlp(width=12, batch=6, d_in=7, n_out=4, rate=0.3)
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.params)
  x, y = model.batch
  x = jnp.asarray(x, jnp.float64)
  y_hat = jax.random.randint(jax.random.key(5), y.shape, 0, 4)
  names = sorted(model.rates)
  signs = {
    n: jax.random.rademacher(jax.random.key(10 + i), (6, 12), jnp.float64)
    for i, n in enumerate(names)
  }
  return model, params, x, y, y_hat, signs, names


def test_torch_peer_computes_the_same_values_and_gradients():
  torch = pytest.importorskip("torch")
  with jax.enable_x64(True):
    model, params, x, y, y_hat, signs, names = _peer_inputs()

    def terms(p):
      return steps.analytic_terms(
        model.apply, p, x, y, rates=model.rates, y_hat=y_hat, signs=signs
      )

    want = jax.jit(terms)(params)
    grads = jax.jit(jax.grad(lambda p: terms(p)["total"]))(params)
    peer = torch_peer.PeerMLP(
      torch_peer.mlp_weights(params), dtype=torch.float64
    )
    got = torch_peer.analytic_terms(
      peer,
      torch.tensor(np.asarray(x)),
      torch.tensor(np.asarray(y)),
      [model.rates[n] for n in names],
      y_hat=torch.tensor(np.asarray(y_hat)),
      signs=[torch.tensor(np.asarray(signs[n])) for n in names],
    )
    for k in ("data", "explicit", "implicit", "total"):
      np.testing.assert_allclose(
        float(got[k].detach()),
        float(want[k]),
        rtol=1e-12,
        atol=1e-14,
        err_msg=k,
      )
    assert abs(float(want["explicit"])) > 1e-3
    assert abs(float(want["implicit"])) > 1e-3
    got["total"].backward()
    flat = [a for kb in torch_peer.mlp_weights(grads) for a in kb]
    for g_jax, p_torch in zip(flat, peer.params):
      np.testing.assert_allclose(
        p_torch.grad.numpy(), g_jax, rtol=1e-10, atol=1e-12
      )


def test_torch_func_peer_computes_the_same_values_and_gradients():
  """The torch.func peer (the one torch.compile traces) equals the library:
  the sampled labels forced through the Gumbel noise, the same signs."""
  torch = pytest.importorskip("torch")
  with jax.enable_x64(True):
    model, params, x, y, y_hat, signs, names = _peer_inputs()

    def total(p):
      return steps.analytic_terms(
        model.apply, p, x, y, rates=model.rates, y_hat=y_hat, signs=signs
      )["total"]

    want, grads = jax.jit(jax.value_and_grad(total))(params)
    flat = [
      torch.tensor(np.asarray(a))
      for kb in torch_peer.mlp_weights(params)
      for a in kb
    ]
    n_out = flat[-1].shape[0]
    gumbel = (
      1e6
      * torch.nn.functional.one_hot(
        torch.tensor(np.asarray(y_hat)), n_out
      ).double()
    )
    got_grads, got = torch.func.grad_and_value(
      lambda p: torch_peer.functional_loss(
        p,
        torch.tensor(np.asarray(x)),
        torch.tensor(np.asarray(y)),
        [model.rates[n] for n in names],
        "explicit_implicit",
        gumbel=gumbel,
        signs=[torch.tensor(np.asarray(signs[n])) for n in names],
      )
    )(flat)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
    want_flat = [a for kb in torch_peer.mlp_weights(grads) for a in kb]
    for g_jax, g_torch in zip(want_flat, got_grads):
      np.testing.assert_allclose(g_torch.numpy(), g_jax, rtol=1e-10, atol=1e-12)


def test_torch_functional_trainer_steps_run():
  pytest.importorskip("torch")
  model = steps.mlp(width=8, batch=4, d_in=5, n_out=3)
  trainer = torch_peer.mlp_trainer(
    torch_peer.mlp_weights(model.params), *model.batch, [0.5, 0.5]
  )
  for r in torch_peer.MLP_REGIMENS:
    assert np.isfinite(trainer.step(r))
  with pytest.raises(ValueError, match="valid"):
    trainer.step("nope")


def test_torch_lstm_peer_computes_the_same_loss_and_gradients():
  """The PyTorch LSTM equals dropjax.models.lstm (float64, no dropout), and
  its dropout step runs."""
  torch = pytest.importorskip("torch")
  from dropjax import objectives

  with jax.enable_x64(True):
    lm = steps.char_lstm(
      vocab=7, embed_dim=3, hidden=4, layers=2, batch=2, seq_len=5
    )
    params = jax.tree.map(lambda a: a.astype(jnp.float64), lm.params)
    (tokens, carry), targets = lm.batch
    carry = jax.tree.map(lambda a: a.astype(jnp.float64), carry)
    obj = objectives.none(lm.apply, has_aux=True)
    (want, _), grads = jax.value_and_grad(obj, has_aux=True)(
      params, ((tokens, carry), targets), None
    )
    flat = [
      torch.tensor(a, requires_grad=True)
      for a in torch_peer.lstm_params(params, 2)
    ]
    got = torch_peer.lstm_loss(
      flat,
      torch.tensor(np.asarray(tokens)),
      torch.tensor(np.asarray(targets)),
      2,
    )
    np.testing.assert_allclose(float(got.detach()), float(want), rtol=1e-12)
    got.backward()
    for g_jax, p_torch in zip(torch_peer.lstm_params(grads, 2), flat):
      np.testing.assert_allclose(
        p_torch.grad.numpy(), g_jax, rtol=1e-9, atol=1e-12
      )
  trainer = torch_peer.lstm_trainer(lm.params, tokens, targets, lm.rates, 2)
  for r in torch_peer.LSTM_REGIMENS:
    assert np.isfinite(trainer.step(r))


def test_torch_peer_trainer_steps_run():
  pytest.importorskip("torch")
  model = steps.mlp(width=8, batch=4, d_in=5, n_out=3)
  trainer = torch_peer.PeerTrainer(
    torch_peer.mlp_weights(model.params), *model.batch, [0.5, 0.5]
  )
  for r in torch_peer.PeerTrainer.REGIMENS:
    assert np.isfinite(trainer.step(r))
  with pytest.raises(ValueError, match="valid"):
    trainer.step("nope")


def test_given_labels_helper_reproduces_the_library_objective():
  """With the labels and signs the objective draws from its key, the
  deterministic helper the peer is checked against gives the objective's
  own terms: the peer check covers what the benchmark times."""
  from dropjax import implicit, losses, sites

  model = steps.mlp(width=8, batch=4, d_in=5, n_out=3)
  key = jax.random.key(3)
  objective = steps.objective("explicit_implicit", model)

  @jax.jit
  def both(params, batch, key):
    loss, aux = objective(params, batch, key)
    k_exp, k_imp = jax.random.split(key)
    x, y = batch
    lin = sites.linearize_sites(model.apply, params, x)
    y_hat = losses.sample_targets("softmax_cross_entropy", k_exp, lin.outputs)
    signs = implicit.rademacher_signs(k_imp, lin.activations)
    terms = steps.analytic_terms(
      model.apply, params, x, y, rates=model.rates, y_hat=y_hat, signs=signs
    )
    return loss, aux, terms

  loss, aux, terms = both(model.params, model.batch, key)
  np.testing.assert_allclose(terms["explicit"], aux["explicit"], rtol=1e-5)
  np.testing.assert_allclose(
    terms["implicit"], aux["implicit"], rtol=1e-5, atol=1e-7
  )
  np.testing.assert_allclose(terms["total"], loss, rtol=1e-5)


def test_sweep_vmap_trains_each_point_as_its_own_program(tmp_path):
  import functools

  import optax

  from benchmarks import sweep
  from dropjax import models

  sizes = (12, 8, 8, 3)
  apply, _, site_rates = models.make_model("mlp", layer_sizes=sizes)
  init = models.make_init("mlp", layer_sizes=sizes)
  opt = optax.adam(1e-2)
  steps = 3
  xs = jax.random.normal(jax.random.key(0), (steps, 16, 12))
  ys = jax.random.randint(jax.random.key(1), (steps, 16), 0, 3)
  keys = jax.random.split(jax.random.key(2), steps)
  for regimen, values in (
    ("dropout", (0.1, 0.6)),
    ("explicit_implicit", (0.5, 4.0)),
  ):
    chunk = functools.partial(
      sweep._chunk, regimen, apply, tuple(site_rates), opt
    )
    ps = [init(jax.random.key(i)) for i in range(2)]
    ss = [opt.init(p) for p in ps]
    stack = lambda t: jax.tree.map(lambda *a: jnp.stack(a), *t)
    _, _, vm_losses = jax.jit(
      jax.vmap(chunk, in_axes=(0, 0, 0, None, None, None))
    )(jnp.asarray(values), stack(ps), stack(ss), xs, ys, keys)
    for i, v in enumerate(values):
      _, _, losses = jax.jit(functools.partial(chunk, v))(
        ps[i], ss[i], xs, ys, keys
      )
      np.testing.assert_allclose(vm_losses[i], losses, rtol=1e-4)
    # ... and the points differ: the hyperparameter reaches the program.
    assert not np.allclose(vm_losses[0], vm_losses[1])

  out = str(tmp_path / "sweep.json")
  result = sweep.main(["--out", out, "--quick"])
  modes = {r["mode"] for r in result["records"]}
  assert modes == {"vmap", "sequential"}
  for r in result["records"]:
    assert r["per_point_step_ms"] > 0 and r["compile_s"] > 0
  assert "| dropout | 2 |" in open(str(tmp_path / "sweep.md")).read()


def test_accelerator_script_cpu_path_writes_one_json(tmp_path):
  import subprocess
  import sys

  out = tmp_path / "acc"
  env = dict(os.environ, PYTHON=sys.executable)
  r = subprocess.run(
    [
      "bash",
      "benchmarks/accelerator.sh",
      str(out),
      "--skip-install",
      "--allow-cpu",
      "--micro",
      "--steps",
      "40",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  with open(out / "accelerator.json") as f:
    d = json.load(f)
  assert d["device"]["backend"] == "cpu"
  assert {r["regimen"] for r in d["bench_records"]} >= {
    "dropout",
    "explicit_implicit",
  }
  assert d["peak"]["peak_flops_per_s"] > 0  # measured (micro sizes)
  assert all(
    r["fraction_of_peak"] > 0
    for r in d["bench_records"]
    if r["experiment"] == "regimens"
  )
  assert {r["mode"] for r in d["seed_axis_records"]} == {
    "vmap",
    "map",
    "separate",
  }
  s = d["main_job_slice"]
  assert s["steps"] == 40 and s["regimen"] == "explicit_implicit"
  assert s["wall_s"] > 0 and s["steady_ms_per_step"] > 0
  # Without --allow-cpu a CPU-only JAX is refused with the fix.
  r = subprocess.run(
    ["bash", "benchmarks/accelerator.sh", str(out), "--skip-install"],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  assert r.returncode != 0 and "--allow-cpu" in r.stderr


def test_step_breakdown_micro(tmp_path):
  from benchmarks import breakdown

  res = breakdown.main(["--out", str(tmp_path / "b.json"), "--micro"])
  parts = {r["part"]: r for r in res["records"]}
  assert "Adam update alone" in parts and "step: dropout" in parts
  assert all(r["median_ms"] > 0 for r in res["records"])
  # The dropout step does the clean gradient's matmuls and more.
  assert (
    parts["step: dropout"]["flops"] > parts["gradient, clean loss"]["flops"]
  )


def test_estimator_variance_micro(tmp_path):
  """The variance benchmark on tiny models: every row present, and the two
  Gauss–Newton estimators' means within 4 Monte Carlo standard errors of the
  exact term."""
  from benchmarks import estimator_variance

  results = estimator_variance.main(
    ["--small", "--draws", "48", "--out", str(tmp_path)]
  )
  assert (tmp_path / "estimator_variance.md").exists()
  saved = json.loads((tmp_path / "estimator_variance.json").read_text())
  assert len(saved["results"]) == len(results) == 2
  for r in results:
    rows = {row["estimator"]: row for row in r["rows"]}
    assert set(rows) == set(estimator_variance.ESTIMATORS)
    for est in ("sampled_label", "curvature_propagation"):
      row = rows[est]
      assert abs(row["mean_over_gn"] - 1) < 4 * row["mc_error_of_mean_over_gn"]
      assert row["relative_sd"] > 0 and row["grad_relative_variance"] > 0
    assert rows["identity_hessian_per_site"]["passes"] == len(r["sites"])
  assert "locked_over_elementwise" in results[1]


def test_executed_flops_count_every_time_step_of_a_scan():
  """XLA's compiled count takes a loop body once; ``flops_executed`` lowers
  the step with every scan unrolled, so it grows by the same amount with
  each added time step (affine in T) and exceeds the compiled count."""
  opt = steps.optimizer()

  def counts(t):
    m = steps.char_lstm(
      vocab=11, embed_dim=4, hidden=8, layers=1, batch=2, seq_len=t
    )
    jitted = jax.jit(steps.make_step(steps.objective("dropout", m), opt))
    compiled = jitted.lower(*steps.step_args(m, opt)).compile()
    return steps.flops_executed("dropout", m, opt), timing.cost(compiled)

  (f2, _), (f4, c4), (f6, _) = counts(2), counts(4), counts(6)
  assert f4 - f2 > 0 and f6 - f4 == pytest.approx(f4 - f2, rel=1e-9)
  # The recurrent matmul alone adds 2 * B * H * 4H FLOPs per step, forward.
  assert f4 - f2 >= 2 * (2 * 2 * 8 * 32)
  assert f4 > c4["flops"]
  m = steps.char_lstm(vocab=11, embed_dim=4, hidden=8, layers=1, batch=2)
  # A lax.map over DROPOUT_k's masks is counted as its vmap twin.
  assert steps.flops_executed("dropout_k2_map", m, opt) == (
    steps.flops_executed("dropout_k2", m, opt)
  )
  assert (
    steps.flops_executed("dropout", steps.mlp(width=8, batch=4), opt) is None
  )


def test_lstm_cost_benchmark_micro(tmp_path):
  from benchmarks import lstm_cost

  out = str(tmp_path / "lc.json")
  result = lstm_cost.main(["--out", out, "--config", "micro"])
  with open(out) as f:
    assert json.load(f)["records"] == json.loads(json.dumps(result["records"]))
  recs = {(r["unroll"], r["regimen"]): r for r in result["records"]}
  assert set(recs) == {
    (u, r)
    for u in lstm_cost.CONFIGS["micro"]["unrolls"]
    for r in lstm_cost.CONFIGS["micro"]["regimens"]
  }
  for (u, r), rec in recs.items():
    assert rec["median_ms"] > 0 and rec["flops"] > 0
    own = recs[(u, "dropout")]
    assert rec["flop_ratio_to_dropout"] == pytest.approx(
      rec["flops"] / own["flops"]
    )
    # Unrolling changes the compiled program, not the executed FLOPs.
    assert rec["flops"] == pytest.approx(recs[(1, r)]["flops"], rel=1e-6)
  assert os.path.exists(str(tmp_path / "lc.md"))
