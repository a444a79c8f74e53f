"""Objectives: DROPOUT_k noise scaling, fix-noise, API behaviour, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropjax
from dropjax import objectives as O

from _helpers import BATCH
from _helpers import PARAMS
from _helpers import mlp


def grad_samples(objective, n, seed=0):
  g = jax.jit(
    jax.vmap(lambda k: jax.grad(lambda p: objective(p, BATCH, k)[0])(PARAMS))
  )(jax.random.split(jax.random.key(seed), n))
  return jnp.concatenate([a.reshape(n, -1) for a in jax.tree.leaves(g)], 1)


def trace_cov(g):
  """tr Cov and its standard error (per-sample squared deviations)."""
  dev = jnp.sum(jnp.square(g - g.mean(0)), axis=1)
  return float(dev.mean()), float(dev.std() / np.sqrt(g.shape[0]))


def test_dropout_k_covariance_scales_as_one_over_k_and_fix_noise_restores_it():
  """DROPOUT_k (Algorithm 1 of arXiv:2002.12915) and the fix-noise update.

  Monte Carlo with n = 20000 per regimen: DROPOUT_k keeps DROPOUT_1's mean
  update with 1/k of its dropout-noise covariance; fix-noise restores it.
  """
  n, q, k = 20_000, 0.4, 4
  g1 = grad_samples(O.dropout(mlp, rates=q), n, seed=1)
  gk = grad_samples(O.dropout_k(mlp, rates=q, k=k), n, seed=2)
  gf = grad_samples(O.dropout_k_fix_noise(mlp, rates=q, k=k), n, seed=3)
  t1, s1 = trace_cov(g1)
  tk, sk = trace_cov(gk)
  tf, sf = trace_cov(gf)
  ratio = tk / t1
  se_ratio = ratio * np.hypot(sk / tk, s1 / t1)
  assert abs(ratio - 1 / k) < 5 * se_ratio, (ratio, se_ratio)
  ratio_f = tf / t1
  se_f = ratio_f * np.hypot(sf / tf, s1 / t1)
  assert abs(ratio_f - 1) < 5 * se_f, (ratio_f, se_f)
  # Same mean update for all three: per-coordinate z-scores.
  for g in (gk, gf):
    diff = g.mean(0) - g1.mean(0)
    se = jnp.sqrt(g.var(0) / n + g1.var(0) / n)
    assert float(jnp.max(jnp.abs(diff) / se)) < 5


def test_dropout_k_implicit_adds_zero_mean_noise():
  n, q, k = 4000, 0.4, 4
  gk = grad_samples(O.dropout_k(mlp, rates=q, k=k), n, seed=4)
  gi = grad_samples(O.dropout_k_implicit(mlp, rates=q, k=k), n, seed=5)
  tk, _ = trace_cov(gk)
  ti, _ = trace_cov(gi)
  assert ti > 1.5 * tk  # noise was added
  diff = gi.mean(0) - gk.mean(0)
  se = jnp.sqrt(gi.var(0) / n + gk.var(0) / n)
  assert float(jnp.max(jnp.abs(diff) / se)) < 5


REGIMENS = {
  "none": lambda: O.none(mlp),
  "dropout": lambda: O.dropout(mlp, rates=0.3),
  "dropout_locked_gaussian": lambda: O.dropout(
    mlp, rates=0.3, noise="gaussian"
  ),
  "dropout_k": lambda: O.dropout_k(mlp, rates=0.3, k=3),
  "dropout_k_fix_noise": lambda: O.dropout_k_fix_noise(mlp, rates=0.3, k=3),
  "dropout_k_implicit": lambda: O.dropout_k_implicit(mlp, rates=0.3, k=3),
  "explicit": lambda: O.explicit(mlp, rates={"h1": 0.2, "h2": 0.4}),
  "explicit_gn": lambda: O.explicit(mlp, rates=0.3, estimator="gauss_newton"),
  "explicit_id": lambda: O.explicit(
    mlp, rates=0.3, estimator="identity_hessian"
  ),
  "explicit_true": lambda: O.explicit(mlp, rates=0.3, estimator="true_label"),
  "implicit": lambda: O.implicit(mlp, rates=0.3),
  "explicit_implicit": lambda: O.explicit_implicit(mlp, rates=0.3),
  "targeted_weight": lambda: O.targeted_weight(mlp, gamma=0.5, alpha=0.5),
  "targeted_unit": lambda: O.targeted_unit(mlp, gamma=0.5, alpha=0.5),
  "l1": lambda: O.l1(mlp, coef=1e-3),
  "l2": lambda: O.l2(mlp, coef=1e-3),
}


@pytest.mark.parametrize("name", sorted(REGIMENS))
def test_every_objective_jits_and_is_deterministic(name):
  obj = REGIMENS[name]()
  key = jax.random.key(7)
  loss, aux = obj(PARAMS, BATCH, key)  # eager
  assert set(aux) == {"data_loss", "explicit", "implicit", "penalty"}
  total = aux["data_loss"] + aux["explicit"] + aux["implicit"] + aux["penalty"]
  np.testing.assert_allclose(loss, total, rtol=1e-6)
  step = jax.jit(
    jax.value_and_grad(lambda p, k: obj(p, BATCH, k), has_aux=True)
  )
  (loss_j, _), g1 = step(PARAMS, key)
  np.testing.assert_allclose(loss_j, loss, rtol=1e-5)
  (_, _), g2 = step(PARAMS, key)  # same key
  chex.assert_trees_all_equal(g1, g2)
  chex.assert_tree_all_finite(g1)


def test_make_objective_registry_matches_the_functions():
  key = jax.random.key(8)
  a = O.make_objective("explicit_implicit", mlp, rates=0.3)(PARAMS, BATCH, key)
  b = O.explicit_implicit(mlp, rates=0.3)(PARAMS, BATCH, key)
  np.testing.assert_array_equal(a[0], b[0])
  with pytest.raises(ValueError, match="explicit_implicit"):
    O.make_objective("explicit+implicit", mlp)


def test_objectives_vmap_over_rates():
  rates = jnp.array([0.1, 0.3, 0.5])
  key = jax.random.key(9)
  for make in (
    lambda q: O.explicit_implicit(mlp, rates=q),
    lambda q: O.dropout_k(mlp, rates=q, k=2),
    lambda q: O.explicit(mlp, rates={"h1": q, "h2": q}),
  ):
    swept = jax.jit(jax.vmap(lambda q: make(q)(PARAMS, BATCH, key)[0]))(rates)
    single = make(0.3)(PARAMS, BATCH, key)[0]
    np.testing.assert_allclose(swept[1], single, rtol=1e-5)
  for f in (
    lambda q: dropjax.explicit_regularizer(
      mlp, PARAMS, BATCH[0], rates=q, key=key
    ),
    lambda q: dropjax.implicit_regularizer(
      mlp, PARAMS, BATCH[0], BATCH[1], rates=q, key=key
    ),
  ):
    swept = jax.vmap(f)(rates)
    np.testing.assert_allclose(swept[1], f(0.3), rtol=1e-5)


def test_analytic_terms_equal_the_standalone_regularizers():
  """Algorithm 2's shared forward/backward gives the same R_exp and R_imp."""
  key = jax.random.key(10)
  _, aux = O.explicit_implicit(mlp, rates=0.3)(PARAMS, BATCH, key)
  k_exp, k_imp = jax.random.split(key)
  r_exp = dropjax.explicit_regularizer(
    mlp, PARAMS, BATCH[0], rates=0.3, key=k_exp
  )
  r_imp = dropjax.implicit_regularizer(
    mlp, PARAMS, BATCH[0], BATCH[1], rates=0.3, key=k_imp
  )
  np.testing.assert_allclose(aux["explicit"], r_exp, rtol=1e-5)
  np.testing.assert_allclose(aux["implicit"], r_imp, rtol=1e-5, atol=1e-7)


