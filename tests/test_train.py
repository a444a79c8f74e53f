"""Tests for dropjax.train: the step, the chunked loop, seeds, sharding,
checkpoint/resume, NaN detection and run files.

The runs share one small problem (256 examples, a 16-32-32-4 MLP) and the
same objective/optimizer objects, so the jitted chunk is compiled once per
(seed count, mesh) and reused across tests.
"""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dropjax import models
from dropjax import objectives
from dropjax import train

SIZES = (16, 32, 32, 4)
N = 256
COMMON = dict(
  steps=40,
  batch_size=32,
  chunk_size=10,
  eval_every=2,
  eval_batch_size=64,
  progress=False,
  run_name="dropout",
)
# 256 / 32 = 8 steps per epoch: the 10-step chunks straddle epoch boundaries.


def _data(seed):
  """A learnable toy problem: labels are the argmax of a fixed linear map."""
  w = np.random.default_rng(123).normal(size=(SIZES[0], SIZES[-1]))
  x = np.random.default_rng(seed).normal(size=(N, SIZES[0])).astype(np.float32)
  y = np.argmax(x @ w, -1).astype(np.int32)
  return x, y


@pytest.fixture(scope="module")
def setup():
  x, y = _data(0)
  xv, yv = _data(1)
  apply, _, rates = models.make_model("mlp", key=0, layer_sizes=SIZES)
  init = models.make_init("mlp", layer_sizes=SIZES)
  return types.SimpleNamespace(
    x=x,
    y=y,
    xv=xv,
    yv=yv,
    apply=apply,
    rates=rates,
    init=init,
    obj=objectives.dropout(apply, rates=rates),
    opt=train.make_optimizer("adam", 1e-2),
    params2=train.init_seeds(init, (0, 1)),
  )


def run(s, run_dir, **kwargs):
  kw = dict(COMMON, seeds=(0, 1), devices=1, eval_at_start=True)
  kw.update(kwargs)
  init = kw.pop("init", s.params2)
  data = kw.pop("data", (s.x, s.y))
  return train.train(
    s.apply,
    kw.pop("objective", s.obj),
    s.opt,
    init,
    data,
    eval_data={"val": (s.xv, s.yv)},
    run_dir=run_dir,
    **kw,
  )


@pytest.fixture(scope="module")
def base(setup, tmp_path_factory):
  return run(setup, str(tmp_path_factory.mktemp("base")))


def _strip(history):
  """Records without the wall-clock field."""
  return [{k: v for k, v in r.items() if k != "train_seconds"} for r in history]


def _assert_trees(a, b, rtol=0.0, atol=0.0):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if rtol == 0 and atol == 0:
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    else:
      np.testing.assert_allclose(
        np.asarray(u), np.asarray(v), rtol=rtol, atol=atol
      )


def _history_values(history, seed_index):
  """``{(step, section, set, metric): value}`` of one seed."""
  out = {}
  for r in history:
    for k, v in r["train"].items():
      out[(r["step"], "train", k)] = v[seed_index]
    for name, ev in r["eval"].items():
      for k, v in ev.items():
        out[(r["step"], "eval", name, k)] = v[seed_index]
  return out


def _no_temp_files(directory):
  for root, dirs, files in os.walk(directory):
    for f in files + dirs:
      assert not f.endswith(".tmp") and "tmp" not in f.split("."), os.path.join(
        root, f
      )


# ------------------------------------------------------------ optimizer


def _updates(tx, params, grads_seq):
  state = tx.init(params)
  out = []
  for g in grads_seq:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(params)
  return out


def test_make_optimizer_matches_optax():
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
  grads = [
    jax.tree.map(lambda p, i=i: (i + 1.0) * jnp.cos(p * (i + 2)), params)
    for i in range(3)
  ]
  mask = lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)
  cases = [
    (train.make_optimizer("adam", 0.1), optax.adam(0.1)),
    (
      train.make_optimizer("adam", 0.1, weight_decay=0.5),
      optax.adamw(0.1, weight_decay=0.5, mask=mask),
    ),
    (
      train.make_optimizer("sgd", 0.1, momentum=0.9),
      optax.sgd(0.1, momentum=0.9),
    ),
    (train.make_optimizer("sgd", 0.1, momentum=0.0), optax.sgd(0.1)),
    (
      train.make_optimizer("adam", 0.1, clip_norm=0.5),
      optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.1)),
    ),
  ]
  for ours, ref in cases:
    _assert_trees(
      _updates(ours, params, grads),
      _updates(ref, params, grads),
      rtol=1e-6,
      atol=1e-7,
    )
  # Decay reaches kernels only.
  wd = _updates(
    train.make_optimizer("sgd", 0.1, momentum=0.0, weight_decay=1.0),
    params,
    [jax.tree.map(jnp.zeros_like, params)],
  )[0]
  np.testing.assert_allclose(wd["dense"]["kernel"], 0.9)
  np.testing.assert_allclose(wd["dense"]["bias"], 1.0)
  with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
    train.make_optimizer("rmsprop")
  with pytest.raises(ValueError):
    train.make_optimizer("adam", weight_decay=-1.0)


