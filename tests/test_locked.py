"""Exact tests of the locked-mask analytic regularizers (``broadcast_axes``).

With locked (time-shared) dropout one mask value multiplies a whole group of
elements, so the second-order term of the expected loss keeps the cross terms
inside each group, and the gradient noise has one random sign per group. All
in float64; expectations are computed by enumerating every locked mask and
every sign pattern.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropjax
from dropjax import explicit as ex
from dropjax import implicit as im
from dropjax import losses as L
from dropjax import sites as S

from _helpers import clean_loss
from _helpers import flat_grad
from _helpers import linearised_dropout_noise
from _helpers import recurrent_model

pytestmark = pytest.mark.usefixtures("x64")

B, T, D, H = 2, 3, 2, 2  # emb is [B, T, H]: 4 groups of 3 time steps


def _params_and_data(seed, k_out=2):
  k = jax.random.split(jax.random.key(seed), 4)
  params = {
    "w1": jax.random.normal(k[0], (D, H)),
    "w2": jax.random.normal(k[1], (H, k_out)),
  }
  x = jax.random.normal(k[2], (B, T, D))
  return params, x, k[3]


def _locked_masks(q):
  """Every mask of shape [B, 1, H] (one value per sequence and unit, shared
  over time) and its probability."""
  groups = B * H
  bits = np.array(list(itertools.product([0.0, 1.0], repeat=groups)))
  keep = bits.sum(1)
  probs = (1 - q) ** keep * q ** (groups - keep)
  return jnp.asarray(bits.reshape(-1, B, 1, H)), jnp.asarray(probs)


def _sign_patterns(shape):
  size = int(np.prod(shape))
  bits = np.array(list(itertools.product([-1.0, 1.0], repeat=size)))
  return jnp.asarray(bits.reshape((-1,) + tuple(shape)))


@pytest.mark.parametrize("q", [0.3, 0.5])
def test_locked_explicit_regularizer_is_exact_for_a_linear_site(q):
  """E over locked masks of L̄ = L̄ + R_exp(broadcast_axes=(1,)) to 1e-12,
  for a squared loss and a model linear in a [B, T, H] site whose time steps
  feed each other; the element-wise R_exp misses the cross terms."""
  params, x, ky = _params_and_data(0)
  y = jax.random.normal(ky, (B, T, 2))
  masks, probs = _locked_masks(q)

  def loss_for(m):
    sites = lambda n, h: h * m / (1 - q)
    return L.mean_loss("squared_error", recurrent_model(params, x, sites), y)

  expected = jnp.sum(probs * jax.vmap(loss_for)(masks))
  clean = clean_loss(recurrent_model, params, x, y, "squared_error")

  def r_exp(axes):
    return dropjax.explicit_regularizer(
      recurrent_model,
      params,
      x,
      rates=q,
      estimator="gauss_newton",
      loss="squared_error",
      broadcast_axes=axes,
    )

  locked = r_exp((1,))
  assert abs(float(expected - (clean + locked))) < 1e-12
  np.testing.assert_allclose(r_exp({"emb": (1,)}), locked, rtol=1e-14)
  np.testing.assert_allclose(r_exp((-2,)), locked, rtol=1e-14)
  elementwise = r_exp(())
  assert abs(float(expected - (clean + elementwise))) > 1e-3


@pytest.mark.parametrize("estimator", ["sampled_label", "true_label"])
def test_locked_label_estimators_sum_over_the_group_before_squaring(estimator):
  """For a fixed label vector the locked estimator is
  N Σ_site c Σ_groups (Σ_{j∈g} v_j ∂L̃/∂v_j)², written out by hand here."""
  params, x, _ = _params_and_data(1, k_out=3)
  y = jnp.array([[0, 2, 1], [1, 1, 0]])
  q = 0.4
  key = jax.random.key(3)
  lin = S.linearize_sites(recurrent_model, params, x)
  if estimator == "sampled_label":
    targets = L.sample_targets("softmax_cross_entropy", key, lin.outputs)
  else:
    targets = y
  g = lin.vjp(L.loss_cotangent("softmax_cross_entropy", lin.outputs, targets))
  v = lin.activations["emb"]
  by_hand = (
    B * T * q / (2 * (1 - q)) * jnp.sum(jnp.sum(v * g["emb"], axis=1) ** 2)
  )
  got = dropjax.explicit_regularizer(
    recurrent_model,
    params,
    x,
    rates=q,
    key=key,
    y=y,
    estimator=estimator,
    broadcast_axes=(1,),
  )
  np.testing.assert_allclose(got, by_hand, rtol=1e-13)


def test_locked_sampled_label_is_unbiased_over_every_label_vector():
  """Σ_ŷ p(ŷ) R_sampled(ŷ) = R_gauss_newton, both locked over time."""
  params, x, _ = _params_and_data(2, k_out=2)
  x = x[:1]  # B = 1: 2**3 label vectors of 3 positions
  q = 0.4
  lin = S.linearize_sites(recurrent_model, params, x)
  rates = S.resolve_rates(q, lin.activations)
  axes = {"emb": (1,)}
  labels = jnp.asarray(list(itertools.product(range(2), repeat=T))).reshape(
    -1, 1, T
  )
  logp = jax.nn.log_softmax(lin.outputs, -1)
  probs = jnp.exp(
    jnp.take_along_axis(logp[None], labels[..., None], -1)[..., 0].sum((1, 2))
  )
  vals = jax.vmap(
    lambda yy: ex.explicit_from_linearization(
      lin, rates, estimator="true_label", y=yy, broadcast_axes=axes
    )
  )(labels)
  gn = ex.explicit_from_linearization(
    lin, rates, estimator="gauss_newton", broadcast_axes=axes
  )
  gn_elementwise = ex.explicit_from_linearization(
    lin, rates, estimator="gauss_newton"
  )
  assert abs(float(probs @ vals - gn)) < 1e-12
  assert abs(float(gn - gn_elementwise)) > 1e-3


def test_locked_curvature_propagation_is_unbiased_over_every_sign_pattern():
  """E_r[N Σ c (Σ_{j∈g} v_j w_j)²] with w the VJP of (1/N) F r equals the
  locked Gauss–Newton term; the keyed estimator is one of those draws."""
  params, x, _ = _params_and_data(3, k_out=2)
  x = x[:1]  # N = 3 positions, K = 2: 2**6 sign patterns
  q = 0.3
  lin = S.linearize_sites(recurrent_model, params, x)
  rates = S.resolve_rates(q, lin.activations)
  axes = {"emb": (1,)}
  n = T
  factors = L.hessian_factors("softmax_cross_entropy", lin.outputs)
  c = q / (2 * (1 - q))
  v = lin.activations["emb"]

  def estimate(r):
    w = lin.vjp(jnp.einsum("...c,...ck->...k", r, factors) / n)["emb"]
    return n * c * jnp.sum(jnp.sum(v * w, axis=1) ** 2)

  values = jax.vmap(estimate)(_sign_patterns(lin.outputs.shape))
  gn = ex.explicit_from_linearization(
    lin, rates, estimator="gauss_newton", broadcast_axes=axes
  )
  assert abs(float(jnp.mean(values) - gn)) < 1e-12
  got = ex.explicit_from_linearization(
    lin,
    rates,
    estimator="curvature_propagation",
    key=jax.random.key(5),
    broadcast_axes=axes,
  )
  assert float(jnp.min(jnp.abs(values - got))) < 1e-12


def test_locked_identity_hessian_is_unbiased_over_every_group_sign():
  """One sign per group: E_s = (h/N) Σ_g c ||J u_g||², which for a model
  linear in the site is h times the squared-error locked Gauss–Newton term;
  the keyed estimator is one of the enumerated draws."""
  params, x, _ = _params_and_data(4, k_out=3)
  q = 0.4
  lin = S.linearize_sites(recurrent_model, params, x)
  v = lin.activations["emb"]
  c = q / (2 * (1 - q))
  n, h = B * T, 1.0 / 3

  def estimate(s):  # s: [B, 1, H], broadcast over time
    d = lin.jvp({"emb": jnp.sqrt(c) * s * v})
    return h * jnp.sum(d**2) / n

  values = jax.vmap(estimate)(_sign_patterns((B, 1, H)))
  gn_se = dropjax.explicit_regularizer(
    recurrent_model,
    params,
    x,
    rates=q,
    estimator="gauss_newton",
    loss="squared_error",
    broadcast_axes=(1,),
  )
  assert abs(float(jnp.mean(values) - h * gn_se)) < 1e-12
  for estimator in ("identity_hessian", "identity_hessian_per_site"):
    got = dropjax.explicit_regularizer(
      recurrent_model,
      params,
      x,
      rates=q,
      key=jax.random.key(6),
      estimator=estimator,
      broadcast_axes=(1,),
    )
    assert float(jnp.min(jnp.abs(values - got))) < 1e-12, estimator


@pytest.mark.parametrize("q", [0.25, 0.5])
def test_locked_implicit_covariance_is_the_locked_dropout_covariance(q):
  """Over every group-sign pattern, ∇R_imp(broadcast_axes=(1,)) has mean 0
  and the covariance of the linearised locked-dropout noise, enumerated over
  every locked mask; the element-wise R_imp's covariance differs."""
  params, x, _ = _params_and_data(5, k_out=3)
  y = jnp.array([[0, 2, 1], [1, 1, 0]])

  def r_imp(p, s):
    lin = S.linearize_sites(recurrent_model, p, x)
    return im.implicit_from_linearization(
      lin, S.resolve_rates(q, lin.activations), y=y, key=None, signs={"emb": s}
    )

  def noise_cov(shape):
    patterns = _sign_patterns(shape)
    grads = jax.vmap(lambda s: flat_grad(lambda p: r_imp(p, s), params))(
      patterns
    )
    assert float(jnp.max(jnp.abs(jnp.mean(grads, 0)))) < 1e-12
    return grads.T @ grads / len(patterns)

  cov_locked = noise_cov((B, 1, H))

  masks, probs = _locked_masks(q)
  mean, cov_drop = linearised_dropout_noise(
    recurrent_model, params, x, y, "emb", q, masks, probs
  )
  assert float(jnp.max(jnp.abs(mean))) < 1e-12
  assert float(jnp.max(jnp.abs(cov_locked - cov_drop))) < 1e-11
  # The keyed signs are one per group.
  lin = S.linearize_sites(recurrent_model, params, x)
  signs = im.rademacher_signs(jax.random.key(0), lin.activations, {"emb": (1,)})
  assert signs["emb"].shape == (B, 1, H)
  # Element-wise signs (2**12 patterns) give another covariance.
  cov_elementwise = noise_cov((B, T, H))
  assert abs(float(jnp.trace(cov_elementwise) / jnp.trace(cov_drop)) - 1) > 0.05


