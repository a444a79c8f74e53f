"""Tests of dropjax.selection.kth_smallest and the thresholds built on it.

* ``kth_smallest`` equals ``jnp.sort`` along an axis for every float dtype,
  signed values, ties, zeros, infinities and NaNs, per-column and traced
  ``k`` (under ``jit`` and ``vmap``), and pads with the dtype's extremes out
  of range;
* the library's thresholds that use it (targeted weight and unit dropout,
  one-shot weight and global pruning, gradual-pruning masks) give bit for
  bit the results of the sort-based code they replaced (kept here as
  references).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropjax
from dropjax import analysis as an
from dropjax import losses as djlosses
from dropjax import models
from dropjax import objectives
from dropjax import sites as djsites
from dropjax.selection import kth_smallest


def _tied_array(rng, shape):
  """Values with exact zeros and many ties (the hard cases)."""
  a = rng.normal(size=shape).astype(np.float32)
  a[rng.random(shape) < 0.2] = 0.0
  a[rng.random(shape) < 0.2] = 0.5
  a[rng.random(shape) < 0.05] = -0.5
  return a


# ---------------------------------------------------------------------------
# The primitive against sort.
# ---------------------------------------------------------------------------


def test_kth_smallest_matches_sort():
  rng = np.random.default_rng(0)
  a = np.abs(_tied_array(rng, (37, 5)))
  srt = np.sort(a, axis=0)
  for k in (0, 1, 7, 18, 36):
    got = np.asarray(kth_smallest(a, k, axis=0))
    np.testing.assert_array_equal(got[0], srt[k])
  flat = a.ravel()
  for k in (0, 100, flat.size - 1):
    assert float(kth_smallest(flat, k)[0]) == np.sort(flat)[k]
  # Traced k inside jit.
  f = jax.jit(lambda x, k: kth_smallest(x, k, axis=0))
  np.testing.assert_array_equal(np.asarray(f(a, 18))[0], srt[18])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_kth_smallest_signed_special_values_and_axes(dtype):
  rng = np.random.default_rng(1)
  for shape, axis in (((17, 5), 0), ((6, 9), 1), ((3, 4, 7), -1)):
    a = _tied_array(rng, shape)
    a[rng.random(shape) < 0.1] = -0.0
    a[rng.random(shape) < 0.05] = np.inf
    a[rng.random(shape) < 0.05] = -np.inf
    a[rng.random(shape) < 0.05] = np.nan
    a = jnp.asarray(a, dtype)
    srt = np.asarray(jnp.sort(a, axis=axis)).astype(np.float64)
    f = jax.jit(lambda x, k: kth_smallest(x, k, axis=axis))
    n = a.shape[axis]
    for k in range(n):
      got = f(a, k)
      assert got.dtype == a.dtype
      np.testing.assert_array_equal(
        np.asarray(got).astype(np.float64), np.take(srt, [k], axis=axis)
      )
    # Out of range: as if padded with -inf / +inf.
    assert np.all(np.asarray(f(a, n)) == np.inf)
    assert np.all(np.asarray(f(a, -1)) == -np.inf)


def test_kth_smallest_per_column_k_vmap_keepdims_and_other_dtypes():
  rng = np.random.default_rng(2)
  a = np.abs(_tied_array(rng, (30, 4)))
  srt = np.sort(a, axis=0)
  ks = np.array([0, 5, 29, 30])
  got = np.asarray(kth_smallest(a, ks, axis=0, keepdims=False))
  assert got.shape == (4,)
  np.testing.assert_array_equal(
    got[:3], [srt[k, j] for j, k in enumerate(ks[:3])]
  )
  assert got[3] == np.inf
  out = jax.vmap(lambda k: kth_smallest(a, k, axis=0))(jnp.arange(5))
  np.testing.assert_array_equal(np.asarray(out)[:, 0], srt[:5])
  # A thresholded count: a >= kth_smallest(a, k) keeps the n - k largest.
  t = kth_smallest(a[:, 0], 12)
  assert int(np.sum(a[:, 0] >= np.asarray(t))) >= 30 - 12
  # Integers and bools go through sort, with the dtype's extremes outside.
  ints = rng.integers(-5, 5, size=(11, 3)).astype(np.int32)
  for k in range(11):
    np.testing.assert_array_equal(
      np.asarray(kth_smallest(ints, k))[0], np.sort(ints, axis=0)[k]
    )
  assert np.all(np.asarray(kth_smallest(ints, 11)) == np.iinfo(np.int32).max)
  assert np.all(np.asarray(kth_smallest(ints > 0, -1)) == False)  # noqa: E712
  # Constant under differentiation.
  g = jax.grad(lambda x: kth_smallest(x, 3).sum())(jnp.asarray(a))
  assert float(jnp.abs(g).sum()) == 0.0
  with pytest.raises(ValueError):
    kth_smallest(a, 0, axis=2)
  with pytest.raises(ValueError):
    kth_smallest(np.float32(1.0), 0)


# ---------------------------------------------------------------------------
# The library's thresholds == the sort-based code they replaced.
# ---------------------------------------------------------------------------


def _sort_lowest_fraction(scores, gamma, axis):
  n = scores.shape[axis]
  srt = jnp.sort(scores, axis=axis)
  idx = jnp.floor(jnp.asarray(gamma, jnp.float32) * n).astype(jnp.int32)
  thr = jnp.take(srt, jnp.clip(idx, 0, n - 1), axis=axis)
  thr = jnp.expand_dims(thr, axis)
  thr = jnp.where(idx >= n, jnp.inf, thr)
  return scores < thr


def _sort_targeted_weight_dropout(key, w, *, gamma, alpha):
  cols = jax.lax.stop_gradient(jnp.abs(w.reshape(-1, w.shape[-1])))
  cand = _sort_lowest_fraction(cols, gamma, axis=0).reshape(w.shape)
  drop = cand & jax.random.bernoulli(
    key, jnp.asarray(alpha, jnp.float32), w.shape
  )
  return jnp.where(drop, jnp.zeros((), w.dtype), w)


def _sort_unit_candidates(w, gamma):
  norms = jnp.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0)
  return _sort_lowest_fraction(norms, gamma, axis=0)


def _sort_kth_smallest_or_inf(values, k, axis):
  s = jnp.sort(values, axis=axis)
  pad_shape = list(s.shape)
  pad_shape[axis] = 1
  s = jnp.concatenate([s, jnp.full(pad_shape, jnp.inf, s.dtype)], axis=axis)
  return jax.lax.dynamic_index_in_dim(s, k, axis=axis, keepdims=True)


def _sort_layer_keep_tfmot(w, sparsity):
  a = jnp.abs(jnp.asarray(w, jnp.float32))
  n = a.size
  s = jnp.asarray(sparsity, jnp.float32)
  k = jnp.maximum(jnp.round(jnp.float32(n) * (1.0 - s)), 1.0).astype(jnp.int32)
  desc = -jnp.sort(-a.ravel())
  t = jax.lax.dynamic_index_in_dim(desc, k - 1, axis=0, keepdims=False)
  return a >= t


def _params(rng):
  return {
    "hidden_0": {
      "kernel": _tied_array(rng, (50, 16)),
      "bias": rng.normal(size=16).astype(np.float32),
    },
    "output": {
      "kernel": _tied_array(rng, (16, 3)),
      "bias": np.zeros(3, np.float32),
    },
  }


def test_layerwise_masks_match_sort():
  params = _params(np.random.default_rng(1))
  jf = jax.jit(an.layerwise_magnitude_masks)
  for s in (0.0, 0.5, 0.73, 0.9, 0.99, 1.0):
    for got in (an.layerwise_magnitude_masks(params, s), jf(params, s)):
      assert got["hidden_0"]["bias"] is None
      for layer in ("hidden_0", "output"):
        np.testing.assert_array_equal(
          np.asarray(got[layer]["kernel"]),
          np.asarray(_sort_layer_keep_tfmot(params[layer]["kernel"], s)),
        )
  got = an.layerwise_magnitude_masks(params, 0.8, exclude=(0,))
  assert bool(np.all(got["hidden_0"]["kernel"]))
  np.testing.assert_array_equal(
    np.asarray(got["output"]["kernel"]),
    np.asarray(_sort_layer_keep_tfmot(params["output"]["kernel"], 0.8)),
  )


def test_magnitude_prune_weight_and_global_match_sort():
  params = _params(np.random.default_rng(3))
  ws = [params["hidden_0"]["kernel"], params["output"]["kernel"]]
  flat = jnp.abs(jnp.concatenate([jnp.asarray(w).ravel() for w in ws]))
  jf = jax.jit(an.magnitude_prune, static_argnames=("granularity", "exclude"))
  for f in (0.0, 0.3, 0.5, 0.77, 1.0):
    _, masks = an.magnitude_prune(params, f, exclude=())
    _, jmasks = jf(params, f, exclude=())
    for w, m, jm in zip(
      ws,
      (masks["hidden_0"]["kernel"], masks["output"]["kernel"]),
      (jmasks["hidden_0"]["kernel"], jmasks["output"]["kernel"]),
    ):
      a = jnp.abs(jnp.asarray(w))
      t = _sort_kth_smallest_or_inf(a, an.prune_count(f, a.shape[0]), 0)
      np.testing.assert_array_equal(np.asarray(m), np.asarray(a >= t))
      np.testing.assert_array_equal(np.asarray(jm), np.asarray(a >= t))
    _, masks = an.magnitude_prune(params, f, granularity="global", exclude=())
    t = _sort_kth_smallest_or_inf(flat, an.prune_count(f, flat.size), 0)[0]
    for w, m in zip(
      ws, (masks["hidden_0"]["kernel"], masks["output"]["kernel"])
    ):
      np.testing.assert_array_equal(
        np.asarray(m), np.asarray(jnp.abs(jnp.asarray(w)) >= t)
      )


def test_targeted_dropout_matches_sort():
  rng = np.random.default_rng(2)
  w = jnp.asarray(_tied_array(rng, (30, 7)))
  lib_fn = jax.jit(dropjax.targeted_weight_dropout)
  ref_fn = jax.jit(_sort_targeted_weight_dropout)
  for gamma, alpha in ((0.75, 0.66), (0.5, 1.0), (1.0, 0.5), (0.0, 0.5)):
    for i in range(3):
      key = jax.random.key(i)
      np.testing.assert_array_equal(
        np.asarray(lib_fn(key, w, gamma=gamma, alpha=alpha)),
        np.asarray(ref_fn(key, w, gamma=gamma, alpha=alpha)),
      )
    np.testing.assert_array_equal(
      np.asarray(dropjax.targeted_unit_candidates(w, gamma)),
      np.asarray(_sort_unit_candidates(w, gamma)),
    )
  # Ties in the column norms too.
  wt = jnp.asarray(np.repeat(_tied_array(rng, (6, 3)), 3, axis=1))
  for gamma in (0.2, 0.5, 0.9):
    np.testing.assert_array_equal(
      np.asarray(dropjax.targeted_unit_candidates(wt, gamma)),
      np.asarray(_sort_unit_candidates(wt, gamma)),
    )
  apply, params, _ = models.make_model("mlp", key=0, layer_sizes=(12, 9, 9, 3))
  x = jnp.asarray(rng.normal(size=(16, 12)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 3, 16).astype(np.int32))
  lib = objectives.targeted_weight(apply, gamma=0.75, alpha=0.66)

  def ref(params, batch, key):
    sel = objectives.hidden_kernels(apply, params, batch[0])
    thinned = objectives.map_selected(
      lambda w, i: _sort_targeted_weight_dropout(
        jax.random.fold_in(key, i), w, gamma=0.75, alpha=0.66
      ),
      params,
      sel,
    )
    out = apply(thinned, batch[0], djsites.identity_sites)
    return djlosses.mean_loss("softmax_cross_entropy", out, batch[1])

  # Same key, same thinned weights, same loss (hence the same gradient).
  for i in range(2):
    key = jax.random.key(5 + i)
    lf, _ = jax.jit(lib)(params, (x, y), key)
    lr = jax.jit(ref)(params, (x, y), key)
    assert float(lf) == float(lr)