# --------------------------------------------------------- the main runs


def test_init_seeds_follow_the_documented_keys(setup):
  # (make_init(key) == make_model(key=key)[1] is tested in test_models.py.)
  init = jax.jit(setup.init)
  for i, s in enumerate((0, 1)):
    want = init(jax.random.fold_in(jax.random.key(s), train.INIT_TAG))
    _assert_trees(jax.tree.map(lambda a: a[i], setup.params2), want)


def test_loss_decreases_and_records(base):
  steps = [r["step"] for r in base.history]
  assert steps == [0, 20, 40]
  assert base.resumed_from == 0
  first, last = base.history[0]["eval"]["val"], base.history[-1]["eval"]["val"]
  for j in range(2):
    assert last["loss"][j] < first["loss"][j] - 0.3
    assert last["accuracy"][j] > first["accuracy"][j] + 0.2
    assert last["accuracy"][j] > 0.6  # 4 classes: chance is 0.25
  train_means = base.history[-1]["train"]
  assert set(train_means) == {
    "loss",
    "data_loss",
    "explicit",
    "implicit",
    "penalty",
    "grad_norm",
  }
  assert train_means["explicit"] == [0.0, 0.0]
  assert base.history[1]["train"]["loss"][0] > train_means["loss"][0]
  assert int(base.state.step[0]) == 40
  assert base.state.params["output"]["kernel"].shape == (2, 32, 4)


def test_run_files(base):
  d = base.run_dir
  lines = train.read_jsonl(os.path.join(d, train.METRICS_FILE))
  assert lines == json.loads(json.dumps(base.history))
  with open(os.path.join(d, train.SUMMARY_FILE)) as f:
    summary = json.load(f)
  assert summary["final"] == lines[-1] and summary["seeds"] == [0, 1]
  ckpts = sorted(
    int(p)
    for p in os.listdir(os.path.join(d, train.CHECKPOINT_DIR))
    if p.isdigit()
  )
  assert ckpts == [30, 40]  # keep_checkpoints=2
  assert not os.path.exists(os.path.join(d, train.FAILURE_FILE))
  _no_temp_files(d)


def test_same_seed_same_numbers(setup, base, tmp_path):
  again = run(setup, str(tmp_path))
  _assert_trees(again.state, base.state)
  assert _strip(again.history) == _strip(base.history)


def _seed1_alone(setup):
  return run(
    setup,
    None,
    seeds=(1,),
    seed_axis="map",
    init=jax.tree.map(lambda a: a[1:], setup.params2),
  )


def _assert_seed_matches(alone, together, index, rtol=0.0, atol=0.0):
  _assert_trees(
    jax.tree.map(lambda a: a[0], alone.state),
    jax.tree.map(lambda a, i=index: a[i], together.state),
    rtol=rtol,
    atol=atol,
  )
  got = _history_values(alone.history, 0)
  want = _history_values(together.history, index)
  assert got.keys() == want.keys()
  for k in want:
    if rtol == 0 and atol == 0:
      assert got[k] == want[k], k
    else:
      np.testing.assert_allclose(
        got[k], want[k], rtol=rtol, atol=atol, err_msg=str(k)
      )


def test_seeds_vmap_equals_separate_runs(setup, base):
  """Seed 1 trained alone == seed 1 trained next to seed 0 (``vmap``).

  Same data order, masks and initial weights; compared to float tolerance
  because with a seed axis XLA compiles batched matmuls, whose summation
  order can change the last bits (observed: <= ~1e-7 absolute after 40
  steps).
  """
  assert train.resolve_seed_axis("auto") == "vmap"  # base ran batched
  _assert_seed_matches(_seed1_alone(setup), base, 1, rtol=1e-5, atol=1e-6)


