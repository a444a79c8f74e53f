"""Losses, sampled targets and Hessian factors (dropjax.losses).

All in float64 (the ``x64`` fixture). The Fisher identity is the one behind
the sampled-label estimator of Wei, Kakade & Ma, arXiv:2002.12915.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dropjax import losses as L

pytestmark = pytest.mark.usefixtures("x64")


def test_fisher_identity_for_cross_entropy():
  """E_ŷ[(p - e_ŷ)(p - e_ŷ)ᵀ] = diag(p) - ppᵀ = ∇²_z CE."""
  z = jax.random.normal(jax.random.key(6), (5,))
  p = jax.nn.softmax(z)
  e = jnp.eye(5)
  outer = jnp.einsum("c,ci,cj->ij", p, p - e, p - e)
  hess = jax.hessian(
    lambda z: L.per_position_loss(
      "softmax_cross_entropy", z[None], jnp.array([2])
    )[0]
  )(z)
  np.testing.assert_allclose(outer, jnp.diag(p) - jnp.outer(p, p), atol=1e-12)
  np.testing.assert_allclose(hess, jnp.diag(p) - jnp.outer(p, p), atol=1e-12)
  f = L.hessian_factors("softmax_cross_entropy", z[None])[0]
  np.testing.assert_allclose(f.T @ f, hess, atol=1e-12)


def test_losses_cotangents_and_squared_error_hessian_match_their_formulas():
  z = jax.random.normal(jax.random.key(0), (2, 3, 4))  # 6 positions
  labels = jnp.array([[0, 3, 1], [2, 2, 0]])
  targets = jax.random.normal(jax.random.key(1), (2, 3, 4))
  assert L.num_positions(z) == 6
  # Cross-entropy: -log softmax(z)[y]; its mean's cotangent is (p - e_y)/N.
  ce = L.per_position_loss("softmax_cross_entropy", z, labels)
  chex.assert_shape(ce, (2, 3))
  logp = jax.nn.log_softmax(z, axis=-1)
  want = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  chex.assert_trees_all_close(ce, want, rtol=1e-12)
  chex.assert_trees_all_close(
    L.mean_loss("softmax_cross_entropy", z, labels), jnp.mean(want), rtol=1e-12
  )
  chex.assert_trees_all_close(
    L.loss_cotangent("softmax_cross_entropy", z, labels),
    (jnp.exp(logp) - jax.nn.one_hot(labels, 4)) / 6,
    atol=1e-12,
  )
  # Squared error: 0.5 ||f - y||², cotangent (f - y)/N, Hessian I = Fᵀ F.
  se = L.per_position_loss("squared_error", z, targets)
  chex.assert_trees_all_close(
    se, 0.5 * jnp.sum((z - targets) ** 2, axis=-1), rtol=1e-12
  )
  chex.assert_trees_all_close(
    L.loss_cotangent("squared_error", z, targets), (z - targets) / 6, atol=1e-12
  )
  f = L.hessian_factors("squared_error", z)
  chex.assert_shape(f, (2, 3, 4, 4))
  hess = jax.hessian(
    lambda o: L.per_position_loss("squared_error", o[None], targets[0, :1])[0]
  )(z[0, 0])
  chex.assert_trees_all_close(f[0, 0].T @ f[0, 0], hess, atol=1e-12)
  assert L.identity_hessian_scale("softmax_cross_entropy", 4) == 0.25
  assert L.identity_hessian_scale("squared_error", 4) == 1.0


def test_sampled_targets_have_the_target_shapes_and_no_gradient():
  z = jax.random.normal(jax.random.key(2), (5, 3))
  key = jax.random.key(3)
  y = L.sample_targets("softmax_cross_entropy", key, z)
  chex.assert_shape(y, (5,))
  assert jnp.issubdtype(y.dtype, jnp.integer)
  assert bool(jnp.all((y >= 0) & (y < 3)))
  t = L.sample_targets("squared_error", key, z)
  chex.assert_shape(t, (5, 3))
  g = jax.grad(lambda o: jnp.sum(L.sample_targets("squared_error", key, o)))(z)
  chex.assert_trees_all_equal(g, jnp.zeros_like(z))


def test_unknown_loss_and_bad_target_shapes_raise():
  z = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="softmax_cross_entropy.*squared_error"):
    L.check_loss("hinge")
  with pytest.raises(ValueError, match="int labels of shape"):
    L.per_position_loss("softmax_cross_entropy", z, jnp.zeros((4, 3), int))
  with pytest.raises(ValueError, match="float targets of shape"):
    L.per_position_loss("squared_error", z, jnp.zeros((4,)))


def test_out_of_range_labels_are_documented_and_checked():
  """Inside jit no error is possible: a label >= K gives NaN, -1 wraps to
  K - 1 (as the module docstring says); check_labels catches both."""
  z = jnp.array([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]])
  per = L.per_position_loss("softmax_cross_entropy", z, jnp.array([3, -1]))
  assert np.isnan(float(per[0]))
  np.testing.assert_allclose(
    float(per[1]),
    float(
      L.per_position_loss("softmax_cross_entropy", z[1:], jnp.array([2]))[0]
    ),
  )
  L.check_labels(np.array([0, 1, 2]), 3)
  with pytest.raises(ValueError, match=r"lie in \[0, 3\].*3 outputs"):
    L.check_labels(np.array([0, 3]), 3)
  with pytest.raises(ValueError, match=r"lie in \[-1, 2\]"):
    L.check_labels(np.array([-1, 2]), 3)
  with pytest.raises(ValueError, match="must be integers"):
    L.check_labels(np.array([0.5]), 3)
