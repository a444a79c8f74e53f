"""Tests of dropjax.analysis.gradual (gradual magnitude pruning in training).

* the schedule and its last update step;
* the masked optimizer keeps masked entries exactly zero;
* the pruning hook updates masks and parameters at update steps only, at the
  scheduled sparsity per kernel, under ``jax.vmap`` and ``jax.jit``;
* a short vmapped training run with the hook reaches the final sparsity
  exactly in every layer and keeps pruned weights at zero while the kept
  ones train.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dropjax import analysis as an
from dropjax import models
from dropjax import objectives
from dropjax import train as djtrain
from dropjax.analysis import gradual


def _expected_nonzero(n, s):
  return max(1, int(np.round(np.float32(n) * (np.float32(1) - np.float32(s)))))


def _kernels(params, seed=None):
  if seed is not None:
    params = jax.tree.map(lambda a: np.asarray(a[seed]), params)
  return [np.asarray(k) for _, k in an.kernel_list(params)]


def test_last_update_step():
  assert gradual.last_update_step(9360, 10) == 9350
  assert gradual.last_update_step(15, 5) == 10
  assert gradual.last_update_step(21, 10) == 20
  with pytest.raises(ValueError):
    gradual.last_update_step(5, 10)


def test_schedule_is_the_polynomial_schedule():
  s = an.PruningSchedule(
    end_step=95, initial=0.3, final=0.8, power=2.0, frequency=7, begin_step=4
  )
  for t in (0, 4, 11, 50, 95, 96, 200):
    assert float(s.sparsity(t)) == float(
      an.polynomial_sparsity(
        t, initial=0.3, final=0.8, begin_step=4, end_step=95, power=2.0
      )
    )
    assert bool(s.is_update(t)) == bool(
      an.is_mask_update_step(t, begin_step=4, end_step=95, frequency=7)
    )
  assert float(jax.jit(s.sparsity)(jnp.int32(95))) == pytest.approx(0.8)


def test_masked_optimizer_keeps_masked_entries_zero():
  params = {
    "d": {"kernel": jnp.arange(1.0, 7.0).reshape(3, 2), "bias": jnp.ones(2)}
  }
  opt = an.masked_optimizer(optax.adam(0.1))
  state = opt.init(params)
  assert isinstance(state, an.MaskedOptState)
  assert state.masks["d"]["bias"] is None
  assert state.masks["d"]["kernel"].dtype == jnp.bool_
  assert bool(jnp.all(state.masks["d"]["kernel"]))
  mask = jnp.array([[True, False], [False, True], [True, True]])
  state = state._replace(masks={"d": {"kernel": mask, "bias": None}})
  grads = jax.tree.map(jnp.ones_like, params)
  ref_upd, _ = optax.adam(0.1).update(
    grads, optax.adam(0.1).init(params), params
  )
  upd, state2 = opt.update(grads, state, params)
  new = optax.apply_updates(params, upd)
  k = np.asarray(new["d"]["kernel"])
  assert np.all(k[~np.asarray(mask)] == 0.0)
  np.testing.assert_array_equal(
    k[np.asarray(mask)],
    np.asarray(optax.apply_updates(params, ref_upd)["d"]["kernel"])[
      np.asarray(mask)
    ],
  )
  np.testing.assert_array_equal(
    np.asarray(upd["d"]["bias"]), np.asarray(ref_upd["d"]["bias"])
  )
  assert state2.masks["d"]["kernel"] is mask


_SIZES = (20, 16, 16, 4)
_STEPS, _END, _FREQ = 40, 20, 5


def _states(seeds=(0, 1)):
  init = models.make_init("mlp", layer_sizes=_SIZES)
  params = djtrain.init_seeds(init, seeds)
  opt = an.masked_optimizer(djtrain.make_optimizer("adam", 1e-2))
  states = jax.vmap(lambda p: djtrain.init_state(p, opt))(params)
  return states, opt


def test_pruning_hook_updates_only_on_schedule_vmapped_and_jitted():
  states, _ = _states()
  schedule = an.PruningSchedule(end_step=_END, frequency=_FREQ)
  hook = jax.jit(jax.vmap(an.pruning_hook(schedule), in_axes=(0, None)))
  for t in range(0, 27):
    new = hook(states, jnp.int32(t))
    assert jax.tree.structure(new) == jax.tree.structure(states)
    if not bool(schedule.is_update(t)):
      # Unchanged: every leaf, masks included, equal to the input.
      for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(states)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      continue
    s = float(schedule.sparsity(t))
    for seed in (0, 1):
      ks = _kernels(new.params, seed)
      ms = [
        np.asarray(m)
        for m in jax.tree.leaves(
          jax.tree.map(lambda a: a[seed], new.opt_state.masks)
        )
      ]
      assert len(ks) == len(ms) == 3
      for k, m in zip(ks, ms):
        assert int(m.sum()) == _expected_nonzero(k.size, s), (t, s)
        assert np.count_nonzero(k) == _expected_nonzero(k.size, s)
        assert np.all(k[~m] == 0)
      # The same masks as mask_fn on that seed's parameters alone.
      one = jax.tree.map(lambda a: a[seed], states.params)
      ref = an.layerwise_magnitude_masks(one, s)
      for m, r in zip(ms, jax.tree.leaves(ref)):
        np.testing.assert_array_equal(m, np.asarray(r))
    # Biases are never masked.
    np.testing.assert_array_equal(
      np.asarray(new.params["hidden_0"]["bias"]),
      np.asarray(states.params["hidden_0"]["bias"]),
    )
    np.testing.assert_array_equal(np.asarray(new.step), np.asarray(states.step))
    states = new  # prune cumulatively, as in training


def test_pruning_hook_custom_mask_fn_and_wrong_state():
  states, _ = _states(seeds=(0,))
  one = jax.tree.map(lambda a: a[0], states)
  schedule = an.PruningSchedule(end_step=10, frequency=10)
  hook = an.pruning_hook(
    schedule, lambda p, s: an.layerwise_magnitude_masks(p, s, exclude=(0,))
  )
  new = jax.jit(hook)(one, jnp.int32(0))
  assert np.count_nonzero(np.asarray(new.params["hidden_0"]["kernel"])) == (
    _SIZES[0] * _SIZES[1]
  )
  k = np.asarray(new.params["output"]["kernel"])
  assert np.count_nonzero(k) == _expected_nonzero(k.size, 0.5)
  bad = one._replace(opt_state=one.opt_state.inner)
  with pytest.raises(TypeError, match="MaskedOptState"):
    hook(bad, jnp.int32(0))


@pytest.fixture(scope="module")
def hooked_run():
  """40 steps of 2 seeds: hook then step inside one jitted, vmapped scan."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(256, 20)).astype(np.float32))
  y = jnp.asarray(x[:, :4].argmax(axis=1).astype(np.int32))
  apply, _, _ = models.make_model("mlp", layer_sizes=_SIZES)
  states, opt = _states()
  schedule = an.PruningSchedule(end_step=_END, frequency=_FREQ)
  hook = an.pruning_hook(schedule)
  step = djtrain.make_train_step(objectives.none(apply), opt)

  def one_step(state, t):
    state = hook(state, t)
    idx = (t * 32 + jnp.arange(32)) % 256
    state, _ = step(state, (x[idx], y[idx]), jax.random.key(0))
    return state, state.params

  @jax.jit
  def run(states):
    return jax.lax.scan(
      lambda st, t: jax.vmap(one_step, in_axes=(0, None))(st, t),
      states,
      jnp.arange(_STEPS, dtype=jnp.int32),
    )

  final, history = run(states)
  return final, history, schedule