def test_explicit_scale_multiplies():
  key = jax.random.key(11)
  base = O.explicit(mlp, rates=0.3)(PARAMS, BATCH, key)[1]["explicit"]
  twice = O.explicit(mlp, rates=0.3, scale=2.0)(PARAMS, BATCH, key)[1]
  np.testing.assert_allclose(twice["explicit"], 2 * base, rtol=1e-6)


def test_unknown_site_names_list_the_models_sites():
  with pytest.raises(KeyError, match=r"h1.*h2"):
    O.explicit(mlp, rates={"h3": 0.5})(PARAMS, BATCH, jax.random.key(0))
  with pytest.raises(KeyError, match=r"h1.*h2"):
    O.dropout(mlp, rates={"hidden": 0.5})(PARAMS, BATCH, jax.random.key(0))
  with pytest.raises(KeyError, match="h1"):
    dropjax.explicit_regularizer(
      mlp, PARAMS, BATCH[0], rates={"x": 0.1}, key=jax.random.key(0)
    )


def test_unknown_estimator_loss_regimen_and_missing_inputs():
  with pytest.raises(ValueError, match="sampled_label.*gauss_newton"):
    O.explicit(mlp, rates=0.3, estimator="fisher")
  with pytest.raises(ValueError, match="softmax_cross_entropy"):
    O.none(mlp, loss="hinge")
  with pytest.raises(ValueError, match="needs the true targets y"):
    dropjax.explicit_regularizer(
      mlp, PARAMS, BATCH[0], rates=0.3, estimator="true_label"
    )
  with pytest.raises(ValueError, match="needs a key"):
    dropjax.explicit_regularizer(mlp, PARAMS, BATCH[0], rates=0.3)
  with pytest.raises(ValueError, match="drop probability"):
    O.explicit_implicit(mlp, rates=1.0)
  with pytest.raises(ValueError, match="k"):
    O.dropout_k(mlp, rates=0.3, k=0)
  with pytest.raises(ValueError, match="shape"):
    O.none(mlp)(PARAMS, (BATCH[0], BATCH[1][:3]), jax.random.key(0))