def test_objectives_take_broadcast_axes_for_the_analytic_terms():
  """explicit_implicit(broadcast_axes=...) adds the locked R_exp and R_imp:
  with the exact estimator its explicit term is explicit_regularizer's, and
  its implicit term is implicit_regularizer's at the same key."""
  params, x, _ = _params_and_data(6, k_out=3)
  y = jnp.array([[0, 2, 1], [1, 1, 0]])
  key = jax.random.key(7)
  obj = dropjax.objectives.explicit_implicit(
    recurrent_model, rates=0.3, estimator="gauss_newton", broadcast_axes=(1,)
  )
  _, aux = obj(params, (x, y), key)
  r_exp = dropjax.explicit_regularizer(
    recurrent_model,
    params,
    x,
    rates=0.3,
    estimator="gauss_newton",
    broadcast_axes=(1,),
  )
  r_imp = dropjax.implicit_regularizer(
    recurrent_model,
    params,
    x,
    y,
    rates=0.3,
    key=jax.random.split(key)[1],
    broadcast_axes=(1,),
  )
  np.testing.assert_allclose(aux["explicit"], r_exp, rtol=1e-13)
  np.testing.assert_allclose(aux["implicit"], r_imp, rtol=1e-13)
  with pytest.raises(KeyError, match="unknown dropout site"):
    dropjax.objectives.explicit(
      recurrent_model, rates=0.3, broadcast_axes={"nope": (1,)}
    )(params, (x, y), key)
  with pytest.raises(TypeError, match="broadcast_axes must be"):
    dropjax.objectives.explicit(recurrent_model, rates=0.3, broadcast_axes="t")
  with pytest.raises(ValueError, match="out of range"):
    dropjax.explicit_regularizer(
      recurrent_model, params, x, rates=0.3, key=key, broadcast_axes=(3,)
    )
