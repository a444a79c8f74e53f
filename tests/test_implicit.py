"""Exact derivation tests for the implicit regularizer (dropjax.implicit).

All in float64 (the ``x64`` fixture). Expectations over Rademacher signs and
dropout masks are computed by enumerating every outcome. Reference: Wei,
Kakade & Ma, "The Implicit and Explicit Regularization Effects of Dropout",
arXiv:2002.12915 (the implicit regularizer, ``taylor_fo`` in the authors'
code).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropjax
from dropjax import implicit as im
from dropjax import losses as L
from dropjax import sites as S

from _helpers import all_masks
from _helpers import masks_and_probabilities
from _helpers import flat_grad
from _helpers import hidden_model
from _helpers import hidden_params
from _helpers import linearised_dropout_noise

pytestmark = pytest.mark.usefixtures("x64")


@pytest.mark.parametrize("q", [0.2, 0.5])
def test_implicit_noise_mean_zero_and_covariance_exact(q):
  """Over all sign patterns: E[R_imp] = 0 and Cov(∇R_imp) = q/(1-q) Σ_j a_j a_jᵀ.

  Also equals the covariance of the linearised Bernoulli dropout noise
  ∇_θ <∂L̄/∂v, v ⊙ eps> enumerated over every mask.
  """
  p = hidden_params(jax.random.key(21), d_h=3, d_out=3)
  x = jax.random.normal(jax.random.key(22), (2, 3))  # 6 elements: 64 signs
  y = jnp.array([0, 2])
  lin0 = S.linearize_sites(hidden_model, p, x)
  shape = lin0.activations["h"].shape
  sign_patterns = 2 * all_masks(shape) - 1

  def r_imp(params, s):
    lin = S.linearize_sites(hidden_model, params, x)
    return im.implicit_from_linearization(
      lin, S.resolve_rates(q, lin.activations), y=y, key=None, signs={"h": s}
    )

  values = jax.vmap(r_imp, in_axes=(None, 0))(p, sign_patterns)
  grads = jax.vmap(lambda s: flat_grad(lambda pp: r_imp(pp, s), p))(
    sign_patterns
  )
  assert float(jnp.max(jnp.abs(jnp.mean(values)))) < 1e-12
  assert float(jnp.max(jnp.abs(jnp.mean(grads, axis=0)))) < 1e-12
  cov_imp = grads.T @ grads / grads.shape[0]

  # a_j = ∇_θ (v_j ∂L̄/∂v_j), one row per site element j.
  def va(params):
    lin = S.linearize_sites(hidden_model, params, x)
    g = lin.vjp(L.loss_cotangent("softmax_cross_entropy", lin.outputs, y))
    return (lin.activations["h"] * g["h"]).ravel()

  a = jax.jacobian(va)(p)
  a = jnp.concatenate(
    [l.reshape(l.shape[0], -1) for l in jax.tree.leaves(a)], axis=1
  )
  cov_theory = q / (1 - q) * a.T @ a
  assert float(jnp.max(jnp.abs(cov_imp - cov_theory))) < 1e-10

  # The linearised dropout noise, enumerated over Bernoulli masks.
  masks, probs = masks_and_probabilities(shape, q)
  mean, cov_drop = linearised_dropout_noise(
    hidden_model, p, x, y, "h", q, masks, probs
  )
  assert float(jnp.max(jnp.abs(mean))) < 1e-12
  assert float(jnp.max(jnp.abs(cov_imp - cov_drop))) < 1e-10


def test_implicit_keyed_draw_is_one_of_the_enumerated_patterns():
  p = hidden_params(jax.random.key(23), d_h=3, d_out=3)
  x = jax.random.normal(jax.random.key(24), (2, 3))
  y = jnp.array([1, 2])
  r = dropjax.implicit_regularizer(
    hidden_model, p, x, y, rates=0.3, key=jax.random.key(1)
  )
  lin = S.linearize_sites(hidden_model, p, x)
  signs = im.rademacher_signs(jax.random.key(1), lin.activations)
  r2 = im.implicit_from_linearization(
    lin, S.resolve_rates(0.3, lin.activations), y=y, key=None, signs=signs
  )
  chex.assert_trees_all_close(r, r2, rtol=1e-12)
  chex.assert_shape(signs["h"], lin.activations["h"].shape)
  assert set(np.unique(np.asarray(signs["h"]))) <= {-1.0, 1.0}