def test_rate_zero_analytic_terms_vanish_and_dropout_is_clean():
  key = jax.random.key(12)
  clean, _ = O.none(mlp)(PARAMS, BATCH, key)
  loss, aux = O.explicit_implicit(mlp, rates=0.0)(PARAMS, BATCH, key)
  assert float(aux["explicit"]) == 0.0 and float(aux["implicit"]) == 0.0
  np.testing.assert_allclose(loss, clean, rtol=1e-6)
  np.testing.assert_allclose(
    O.dropout(mlp, rates=0.0)(PARAMS, BATCH, key)[0], clean, rtol=1e-6
  )


def test_model_without_sites_is_a_clear_error():
  def linear(p, x, sites):
    return x @ p["w1"]

  with pytest.raises(ValueError, match="no dropout site"):
    O.explicit(linear, rates=0.3)(PARAMS, BATCH, jax.random.key(0))


def test_has_aux_models_pass_their_aux_through():
  def with_state(p, x, sites):
    out = mlp(p, x, sites)
    return out, {"mean_logit": out.mean()}

  for obj in (
    O.none(with_state, has_aux=True),
    O.dropout_k(with_state, rates=0.3, k=2, has_aux=True),
    O.explicit_implicit(with_state, rates=0.3, has_aux=True),
  ):
    _, aux = jax.jit(obj)(PARAMS, BATCH, jax.random.key(0))
    assert aux["model_aux"]["mean_logit"].shape == ()


def test_l1_l2_penalties_are_the_keras_conventions():
  _, aux1 = O.l1(mlp, coef=0.1)(PARAMS, BATCH, None)
  _, aux2 = O.l2(mlp, coef=0.1)(PARAMS, BATCH, None)
  l1 = sum(float(jnp.abs(w).sum()) for w in PARAMS.values())
  l2 = sum(float(jnp.square(w).sum()) for w in PARAMS.values())
  np.testing.assert_allclose(aux1["penalty"], 0.1 * l1, rtol=1e-6)
  np.testing.assert_allclose(aux2["penalty"], 0.1 * l2, rtol=1e-6)


def test_targeted_dropout_leaves_the_logits_layer_alone():
  seen = {}

  def spy(p, x, sites):
    seen.update({k: v for k, v in p.items()})
    return mlp(p, x, sites)

  O.targeted_weight(spy, gamma=0.9, alpha=1.0)(PARAMS, BATCH, jax.random.key(0))
  np.testing.assert_array_equal(seen["w3"], PARAMS["w3"])
  assert float((seen["w1"] == 0).mean()) > 0.3