def test_seed_axis_map_equals_separate_runs_exactly(setup):
  """With ``seed_axis="map"`` every seed runs the unbatched step: seed 1
  next to seed 0 is bit for bit seed 1 alone, parameters and records."""
  together = run(setup, None, seed_axis="map")
  _assert_seed_matches(_seed1_alone(setup), together, 1)


def test_seed_axis_choice():
  assert train.resolve_seed_axis("vmap") == "vmap"
  assert train.resolve_seed_axis("map") == "map"
  assert train.resolve_seed_axis("auto", "gpu") == "vmap"
  with pytest.raises(ValueError, match="unknown seed_axis 'scan'.*valid"):
    train.resolve_seed_axis("scan")


def test_per_seed_map_with_shared_arguments():
  """``per_seed`` maps leading axes and shares ``None`` ones, like vmap."""

  def f(a, shared, b):
    return a["w"] @ shared + b, jnp.sum(a["w"])

  a = {"w": jnp.arange(24.0).reshape(3, 2, 4)}
  shared = jnp.ones((4,))
  b = jnp.arange(3.0)
  want = train.per_seed(f, (0, None, 0), "vmap")(a, shared, b)
  got = train.per_seed(f, (0, None, 0), "map")(a, shared, b)
  _assert_trees(got, want)
  with pytest.raises(ValueError, match="'vmap' or 'map'"):
    train.per_seed(f, (0, None, 0), "auto")


def test_sharded_equals_unsharded(setup, base):
  """Batch sharded over 4 devices == 1 device.

  Dropout masks and data order are identical (threefry is partitionable:
  the bits do not depend on the sharding); only the order of the
  cross-device sums in the loss mean and the gradient differs, a float32
  rounding effect. After 40 Adam steps the parameters differ by <= ~1e-7 in
  absolute terms (observed); the tolerance (atol 1e-6, rtol 1e-5) leaves a
  10x margin and is still far below any real discrepancy (a wrong mask or
  batch moves parameters by ~1e-3).
  """
  assert jax.device_count() >= 4
  sharded = run(setup, None, devices=4)
  _assert_trees(sharded.state, base.state, rtol=1e-5, atol=1e-6)
  got, want = (
    _history_values(sharded.history, 0),
    _history_values(base.history, 0),
  )
  for k in want:
    np.testing.assert_allclose(
      got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=str(k)
    )


class _Killed(Exception):
  pass


@pytest.mark.parametrize("checkpoint_every,kill_at_chunk", [(1, 2), (2, 3)])
def test_resume_after_kill_matches_uninterrupted(
  setup, base, tmp_path, checkpoint_every, kill_at_chunk
):
  """Stop after ``kill_at_chunk`` chunks, construct anew, resume, finish."""
  d = str(tmp_path)

  def kill(info):
    if info["chunk"] == kill_at_chunk:
      raise _Killed()

  with pytest.raises(_Killed):
    run(setup, d, checkpoint_every=checkpoint_every, callback=kill)
  saved = (kill_at_chunk // checkpoint_every) * checkpoint_every * 10
  written = [
    r["step"] for r in train.read_jsonl(os.path.join(d, train.METRICS_FILE))
  ]
  assert written == [s for s in (0, 20, 40) if s <= kill_at_chunk * 10]

  resumed = run(setup, d, checkpoint_every=checkpoint_every)
  assert resumed.resumed_from == saved
  _assert_trees(resumed.state, base.state)
  assert _strip(resumed.history) == _strip(base.history)
  assert train.read_jsonl(os.path.join(d, train.METRICS_FILE)) == json.loads(
    json.dumps(resumed.history)
  )
  # A finished run "resumed" again trains nothing and changes nothing.
  again = run(setup, d, checkpoint_every=checkpoint_every)
  assert again.resumed_from == 40
  _assert_trees(again.state, base.state)
  _no_temp_files(d)


def test_resume_refuses_other_config(setup, base):
  with pytest.raises(ValueError, match="seeds"):
    run(setup, base.run_dir, seeds=(0, 2))


# ------------------------------------------------------------------ NaN


def _first_use(seed, index, n, batch):
  """The step at which ``seed``'s data order first uses example ``index``
  (as documented: consecutive slices of per-epoch permutations)."""
  per_epoch = n // batch
  dk = jax.random.fold_in(jax.random.key(seed), train.DATA_TAG)
  for e in range(100):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(dk, e), n))
    p = int(np.flatnonzero(perm == index)[0])
    if p < per_epoch * batch:
      return e * per_epoch + p // batch
  raise AssertionError("never used")


