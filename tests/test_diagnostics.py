"""dropjax.analysis.diagnostics: the expansion and noise checks of trained nets.

In float64 (the ``x64`` fixture). Exact quantities come from enumerating
every dropout mask or sign pattern of a tiny model; the Monte-Carlo
estimates of the checks must fall within 4 of their own standard errors.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dropjax import explicit as E
from dropjax import losses as L
from dropjax import sites as S
from dropjax.analysis import diagnostics as D

from _helpers import (
  flat_grad,
  hidden_model,
  hidden_params,
  masks_and_probabilities,
  mlp,
)

pytestmark = pytest.mark.usefixtures("x64")


def _linear(w, x, sites):
  return sites("x", x) @ w


def _linear_batch(n=40, d=3, k=2):
  kx, kw, ky = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (n, d))
  w = jax.random.normal(kw, (d, k))
  y = x @ w + 0.3 * jax.random.normal(ky, (n, k))
  return w, x, y


def test_linear_model_gap_matches_r_exp_within_its_standard_error():
  # Linear in the site, squared error: E_mask[L̄] = L̄ + R_exp exactly.
  w, x, y = _linear_batch()
  r = D.taylor_check(
    _linear,
    w,
    x,
    y,
    rates=0.4,
    key=jax.random.key(3),
    num_masks=4000,
    num_label_samples=64,
    loss="squared_error",
  )
  d = r["all"]
  assert d["rate"] == 0.4 and set(r) == {"x", "all"}
  assert abs(d["mc_gap"] - d["r_exp_gauss_newton"]) < 4 * d["mc_se"]
  # The sampled-label (Gaussian targets) mean within 4 of its own SEs.
  assert (
    abs(d["r_exp_sampled_label"] - d["r_exp_gauss_newton"])
    < 4 * d["r_exp_sampled_label_se"]
  )
  # ... and the check can fail: the gap is not the clean loss's scale.
  assert d["mc_gap"] > 10 * d["mc_se"]


def test_dropout_gap_agrees_with_every_mask_enumerated():
  params = hidden_params(jax.random.key(1), d_in=3, d_h=4, d_out=3)
  x = jax.random.normal(jax.random.key(2), (2, 3))  # 8 site elements
  y = jnp.array([0, 2])
  q = 0.3
  shape = S.site_shapes(hidden_model, params, x)["h"].shape
  masks, probs = masks_and_probabilities(shape, q)

  def loss_for(m):
    sites = lambda n, h: h * m / (1 - q)
    return L.mean_loss(
      "softmax_cross_entropy", hidden_model(params, x, sites), y
    )

  clean = L.mean_loss(
    "softmax_cross_entropy", hidden_model(params, x, S.identity_sites), y
  )
  d = jax.vmap(loss_for)(masks) - clean
  exact_mean = float(jnp.sum(probs * d))
  exact_sd = float(jnp.sqrt(jnp.sum(probs * (d - exact_mean) ** 2)))
  n = 3000
  gap, se = D.dropout_gap(
    hidden_model, params, x, y, rates=q, key=jax.random.key(4), num_masks=n
  )
  assert abs(gap - exact_mean) < 4 * exact_sd / np.sqrt(n)
  assert se == pytest.approx(exact_sd / np.sqrt(n), rel=0.1)


def test_per_example_gauss_newton_equals_the_batch_estimator():
  params = hidden_params(jax.random.key(5), d_in=3, d_h=5, d_out=4)
  params = {"w1": params["w1"], "w2": params["w2"]}

  def two_sites(p, x, sites):
    h = sites("h1", jnp.tanh(x @ p["w1"]))
    h = sites("h2", jnp.tanh(h))
    return h @ p["w2"]

  x = jax.random.normal(jax.random.key(6), (7, 3))
  y = jnp.arange(7) % 4
  rates = {"h1": 0.2, "h2": 0.5}
  r = D.taylor_check(
    two_sites,
    params,
    x,
    y,
    rates=rates,
    key=jax.random.key(7),
    num_masks=4,
    num_label_samples=2,
  )
  for site in ("h1", "h2"):
    want = E.explicit_regularizer(
      two_sites,
      params,
      x,
      rates={s: (q if s == site else 0.0) for s, q in rates.items()},
      estimator="gauss_newton",
    )
    assert r[site]["r_exp_gauss_newton"] == pytest.approx(float(want), 1e-12)
    assert r[site]["rate"] == rates[site]
  total = E.explicit_regularizer(
    two_sites, params, x, rates=rates, estimator="gauss_newton"
  )
  assert r["all"]["r_exp_gauss_newton"] == pytest.approx(float(total), 1e-12)
  assert r["all"]["rate"] is None  # two different rates


def test_explicit_terms_add_up_to_the_regularizer():
  from _helpers import BATCH, PARAMS

  x, y = BATCH
  lin = S.linearize_sites(mlp, PARAMS, x)
  rates = {"h1": 0.3, "h2": 0.6}
  key = jax.random.key(8)
  for est in ("sampled_label", "gauss_newton", "true_label"):
    terms = E.explicit_terms(lin, rates, estimator=est, key=key, y=y)
    total = E.explicit_from_linearization(
      lin, rates, estimator=est, key=key, y=y
    )
    assert list(terms) == ["h1", "h2"]
    assert float(sum(terms.values())) == pytest.approx(float(total), 1e-12)
  with pytest.raises(ValueError, match="per-site terms"):
    E.explicit_terms(lin, rates, estimator="identity_hessian", key=key)


def _exact_covariance_traces(params, x, y, q):
  """tr Cov of the dropout gradient over every mask, and of ∇R_imp over
  every sign pattern, for the one-site model."""
  shape = S.site_shapes(hidden_model, params, x)["h"].shape
  masks, probs = masks_and_probabilities(shape, q)

  def grad_for(m):
    sites = lambda n, h: h * m / (1 - q)
    return flat_grad(
      lambda p: L.mean_loss(
        "softmax_cross_entropy", hidden_model(p, x, sites), y
      ),
      params,
    )

  g = jax.vmap(grad_for)(masks)
  mean = jnp.sum(probs[:, None] * g, 0)
  tr_drop = float(jnp.sum(probs * jnp.sum((g - mean) ** 2, 1)))

  signs = jnp.asarray(
    list(itertools.product([-1.0, 1.0], repeat=int(np.prod(shape))))
  ).reshape((-1,) + tuple(shape))

  def imp_grad(s):
    def r_imp(p):
      lin = S.linearize_sites(hidden_model, p, x)
      from dropjax import implicit as I

      return I.implicit_from_linearization(
        lin, {"h": q}, y=y, key=None, signs={"h": s}
      )

    return flat_grad(r_imp, params)

  gi = jax.vmap(imp_grad)(signs)
  tr_imp = float(jnp.mean(jnp.sum((gi - gi.mean(0)) ** 2, 1)))
  return tr_drop, tr_imp


def test_gradient_noise_traces_agree_with_enumeration():
  params = hidden_params(jax.random.key(9), d_in=3, d_h=4, d_out=3)
  x = jax.random.normal(jax.random.key(10), (2, 3))  # 8 site elements
  y = jnp.array([1, 2])
  q = 0.7
  tr_drop, tr_imp = _exact_covariance_traces(params, x, y, q)
  r = D.gradient_noise_check(
    hidden_model,
    params,
    x,
    y,
    rates=q,
    key=jax.random.key(11),
    num_samples=2000,
    projection_dim=3,
    groups=20,
    num_bootstrap=20,
  )
  d = r["all"]
  assert set(r) == {"h", "all"} and d["rate"] == q
  assert abs(d["trace_dropout"] - tr_drop) < 4 * d["trace_dropout_se"]
  assert abs(d["trace_implicit"] - tr_imp) < 4 * d["trace_implicit_se"]
  ratio = tr_imp / tr_drop
  assert abs(d["trace_ratio"] - ratio) < 4 * d["trace_ratio_se"]
  # The two noises differ on this net: the check can tell them apart.
  assert abs(ratio - 1) > 4 * d["trace_ratio_se"]
  assert 0 <= d["noise_floor"] < d["relative_distance"] + 1
  assert d["relative_distance_se"] > 0


def test_projected_distance_is_at_the_noise_floor_for_one_distribution():
  # Implicit noise against itself is not available through the API, so
  # check the helper: two samples of one distribution are as far apart as
  # the noise floor says, and a scaled copy is not.
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4000, 3))
  b = rng.normal(size=(4000, 3))
  ref = D._cov(a)
  assert D._rel_dist(a, b, ref) < 0.1
  assert D._rel_dist(a, 2 * b, ref) == pytest.approx(3.0, rel=0.1)


def test_bad_inputs_are_named():
  w, x, y = _linear_batch()
  kw = dict(rates=0.3, key=jax.random.key(0), loss="squared_error")
  with pytest.raises(ValueError, match="multiple of groups"):
    D.gradient_noise_check(_linear, w, x, y, num_samples=30, groups=8, **kw)
  with pytest.raises(ValueError, match="num_masks must be an integer >= 2"):
    D.taylor_check(_linear, w, x, y, num_masks=1, **kw)
  with pytest.raises(KeyError, match="the model's sites"):
    D.taylor_check(_linear, w, x, y, **{**kw, "rates": {"h9": 0.3}})
  with pytest.raises(ValueError, match="every rate is 0"):
    D.taylor_check(_linear, w, x, y, **{**kw, "rates": 0.0})
  with pytest.raises(ValueError, match="unknown loss"):
    D.dropout_gap(_linear, w, x, y, **{**kw, "loss": "hinge"})
