"""Drop-rate schedules inside jit (dropjax.schedules)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropjax
import dropjax.models
import dropjax.train as djtrain
from dropjax import objectives, schedules


def test_schedule_values():
  e = schedules.early(0.4, until=10)
  el = schedules.early(0.4, until=10, decay="linear")
  la = schedules.late(0.3, start=5)
  li = schedules.linear(0.1, 0.5, 4)
  c = schedules.constant(0.2)
  ts = jnp.arange(12)
  np.testing.assert_allclose(jax.vmap(e)(ts), [0.4] * 10 + [0.0] * 2, atol=1e-7)
  np.testing.assert_allclose(
    jax.vmap(el)(ts),
    [0.4 * (1 - t / 10) for t in range(10)] + [0, 0],
    atol=1e-7,
  )
  np.testing.assert_allclose(jax.vmap(la)(ts), [0.0] * 5 + [0.3] * 7, atol=1e-7)
  np.testing.assert_allclose(
    jax.vmap(li)(jnp.arange(6)), [0.1, 0.2, 0.3, 0.4, 0.5, 0.5], atol=1e-7
  )
  np.testing.assert_allclose(jax.jit(c)(jnp.int32(7)), 0.2, atol=1e-7)


def test_bad_schedules():
  with pytest.raises(ValueError, match="rate must lie in"):
    schedules.early(1.0, until=3)
  with pytest.raises(ValueError, match="until must be an int >= 0"):
    schedules.early(0.3, until=-1)
  with pytest.raises(ValueError, match="unknown decay 'cosine'"):
    schedules.early(0.3, until=3, decay="cosine")
  with pytest.raises(ValueError, match="steps must be >= 1"):
    schedules.linear(0.1, 0.2, 0)
  with pytest.raises(TypeError, match="two callables"):
    schedules.scheduled(lambda q: None, 0.3)
  obj = schedules.scheduled(
    lambda q: objectives.dropout(_probe, rates=q), schedules.constant(0.1)
  )
  with pytest.raises(ValueError, match="needs the step"):
    obj({}, _probe_batch(4), jax.random.key(0))


def _probe(params, x, sites):
  """Outputs the dropped ones: with squared error against 0, the data loss
  is 0.5 * (kept fraction) / (1 - q)²."""
  del params
  return sites("h", x)


def _probe_batch(n):
  return jnp.ones((n, 1), jnp.float32), jnp.zeros((n, 1), jnp.float32)


def _kept_fraction(data_loss, q):
  return 2.0 * (1.0 - q) ** 2 * float(data_loss)


def test_mask_statistics_follow_the_schedule_through_the_train_step():
  """At steps 0, 50 and 100 of a linear 0.1 -> 0.7 schedule the masks keep
  a fraction 1 - q(t) of the elements, within 5 binomial standard errors;
  the step number comes from the train state."""
  n = 200_000
  sched = schedules.linear(0.1, 0.7, 100)
  obj = schedules.scheduled(
    lambda q: objectives.dropout(_probe, rates=q, loss="squared_error"), sched
  )
  opt = djtrain.make_optimizer("sgd", 0.0)
  step = jax.jit(djtrain.make_train_step(obj, opt))
  state = djtrain.init_state({"unused": jnp.zeros(())}, opt)
  for t, q in ((0, 0.1), (50, 0.4), (100, 0.7)):
    st = state._replace(step=jnp.int32(t))
    _, metrics = step(st, _probe_batch(n), jax.random.key(t))
    kept = _kept_fraction(metrics["data_loss"], q)
    se = np.sqrt(q * (1 - q) / n)
    assert abs(kept - (1 - q)) < 5 * se, (t, kept, 1 - q)


def test_scheduled_analytic_terms_follow_the_rate():
  """explicit + implicit on a schedule equals the constant-rate objective at
  that step's rate, and vanishes where the schedule is 0."""
  from _helpers import BATCH, PARAMS, mlp

  sched = schedules.early(0.4, until=10)
  obj = schedules.scheduled(
    lambda q: objectives.explicit_implicit(mlp, rates=q), sched
  )
  key = jax.random.key(3)
  _, aux = jax.jit(obj)(PARAMS, BATCH, key, step=jnp.int32(3))
  _, want = objectives.explicit_implicit(mlp, rates=0.4)(PARAMS, BATCH, key)
  for k in ("data_loss", "explicit", "implicit"):
    np.testing.assert_allclose(aux[k], want[k], rtol=1e-5)
  assert float(want["explicit"]) > 0
  _, off = jax.jit(obj)(PARAMS, BATCH, key, step=jnp.int32(10))
  assert float(off["explicit"]) == 0.0 and float(off["implicit"]) == 0.0


def test_a_changing_rate_compiles_no_more_than_a_constant_one():
  """train() with early dropout (the rate drops to 0 after step 20, in the
  middle of the run) compiles as many programs as with a constant rate, and
  its runs before and after the switch differ as they should."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 8)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  sizes = (8, 16, 2)
  apply, _, _ = dropjax.models.make_model("mlp", layer_sizes=sizes)
  init = dropjax.models.make_init("mlp", layer_sizes=sizes)

  def run(obj):
    djtrain.clear_compile_cache()
    with djtrain.CompileStats() as stats:
      res = djtrain.train(
        apply,
        obj,
        djtrain.make_optimizer("adam", 1e-2),
        init,
        (x, y),
        steps=40,
        batch_size=16,
        chunk_size=10,
        devices=1,
        progress=False,
      )
    return stats.programs, res

  n_const, const = run(objectives.dropout(apply, rates=0.5))
  early = schedules.scheduled(
    lambda q: objectives.dropout(apply, rates=q), schedules.early(0.5, 20)
  )
  n_sched, res = run(early)
  assert n_sched == n_const

  # Chunks 1-2 (steps 0-19, q = 0.5) are the constant-rate run's; chunks 3-4
  # (q = 0) are not.
  def losses(r):
    return np.array(
      [float(np.mean(h["train"]["data_loss"])) for h in r.history]
    )

  a, b = losses(res), losses(const)
  assert a.shape == (4,)
  np.testing.assert_allclose(a[:2], b[:2], rtol=1e-6)
  assert np.all(np.abs(a[2:] - b[2:]) > 1e-3)