def test_nonfinite_loss_stops_the_run_with_regimen_seed_and_step(
  setup, tmp_path
):
  # Poison one training example whose first use (for the earlier seed) lies
  # in the third chunk; predicting the step also checks the documented data
  # order. 2048 examples: 64 steps per epoch, so first uses spread over
  # steps 0..63.
  n = 2048
  rng = np.random.default_rng(5)
  x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
  y = rng.integers(0, SIZES[-1], n).astype(np.int32)
  for index in range(n):
    first = {s: _first_use(s, index, n, 32) for s in (0, 1)}
    if 20 <= min(first.values()) < 30:
      break
  else:
    raise AssertionError("no suitable example")
  chunk = min(first.values()) // 10
  want = {s: t for s, t in first.items() if t // 10 == chunk}
  x[index] = np.nan
  d = str(tmp_path)
  with pytest.raises(train.NonFiniteLossError) as info:
    run(setup, d, data=(x, y), eval_every=1)
  err = info.value
  assert err.run_name == "dropout" and err.failures == want
  msg = str(err)
  assert "run 'dropout'" in msg
  for s, t in want.items():
    assert f"seed {s} at step {t}" in msg
    assert not np.isfinite(err.metrics[s]["loss"])
  # Earlier results survive: records and checkpoints up to the last good
  # chunk, and a failure report.
  records = train.read_jsonl(os.path.join(d, train.METRICS_FILE))
  assert [r["step"] for r in records] == [0, 10, 20][: chunk + 1]
  assert records == json.loads(json.dumps(err.history))
  assert all(
    np.isfinite(v).all()
    for r in records
    for ev in r["eval"].values()
    for v in ev.values()
  )
  ckpts = sorted(
    int(p)
    for p in os.listdir(os.path.join(d, train.CHECKPOINT_DIR))
    if p.isdigit()
  )
  assert ckpts[-1] == chunk * 10
  with open(os.path.join(d, train.FAILURE_FILE)) as f:
    failure = json.load(f)
  assert failure["failures"] == {str(s): t for s, t in want.items()}
  assert not os.path.exists(os.path.join(d, train.SUMMARY_FILE))
  _no_temp_files(d)


# -------------------------------------------------- other objectives, io


def test_explicit_implicit_with_preprocess(setup):
  obj = objectives.explicit_implicit(setup.apply, rates=setup.rates)
  to_f32 = lambda x, y: (x.astype(jnp.float32), y)
  res = run(
    setup,
    None,
    objective=obj,
    steps=10,
    eval_at_start=False,
    data=(setup.x.astype(np.float16), setup.y),
    preprocess=to_f32,
  )
  means = res.history[-1]["train"]
  assert all(np.isfinite(v).all() for v in means.values())
  assert min(means["explicit"]) > 0
  assert means["implicit"] != [0.0, 0.0]


def test_argument_errors(setup):
  with pytest.raises(ValueError, match="divisible by the number of devices"):
    run(setup, None, devices=4, batch_size=30)
  with pytest.raises(ValueError, match="batch_size"):
    run(setup, None, batch_size=N + 1)
  with pytest.raises(ValueError, match="distinct"):
    run(setup, None, seeds=(1, 1))
  with pytest.raises(ValueError, match="leading seed axis of size 3"):
    run(setup, None, seeds=(0, 1, 2))


def test_evaluate_single_and_stacked(setup, base):
  one = jax.tree.map(lambda a: a[0], base.state.params)
  single = train.evaluate(
    setup.apply, one, setup.xv, setup.yv, batch_size=100
  )  # 256 = 2 x 100 + padding
  stacked = train.evaluate(
    setup.apply,
    base.state.params,
    setup.xv,
    setup.yv,
    batch_size=64,
    stacked=True,
  )
  np.testing.assert_allclose(single["loss"], stacked["loss"][0], rtol=1e-5)
  np.testing.assert_allclose(single["accuracy"], stacked["accuracy"][0])
  np.testing.assert_allclose(
    stacked["accuracy"], base.history[-1]["eval"]["val"]["accuracy"]
  )
  logits = setup.apply(one, setup.xv, lambda n, h: h)
  np.testing.assert_allclose(
    single["accuracy"], np.mean(np.argmax(logits, -1) == setup.yv)
  )


def test_write_json_atomic(tmp_path, monkeypatch):
  path = tmp_path / "sub" / "result.json"
  train.write_json_atomic(
    str(path), {"a": np.arange(3), "b": np.float32(1.5), "c": jnp.ones(2)}
  )
  assert json.loads(path.read_text()) == {
    "a": [0, 1, 2],
    "b": 1.5,
    "c": [1.0, 1.0],
  }
  with pytest.raises(TypeError):
    train.write_json_atomic(str(path), {"bad": object()})
  assert json.loads(path.read_text())["a"] == [0, 1, 2]  # untouched

  def broken_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", broken_replace)
  with pytest.raises(OSError, match="disk full"):
    train.write_json_atomic(str(path), {"new": 1})
  monkeypatch.undo()
  assert json.loads(path.read_text())["a"] == [0, 1, 2]
  assert sorted(os.listdir(path.parent)) == ["result.json"]


# ------------------------------------------------- engine options: NaN policy


def _poisoned_init(s):
  """The two seeds' stacked parameters with seed 1's output bias NaN."""
  p = jax.tree.map(lambda a: a, s.params2)
  p["output"]["bias"] = p["output"]["bias"].at[1, 0].set(jnp.nan)
  return p


def test_drop_seed_records_the_failed_seed_and_the_other_goes_on(
  setup, base, tmp_path, capsys
):
  d = str(tmp_path)
  res = run(setup, d, init=_poisoned_init(setup), on_nan="drop_seed")
  assert set(res.failures) == {1}
  f = res.failures[1]
  assert f["step"] == 0 and not np.isfinite(f["metrics"]["loss"])
  assert "'dropout'" in f["message"] and "seed 1" in f["message"]
  assert "step 0" in f["message"]
  assert "seed 1: non-finite" in capsys.readouterr().err
  with open(os.path.join(d, train.FAILURE_FILE)) as fh:
    saved = json.load(fh)
  assert saved["failures"] == {"1": 0} and saved["policy"] == "drop_seed"
  # The run went to the end; seed 0 is untouched by seed 1's failure, and
  # seed 1's metrics are NaN from then on.
  assert res.history[-1]["step"] == COMMON["steps"]
  np.testing.assert_array_equal(
    np.asarray(res.state.params["output"]["kernel"][0]),
    np.asarray(base.state.params["output"]["kernel"][0]),
  )
  last = res.history[-1]
  assert np.isfinite(last["eval"]["val"]["loss"][0])
  assert np.isnan(last["eval"]["val"]["loss"][1])
  assert np.isnan(last["train"]["loss"][1])


def test_unknown_nan_policy_is_refused(setup):
  with pytest.raises(ValueError, match="on_nan.*raise, drop_seed"):
    run(setup, None, on_nan="ignore")


# --------------------------------------------------- best-validation params


def test_keep_best_keeps_each_seeds_best_evaluation(setup, tmp_path):
  d = str(tmp_path)
  res = run(setup, d, keep_best=("val", "loss"), checkpoint_every=1)
  for j, s in enumerate(res.seeds):
    losses = {r["step"]: r["eval"]["val"]["loss"][j] for r in res.history}
    step = min(losses, key=losses.get)
    assert res.best_step[s] == step
    assert res.best_value[s] == pytest.approx(losses[step])
    best_one = jax.tree.map(lambda a: a[j], res.best_params)
    ev = train.evaluate(
      setup.apply, best_one, setup.xv, setup.yv, batch_size=64
    )
    np.testing.assert_allclose(float(ev["loss"]), losses[step], rtol=1e-5)
  # Accuracy is maximised.
  acc = run(setup, None, keep_best=train.Best("val", "accuracy"))
  for j, s in enumerate(acc.seeds):
    accs = {r["step"]: r["eval"]["val"]["accuracy"][j] for r in acc.history}
    assert accs[acc.best_step[s]] == max(accs.values())
  # Resumed after a kill, the best parameters are those of the whole run.

  def kill(info):
    if info["chunk"] == 2:
      raise _Killed

  d2 = str(tmp_path / "killed")
  with pytest.raises(_Killed):
    run(setup, d2, keep_best=("val", "loss"), callback=kill)
  again = run(setup, d2, keep_best=("val", "loss"))
  assert again.resumed_from == 20 and again.best_step == res.best_step
  _assert_trees(again.best_params, res.best_params)


def test_keep_best_needs_evaluation(setup):
  with pytest.raises(ValueError, match="keep_best needs evaluation"):
    train.train(
      setup.apply,
      setup.obj,
      setup.opt,
      setup.params2,
      (setup.x, setup.y),
      steps=10,
      batch_size=32,
      seeds=(0, 1),
      chunk_size=10,
      keep_best=("val", "loss"),
      devices=1,
      progress=False,
    )


# ------------------------------------------------------------------ hooks


def test_hook_runs_inside_the_scan_before_each_update(setup):
  """A hook that zeroes the output bias at even steps: after a chunk the
  bias equals one optimizer update from zero (odd last step) or zero."""
  seen = []

  def hook(state, t):
    jax.debug.callback(lambda v: seen.append(int(v)), t)
    p = state.params
    bias = jnp.where(
      t % 2 == 0, jnp.zeros_like(p["output"]["bias"]), p["output"]["bias"]
    )
    return state._replace(params={**p, "output": {**p["output"], "bias": bias}})

  sgd = train.make_optimizer("sgd", 0.0, momentum=0.0)  # lr 0: no updates
  res = train.train(
    setup.apply,
    setup.obj,
    sgd,
    setup.params2,
    (setup.x, setup.y),
    steps=6,
    batch_size=32,
    seeds=(0, 1),
    chunk_size=3,
    hook=hook,
    devices=1,
    progress=False,
  )
  assert seen == [0, 1, 2, 3, 4, 5]  # t is not batched over the seeds
  np.testing.assert_array_equal(
    np.asarray(res.state.params["output"]["bias"]), 0.0
  )
  np.testing.assert_array_equal(
    np.asarray(res.state.params["output"]["kernel"]),
    np.asarray(setup.params2["output"]["kernel"]),
  )


# ------------------------------------------------------------- writers


def test_tensorboard_writer_gets_every_record(setup, tmp_path):
  pytest.importorskip("tensorboardX")
  d = str(tmp_path)
  res = run(setup, d, tensorboard=True)
  tb = os.path.join(d, train.TENSORBOARD_DIR)
  events = [f for f in os.listdir(tb) if "tfevents" in f]
  assert events
  # The event file holds one scalar per (record, metric, seed).
  from tensorboardX.proto import event_pb2
  import struct

  tags = set()
  with open(os.path.join(tb, events[0]), "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos : pos + 8])
    ev = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
    pos += 12 + length + 4
    for v in ev.summary.value:
      tags.add((v.tag, ev.step))
  for r in res.history:
    for name, ev in r["eval"].items():
      for metric in ev:
        for s in res.seeds:
          assert (f"{name}/{metric}/seed_{s}", r["step"]) in tags


def test_metric_writers_receive_records(setup):
  class Recorder:
    def __init__(self):
      self.started, self.records, self.closed = None, [], False

    def start(self, resume_step):
      self.started = resume_step

    def write(self, record):
      self.records.append(record)

    def close(self):
      self.closed = True

  w = Recorder()
  res = run(setup, None, writers=[w])
  assert w.started == 0 and w.closed and w.records == res.history


# ------------------------------------------------------------------ cache


def test_compile_cache_is_bounded_and_clearable(setup):
  from dropjax.train import cache

  calls = []

  @cache.cached
  def factory(i):
    calls.append(i)
    return i

  for i in range(cache.MAX_ENTRIES + 5):
    factory(i)
  assert factory.cache_info().currsize == cache.MAX_ENTRIES
  factory(cache.MAX_ENTRIES + 4)  # recent: cached
  factory(0)  # evicted: rebuilt
  assert calls.count(cache.MAX_ENTRIES + 4) == 1 and calls.count(0) == 2
  factory([1])  # unhashable: built, not cached
  train.clear_compile_cache()
  assert factory.cache_info().currsize == 0


# ------------------------------------------- truncated BPTT on the engine


def _lm_toy(b=4):
  from dropjax.data import text
  from dropjax.models import lstm

  apply, _, spec, model = lstm.make_lm(5, embed_dim=3, hidden_size=4)
  init = lstm.make_lm_init(5, embed_dim=3, hidden_size=4)
  stream = np.random.default_rng(0).integers(0, 5, size=b * 13).astype(np.int32)
  x, y = text.bptt_batches(text.batchify(stream, b), 4)
  obj = objectives.dropout(
    apply, rates=spec.rates, broadcast_axes=spec.broadcast_axes, has_aux=True
  )
  ev = train.StreamEvaluator(
    apply, {"curve": train.make_eval_set(stream, 2, 3)}, model.initial_carry
  )
  return apply, init, model, x, y, obj, ev


def test_bptt_stream_sharded_equals_unsharded():
  """The LM on 4 (fake CPU) devices, streams sharded, == on 1 device (same
  tolerance and reason as for the MLP above)."""
  assert jax.device_count() >= 4
  apply, init, model, x, y, obj, ev = _lm_toy()
  opt = train.make_optimizer("adam", 1e-2, clip_norm=1.0)
  runs = [
    train.train(
      apply,
      obj,
      opt,
      init,
      train.bptt_stream(x, y, model.initial_carry),
      steps=6,
      seeds=(0, 1),
      chunk_size=3,
      eval_data=ev,
      devices=n,
      progress=False,
    )
    for n in (1, 4)
  ]
  _assert_trees(runs[1].state, runs[0].state, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    runs[1].history[-1]["eval"]["curve"]["bpc"],
    runs[0].history[-1]["eval"]["curve"]["bpc"],
    rtol=1e-5,
  )
  with pytest.raises(ValueError, match="streams .* divisible"):
    train.train(
      apply,
      obj,
      opt,
      init,
      train.bptt_stream(x[:, :3], y[:, :3], model.initial_carry),
      steps=2,
      chunk_size=1,
      devices=4,
      progress=False,
    )


def test_resume_refuses_other_keep_best_or_checkpoint_format(setup, tmp_path):
  d = str(tmp_path)
  run(setup, d, steps=10)
  with pytest.raises(ValueError, match="keep_best"):
    run(setup, d, steps=20, keep_best=("val", "loss"))
  # A checkpoint written by an older layout (no checkpoint_format).
  from dropjax.train.checkpoint import Checkpoints

  ckpt = Checkpoints(os.path.join(d, train.CHECKPOINT_DIR))
  step = ckpt.latest()
  meta = ckpt.meta(step)
  ckpt.close()
  meta.pop("checkpoint_format")
  import orbax.checkpoint as ocp

  mgr = ocp.CheckpointManager(
    os.path.abspath(os.path.join(d, train.CHECKPOINT_DIR))
  )
  tree = mgr.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
  )["state"]
  mgr.save(
    step + 1,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
    ),
    force=True,
  )
  mgr.wait_until_finished()
  mgr.close()
  with pytest.raises(ValueError, match="checkpoint_format=None"):
    run(setup, d, steps=20)