def _named_mlp(p, x, sites):
  """Layers named so that flatten (alphabetical) order is not depth order:
  classifier < fc1 < fc2."""
  h = sites("h1", jnp.tanh(x @ p["fc1"]["kernel"]))
  h = sites("h2", jnp.tanh(h @ p["fc2"]["kernel"]))
  return h @ p["classifier"]["kernel"] + p["classifier"]["bias"]


NAMED = {
  "fc1": {"kernel": PARAMS["w1"]},
  "fc2": {"kernel": PARAMS["w2"]},
  "classifier": {"kernel": PARAMS["w3"], "bias": jnp.zeros(3)},
}


def test_output_layer_is_found_by_structure_not_by_name_order():
  """With layers fc1, fc2, classifier, the logits layer is `classifier`
  (flatten order would say fc2), and targeted dropout thins fc1 and fc2."""
  assert O.output_kernels(_named_mlp, NAMED, BATCH[0]) == ("classifier/kernel",)
  seen = {}

  def spy(p, x, sites):
    seen.update(jax.tree.map(lambda a: a, p))
    return _named_mlp(p, x, sites)

  obj = O.targeted_weight(spy, gamma=0.9, alpha=1.0)
  jax.jit(obj)(NAMED, BATCH, jax.random.key(0))  # traced params: still found
  obj(NAMED, BATCH, jax.random.key(0))
  np.testing.assert_array_equal(
    seen["classifier"]["kernel"], NAMED["classifier"]["kernel"]
  )
  for layer in ("fc1", "fc2"):
    assert float((seen[layer]["kernel"] == 0).mean()) > 0.3, layer


def test_embeddings_are_not_kernels_and_lm_decoders_are_outputs():
  from dropjax.models import lstm

  apply, params, _, model = lstm.make_lm(
    7, key=0, embed_dim=3, hidden_size=4, num_layers=2
  )
  x = (jnp.zeros((2, 5), jnp.int32), model.initial_carry(2))
  assert O.output_kernels(apply, params, x, has_aux=True) == ("decoder/kernel",)
  sel = O.hidden_kernels(apply, params, x, has_aux=True)
  chosen = [
    O.path_str(p)
    for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    if sel(O.path_str(p), leaf)
  ]
  assert chosen == [
    "lstm_0/w_hh",
    "lstm_0/w_ih",
    "lstm_1/w_hh",
    "lstm_1/w_ih",
  ]
  emb = params["embed"]["embedding"]
  assert not O.kernels("embed/embedding", emb)
  assert O.select_kernels(include_embeddings=True)("embed/embedding", emb)
  # L2 by default leaves the embedding table alone.
  _, aux = O.l2(apply, coef=1.0, has_aux=True)(
    params, (x, jnp.zeros((2, 5), jnp.int32)), None
  )
  want = sum(
    float(jnp.square(leaf).sum())
    for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    if leaf.ndim >= 2 and O.path_str(p) != "embed/embedding"
  )
  np.testing.assert_allclose(float(aux["penalty"]), want, rtol=1e-6)


def test_user_selection_of_kernels():
  where = O.select_kernels(exclude=("fc2/",))
  assert where("fc1/kernel", NAMED["fc1"]["kernel"])
  assert not where("fc2/kernel", NAMED["fc2"]["kernel"])
  assert not where("classifier/bias", NAMED["classifier"]["bias"])
  seen = {}

  def spy(p, x, sites):
    seen.update(jax.tree.map(lambda a: a, p))
    return _named_mlp(p, x, sites)

  O.targeted_weight(spy, gamma=0.9, alpha=1.0, where=where)(
    NAMED, BATCH, jax.random.key(0)
  )
  np.testing.assert_array_equal(seen["fc2"]["kernel"], NAMED["fc2"]["kernel"])
  assert float((seen["classifier"]["kernel"] == 0).mean()) > 0.3


# ------------------------------------------ arguments that must not be ignored


