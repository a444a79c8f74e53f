"""The LSTM language model: sites, masks, carried state, analytic regularizers.

The derivation tests run a tiny LSTM in float64 and compute expectations over
sampled labels and Rademacher signs by enumerating every outcome.
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
from dropjax.models import lstm

import _helpers


def small(num_layers=2, vocab=7, embed_dim=5, hidden_size=6, key=0, **kw):
  return lstm.make_lm(
    vocab,
    key=key,
    embed_dim=embed_dim,
    hidden_size=hidden_size,
    num_layers=num_layers,
    **kw,
  )


def tokens(shape, vocab=7, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


# ------------------------------------------------------------- structure


def test_sites_names_shapes_rates_and_locked_axes():
  apply, params, spec, model = small(
    num_layers=3,
    dropout_emb=0.1,
    dropout_hidden=0.2,
    dropout_out=0.3,
    dropout_weight=0.4,
  )
  x = (tokens((2, 4)), model.initial_carry(2))
  shapes = S.site_shapes(apply, params, x, has_aux=True)
  assert (
    tuple(shapes)
    == lstm.site_names(3)
    == ("emb", "w_hh0", "h0", "w_hh1", "h1", "w_hh2", "out")
  )
  assert shapes["emb"].shape == (2, 4, 5)
  assert shapes["h0"].shape == (2, 4, 6)
  assert shapes["w_hh2"].shape == (6, 24)
  assert spec.rates == {
    "emb": 0.1,
    "w_hh0": 0.4,
    "h0": 0.2,
    "w_hh1": 0.4,
    "h1": 0.2,
    "w_hh2": 0.4,
    "out": 0.3,
  }
  assert spec.broadcast_axes == {
    "emb": (1,),
    "h0": (1,),
    "h1": (1,),
    "out": (1,),
  }


def test_tied_decoder_uses_the_embedding_and_last_layer_has_embed_units():
  apply, params, _, model = small(num_layers=2, tie_weights=True)
  assert model.sizes == (6, 5)
  assert set(params["decoder"]) == {"bias"}
  x = (tokens((2, 3)), model.initial_carry(2))
  logits, carry = apply(params, x, dropjax.identity_sites)
  assert logits.shape == (2, 3, 7) and carry[1][0].shape == (2, 5)
  # Changing the embedding changes the decoder too.
  p2 = jax.tree.map(lambda a: a, params)
  p2["embed"]["embedding"] = params["embed"]["embedding"] * 2
  assert not np.allclose(apply(p2, x, dropjax.identity_sites)[0], logits)


def test_same_key_same_weights_and_validation():
  a = small(key=3)[1]
  b = small(key=3)[1]
  c = small(key=4)[1]
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.allclose(a["lstm_0"]["w_hh"], c["lstm_0"]["w_hh"])
  init = lstm.make_lm_init(7, embed_dim=5, hidden_size=6, num_layers=2)
  jax.tree.map(np.testing.assert_array_equal, init(jax.random.key(3)), a)
  with pytest.raises(ValueError, match="num_layers"):
    lstm.layer_sizes(0, 4, 4, False)
  with pytest.raises(ValueError, match="rate"):
    small(dropout_weight=1.0)


def test_standalone_nnx_module_train_and_eval():
  apply, params, _, model = small()
  x = (tokens((3, 4)), model.initial_carry(3))
  model.eval()
  clean = apply(params, x, dropjax.identity_sites)[0]
  np.testing.assert_allclose(model(x)[0], clean, rtol=1e-6)
  model.train()
  assert not np.allclose(model(x)[0], clean)


# ------------------------------------------------------------- dropout masks


def recorded_masks(apply, params, x, sites):
  """Runs ``apply`` and returns {site: output / input} (the applied mask)."""

  @jax.jit
  def run(p, x):
    masks = {}

    def rec(name, h):
      out = sites(name, h)
      masks[name] = out / h
      return out

    apply(p, x, rec)
    return masks

  return run(params, x)


def clean(apply):
  """``apply`` without dropout, jitted: ``f(params, x) -> (logits, carry)``."""
  return jax.jit(lambda p, x: apply(p, x, dropjax.identity_sites))


def test_locked_masks_constant_over_time_and_different_across_batch():
  apply, params, spec, model = small(num_layers=2)
  b, t = 6, 9
  x = (tokens((b, t)), model.initial_carry(b))
  sites = dropjax.dropout_sites(
    jax.random.key(1), spec.rates, broadcast_axes=spec.broadcast_axes
  )
  masks = recorded_masks(apply, params, x, sites)
  keep = 1.0 / (1 - 0.4)
  for name in ("emb", "h0", "out"):
    m = np.asarray(masks[name])
    assert m.shape[:2] == (b, t)
    np.testing.assert_allclose(
      m, np.broadcast_to(m[:, :1], m.shape), rtol=1e-5, err_msg=name
    )  # locked in time
    assert not np.allclose(m[0, 0], m[1, 0]), name  # per sequence
    is0, is_keep = np.isclose(m, 0.0), np.isclose(m, keep, rtol=1e-5)
    assert np.all(is0 | is_keep), name  # 0 or 1/(1-q)
    assert is0.any() and is_keep.any(), name


def test_unlocked_masks_would_change_over_time():
  """Control for the test above: without broadcast axes they vary in time."""
  apply, params, spec, model = small()
  x = (tokens((4, 8)), model.initial_carry(4))
  sites = dropjax.dropout_sites(jax.random.key(1), spec.rates)
  m = np.asarray(recorded_masks(apply, params, x, sites)["emb"])
  assert not np.allclose(m, np.broadcast_to(m[:, :1], m.shape))


def test_dropconnect_mask_is_shared_by_batch_and_time():
  apply, params, spec, model = small(num_layers=2)
  rates = {n: (0.4 if n.startswith("w_hh") else 0.0) for n in spec.rates}
  seq = tokens((1, 10))
  x = (jnp.concatenate([seq, seq]), model.initial_carry(2))
  sites = dropjax.dropout_sites(
    jax.random.key(2), rates, broadcast_axes=spec.broadcast_axes
  )

  @jax.jit
  def run(p, x):
    dropped = {}

    def rec(name, h):
      out = sites(name, h)
      dropped[name] = out
      return out

    return apply(p, x, rec)[0], dropped

  logits, dropped = run(params, x)
  # Two identical sequences get identical outputs: one weight mask for both.
  np.testing.assert_array_equal(logits[0], logits[1])
  assert not np.allclose(logits, clean(apply)(params, x)[0])
  # One mask for every time step: the clean model with the dropped weights
  # plugged in gives the same outputs.
  p2 = jax.tree.map(lambda a: a, params)
  for i in range(2):
    m = np.asarray(dropped[f"w_hh{i}"] / params[f"lstm_{i}"]["w_hh"])
    assert np.all(np.isclose(m, 0.0) | np.isclose(m, 1 / 0.6, rtol=1e-5))
    assert np.isclose(m, 0.0).any()
    p2[f"lstm_{i}"]["w_hh"] = dropped[f"w_hh{i}"]
  np.testing.assert_allclose(
    clean(apply)(p2, x)[0], logits, rtol=1e-5, atol=1e-6
  )


def test_same_key_same_masks_different_key_different_masks():
  apply, params, spec, model = small()
  x = (tokens((3, 5)), model.initial_carry(3))
  run = jax.jit(
    lambda k: apply(
      params,
      x,
      dropjax.dropout_sites(k, spec.rates, broadcast_axes=spec.broadcast_axes),
    )[0]
  )
  k5 = jax.random.key(5)
  np.testing.assert_array_equal(run(k5), run(k5))
  assert not np.allclose(run(k5), run(jax.random.key(6)))


# ------------------------------------------------------------- carried state


def test_unrolled_scan_is_the_same_model(x64):
  """``unroll`` changes the compiled loop, not the arithmetic: outputs,
  carry and gradients agree in float64; bad values are refused."""
  seq, y = tokens((3, 7)), tokens((3, 7), seed=1)
  results = []
  for unroll in (1, 3, True):
    apply, params, _, model = small(unroll=unroll)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    c0 = model.initial_carry(3, jnp.float64)

    def loss(p):
      logits, carry = apply(p, (seq, c0), dropjax.identity_sites)
      return L.mean_loss("softmax_cross_entropy", logits, y), carry

    results.append(jax.value_and_grad(loss, has_aux=True)(params))
  for other in results[1:]:
    chex.assert_trees_all_close(other, results[0], rtol=1e-12, atol=1e-14)
  for bad in (0, -2, 1.5):
    with pytest.raises(ValueError, match="unroll"):
      small(unroll=bad)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_two_chunks_with_carry_equal_the_whole_sequence(num_layers):
  apply, params, _, model = small(num_layers=num_layers)
  seq = tokens((3, 12))
  c0 = model.initial_carry(3)
  f = clean(apply)
  whole, c_whole = f(params, (seq, c0))
  a, c1 = f(params, (seq[:, :5], c0))
  b, c2 = f(params, (seq[:, 5:], c1))
  np.testing.assert_allclose(
    jnp.concatenate([a, b], axis=1), whole, rtol=1e-5, atol=1e-6
  )
  jax.tree.map(
    lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6),
    c2,
    c_whole,
  )
  # ... and the carry matters: restarting from zeros gives other outputs.
  b0, _ = f(params, (seq[:, 5:], c0))
  assert not np.allclose(b0, b)


def test_objectives_return_the_new_carry_as_model_aux():
  apply, params, spec, model = small()
  x = (tokens((2, 4)), model.initial_carry(2))
  y = tokens((2, 4), seed=1)
  _, clean_carry = clean(apply)(params, x)
  for obj in (
    dropjax.objectives.none(apply, has_aux=True),
    dropjax.objectives.explicit_implicit(apply, rates=spec.rates, has_aux=True),
  ):
    _, aux = jax.jit(obj)(params, (x, y), jax.random.key(0))
    jax.tree.map(
      lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6),
      aux["model_aux"],
      clean_carry,
    )
  obj = dropjax.objectives.dropout_k(
    apply,
    rates=spec.rates,
    k=3,
    broadcast_axes=spec.broadcast_axes,
    has_aux=True,
  )
  _, aux = jax.jit(obj)(params, (x, y), jax.random.key(0))
  assert jax.tree.structure(aux["model_aux"]) == jax.tree.structure(clean_carry)


# ------------------------------------------- analytic regularizers, float64


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def tiny_lstm(
  num_layers, *, vocab=3, embed_dim=2, hidden_size=2, b=1, t=2, seed=0
):
  """A float64 tiny LSTM with a random non-zero initial carry."""
  apply, params, spec, model = lstm.make_lm(
    vocab,
    key=seed,
    embed_dim=embed_dim,
    hidden_size=hidden_size,
    num_layers=num_layers,
  )
  # Larger weights than the default init, so every term is well above
  # rounding error.
  ks = iter(jax.random.split(jax.random.key(seed + 100), 64))
  params = jax.tree.map(
    lambda a: jax.random.normal(next(ks), a.shape, jnp.float64), params
  )
  carry = tuple(
    (
      jax.random.normal(next(ks), (b, h), jnp.float64),
      jax.random.normal(next(ks), (b, h), jnp.float64),
    )
    for h in model.sizes
  )
  toks = jax.random.randint(next(ks), (b, t), 0, vocab)
  return apply, params, spec, (toks, carry)


def sampled_label_expectation(apply, params, x, rates, **kw):
  return _helpers.sampled_label_expectation(
    apply, params, x, rates, has_aux=True, **kw
  )


def test_sampled_label_explicit_is_unbiased_for_gauss_newton(x64):
  apply, params, spec, x = tiny_lstm(2)  # every kind of site: emb h0 out w_hh
  rates = {
    "emb": 0.3,
    "out": 0.4,
    **{n: 0.25 for n in spec.rates if n not in ("emb", "out")},
  }
  rates = S.resolve_rates(rates, S.site_shapes(apply, params, x, has_aux=True))
  expect = sampled_label_expectation(apply, params, x, rates)

  @jax.jit
  def gn_and_dtype(p):
    lin = S.linearize_sites(apply, p, x, has_aux=True)
    return (
      ex.explicit_from_linearization(lin, rates, estimator="gauss_newton"),
      jnp.zeros((), lin.outputs.dtype),
    )

  gn, z = gn_and_dtype(params)
  assert z.dtype == jnp.float64 and gn.dtype == jnp.float64
  assert float(gn) > 1e-3  # a non-trivial value
  assert abs(float(expect - gn)) < 1e-10, (float(expect), float(gn))


def test_locked_sampled_label_explicit_is_unbiased_for_gauss_newton(x64):
  """With the masks of emb, h0 and out locked over time (the LM's locked
  dropout), the sampled-label estimator that sums v ⊙ ∂L̃/∂v over time before
  squaring is unbiased for the locked Gauss–Newton term: every label vector
  enumerated. The locked term differs from the element-wise one."""
  apply, params, spec, x = tiny_lstm(2, t=3)  # 3**3 label vectors
  rates = S.resolve_rates(0.3, S.site_shapes(apply, params, x, has_aux=True))
  axes = {"emb": (1,), "h0": (1,), "out": (1,)}
  assert set(axes) < set(rates)  # the DropConnect sites stay element-wise
  expect = sampled_label_expectation(
    apply, params, x, rates, broadcast_axes=axes
  )

  @jax.jit
  def gn(p):
    lin = S.linearize_sites(apply, p, x, has_aux=True)
    return (
      ex.explicit_from_linearization(
        lin, rates, estimator="gauss_newton", broadcast_axes=axes
      ),
      ex.explicit_from_linearization(lin, rates, estimator="gauss_newton"),
    )

  locked, elementwise = gn(params)
  assert abs(float(expect - locked)) < 1e-10, (float(expect), float(locked))
  assert abs(float(locked / elementwise) - 1) > 0.01


def test_sampled_label_gradient_is_gauss_newton_gradient_with_constant_h(x64):
  apply, params, spec, x = tiny_lstm(1)
  rates = S.resolve_rates(0.4, spec.rates)
  expect = sampled_label_expectation(apply, params, x, rates, grad=True)

  def gn(p, hessian_gradient):
    lin = S.linearize_sites(apply, p, x, has_aux=True)
    return ex.explicit_from_linearization(
      lin, rates, estimator="gauss_newton", hessian_gradient=hessian_gradient
    )

  flat = lambda t: jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)])
  g_const = flat(jax.jit(jax.grad(gn), static_argnums=1)(params, False))
  g_full = flat(jax.jit(jax.grad(gn), static_argnums=1)(params, True))
  assert float(jnp.max(jnp.abs(flat(expect) - g_const))) < 1e-10
  assert float(jnp.max(jnp.abs(flat(expect) - g_full))) > 1e-4


def test_gauss_newton_matches_a_brute_force_jacobian(x64):
  """R_GN = Σ_site q/(2(1-q)) Σ_j v_j² [(1/N) Σ_t J_tᵀ H_t J_t]_jj, with the
  Jacobians of the logits with respect to each whole site tensor (the
  DropConnect site is one weight matrix shared by batch and time)."""
  apply, params, spec, x = tiny_lstm(2, b=2)
  rates = S.resolve_rates(0.3, spec.rates)

  @jax.jit
  def pieces(p):
    lin = S.linearize_sites(apply, p, x, has_aux=True)
    gn = ex.explicit_from_linearization(lin, rates, estimator="gauss_newton")
    zeros = {n: jnp.zeros_like(v) for n, v in lin.activations.items()}
    jac = jax.jacobian(lambda d: apply(p, x, S.perturbation_sites(d))[0])(zeros)
    return gn, lin.activations, jac, lin.outputs

  gn, acts, jac, z = pieces(params)
  k = z.shape[-1]
  p = jax.nn.softmax(z, -1).reshape(-1, k)
  hs = jax.vmap(lambda pp: jnp.diag(pp) - jnp.outer(pp, pp))(p)
  n = p.shape[0]
  total = 0.0
  for name, v in acts.items():
    j = jac[name].reshape(n, k, -1)  # [positions, K, elements]
    diag = jnp.einsum("tki,tkl,tli->i", j, hs, j) / n
    q = rates[name]
    total += q / (2 * (1 - q)) * jnp.sum(v.ravel() ** 2 * diag)
  np.testing.assert_allclose(float(gn), float(total), rtol=1e-10)


def test_implicit_is_zero_mean_with_dropout_covariance_over_all_signs(x64):
  # One unit per layer keeps the number of site elements small enough to
  # enumerate every sign pattern: emb 2 + w_hh0 4 + out 2 = 8 -> 256.
  apply, params, spec, x = tiny_lstm(1, embed_dim=1, hidden_size=1)
  rates = S.resolve_rates({"emb": 0.2, "w_hh0": 0.4, "out": 0.3}, spec.rates)
  y = jnp.array([[2, 0]])
  names = list(S.site_shapes(apply, params, x, has_aux=True))
  assert (
    sum(v.size for v in S.site_shapes(apply, params, x, has_aux=True).values())
    == 8
  )
  vals, grads, expected = _helpers.implicit_over_all_signs(
    apply, params, x, y, rates, names, has_aux=True
  )
  assert float(jnp.max(jnp.abs(vals))) > 1e-3
  assert abs(float(jnp.mean(vals))) < 1e-12
  assert float(jnp.max(jnp.abs(jnp.mean(grads, 0)))) < 1e-12
  # Covariance of the gradient noise = Σ_j q_j/(1-q_j) a_j a_jᵀ with
  # a_j = ∇_θ (v_j ∂L̄/∂v_j): the linearised dropout-noise covariance.
  cov = grads.T @ grads / grads.shape[0]
  np.testing.assert_allclose(cov, expected, atol=1e-11, rtol=1e-9)