def test_evaluate_sequence_labels_is_per_position():
  """[n, T] labels: loss and accuracy are means over the n * T positions
  (they were divided by n only, T times too large)."""
  rng = np.random.default_rng(0)
  n, t, k = 10, 6, 3
  x = rng.normal(size=(n, t, 4)).astype(np.float32)
  y = rng.integers(0, k, size=(n, t)).astype(np.int32)
  w = rng.normal(size=(4, k)).astype(np.float32)
  apply = lambda p, x, sites: x @ p["w"]
  got = train.evaluate(apply, {"w": w}, x, y, batch_size=4)
  logits = x @ w
  want_acc = np.mean(np.argmax(logits, -1) == y)
  logp = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  want_loss = -np.mean(np.take_along_axis(logp, y[..., None], -1))
  assert float(got["accuracy"]) == pytest.approx(want_acc, abs=1e-6)
  assert float(got["loss"]) == pytest.approx(want_loss, rel=1e-5)
  assert 0 <= float(got["accuracy"]) <= 1


def test_compile_stats_count_programs_and_stop_on_exit():
  f = jax.jit(lambda a: jnp.sin(a) * 3.0)
  a7, a5, a2 = (np.ones((n, 3), np.float32) for n in (7, 5, 2))
  with train.CompileStats() as stats:
    f(a7)
    f(a7)  # cached in memory: no new program
    f(a5)  # a new shape: a second program
  got = stats.summary()
  assert got["programs"] == 2
  assert got["backend_compile_s"] > 0 and got["trace_s"] > 0
  assert got["total_s"] == pytest.approx(
    got["backend_compile_s"] + got["trace_s"] + got["lower_s"]
  )
  f(a2)  # after exit: not counted
  assert stats.summary()["programs"] == 2
