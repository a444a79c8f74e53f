"""Statistics and semantics of every dropout noise.

Monte Carlo tolerances are 5 standard errors of the estimated quantity (a
false alarm rate below 1e-6 per check).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropjax

N = 200_000


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_bernoulli_mask_mean_and_variance(q):
  x = jnp.ones((N,))
  y = dropjax.dropout(jax.random.key(0), x, q)
  keep = np.asarray(y != 0)
  se_keep = np.sqrt(q * (1 - q) / N)
  assert abs(keep.mean() - (1 - q)) < 5 * se_keep
  # Kept values are exactly 1/(1-q); the noise has mean 1 and variance q/(1-q).
  np.testing.assert_allclose(np.asarray(y)[keep], 1 / (1 - q), rtol=1e-6)
  var = q / (1 - q)
  assert abs(float(y.mean()) - 1) < 5 * np.sqrt(var / N)
  # Var of the sample variance of a scaled Bernoulli: (mu4 - var²)/N (zero
  # at q = 0.5, where the noise is ±1: then only the estimated mean and
  # float32 summation move it, hence the small absolute slack).
  mu4 = (1 / (1 - q) - 1) ** 4 * (1 - q) + q
  tol = 5 * np.sqrt((mu4 - var**2) / N) + 5 * var / N + 1e-5
  assert abs(float(y.var()) - var) < tol


@pytest.mark.parametrize("q", [0.2, 0.6])
def test_gaussian_dropout_mean_and_variance(q):
  y = dropjax.gaussian_dropout(jax.random.key(1), jnp.ones((N,)), q)
  var = q / (1 - q)
  assert abs(float(y.mean()) - 1) < 5 * np.sqrt(var / N)
  assert abs(float(y.var()) - var) < 5 * np.sqrt(2 * var**2 / N)


def test_locked_mask_is_constant_along_broadcast_axes():
  x = jnp.ones((8, 50, 16))  # [batch, time, features]
  y = dropjax.dropout(jax.random.key(2), x, 0.5, broadcast_axes=(1,))
  chex.assert_shape(y, x.shape)
  assert bool(jnp.all(y == y[:, :1, :]))
  assert 0 < float((y == 0).mean()) < 1
  # Negative axes work the same.
  y2 = dropjax.dropout(jax.random.key(2), x, 0.5, broadcast_axes=(-2,))
  np.testing.assert_array_equal(y, y2)


def test_rate_zero_is_identity_and_rates_near_one_stay_finite():
  x = jax.random.normal(jax.random.key(4), (1000,))
  np.testing.assert_array_equal(dropjax.dropout(jax.random.key(5), x, 0.0), x)
  np.testing.assert_array_equal(
    dropjax.gaussian_dropout(jax.random.key(5), x, 0.0), x
  )
  for q in (1 - 1e-6, 0.999999):
    for f in (dropjax.dropout, dropjax.gaussian_dropout):
      chex.assert_tree_all_finite(f(jax.random.key(6), x, q))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_rates_raise(bad):
  x = jnp.ones((4,))
  with pytest.raises(ValueError, match="drop probability"):
    dropjax.dropout(jax.random.key(0), x, bad)
  with pytest.raises(ValueError, match="drop probability"):
    dropjax.gaussian_dropout(jax.random.key(0), x, bad)


def test_bad_broadcast_axis_raises():
  with pytest.raises(ValueError, match="out of range"):
    dropjax.dropout(
      jax.random.key(0), jnp.ones((2, 3)), 0.5, broadcast_axes=(2,)
    )


@pytest.mark.parametrize("gamma,alpha", [(0.5, 0.5), (0.75, 0.66), (0.9, 1.0)])
def test_targeted_weight_dropout_touches_only_lowest_gamma(gamma, alpha):
  fan_in, n_out = 40, 300
  w = jax.random.normal(jax.random.key(7), (fan_in, n_out))
  out = dropjax.targeted_weight_dropout(
    jax.random.key(8), w, gamma=gamma, alpha=alpha
  )
  dropped = np.asarray(out == 0)
  ranks = np.argsort(np.argsort(np.abs(np.asarray(w)), axis=0), axis=0)
  n_cand = int(np.floor(gamma * fan_in))
  cand = ranks < n_cand
  assert not np.any(dropped & ~cand)  # only candidates dropped
  np.testing.assert_array_equal(
    np.asarray(out)[~dropped], np.asarray(w)[~dropped]
  )  # no rescaling
  frac = dropped[cand].mean()
  n = cand.sum()
  assert abs(frac - alpha) <= 5 * np.sqrt(alpha * (1 - alpha) / n) + 1e-12
  np.testing.assert_array_equal(
    dropjax.targeted_weight_candidates(w, gamma), cand
  )


@pytest.mark.parametrize("elementwise", [False, True])
def test_targeted_unit_dropout(elementwise):
  fan_in, n_out = 30, 400
  w = jax.random.normal(jax.random.key(9), (fan_in, n_out))
  gamma, alpha = 0.5, 0.6
  out = np.asarray(
    dropjax.targeted_unit_dropout(
      jax.random.key(10), w, gamma=gamma, alpha=alpha, elementwise=elementwise
    )
  )
  norms = np.linalg.norm(np.asarray(w), axis=0)
  cand = np.argsort(np.argsort(norms)) < int(gamma * n_out)
  np.testing.assert_array_equal(
    dropjax.targeted_unit_candidates(w, gamma), cand
  )
  dropped = out == 0
  assert not dropped[:, ~cand].any()
  if elementwise:
    frac = dropped[:, cand].mean()
    n = dropped[:, cand].size
  else:
    col = dropped[:, cand]
    assert np.all(col.all(axis=0) | ~col.any(axis=0))  # whole columns
    frac = col.all(axis=0).mean()
    n = cand.sum()
  assert abs(frac - alpha) <= 5 * np.sqrt(alpha * (1 - alpha) / n)


def test_targeted_conv_kernel_is_viewed_as_columns():
  w = jax.random.normal(jax.random.key(11), (3, 3, 4, 8))
  cand = dropjax.targeted_weight_candidates(w, 0.5)
  per_col = np.asarray(cand).reshape(-1, 8).sum(axis=0)
  np.testing.assert_array_equal(per_col, 18)  # floor(0.5 * 36)


def test_targeted_bad_input():
  with pytest.raises(ValueError, match="gamma"):
    dropjax.targeted_weight_dropout(
      jax.random.key(0), jnp.ones((3, 3)), gamma=1.5, alpha=0.5
    )
  with pytest.raises(ValueError, match="alpha"):
    dropjax.targeted_unit_dropout(
      jax.random.key(0), jnp.ones((3, 3)), gamma=0.5, alpha=-1
    )
  with pytest.raises(ValueError, match="rank"):
    dropjax.targeted_weight_dropout(
      jax.random.key(0), jnp.ones((3,)), gamma=0.5, alpha=0.5
    )


NOISES = {
  "dropout": lambda k, x, q: dropjax.dropout(k, x, q),
  "locked": lambda k, x, q: dropjax.dropout(k, x, q, broadcast_axes=(0,)),
  "gaussian": dropjax.gaussian_dropout,
  "targeted_weight": lambda k, x, q: dropjax.targeted_weight_dropout(
    k, x, gamma=q, alpha=q
  ),
  "targeted_unit": lambda k, x, q: dropjax.targeted_unit_dropout(
    k, x, gamma=q, alpha=q
  ),
}


@pytest.mark.parametrize("name", sorted(NOISES))
def test_jit_vmap_over_rates_and_determinism(name):
  f = NOISES[name]
  x = jax.random.normal(jax.random.key(12), (16, 8))
  key = jax.random.key(13)
  eager = f(key, x, 0.3)
  # jit may fuse the arithmetic differently: equal up to float32 rounding.
  np.testing.assert_allclose(
    jax.jit(f)(key, x, 0.3), eager, rtol=1e-6, atol=1e-6
  )
  np.testing.assert_array_equal(f(key, x, 0.3), eager)  # same key
  rates = jnp.array([0.0, 0.3, 0.6])
  swept = jax.vmap(f, in_axes=(None, None, 0))(key, x, rates)
  chex.assert_shape(swept, (3, 16, 8))
  np.testing.assert_allclose(swept[1], eager, rtol=1e-6)
  assert not np.array_equal(
    np.asarray(f(jax.random.key(14), x, 0.3)), np.asarray(eager)
  )


def test_float16_scale_overflow_is_refused_and_the_limit_holds():
  x = jnp.ones((64,), jnp.float16)
  with pytest.raises(ValueError, match=r"float16 can hold.*wider dtype"):
    dropjax.dropout(jax.random.key(0), x, 0.99999)
  y = dropjax.dropout(jax.random.key(0), x, 0.9998)  # 1/(1-q)=5000
  assert bool(jnp.all(jnp.isfinite(y)))
  # float32 takes the same rate
  y32 = dropjax.dropout(jax.random.key(0), x.astype(jnp.float32), 0.99999)
  assert bool(jnp.all(jnp.isfinite(y32)))
