"""Exact derivation tests for the explicit regularizer (dropjax.explicit).

All in float64 (the ``x64`` fixture). Where the network is small,
expectations over dropout masks and sampled labels are computed by
enumerating every outcome, so the identities are checked exactly (to
~1e-10), not by sampling. Reference: Wei, Kakade & Ma, "The Implicit and
Explicit Regularization Effects of Dropout", arXiv:2002.12915 (the explicit
regularizer and its sampled-label estimator, ``jreg_sample_logit`` in the
authors' code).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropjax
from dropjax import explicit as ex
from dropjax import losses as L
from dropjax import sites as S

import _helpers
from _helpers import all_masks
from _helpers import clean_loss
from _helpers import expected_dropout_loss
from _helpers import hidden_model
from _helpers import hidden_params
from _helpers import recurrent_model

pytestmark = pytest.mark.usefixtures("x64")


# --- 1. linear regression with input dropout: exact ---------------------------


@pytest.mark.parametrize("q", [0.1, 0.4, 0.6])
def test_linear_regression_input_dropout_is_exact(q):
  """E_mask[L̄] = L̄ + R_exp exactly (the squared loss is quadratic)."""
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (2, 5))  # 2 examples, 5 inputs
  w = jax.random.normal(k[1], (5, 2))  # 2 outputs
  y = jax.random.normal(k[2], (2, 2))
  apply = lambda w, x, sites: sites("x", x) @ w
  expected, total_p = expected_dropout_loss(
    apply, w, x, y, "x", q, "squared_error"
  )
  r = dropjax.explicit_regularizer(
    apply, w, x, rates=q, estimator="gauss_newton", loss="squared_error"
  )
  np.testing.assert_allclose(total_p, 1.0, atol=1e-12)
  err = abs(float(expected - (clean_loss(apply, w, x, y, "squared_error") + r)))
  assert err < 1e-10, err
  # The closed form for input dropout in linear regression:
  # R = q/(2(1-q)) (1/N) Σ_t Σ_j x_tj² ||w_j||².
  closed = (
    q / (2 * (1 - q)) * jnp.mean(jnp.sum(x**2 * jnp.sum(w**2, axis=1), axis=1))
  )
  np.testing.assert_allclose(r, closed, rtol=1e-12)


# --- 2. one hidden layer, dropout on h, linear readout: exact -------------------


@pytest.mark.parametrize("q", [0.2, 0.5])
def test_hidden_layer_linear_readout_squared_loss_is_exact(q):
  """E = ||W2 h - y||² + q/(1-q) Σ_j h_j² ||W2[:, j]||² (exact)."""
  p = hidden_params(jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (3, 3))  # 3 examples: 2^12 masks
  y = jax.random.normal(jax.random.key(3), (3, 2))
  expected, _ = expected_dropout_loss(
    hidden_model, p, x, y, "h", q, "squared_error"
  )
  r = dropjax.explicit_regularizer(
    hidden_model, p, x, rates=q, estimator="gauss_newton", loss="squared_error"
  )
  got = clean_loss(hidden_model, p, x, y, "squared_error") + r
  assert abs(float(expected - got)) < 1e-10


# --- 3. softmax readout: R_exp is the second-order term ------------------------


def softmax_gap_ratio(scale, q=0.4):
  p = hidden_params(
    jax.random.key(4), d_in=3, d_h=6, d_out=5, readout_scale=scale
  )
  x = jax.random.normal(jax.random.key(5), (2, 3))  # 2 x 6 = 12 sites: 4096
  y = jnp.array([1, 3])
  expected, _ = expected_dropout_loss(
    hidden_model, p, x, y, "h", q, "softmax_cross_entropy"
  )
  gap = expected - clean_loss(hidden_model, p, x, y, "softmax_cross_entropy")
  r = dropjax.explicit_regularizer(
    hidden_model, p, x, rates=q, estimator="gauss_newton"
  )
  return float(gap / r)


def test_softmax_explicit_regularizer_converges_as_readout_shrinks():
  """(E_mask[L̄] - L̄) / R_exp -> 1 as the readout shrinks."""
  ratios = {s: softmax_gap_ratio(s) for s in (1.0, 0.3, 0.1, 0.03)}
  errors = {s: abs(r - 1) for s, r in ratios.items()}
  assert errors[0.03] < 0.01, ratios
  assert errors[0.03] < errors[0.3] and errors[0.1] < errors[1.0], ratios


# --- 4. the sampled-label (Fisher) estimator ------------------------------------


def sampled_expectation(apply, params, x, q, *, grad=False):
  """E_ŷ of the sampled-label R_exp (or of its gradient), by enumeration."""
  rates = S.resolve_rates(q, S.site_shapes(apply, params, x))
  return _helpers.sampled_label_expectation(apply, params, x, rates, grad=grad)


@pytest.mark.parametrize("q", [0.3, 0.5])
def test_sampled_label_estimator_is_unbiased(q):
  """Σ_ŷ p(ŷ) R_sampled(ŷ) = R_gauss_newton."""
  p = hidden_params(jax.random.key(7), d_h=4, d_out=4)
  x = jax.random.normal(jax.random.key(8), (3, 3))  # 4**3 label vectors
  expect = sampled_expectation(hidden_model, p, x, q)
  gn = dropjax.explicit_regularizer(
    hidden_model, p, x, rates=q, estimator="gauss_newton"
  )
  assert abs(float(expect - gn)) < 1e-10


def test_sampled_label_gradient_is_gauss_newton_with_constant_hessian():
  """E_ŷ[∇ R_sampled] = ∇ R_GN with stop_gradient(H) ≠ full ∇ R_GN."""
  p = hidden_params(jax.random.key(9), d_h=4, d_out=3)
  x = jax.random.normal(jax.random.key(10), (2, 3))
  q = 0.4
  expect = sampled_expectation(hidden_model, p, x, q, grad=True)

  def gn(params, hessian_gradient):
    lin = S.linearize_sites(hidden_model, params, x)
    return ex.explicit_from_linearization(
      lin,
      S.resolve_rates(q, lin.activations),
      estimator="gauss_newton",
      hessian_gradient=hessian_gradient,
    )

  g_const = jax.grad(gn)(p, False)
  g_full = jax.grad(gn)(p, True)
  flat = lambda t: jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)])
  assert float(jnp.max(jnp.abs(flat(expect) - flat(g_const)))) < 1e-10
  assert float(jnp.max(jnp.abs(flat(expect) - flat(g_full)))) > 1e-3


def test_sampled_label_path_uses_the_sampled_targets():
  """The keyed estimator is the fixed-label formula at ŷ = sample(key)."""
  p = hidden_params(jax.random.key(11), d_out=4)
  x = jax.random.normal(jax.random.key(12), (6, 3))
  key = jax.random.key(13)
  r = dropjax.explicit_regularizer(hidden_model, p, x, rates=0.3, key=key)
  out = hidden_model(p, x, S.identity_sites)
  y_hat = L.sample_targets("softmax_cross_entropy", key, out)
  r_fixed = dropjax.explicit_regularizer(
    hidden_model, p, x, rates=0.3, estimator="true_label", y=y_hat
  )
  chex.assert_trees_all_close(r, r_fixed, rtol=1e-12)


def test_sampled_label_normalisation_when_a_site_feeds_several_tokens():
  """E_ŷ[N Σ (v ⊙ ∂L̃/∂v)²] = Σ v² diag(GN(L̄)) for coupled positions."""
  k = jax.random.split(jax.random.key(14), 3)
  params = {
    "w1": jax.random.normal(k[0], (2, 3)),
    "w2": jax.random.normal(k[1], (3, 3)),
  }
  x = jax.random.normal(k[2], (1, 3, 2))  # 3 tokens
  expect = sampled_expectation(recurrent_model, params, x, 0.4)
  gn = dropjax.explicit_regularizer(
    recurrent_model, params, x, rates=0.4, estimator="gauss_newton"
  )
  assert abs(float(expect - gn)) < 1e-10


def test_gauss_newton_is_exact_for_coupled_positions_with_squared_loss():
  """The per-position GN oracle: exact against mask enumeration, linear readout."""
  k = jax.random.split(jax.random.key(15), 4)
  params = {
    "w1": jax.random.normal(k[0], (2, 3)),
    "w2": jax.random.normal(k[1], (3, 2)),
  }
  x = jax.random.normal(k[2], (1, 3, 2))  # 9 elements
  y = jax.random.normal(k[3], (1, 3, 2))
  q = 0.3
  expected, _ = expected_dropout_loss(
    recurrent_model, params, x, y, "emb", q, "squared_error"
  )
  r = dropjax.explicit_regularizer(
    recurrent_model,
    params,
    x,
    rates=q,
    estimator="gauss_newton",
    loss="squared_error",
  )
  got = clean_loss(recurrent_model, params, x, y, "squared_error") + r
  assert abs(float(expected - got)) < 1e-10


def test_identity_hessian_estimator_is_unbiased_over_all_signs():
  """E_s of the Hutchinson estimator = (h/N) Σ v² diag(Σ_t J_tᵀ J_t)."""
  k = jax.random.split(jax.random.key(16), 2)
  params = {
    "w1": jax.random.normal(k[0], (2, 2)),
    "w2": jax.random.normal(k[1], (2, 3)),
  }
  x = jax.random.normal(jax.random.key(17), (1, 3, 2))  # 6 elements
  q = 0.4
  lin = S.linearize_sites(recurrent_model, params, x)
  v = lin.activations["emb"]
  signs = 2 * all_masks(v.shape) - 1

  def r_for(s):
    c = q / (2 * (1 - q))
    d = lin.jvp({"emb": jnp.sqrt(c) * s * v})
    return jnp.sum(d**2) / 3 / 3  # h = 1/K, N = 3

  expect = jnp.mean(jax.vmap(r_for)(signs))
  # Squared-error GN equals Σ v² diag(JᵀJ)/N; cross-entropy's ablation is 1/K
  # of it.
  gn_se = dropjax.explicit_regularizer(
    recurrent_model,
    params,
    x,
    rates=q,
    estimator="gauss_newton",
    loss="squared_error",
  )
  assert abs(float(expect - gn_se / 3)) < 1e-10
  # And the library's keyed estimator is one draw of exactly this formula.
  r = dropjax.explicit_regularizer(
    recurrent_model,
    params,
    x,
    rates=q,
    estimator="identity_hessian",
    key=jax.random.key(0),
  )
  values = jax.vmap(r_for)(signs)
  assert float(jnp.min(jnp.abs(values - r))) < 1e-10


def test_squared_error_sampled_targets_estimate_gauss_newton():
  """Gaussian sampled targets: Monte Carlo mean within 4 standard errors."""
  p = hidden_params(jax.random.key(18), d_out=3)
  x = jax.random.normal(jax.random.key(19), (4, 3))
  f = lambda key: dropjax.explicit_regularizer(
    hidden_model, p, x, rates=0.4, key=key, loss="squared_error"
  )
  vals = jax.vmap(f)(jax.random.split(jax.random.key(20), 4000))
  gn = dropjax.explicit_regularizer(
    hidden_model,
    p,
    x,
    rates=0.4,
    estimator="gauss_newton",
    loss="squared_error",
  )
  se = jnp.std(vals) / np.sqrt(vals.size)
  assert abs(float(jnp.mean(vals) - gn)) < 4 * float(se)


# --- estimators: curvature propagation, num_samples, per-site identity -----


def _mlp_lin(seed=30, batch=1):
  from _helpers import init, mlp

  params = init(jax.random.key(seed))
  x = jax.random.normal(jax.random.key(seed + 1), (batch, 4))
  lin = S.linearize_sites(mlp, params, x)
  return lin, S.resolve_rates({"h1": 0.3, "h2": 0.5}, lin.activations)


def test_curvature_propagation_is_unbiased_over_every_sign_pattern():
  """E_r of N Σ c (v ⊙ w)², w the VJP of (1/N) F r, over all 2**(NK) sign
  vectors r, equals the exact Gauss–Newton term (two sites, element-wise);
  the keyed estimator and its per-site terms are one of those draws."""
  lin, rates = _mlp_lin(batch=2)  # N = 2, K = 3: 64 sign vectors
  factors = L.hessian_factors("softmax_cross_entropy", lin.outputs)
  n = 2
  signs = 2 * all_masks(lin.outputs.shape) - 1

  def estimate(r):
    g = lin.vjp(jnp.einsum("...c,...ck->...k", r, factors) / n)
    return n * ex.weighted_squares(
      lin.activations,
      g,
      {k: ex.taylor_coefficient(q) for k, q in rates.items()},
    )

  values = jax.vmap(estimate)(signs)
  gn = ex.explicit_from_linearization(lin, rates, estimator="gauss_newton")
  assert abs(float(jnp.mean(values) - gn)) < 1e-12
  key = jax.random.key(4)
  got = ex.explicit_from_linearization(
    lin, rates, estimator="curvature_propagation", key=key
  )
  assert float(jnp.min(jnp.abs(values - got))) < 1e-12
  terms = ex.explicit_terms(
    lin, rates, estimator="curvature_propagation", key=key
  )
  np.testing.assert_allclose(sum(terms.values()), got, rtol=1e-12)


@pytest.mark.parametrize(
  "estimator",
  [
    "sampled_label",
    "curvature_propagation",
    "identity_hessian",
    "identity_hessian_per_site",
  ],
)
def test_num_samples_is_the_mean_of_independent_draws(estimator):
  """num_samples = S equals the mean of S single draws at split(key, S)."""
  lin, rates = _mlp_lin(batch=3)
  key = jax.random.key(8)

  def draw(k, s=1):
    return ex.explicit_from_linearization(
      lin, rates, estimator=estimator, key=k, num_samples=s
    )

  singles = jnp.stack([draw(k) for k in jax.random.split(key, 5)])
  np.testing.assert_allclose(draw(key, 5), jnp.mean(singles), rtol=1e-12)
  assert float(jnp.std(singles)) > 0  # the draws do differ
  with pytest.raises(ValueError, match="num_samples"):
    draw(key, 0)


def test_num_samples_in_the_objective_and_bad_values():
  from _helpers import BATCH, PARAMS, mlp

  obj = dropjax.objectives.explicit(mlp, rates=0.3, num_samples=4)
  _, aux = obj(PARAMS, BATCH, jax.random.key(0))
  lin = S.linearize_sites(mlp, PARAMS, BATCH[0])
  want = ex.explicit_from_linearization(
    lin,
    S.resolve_rates(0.3, lin.activations),
    key=jax.random.split(jax.random.key(0))[0],
    num_samples=4,
  )
  np.testing.assert_allclose(aux["explicit"], want, rtol=1e-12)
  for bad in (0, 1.5, True):
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
      dropjax.objectives.explicit(mlp, rates=0.3, num_samples=bad)


def test_identity_hessian_per_site_has_the_joint_mean_and_less_variance():
  """Over every sign pattern of two sites (2**11): the joint JVP and one JVP
  per site have the same mean, and the per-site form's variance is lower
  (the joint form adds the zero-mean cross-site products)."""
  lin, rates = _mlp_lin(batch=1)
  acts = lin.activations
  c = {k: ex.taylor_coefficient(q) for k, q in rates.items()}
  h = 1.0 / 3
  sizes = {k: v.size for k, v in acts.items()}
  patterns = 2 * all_masks((sum(sizes.values()),)) - 1

  def tangents(sv):
    out, i = {}, 0
    for k, v in acts.items():
      s = sv[i : i + sizes[k]].reshape(v.shape)
      out[k] = jnp.sqrt(c[k]) * s * v
      i += sizes[k]
    return out

  def joint(sv):
    return h * jnp.sum(lin.jvp(tangents(sv)) ** 2)

  def per_site(sv):
    t = tangents(sv)
    total = 0.0
    for k in acts:
      only = {m: a if m == k else jnp.zeros_like(a) for m, a in t.items()}
      total = total + h * jnp.sum(lin.jvp(only) ** 2)
    return total

  vj = jax.vmap(joint)(patterns)
  vp = jax.vmap(per_site)(patterns)
  assert abs(float(jnp.mean(vj) - jnp.mean(vp))) < 1e-12
  assert float(jnp.std(vp)) < float(jnp.std(vj))
  key = jax.random.key(9)
  for estimator, values in (
    ("identity_hessian", vj),
    ("identity_hessian_per_site", vp),
  ):
    got = ex.explicit_from_linearization(
      lin, rates, estimator=estimator, key=key
    )
    assert float(jnp.min(jnp.abs(values - got))) < 1e-12, estimator
  terms = ex.explicit_terms(
    lin, rates, estimator="identity_hessian_per_site", key=key
  )
  assert list(terms) == ["h1", "h2"]
