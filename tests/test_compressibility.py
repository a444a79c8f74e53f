"""Tests of the compressibility study (experiments/compressibility*.py).

* every default condition builds an objective;
* gradual pruning (phase 2) reaches the scheduled sparsity exactly, per
  layer, and pruned weights stay zero while training goes on; a seed whose
  loss turns NaN stops alone (the library pieces themselves:
  tests/test_gradual.py; the thresholds against sort:
  tests/test_selection.py);
* the verdict rules on synthetic records (so each verdict can fail);
* the smoke study end to end on real Fashion-MNIST: results.json fields,
  report.md, plots, resume, and a failing condition next to finished ones.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dropjax import analysis as an
from dropjax import models
from dropjax import objectives
from dropjax import train as djtrain
from experiments import compressibility as cs
from experiments import compressibility_report as rep
from experiments.configs import compressibility as default_config
from experiments.configs import compressibility as cmp_configs


# ---------------------------------------------------------------------------
# Conditions.
# ---------------------------------------------------------------------------


def test_every_default_condition_builds_an_objective():
  # Traced (not compiled) to keep the test fast: catches wrong arguments,
  # shapes and aux keys of every condition's objective.
  config = default_config.get_config()
  apply, params, rates = models.make_model(
    "mlp", key=0, layer_sizes=(12, 8, 8, 3)
  )
  batch = (jnp.ones((4, 12)), jnp.zeros((4,), jnp.int32))
  for cond in config.conditions:
    spec = config.condition_specs[cond].to_dict()
    obj = cs.make_condition_objective(spec, apply, tuple(rates))
    loss, aux = jax.eval_shape(obj, params, batch, jax.random.key(0))
    assert loss.shape == () and loss.dtype == jnp.float32, cond
    assert set(aux) >= {"data_loss", "explicit", "implicit", "penalty"}
    assert cs.condition_label(cond, spec)


# ---------------------------------------------------------------------------
# Gradual pruning.
# ---------------------------------------------------------------------------

_SIZES = (20, 16, 16, 4)
_STEPS, _END, _FREQ, _CHUNK = 40, 20, 5, 5


@pytest.fixture(scope="module")
def pruning_run():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 20)).astype(np.float32)
  y = (x[:, :4].argmax(axis=1)).astype(np.int32)
  apply, _, _ = models.make_model("mlp", layer_sizes=_SIZES)
  init = models.make_init("mlp", layer_sizes=_SIZES)
  params = djtrain.init_seeds(init, (0, 1, 2))
  # Seed 2 is poisoned: its loss is NaN from the first step.
  params = jax.tree.map(lambda a: a, params)
  params["output"]["bias"] = params["output"]["bias"].at[2, 0].set(jnp.nan)
  schedule = an.PruningSchedule(end_step=_END, frequency=_FREQ)
  snaps = []
  res = djtrain.train(
    apply,
    objectives.none(apply),
    an.masked_optimizer(djtrain.make_optimizer("adam", 1e-2)),
    params,
    (x, y),
    seeds=(0, 1, 2),
    steps=_STEPS,
    batch_size=32,
    chunk_size=_CHUNK,
    hook=an.pruning_hook(schedule, an.layerwise_magnitude_masks),
    on_nan="drop_seed",
    devices=1,
    progress=False,
    callback=lambda info: snaps.append(
      {"step": info["step"], "params": jax.device_get(info["state"].params)}
    ),
  )
  return res, snaps, schedule


def _kernels(params, seed):
  one = jax.tree.map(lambda a: np.asarray(a[seed]), params)
  return [np.asarray(k) for _, k in an.kernel_list(one)]


def _expected_nonzero(n, s):
  return max(1, int(np.round(np.float32(n) * (np.float32(1) - np.float32(s)))))


def test_nan_in_one_seed_stops_only_that_seed(pruning_run):
  res, snaps, _ = pruning_run
  assert set(res.failures) == {2}
  assert res.failures[2]["step"] == 0
  for seed in (0, 1):
    for k in _kernels(res.state.params, seed):
      assert np.all(np.isfinite(k))


def test_gradual_pruning_follows_schedule_and_ends_exact(pruning_run):
  res, snaps, schedule = pruning_run
  for snap in snaps:
    t = snap["step"]  # updates 0 .. t-1 done; last mask update before t
    last_update = min(((t - 1) // _FREQ) * _FREQ, _END)
    s = float(schedule.sparsity(last_update))
    for seed in (0, 1):
      for k in _kernels(snap["params"], seed):
        assert np.count_nonzero(k) == _expected_nonzero(k.size, s), (t, s)
  assert float(schedule.sparsity(_END)) == pytest.approx(0.9)
  for seed in (0, 1):
    ks = _kernels(res.state.params, seed)
    assert len(ks) == 3  # first, hidden and output layer are all pruned
    for k in ks:
      assert np.count_nonzero(k) == _expected_nonzero(k.size, 0.9)
    # Biases are never masked.
    assert np.count_nonzero(
      np.asarray(res.state.params["hidden_0"]["bias"][seed])
    )


def test_pruned_weights_stay_zero_after_further_updates(pruning_run):
  res, snaps, _ = pruning_run
  after = [s for s in snaps if s["step"] > _END]
  assert len(after) >= 3
  for seed in (0, 1):
    for snap in after:  # updates ran after the last mask update...
      for k in _kernels(snap["params"], seed):
        assert np.count_nonzero(k) == _expected_nonzero(k.size, 0.9)
    first = _kernels(after[0]["params"], seed)
    last = _kernels(after[-1]["params"], seed)
    changed = 0
    for a, b in zip(first, last):
      np.testing.assert_array_equal(a == 0, b == 0)  # ...the same zeros,
      changed += np.count_nonzero(a != b)
    assert changed > 0  # while the kept weights went on training


# ---------------------------------------------------------------------------
# Verdict rules on synthetic records.
# ---------------------------------------------------------------------------

_REGIMENS = {
  "control": "none",
  "dropout": "dropout",
  "explicit_implicit": "explicit_implicit",
  "explicit": "explicit",
  "l1": "l1",
  "l2": "l2",
  "targeted_weight": "targeted_weight",
  "targeted_unit": "targeted_unit",
}


def _record(cond, seed, v):
  """A minimal 'ok' record whose metrics are the numbers in ``v``."""
  jitter = 0.01 * (seed - 1)
  g = lambda k, d: v.get(k, d) + jitter * abs(v.get(k, d) or 1)
  curve = lambda auc, base, mx: {
    "auc": auc,
    "baseline": base,
    "max_fraction_within": mx,
    "fractions": [0.0, 0.5, 0.9],
    "accuracies": [base, auc, auc - 0.1],
  }
  return {
    "condition": cond,
    "seed": seed,
    "status": "ok",
    "label": cond,
    "spec": {"regimen": _REGIMENS[cond]},
    "unpruned": {
      "eval": {"accuracy": g("acc", 0.88)},
      "sparsity": {
        "hoyer": g("hoyer", 0.3),
        "gini": g("gini", 0.4),
        "epsilon_sparsity_max": {"0.01": g("eps", 0.02)},
        "epsilon_sparsity_std": {"0.1": g("eps", 0.02)},
        "bits_per_weight": g("bits", 7.0),
      },
      "activations": {"zero_fraction": 0.5, "dead_unit_fraction": 0.0},
      "prune_curves": {
        "weight": curve(
          g("w_auc", 0.7), g("acc", 0.88), v.get("w_max", 0.5) + 0.0 * seed
        ),
        "unit": curve(g("u_auc", 0.5), g("acc", 0.88), v.get("u_max", 0.2)),
      },
      "clusterability": {
        "ncut": g("ncut_u", 9.9),
        "z": g("z_u", -5.0),
        "shuffled_mean": 10.0,
        "significant": True,
      },
    },
    "pruned": {
      "eval": {"accuracy": g("acc_p", 0.88)},
      "sparsity": {"bits_per_weight": 1.5, "layers": []},
      "clusterability": {
        "ncut": g("ncut_p", 8.7),
        "z": g("z_p", -10.0),
        "shuffled_mean": 9.0,
        "significant": True,
      },
    },
  }


def _results(values_by_cond, seeds=(0, 1, 2)):
  recs = [_record(c, s, v) for c, v in values_by_cond.items() for s in seeds]
  return {
    "config": {
      "conditions": list(values_by_cond),
      "condition_specs": {c: {"regimen": _REGIMENS[c]} for c in values_by_cond},
      "verdict": {"n_se": 2.0},
    },
    "records": recs,
  }


def _by_number(results):
  return {v.number: v for v in rep.verdicts(results)}


def test_compare_rule():
  m = rep.M["hoyer"]
  res = _results({"dropout": {"hoyer": 0.5}, "control": {"hoyer": 0.3}})
  c = rep.compare(res["records"], "dropout", "control", m)
  assert c.favours == 1 and c.diff == pytest.approx(0.2)
  c = rep.compare(res["records"], "control", "dropout", m)
  assert c.favours == -1
  res = _results({"dropout": {"hoyer": 0.3}, "control": {"hoyer": 0.3}})
  assert rep.compare(res["records"], "dropout", "control", m).favours == 0
  res = _results(
    {"dropout": {"hoyer": 0.5}, "control": {"hoyer": 0.3}}, seeds=(0,)
  )
  assert rep.compare(res["records"], "dropout", "control", m).favours is None
  # "lower is better" metrics flip the sign.
  res = _results({"l1": {"ncut_u": 8.0}, "l2": {"ncut_u": 9.0}})
  assert rep.compare(res["records"], "l1", "l2", rep.M["ncut_u"]).favours == 1


_BASE = {"acc": 0.88, "acc_p": 0.88}


def _study(**over):
  vals = {c: dict(_BASE) for c in _REGIMENS}
  for c, v in over.items():
    vals[c].update(v)
  return _results(vals)


def test_verdicts_follow_the_numbers():
  sparser = {"hoyer": 0.5, "gini": 0.6, "eps": 0.05}
  prunable = {
    "w_max": 0.8,
    "u_max": 0.5,
    "w_auc": 0.86,
    "u_auc": 0.8,
    "acc_p": 0.88,
    "bits": 6.0,
  }
  res = _study(
    dropout=dict(sparser, **prunable),
    explicit_implicit=dict(sparser, **prunable),
    l1={"ncut_u": 8.4, "ncut_p": 8.0, "z_u": 11.0, "z_p": 24.0},
    targeted_weight={"w_max": 0.9, "w_auc": 0.87, "acc_p": 0.9},
    targeted_unit={"u_max": 0.7, "u_auc": 0.86, "acc_p": 0.9},
  )
  v = _by_number(res)
  assert v[1].verdict == "supported"
  assert v[2].verdict == "supported"
  # L1: lower absolute n-cut, but z far above the others: mixed.
  assert v[3].verdict == "mixed"
  assert any("Absolute n-cut" in e and "**supported**" in e for e in v[3].extra)
  assert any("shuffled" in e and "**not supported**" in e for e in v[3].extra)
  assert v[4].verdict == "supported"
  assert v[5].verdict == "supported"


def test_verdicts_can_fail():
  # Dropout *less* sparse and less prunable; EI opposite to dropout;
  # targeted dropout no different from control; L1 worse everywhere.
  res = _study(
    dropout={
      "hoyer": 0.2,
      "gini": 0.3,
      "eps": 0.01,
      "w_max": 0.3,
      "w_auc": 0.6,
    },
    explicit_implicit={
      "hoyer": 0.5,
      "gini": 0.6,
      "eps": 0.05,
      "w_max": 0.8,
      "w_auc": 0.86,
    },
    l1={"ncut_u": 10.5, "ncut_p": 9.9, "z_u": 11.0, "z_p": 24.0},
  )
  v = _by_number(res)
  assert v[1].verdict == "not supported"
  assert v[2].verdict == "not supported"
  assert v[3].verdict == "not supported"
  assert v[4].verdict == "not supported"
  assert v[5].verdict == "not supported"
  # Nothing to reproduce when dropout has no effect.
  res = _study()
  assert _by_number(res)[5].verdict == "inconclusive"


def test_verdicts_inconclusive_without_conditions_or_seeds():
  res = _results({"dropout": {"hoyer": 0.5}, "control": {}}, seeds=(0,))
  v = _by_number(res)
  assert v[1].verdict == "inconclusive"
  for n in (3, 4, 5):
    assert v[n].verdict == "inconclusive"
    assert "no" in v[n].summary


# ---------------------------------------------------------------------------
# The smoke study, end to end on real data.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("compressibility_smoke"))
  config = cmp_configs.get_config("smoke")
  results = cs.run(config, workdir)
  return config, workdir, results


_CLAIMS = (
  "Dropout leads to sparser weights",
  "more prunable / compressible",
  "L1 gives more clusterable networks than L2 or dropout",
  "Targeted dropout makes networks robust to magnitude pruning",
  "The analytic replacement (explicit + implicit) reproduces",
)


def test_smoke_results_report_and_plots(smoke):
  config, workdir, _ = smoke
  with open(os.path.join(workdir, cs.RESULTS_FILE)) as f:
    results = json.load(f)
  recs = results["records"]
  assert sorted((r["condition"], r["seed"]) for r in recs) == [
    ("control", 0),
    ("control", 1),
    ("dropout", 0),
    ("dropout", 1),
  ]
  for r in recs:
    assert r["status"] == "ok"
    u, p = r["unpruned"], r["pruned"]
    assert 0.1 < u["eval"]["accuracy"] <= 1.0
    assert 0.0 <= p["eval"]["accuracy"] <= 1.0
    for stage in (u, p):
      sp = stage["sparsity"]
      for key in (
        "hoyer",
        "gini",
        "exact_sparsity",
        "bits_per_weight",
        "epsilon_sparsity_max",
        "layers",
      ):
        assert key in sp
      cl = stage["clusterability"]
      assert len(cl["shuffled_ncuts"]) == config.cluster.n_shuffles
      assert cl["p_value"] >= 1 / (config.cluster.n_shuffles + 1)
      assert 0 < cl["ncut"] <= config.cluster.n_clusters
      assert 0 <= stage["activations"]["zero_fraction"] <= 1
    assert u["sparsity"]["exact_sparsity"] < 0.01
    for gran in ("weight", "unit"):
      c = u["prune_curves"][gran]
      assert c["fractions"] == list(config.curves.fractions)
      assert len(c["accuracies"]) == len(c["fractions"])
      assert c["baseline"] == pytest.approx(u["eval"]["accuracy"])
      assert "auc" in c and "max_fraction_within" in c
    # Gradual pruning hit the final sparsity exactly in every layer.
    for layer in p["sparsity"]["layers"]:
      n = layer["n_weights"]
      assert round(n * (1 - layer["exact_sparsity"])) == _expected_nonzero(
        n, config.pruning.final_sparsity
      ), layer["path"]
  with open(os.path.join(workdir, cs.REPORT_FILE)) as f:
    report = f.read()
  for i, claim in enumerate(_CLAIMS, 1):
    assert f"Claim {i}" in report and claim in report
  assert "Verdict:" in report and "Filan" in report and "Reduced run" in report
  for name in rep.PLOTS:
    with open(os.path.join(workdir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_finished_runs(smoke, tmp_path, monkeypatch):
  config, workdir, _ = smoke
  work = str(tmp_path / "resume")
  shutil.copytree(workdir, work)
  before = {}
  for root, _, files in os.walk(os.path.join(work, "records")):
    for name in files:
      with open(os.path.join(root, name)) as f:
        before[name + root] = f.read()

  def boom(*args, **kwargs):
    raise AssertionError("a finished run was redone")

  monkeypatch.setattr(djtrain, "train", boom)
  monkeypatch.setattr(an, "clusterability", boom)
  results = cs.run(config, work)
  assert len(results["records"]) == 4
  after = {}
  for root, _, files in os.walk(os.path.join(work, "records")):
    for name in files:
      with open(os.path.join(root, name)) as f:
        after[name + root] = f.read()
  assert after == before
  monkeypatch.undo()

  # A lost record is rebuilt from the saved parameters, without training,
  # and gives the same numbers.
  path = os.path.join(work, "records", "dropout", "seed_1.json")
  with open(path) as f:
    old = json.load(f)
  os.unlink(path)
  monkeypatch.setattr(djtrain, "train", boom)
  cs.run(config, work)
  with open(path) as f:
    new = json.load(f)
  assert new["status"] == "ok"
  for stage in ("unpruned", "pruned"):
    assert new[stage]["eval"]["accuracy"] == pytest.approx(
      old[stage]["eval"]["accuracy"], abs=2e-4
    )
    assert new[stage]["clusterability"]["ncut"] == pytest.approx(
      old[stage]["clusterability"]["ncut"]
    )


def test_nan_condition_fails_alone(smoke, tmp_path):
  config, workdir, _ = smoke
  work = str(tmp_path / "nan")
  shutil.copytree(workdir, work)
  config = cmp_configs.get_config("smoke")
  config.condition_specs.broken = dict(regimen="l1", coef=float("inf"))
  config.conditions = ("control", "broken", "dropout")
  results = cs.run(config, work)
  by = {(r["condition"], r["seed"]): r for r in results["records"]}
  assert len(by) == 6
  for seed in (0, 1):
    r = by[("broken", seed)]
    assert r["status"] == "failed" and r["phase"] == 1 and r["step"] == 0
    assert "'broken'" in r["message"] and f"seed {seed}" in r["message"]
    assert "step 0" in r["message"]
    assert by[("control", seed)]["status"] == "ok"
    assert by[("dropout", seed)]["status"] == "ok"
  with open(os.path.join(work, cs.REPORT_FILE)) as f:
    assert "## Failed runs" in f.read()
  # Failed runs count as finished: a re-run does not retry them by default.
  again = cs.run(config, work)
  assert {
    (r["condition"], r["seed"], r["status"]) for r in again["records"]
  } == {(c, s, r["status"]) for (c, s), r in by.items()}
