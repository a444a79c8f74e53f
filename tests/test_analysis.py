"""Tests for dropjax.analysis: pruning, sparsity and clusterability.

Every expected value is computed by hand (or by an independent NumPy
expression) from small inputs built here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dropjax import analysis as an


def _distinct(rng, shape):
  """Array with distinct magnitudes and random signs."""
  n = int(np.prod(shape))
  mags = rng.permutation(np.arange(1, n + 1, dtype=np.float64)) / n
  signs = rng.choice([-1.0, 1.0], size=n)
  return (mags * signs).reshape(shape).astype(np.float32)


def _mlp_params(rng, sizes=(6, 10, 8, 4)):
  p = {}
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    p[f"dense{i}"] = {
      "kernel": _distinct(rng, (a, b)),
      "bias": rng.normal(size=b).astype(np.float32),
    }
  return p


# --------------------------------------------------------------------------
# magnitude_prune
# --------------------------------------------------------------------------


def test_weight_granularity_zeroes_smallest_per_column():
  rng = np.random.default_rng(0)
  w = _distinct(rng, (10, 7))
  pruned, masks = an.magnitude_prune(
    {"k": w}, 0.35, granularity="weight", exclude=()
  )
  k = math.floor(0.35 * 10)  # 3
  out = np.asarray(pruned["k"])
  m = np.asarray(masks["k"])
  for j in range(7):
    order = np.argsort(np.abs(w[:, j]))
    assert np.all(out[order[:k], j] == 0)
    assert np.array_equal(out[order[k:], j], w[order[k:], j])
    assert (~m[:, j]).sum() == k
  assert np.array_equal(out, np.where(m, w, 0))


def test_weight_granularity_conv_kernel_and_float_rounding():
  rng = np.random.default_rng(1)
  w = _distinct(rng, (3, 3, 4, 5))  # fan_in 36
  _, masks = an.magnitude_prune({"conv": w}, 0.5, exclude=())
  m = np.asarray(masks["conv"]).reshape(36, 5)
  assert list((~m).sum(axis=0)) == [18] * 5
  # 0.29 * 100 is 28.999999999999996 in floating point; the count is 29.
  w2 = _distinct(rng, (100, 3))
  _, masks = an.magnitude_prune({"k": w2}, 0.29, exclude=())
  assert list((~np.asarray(masks["k"])).sum(axis=0)) == [29] * 3


def test_weight_granularity_ties_survive():
  # k = floor(0.4 * 5) = 2; threshold = 2nd smallest (0-based) = 1.0; all
  # entries >= 1.0 are kept, so nothing in this column is pruned.
  w = np.array([[1.0], [1.0], [-1.0], [1.0], [2.0]], np.float32)
  pruned, masks = an.magnitude_prune({"k": w}, 0.4, exclude=())
  assert np.asarray(masks["k"]).all()
  # Already-zero entries tie at 0: with 3 zeros and k = 2 all stay (zero).
  w = np.array([[0.0], [0.0], [0.0], [3.0], [2.0]], np.float32)
  pruned, masks = an.magnitude_prune({"k": w}, 0.4, exclude=())
  assert np.asarray(masks["k"]).sum() == 5
  np.testing.assert_array_equal(np.asarray(pruned["k"]), w)


def test_unit_granularity_zeroes_lowest_norm_columns():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(6, 8)).astype(np.float32)
  w *= np.arange(1, 9, dtype=np.float32)[rng.permutation(8)]  # distinct norms
  pruned, masks = an.magnitude_prune(
    {"k": w}, 0.3, granularity="unit", exclude=()
  )
  k = math.floor(0.3 * 8)  # 2
  norms = np.linalg.norm(w, axis=0)
  dropped = set(np.argsort(norms)[:k].tolist())
  out = np.asarray(pruned["k"])
  zero_cols = {j for j in range(8) if np.all(out[:, j] == 0)}
  assert zero_cols == dropped
  kept = [j for j in range(8) if j not in dropped]
  np.testing.assert_array_equal(out[:, kept], w[:, kept])
  # Exactly k columns even when norms tie: all columns equal here.
  _, masks = an.magnitude_prune(
    {"k": np.ones((3, 10), np.float32)}, 0.25, granularity="unit", exclude=()
  )
  m = np.asarray(masks["k"])
  assert (~m.all(axis=0)).sum() == 2


def test_global_granularity_count_and_threshold():
  rng = np.random.default_rng(3)
  allw = _distinct(rng, (5 * 4 + 4 * 6,)).ravel()
  p = {
    "a": {"kernel": allw[:20].reshape(5, 4)},
    "b": {"kernel": allw[20:].reshape(4, 6)},
  }
  pruned, masks = an.magnitude_prune(p, 0.4, granularity="global", exclude=())
  k = math.floor(0.4 * 44)  # 17
  n_zero = sum(int((~np.asarray(masks[n]["kernel"])).sum()) for n in "ab")
  assert n_zero == k
  cut = np.sort(np.abs(allw))[k]
  for n in "ab":
    w = np.asarray(p[n]["kernel"])
    np.testing.assert_array_equal(
      np.asarray(pruned[n]["kernel"]), np.where(np.abs(w) >= cut, w, 0)
    )


def test_default_exclude_and_biases_untouched():
  rng = np.random.default_rng(4)
  p = _mlp_params(rng)
  for g in an.GRANULARITIES:
    pruned, masks = an.magnitude_prune(p, 0.5, granularity=g)
    for name in ("dense0", "dense2"):  # first and last kernel
      np.testing.assert_array_equal(
        np.asarray(pruned[name]["kernel"]), p[name]["kernel"]
      )
      assert np.asarray(masks[name]["kernel"]).all()
    for name in p:
      np.testing.assert_array_equal(
        np.asarray(pruned[name]["bias"]), p[name]["bias"]
      )
      assert masks[name]["bias"] is None
    assert not np.asarray(masks["dense1"]["kernel"]).all()


def test_exclude_indices_and_callable():
  rng = np.random.default_rng(5)
  p = _mlp_params(rng)
  pruned, _ = an.magnitude_prune(p, 0.5, exclude=(-2,))
  np.testing.assert_array_equal(
    np.asarray(pruned["dense1"]["kernel"]), p["dense1"]["kernel"]
  )
  assert (np.asarray(pruned["dense0"]["kernel"]) == 0).any()
  pruned, _ = an.magnitude_prune(
    p, 0.5, exclude=lambda path, leaf: path.startswith("dense2")
  )
  np.testing.assert_array_equal(
    np.asarray(pruned["dense2"]["kernel"]), p["dense2"]["kernel"]
  )
  assert (np.asarray(pruned["dense0"]["kernel"]) == 0).any()
  with pytest.raises(ValueError, match="out of range"):
    an.magnitude_prune(p, 0.5, exclude=(3,))


def test_fraction_endpoints_and_errors():
  rng = np.random.default_rng(6)
  p = {"k": _distinct(rng, (4, 3))}
  for g in an.GRANULARITIES:
    pr, _ = an.magnitude_prune(p, 0.0, granularity=g, exclude=())
    np.testing.assert_array_equal(np.asarray(pr["k"]), p["k"])
    pr, _ = an.magnitude_prune(p, 1.0, granularity=g, exclude=())
    assert np.all(np.asarray(pr["k"]) == 0)
  with pytest.raises(ValueError, match="'weight', 'unit', 'global'"):
    an.magnitude_prune(p, 0.5, granularity="column")
  for bad in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="fraction"):
      an.magnitude_prune(p, bad)


def test_magnitude_prune_jit_with_traced_fraction():
  rng = np.random.default_rng(7)
  p = _mlp_params(rng, (8, 16, 12, 4))
  f = jax.jit(an.magnitude_prune, static_argnames=("granularity", "exclude"))
  for g in an.GRANULARITIES:
    for frac in (0.25, 0.5, 0.75):
      a, ma = f(p, jnp.float32(frac), granularity=g)
      b, mb = an.magnitude_prune(p, frac, granularity=g)
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
      for x, y in zip(jax.tree.leaves(ma), jax.tree.leaves(mb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_magnitude_prune_on_nnx_state():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(6, 5, rngs=rngs)
      self.l2 = nnx.Linear(5, 4, rngs=rngs)
      self.l3 = nnx.Linear(4, 2, rngs=rngs)

  _, state = nnx.split(Net(nnx.Rngs(0)))
  pruned, masks = an.magnitude_prune(state, 0.4)
  assert [p for p, _ in an.kernel_list(state)] == [
    "l1/kernel/value",
    "l2/kernel/value",
    "l3/kernel/value",
  ]
  k2 = np.asarray(pruned["l2"]["kernel"][...])
  assert list((k2 == 0).sum(axis=0)) == [2] * 4
  np.testing.assert_array_equal(
    np.asarray(pruned["l1"]["kernel"][...]),
    np.asarray(state["l1"]["kernel"][...]),
  )
  again = an.apply_masks(state, masks)
  np.testing.assert_array_equal(np.asarray(again["l2"]["kernel"][...]), k2)


# --------------------------------------------------------------------------
# prune_curve
# --------------------------------------------------------------------------


def test_prune_curve_auc_and_contiguous_tolerance():
  rng = np.random.default_rng(8)
  # dict keys flatten in sorted order: a, b, c is the layer order
  p = {
    "a": _distinct(rng, (3, 100)),
    "b": _distinct(rng, (100, 5)),
    "c": _distinct(rng, (5, 2)),
  }
  table = {0: 0.900, 10: 0.895, 20: 0.905, 30: 0.870, 40: 0.899, 50: 0.500}

  def evaluate(params):
    pct = int(round(100 * float(np.mean(np.asarray(params["b"]) == 0))))
    return table[pct]

  fr = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
  c = an.prune_curve(p, evaluate, fr)
  np.testing.assert_allclose(c.accuracies, [table[i] for i in range(0, 60, 10)])
  assert c.baseline == 0.9
  np.testing.assert_allclose(c.achieved_sparsity, fr)
  accs = [table[i] for i in range(0, 60, 10)]
  expected_auc = sum((accs[i] + accs[i + 1]) / 2 * 0.1 for i in range(5)) / 0.5
  assert c.auc == pytest.approx(expected_auc)
  # 0.4 is within 1 point again, but 0.3 broke the run: contiguous -> 0.2.
  assert c.max_fraction_within(0.01) == 0.2
  assert c.max_fraction_within(0.031) == 0.4
  assert c.max_fraction_within(0.5) == 0.5
  with pytest.raises(ValueError):
    an.prune_curve(p, evaluate, (0.5, 0.1))


def test_prune_curve_baseline_without_zero():
  rng = np.random.default_rng(9)
  p = {
    "a": _distinct(rng, (2, 4)),
    "b": _distinct(rng, (4, 10)),
    "c": _distinct(rng, (10, 1)),
  }
  calls = []

  def evaluate(params):
    frac = float(np.mean(np.asarray(params["b"]) == 0))
    calls.append(frac)
    return 1.0 - frac

  c = an.prune_curve(p, evaluate, (0.5, 0.75))
  assert c.baseline == 1.0 and calls[-1] == 0.0
  assert c.max_fraction_within(0.01) == 0.0


# --------------------------------------------------------------------------
# Gradual pruning pieces
# --------------------------------------------------------------------------


def test_polynomial_sparsity_values():
  kw = dict(initial=0.5, final=0.9, begin_step=100, end_step=500, power=3)
  assert float(an.polynomial_sparsity(100, **kw)) == pytest.approx(0.5)
  assert float(an.polynomial_sparsity(0, **kw)) == pytest.approx(0.5)
  assert float(an.polynomial_sparsity(500, **kw)) == pytest.approx(0.9)
  assert float(an.polynomial_sparsity(10_000, **kw)) == pytest.approx(0.9)
  # step 200: p = 0.25 -> 0.9 - 0.4 * 0.75**3
  assert float(an.polynomial_sparsity(200, **kw)) == pytest.approx(
    0.9 - 0.4 * 0.421875, abs=1e-6
  )
  traced = jax.jit(lambda s: an.polynomial_sparsity(s, **kw))(jnp.int32(300))
  assert float(traced) == pytest.approx(0.9 - 0.4 * 0.125, abs=1e-6)
  # Filan et al.'s schedule: 0.5 -> 0.9 over 9380 steps.
  s = an.polynomial_sparsity(jnp.arange(0, 9381, 10), end_step=9380)
  assert np.all(np.diff(np.asarray(s)) >= 0)
  with pytest.raises(ValueError):
    an.polynomial_sparsity(0, end_step=0)
  with pytest.raises(ValueError):
    an.polynomial_sparsity(0, final=1.0, end_step=10)


def test_is_mask_update_step():
  got = [
    bool(an.is_mask_update_step(s, begin_step=5, end_step=25))
    for s in (0, 5, 10, 15, 17, 25, 35)
  ]
  assert got == [False, True, False, True, False, True, False]
  got = jax.jit(lambda s: an.is_mask_update_step(s, end_step=100))(
    jnp.int32(40)
  )
  assert bool(got)


def test_layerwise_masks_counts_include_all_layers():
  rng = np.random.default_rng(10)
  p = _mlp_params(rng, (6, 10, 8, 4))
  for s in (0.5, 0.9, 0.99):
    masks = an.layerwise_magnitude_masks(p, s)
    for name in p:
      w = p[name]["kernel"]
      m = np.asarray(masks[name]["kernel"])
      keep = max(1, round(w.size * (1 - s)))
      assert m.sum() == keep, (name, s)
      # the kept ones are the largest |w|
      assert np.abs(w[m]).min() > np.abs(w[~m]).max() if (~m).any() else True
      assert masks[name]["bias"] is None
  masks = an.layerwise_magnitude_masks(p, 0.5, exclude=(0,))
  assert np.asarray(masks["dense0"]["kernel"]).all()


def test_layerwise_masks_traced_sparsity_and_apply():
  rng = np.random.default_rng(11)
  p = _mlp_params(rng, (6, 10, 8, 4))

  @jax.jit
  def step(params, t):
    s = an.polynomial_sparsity(t, end_step=100)
    return an.apply_masks(params, an.layerwise_magnitude_masks(params, s))

  out = step(p, jnp.int32(100))  # sparsity 0.9
  for name in p:
    w = out[name]["kernel"]
    n = w.size
    assert int((np.asarray(w) != 0).sum()) == max(1, round(n * 0.1))
    np.testing.assert_array_equal(
      np.asarray(out[name]["bias"]), p[name]["bias"]
    )


# --------------------------------------------------------------------------
# Sparsity metrics
# --------------------------------------------------------------------------


def test_hoyer_known_values():
  assert float(an.hoyer_sparsity(np.eye(1, 9)[0])) == pytest.approx(1.0)
  assert float(an.hoyer_sparsity(-2.5 * np.ones(16))) == pytest.approx(
    0.0, abs=1e-6
  )
  # [3, 4, 0, 0]: l1 = 7, l2 = 5, sqrt(n) = 2 -> (2 - 1.4) / 1
  assert float(
    an.hoyer_sparsity(np.array([3.0, -4.0, 0.0, 0.0]))
  ) == pytest.approx(0.6, abs=1e-6)
  x = np.random.default_rng(0).normal(size=50)
  assert float(an.hoyer_sparsity(x)) == pytest.approx(
    float(an.hoyer_sparsity(1e3 * x)), abs=1e-6
  )
  assert math.isnan(float(an.hoyer_sparsity(np.zeros(4))))
  with pytest.raises(ValueError):
    an.hoyer_sparsity(np.ones(1))


def test_gini_known_values():
  for n in (4, 10):
    one_hot = np.zeros(n)
    one_hot[n // 2] = 7.0
    assert float(an.gini_index(one_hot)) == pytest.approx(1 - 1 / n, abs=1e-6)
  assert float(an.gini_index(3 * np.ones(12))) == pytest.approx(0.0, abs=1e-6)
  # |w| sorted = [0, 0, 3, 4], ||c||_1 = 7, N = 4:
  # G = 1 - 2 * (3/7 * 1.5/4 + 4/7 * 0.5/4) = 1 - 13/28 = 15/28
  w = np.array([4.0, 0.0, -3.0, 0.0])
  assert float(an.gini_index(w)) == pytest.approx(15 / 28, abs=1e-6)
  assert float(an.gini_index(w[::-1] * 0.01)) == pytest.approx(
    15 / 28, abs=1e-6
  )


def test_epsilon_and_exact_sparsity():
  k1 = np.array([[0.0005, 0.005], [0.05, -1.0]])
  k2 = np.zeros((2, 3))
  p = {"a": k1, "b": k2, "bias": np.zeros(100)}
  got = an.epsilon_sparsity(p, (1e-3, 1e-2, 1e-1))
  # k2 is all zero -> fully sparse; k1 contributes 1, 2, 3 of 4.
  assert got == {1e-3: 7 / 10, 1e-2: 8 / 10, 1e-1: 9 / 10}
  sd = k1.std()
  expected = np.mean(np.abs(k1) <= 0.1 * sd)
  assert an.epsilon_sparsity({"a": k1}, (0.1,), relative_to="std") == {
    0.1: expected
  }
  assert an.exact_sparsity(p) == pytest.approx(6 / 10)
  assert an.exact_sparsity(p, exclude=(1,)) == 0.0
  with pytest.raises(ValueError, match="'max', 'std'"):
    an.epsilon_sparsity(p, relative_to="mean")


def test_dead_unit_fraction():
  h = np.array(
    [
      [0.0, 0.3, 0.0, 0.0, 1.0],
      [0.0, 0.0, 0.05, -1.0, 2.0],
      [0.0, 0.0, 0.0, 0.0, 0.5],
      [-0.2, 0.0, 0.02, 0.0, 0.1],
    ]
  )
  assert float(an.dead_unit_fraction(h)) == pytest.approx(2 / 5)
  assert float(an.dead_unit_fraction(h, tol=0.1)) == pytest.approx(3 / 5)
  assert float(an.dead_unit_fraction(h.reshape(2, 2, 5))) == pytest.approx(
    2 / 5
  )
  with pytest.raises(ValueError):
    an.dead_unit_fraction(np.zeros(5))


def test_symmetric_quantize_exact():
  w = np.array([-2.0, -1.0, 0.0, 0.26, 2.0])
  q, s = an.symmetric_quantize(w, bits=4)  # q_max = 7, scale = 2/7
  assert s == pytest.approx(2 / 7)
  assert q.tolist() == [-7, -4, 0, 1, 7]  # -3.5 -> -4 (half to even)
  assert q.dtype == np.int8
  q, _ = an.symmetric_quantize(w, bits=12)
  assert q.dtype == np.int16 and q.max() == 2047
  q, s = an.symmetric_quantize(np.zeros(3), bits=8)
  assert q.tolist() == [0, 0, 0] and s == 1.0
  with pytest.raises(ValueError):
    an.symmetric_quantize(w, bits=1)


def test_compressed_bits_per_weight():
  rng = np.random.default_rng(12)
  zeros = {"k": np.zeros((256, 256), np.float32)}
  uniform = {"k": rng.uniform(-1, 1, size=(256, 256)).astype(np.float32)}
  for comp in ("zlib", "lzma"):
    assert an.compressed_bits_per_weight(zeros, compressor=comp) < 0.05
    b = an.compressed_bits_per_weight(uniform, compressor=comp)
    assert 7.9 < b < 8.2, (comp, b)
  b4 = an.compressed_bits_per_weight(uniform, bits=4)
  assert 3.9 < b4 < 5.0
  half = {
    "k": np.where(rng.random((256, 256)) < 0.9, 0.0, uniform["k"]).astype(
      np.float32
    )
  }
  assert an.compressed_bits_per_weight(half) < 2.5
  with pytest.raises(ValueError, match="'zlib', 'lzma'"):
    an.compressed_bits_per_weight(zeros, compressor="gzip")


def test_sparsity_report_consistent():
  rng = np.random.default_rng(13)
  p = _mlp_params(rng, (6, 10, 8, 4))
  pruned, _ = an.magnitude_prune(p, 0.5, granularity="unit")
  r = an.sparsity_report(pruned)
  assert r["n_kernels"] == 3
  assert r["n_weights"] == 6 * 10 + 10 * 8 + 8 * 4
  assert r["exact_sparsity"] == pytest.approx(an.exact_sparsity(pruned))
  assert r["compression_ratio"] == pytest.approx(
    r["n_weights"] / r["n_nonzero"]
  )
  mid = r["layers"][1]
  assert mid["path"] == "dense1/kernel" and mid["zero_unit_fraction"] == 0.5
  assert r["layers"][0]["zero_unit_fraction"] == 0.0
  assert set(r["epsilon_sparsity_max"]) == {1e-3, 1e-2, 1e-1}
  # the report's float64 Hoyer / Gini agree with the jnp functions
  k = np.asarray(pruned["dense1"]["kernel"])
  assert mid["hoyer"] == pytest.approx(float(an.hoyer_sparsity(k)), abs=1e-5)
  assert mid["gini"] == pytest.approx(float(an.gini_index(k)), abs=1e-5)
  assert 0.0 < mid["gini"] < 1.0 and 0.0 < mid["hoyer"] < 1.0


# --------------------------------------------------------------------------
# Clusterability
# --------------------------------------------------------------------------


def test_weight_graph_layout():
  w1 = np.array([[1.0, -2.0, 0.0], [0.5, 0.0, 3.0]])
  w2 = np.array([[-4.0], [0.0], [6.0]])
  a = an.weight_graph([w1, w2]).toarray()
  assert a.shape == (6, 6)
  np.testing.assert_array_equal(a, a.T)
  np.testing.assert_array_equal(a[0:2, 2:5], np.abs(w1))
  np.testing.assert_array_equal(a[2:5, 5:6], np.abs(w2))
  mask = np.zeros((6, 6), bool)
  mask[0:2, 2:5] = mask[2:5, 5:6] = True
  mask |= mask.T
  assert np.all(a[~mask] == 0)
  # params pytree: biases ignored, kernels in flatten order
  p = {"l0": {"kernel": w1, "bias": np.ones(3)}, "l1": {"kernel": w2}}
  np.testing.assert_array_equal(an.weight_graph(p).toarray(), a)
  with pytest.raises(ValueError, match="chain"):
    an.weight_graph([w1, w1])


def test_remove_isolated_nodes():
  w1 = np.array(
    [
      [1.0, 0.0, 0.0],
      [0.0, 0.0, 0.0],  # input 1: isolated
      [2.0, 0.0, 1.0],
    ]
  )
  w2 = np.array(
    [
      [1.0, 0.0],
      [0.0, 0.0],  # hidden 1: no in, no out -> isolated
      [0.0, 0.0],
    ]
  )  # hidden 2: has an input edge -> kept
  reduced, mask = an.remove_isolated_nodes([w1, w2])
  # nodes: inputs 0-2, hidden 3-5, outputs 6-7 (output 1 isolated)
  assert mask.tolist() == [True, False, True, True, False, True, True, False]
  np.testing.assert_array_equal(reduced[0], [[1.0, 0.0], [2.0, 1.0]])
  np.testing.assert_array_equal(reduced[1], [[1.0], [0.0]])
  a = an.weight_graph([w1, w2])
  assert np.array_equal(np.asarray(a.sum(axis=1)).ravel() > 0, mask)


def test_ncut_hand_computed():
  a = np.array(
    [[0, 2, 0, 0], [2, 0, 1, 0], [0, 1, 0, 3], [0, 0, 3, 0]], dtype=float
  )
  # degrees 2, 3, 4, 3; cluster {0,1}: cut 1, vol 5; {2,3}: cut 1, vol 7
  assert an.ncut(a, [0, 0, 1, 1]) == pytest.approx(1 / 5 + 1 / 7, rel=1e-7)
  # {0}: cut 2 vol 2; {1,2,3}: cut 2 vol 10
  assert an.ncut(a, [5, 7, 7, 7]) == pytest.approx(1 + 2 / 10, rel=1e-7)
  assert an.ncut(a, [0, 1, 2, 3]) == pytest.approx(4.0)  # singletons: K
  assert an.ncut(a, [0, 0, 0, 0]) == 0.0
  from scipy import sparse

  assert an.ncut(sparse.csr_array(a), [0, 0, 1, 1]) == pytest.approx(12 / 35)
  with pytest.raises(ValueError):
    an.ncut(-a, [0, 0, 1, 1])


def test_ncut_two_disconnected_cliques_is_zero():
  a = np.zeros((7, 7))
  a[:3, :3] = 1.0
  a[3:, 3:] = 2.0
  np.fill_diagonal(a, 0.0)
  assert an.ncut(a, [0, 0, 0, 1, 1, 1, 1]) == 0.0
  assert an.ncut(a, [0, 0, 1, 1, 1, 1, 1]) > 0.5


def test_spectral_cluster_recovers_planted_blocks():
  rng = np.random.default_rng(14)
  sizes = [10, 14, 8]
  truth = np.repeat(np.arange(3), sizes)
  n = truth.size
  a = rng.uniform(0.0, 0.05, size=(n, n))
  a += (truth[:, None] == truth[None, :]) * rng.uniform(1.0, 2.0, (n, n))
  a = np.triu(a, 1)
  a = a + a.T
  labels = an.spectral_cluster(a, 3, seed=0)
  # same partition up to renaming
  pairs = set(zip(truth.tolist(), labels.tolist()))
  assert len(pairs) == 3 and len({l for _, l in pairs}) == 3
  np.testing.assert_array_equal(labels, an.spectral_cluster(a, 3, seed=0))
  assert an.ncut(a, labels) == pytest.approx(an.ncut(a, truth))


def test_shuffles_preserve_multisets():
  rng = np.random.default_rng(15)
  ws = [rng.normal(size=(12, 9)), rng.normal(size=(9, 5))]
  ws[0][rng.random((12, 9)) < 0.6] = 0.0
  key = jax.random.key(3)
  for method in an.SHUFFLE_METHODS:
    out = an.shuffle_weights(ws, key, method)
    for w, s in zip(ws, out):
      assert s.shape == w.shape
      np.testing.assert_array_equal(np.sort(s.ravel()), np.sort(w.ravel()))
    again = an.shuffle_weights(ws, key, method)
    for s, t in zip(out, again):
      np.testing.assert_array_equal(s, t)
    other = an.shuffle_weights(ws, jax.random.key(4), method)
    assert not np.array_equal(other[0], out[0])
  nz = an.shuffle_weights(ws, key, "layer_nonzero")
  np.testing.assert_array_equal(nz[0] != 0, ws[0] != 0)
  assert not np.array_equal(nz[0], ws[0])
  lay = an.shuffle_weights(ws, key, "layer")
  assert not np.array_equal(lay[0] != 0, ws[0] != 0)
  with pytest.raises(ValueError, match="'layer', 'layer_nonzero'"):
    an.shuffle_weights(ws, key, "global")


def _planted_mlp(rng, sizes, n_modules, cross):
  """MLP kernels with neurons assigned to modules; cross-module weights
  scaled by ``cross``."""
  assign = [np.arange(s) % n_modules for s in sizes]
  ws = []
  for l in range(len(sizes) - 1):
    w = rng.normal(size=(sizes[l], sizes[l + 1]))
    same = assign[l][:, None] == assign[l + 1][None, :]
    ws.append(np.where(same, w, cross * w))
  return ws


def test_clusterability_planted_modules_significant():
  rng = np.random.default_rng(16)
  ws = _planted_mlp(rng, [24, 24, 24, 8], n_modules=4, cross=0.02)
  n_shuffles = 10
  r = an.clusterability(
    ws, n_clusters=4, n_shuffles=n_shuffles, key=jax.random.key(0)
  )
  assert r.n_nodes == 80 and r.labels.shape == (80,)
  assert r.p_value == pytest.approx(1 / (n_shuffles + 1))
  assert r.significant
  assert r.z < -5
  # the statistics are computed from the shuffled n-cuts as defined
  s = r.shuffled_ncuts
  assert s.shape == (n_shuffles,)
  assert r.shuffled_mean == pytest.approx(s.mean())
  assert r.shuffled_std == pytest.approx(np.sqrt(np.mean((s - s.mean()) ** 2)))
  assert r.z == pytest.approx((r.ncut - s.mean()) / r.shuffled_std)
  # the clustering recovers the planted modules: n-cut near the planted one
  truth = np.concatenate([np.arange(s) % 4 for s in (24, 24, 24, 8)])
  assert r.ncut <= an.ncut(an.weight_graph(ws), truth) + 1e-9


def test_clusterability_random_mlp_not_significant():
  rng = np.random.default_rng(17)
  ws = [
    rng.normal(size=(20, 24)),
    rng.normal(size=(24, 24)),
    rng.normal(size=(24, 6)),
  ]
  n_shuffles = 10
  r = an.clusterability(
    ws, n_clusters=4, n_shuffles=n_shuffles, key=jax.random.key(1)
  )
  assert r.p_value > 1 / (n_shuffles + 1)
  assert not r.significant
  assert abs(r.z) < 3
  expected_p = (np.sum(r.shuffled_ncuts < r.ncut) + 1) / (n_shuffles + 1)
  assert r.p_value == pytest.approx(expected_p)


def test_clusterability_pruned_net_deletes_isolated_nodes():
  rng = np.random.default_rng(18)
  ws = [rng.normal(size=(16, 12)), rng.normal(size=(12, 4))]
  ws[0][3, :] = 0.0  # input 3 isolated
  ws[0][:, 5] = 0.0  # hidden 5 isolated (also no outgoing weights)
  ws[1][5, :] = 0.0
  params = {"a": {"kernel": ws[0], "bias": np.ones(12)}, "b": {"kernel": ws[1]}}
  r = an.clusterability(
    params,
    n_clusters=2,
    n_shuffles=3,
    key=jax.random.key(7),
    shuffle="layer_nonzero",
  )
  assert r.n_nodes == 16 + 12 + 4 - 2
  assert not r.node_mask[3] and not r.node_mask[16 + 5]
  assert r.node_mask.sum() == r.n_nodes
  # reproducible for a key, and the key matters
  r2 = an.clusterability(
    params,
    n_clusters=2,
    n_shuffles=3,
    key=jax.random.key(7),
    shuffle="layer_nonzero",
  )
  assert r2.ncut == r.ncut
  np.testing.assert_array_equal(r2.shuffled_ncuts, r.shuffled_ncuts)
  np.testing.assert_array_equal(r2.labels, r.labels)
  r3 = an.clusterability(
    params,
    n_clusters=2,
    n_shuffles=3,
    key=jax.random.key(8),
    shuffle="layer_nonzero",
  )
  assert not np.array_equal(r3.shuffled_ncuts, r.shuffled_ncuts)
  with pytest.raises(ValueError):
    an.clusterability(ws, n_shuffles=0, key=0)