def test_dropout_refuses_arguments_it_would_ignore():
  def apply(p, x, sites):
    return sites("h", x @ p["w"])

  params = {"w": jnp.ones((3, 2))}
  batch = (jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]))
  key = jax.random.key(0)
  # A broadcast_axes entry for a site the model does not have.
  obj = O.dropout(apply, rates=0.5, broadcast_axes={"hh": (1,)})
  with pytest.raises(KeyError, match=r"broadcast_axes .*'hh'.*\['h'\]"):
    obj(params, batch, key)
  # Gaussian noise cannot share a mask along axes.
  with pytest.raises(ValueError, match="Bernoulli noise only"):
    O.dropout(apply, rates=0.5, noise="gaussian", broadcast_axes={"h": (0,)})
  # A model with no sites would train without dropout.
  no_sites = O.dropout(lambda p, x, sites: x @ p["w"], rates=0.5)
  with pytest.raises(ValueError, match="no dropout sites"):
    no_sites(params, batch, key)
  for k_obj in (O.dropout_k, O.dropout_k_fix_noise):
    with pytest.raises(ValueError, match="no dropout sites"):
      k_obj(lambda p, x, sites: x @ p["w"], rates=0.5, k=2)(params, batch, key)
  # A valid broadcast_axes entry still works.
  loss, _ = O.dropout(apply, rates=0.5, broadcast_axes={"h": (0,)})(
    params, batch, key
  )
  assert np.isfinite(float(loss))


def test_broadcast_axes_for_every_site_or_per_site():
  """One tuple of axes means those axes at every site (as a mapping naming
  every site would); Gaussian noise refuses either form; other types are
  refused by name."""
  key = jax.random.key(3)
  every = O.dropout(mlp, rates=0.5, broadcast_axes=(0,))(PARAMS, BATCH, key)
  mapped = O.dropout(mlp, rates=0.5, broadcast_axes={"h1": (0,), "h2": (0,)})(
    PARAMS, BATCH, key
  )
  unlocked = O.dropout(mlp, rates=0.5)(PARAMS, BATCH, key)
  assert float(every[0]) == float(mapped[0])
  assert float(every[0]) != float(unlocked[0])
  for axes in ((0,), {"h1": (0,)}):
    with pytest.raises(ValueError, match="broadcast_axes.*Bernoulli"):
      O.gaussian_dropout(mlp, rates=0.5, broadcast_axes=axes)
  with pytest.raises(TypeError, match="broadcast_axes must be"):
    O.dropout(mlp, rates=0.5, broadcast_axes="time")


def test_gaussian_dropout_regimen_is_dropout_with_gaussian_noise():
  key = jax.random.key(3)
  a, _ = O.gaussian_dropout(mlp, rates=0.3)(PARAMS, BATCH, key)
  b, _ = O.dropout(mlp, rates=0.3, noise="gaussian")(PARAMS, BATCH, key)
  c, _ = O.dropout(mlp, rates=0.3)(PARAMS, BATCH, key)
  d, _ = O.from_config("gaussian_dropout", mlp, {}, rates=0.3)(
    PARAMS, BATCH, key
  )
  assert float(a) == float(b) == float(d)
  assert float(a) != float(c)  # not Bernoulli


def test_mask_axis_map_runs_the_same_masks_as_vmap():
  """``lax.map`` over DROPOUT_k's masks gives the same loss and gradients as
  ``vmap`` (same keys, so the same masks; float rounding apart)."""

  def value_grad(axis, **kw):
    obj = O.dropout_k(mlp, rates=0.3, k=3, mask_axis=axis, **kw)
    return jax.jit(jax.value_and_grad(lambda p: obj(p, BATCH, KEY)[0]))(PARAMS)

  KEY = jax.random.key(7)
  for kw in ({}, {"implicit": True}):
    (lv, gv), (lm, gm) = value_grad("vmap", **kw), value_grad("map", **kw)
    np.testing.assert_allclose(lm, lv, rtol=1e-6)
    chex.assert_trees_all_close(gm, gv, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="mask_axis.*vmap, map"):
    O.dropout_k(mlp, rates=0.3, k=2, mask_axis="scan")