def test_hooked_training_follows_schedule_and_ends_exact(hooked_run):
  final, history, schedule = hooked_run
  for t in range(_STEPS):  # params after update t
    last_update = min((t // _FREQ) * _FREQ, _END)
    s = float(schedule.sparsity(last_update))
    snap = jax.tree.map(lambda a: a[t], history)
    for seed in (0, 1):
      for k in _kernels(snap, seed):
        assert np.count_nonzero(k) == _expected_nonzero(k.size, s), (t, s)
  assert float(schedule.sparsity(_END)) == pytest.approx(0.9)
  for seed in (0, 1):
    ks = _kernels(final.params, seed)
    assert len(ks) == 3  # first, hidden and output layer are all pruned
    for k in ks:
      assert np.count_nonzero(k) == _expected_nonzero(k.size, 0.9)
    assert np.count_nonzero(np.asarray(final.params["hidden_0"]["bias"][seed]))


def test_hooked_training_pruned_weights_stay_zero(hooked_run):
  _, history, _ = hooked_run
  first = jax.tree.map(lambda a: a[_END], history)
  last = jax.tree.map(lambda a: a[-1], history)
  for seed in (0, 1):
    changed = 0
    for a, b in zip(_kernels(first, seed), _kernels(last, seed)):
      np.testing.assert_array_equal(a == 0, b == 0)  # the same zeros,
      changed += np.count_nonzero(a != b)
    assert changed > 0  # while the kept weights went on training
