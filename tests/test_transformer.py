"""Attention sites, the MultiHeadAttention drop-in and the Transformer LM.

The derivation checks run a tiny Transformer in float64 and enumerate
sampled labels, Rademacher signs and dropout masks.
"""

import functools

import chex
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropjax
from dropjax import attention as A
from dropjax import explicit as ex
from dropjax import losses as L
from dropjax import objectives as O
from dropjax import sites as S
from dropjax import train
from dropjax.models import transformer as T

import _helpers


def qkv(b=2, q=5, k=5, h=3, hk=None, d=4, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  hk = h if hk is None else hk
  return (
    jax.random.normal(ks[0], (b, q, h, d)),
    jax.random.normal(ks[1], (b, k, hk, d)),
    jax.random.normal(ks[2], (b, k, hk, d)),
  )


# ----------------------------------------------------- the attention function


def test_attention_equals_flax_with_causal_padding_bias_and_gqa():
  q, k, v = qkv()
  valid = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  bias = 0.3 * jax.random.normal(jax.random.key(9), (1, 3, 5, 5))
  for kw, flax_kw in (
    ({}, {}),
    ({"causal": True}, {"mask": A.causal_mask(5)}),
    ({"mask": A.padding_mask(valid)}, {"mask": A.padding_mask(valid)}),
    ({"bias": bias, "causal": True}, {"bias": bias, "mask": A.causal_mask(5)}),
  ):
    ours = A.dot_product_attention(q, k, v, dropjax.identity_sites, **kw)
    ref = nnx.dot_product_attention(q, k, v, **flax_kw)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  # Grouped-query attention: 6 query heads share 2 key/value heads.
  q, k, v = qkv(h=6, hk=2)
  ours = A.dot_product_attention(q, k, v, dropjax.identity_sites, causal=True)
  ref = nnx.dot_product_attention(q, k, v, mask=A.causal_mask(5))
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="heads"):
    A.dot_product_attention(*qkv(h=3, hk=2), dropjax.identity_sites)
  with pytest.raises(ValueError, match="batch, kv_len"):
    A.padding_mask(jnp.ones((5,), bool))


def test_the_site_is_the_probabilities_after_the_softmax():
  q, k, v = qkv(q=4, k=6)
  seen = {}

  def record(name, h):
    seen[name] = h
    return h

  A.dot_product_attention(q, k, v, record, site="att", causal=True)
  p = seen["att"]
  assert p.shape == (2, 3, 4, 6)  # [batch, heads, q_len, kv_len]
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  # Causal with K > Q: query i sees keys j <= i + 2, nothing after.
  assert float(jnp.max(p * ~A.causal_mask(4, 6))) == 0.0
  # What the site returns is what multiplies the values.
  zero = A.dot_product_attention(q, k, v, lambda n, h: 0 * h)
  assert float(jnp.max(jnp.abs(zero))) == 0.0
  half = A.dot_product_attention(q, k, v, lambda n, h: 0.5 * h)
  full = A.dot_product_attention(q, k, v, dropjax.identity_sites)
  np.testing.assert_allclose(half, 0.5 * full, rtol=1e-6)


# ------------------------------------------------- the MultiHeadAttention drop-in


def _pair(**kw):
  args = dict(num_heads=2, in_features=8, qkv_features=8, decode=False)
  args.update(kw)
  stock = nnx.MultiHeadAttention(**args, rngs=nnx.Rngs(0))
  ours = dropjax.flax.MultiHeadAttention(**args, rngs=nnx.Rngs(0))
  return stock, ours


def _x(b=2, t=5, f=8, seed=1):
  return jax.random.normal(jax.random.key(seed), (b, t, f))


def test_drop_in_has_the_same_weights_outputs_and_gradients():
  stock, ours = _pair(dropout_rate=0.2)
  x, mask = _x(), A.causal_mask(5)
  # Same parameters from the same Rngs (the site child draws nothing).
  chex.assert_trees_all_equal(
    nnx.to_pure_dict(nnx.state(stock, nnx.Param)),
    nnx.to_pure_dict(nnx.state(ours, nnx.Param)),
  )
  # Outside dropjax it *is* Flax's layer: deterministic and stochastic.
  for det in (True, False):
    np.testing.assert_array_equal(
      ours(x, mask=mask, deterministic=det),
      stock(x, mask=mask, deterministic=det),
    )
  # Inside dropjax with identity sites: the same outputs and gradients.
  apply, params = dropjax.flax.functional(ours)
  graphdef, p_stock, rest = nnx.split(stock, nnx.Param, ...)

  def stock_loss(p):
    m = nnx.merge(graphdef, p, rest)
    return jnp.sum(jnp.sin(m(x, deterministic=True)))

  def our_loss(p):
    return jnp.sum(jnp.sin(apply(p, x, dropjax.identity_sites)))

  stock.set_attributes(deterministic=True)
  np.testing.assert_allclose(
    apply(params, x, dropjax.identity_sites),
    stock(x, mask=None),
    rtol=1e-6,
    atol=1e-6,
  )
  g_stock = nnx.to_pure_dict(jax.grad(stock_loss)(p_stock))
  g_ours = jax.grad(our_loss)(params)
  chex.assert_trees_all_close(g_ours, g_stock, rtol=1e-5, atol=1e-6)


def test_drop_in_site_names_rates_and_locked_axes():
  class Net(nnx.Module):
    def __init__(self, rngs, **kw):
      self.att = dropjax.flax.MultiHeadAttention(
        2, 8, decode=False, rngs=rngs, **kw
      )

    def __call__(self, x):
      return self.att(x)

  spec = dropjax.flax.site_spec(Net(nnx.Rngs(0), dropout_rate=0.3))
  # Flax's default broadcast_dropout=True: one mask shared by batch and heads.
  assert spec.rates == {"att.attention_dropout": 0.3}
  assert spec.broadcast_axes == {"att.attention_dropout": (0, 1)}
  spec = dropjax.flax.site_spec(
    Net(nnx.Rngs(0), dropout_rate=0.3, broadcast_dropout=False, site="p")
  )
  assert spec.rates == {"p": 0.3} and spec.broadcast_axes == {}

  net = Net(nnx.Rngs(0), dropout_rate=0.5)
  apply, params = dropjax.flax.functional(net)
  spec = dropjax.flax.site_spec(net)
  seen = {}
  dropped = S.dropout_sites(
    jax.random.key(3), spec.rates, broadcast_axes=spec.broadcast_axes
  )

  def record(name, h):
    out = dropped(name, h)
    seen[name] = (h, out)
    return out

  apply(params, _x(b=3), record)
  h, out = seen["att.attention_dropout"]
  ratio = np.asarray(out / h)  # the mask over 1 - q: 0 or 2
  assert set(np.unique(ratio.round(6))) == {0.0, 2.0}
  np.testing.assert_array_equal(ratio, np.broadcast_to(ratio[:1, :1], h.shape))


def test_drop_in_refusals():
  with pytest.raises(ValueError, match="custom attention_fn"):
    dropjax.flax.MultiHeadAttention(
      2, 8, attention_fn=lambda *a, **k: None, rngs=nnx.Rngs(0)
    )

  class Stock(nnx.Module):
    def __init__(self, rngs):
      self.att = nnx.MultiHeadAttention(
        2, 8, dropout_rate=0.1, decode=False, rngs=rngs
      )

    def __call__(self, x):
      return self.att(x)

  with pytest.raises(
    ValueError, match="'att'.*dropjax.flax.MultiHeadAttention"
  ):
    dropjax.flax.functional(Stock(nnx.Rngs(0)))
  _, ours = _pair(dropout_rate=0.1)
  apply, params = dropjax.flax.functional(ours)
  with pytest.raises(ValueError, match="broadcast_dropout=False"):
    apply(params, jnp.ones((2, 2, 5, 8)), dropjax.identity_sites)


# ------------------------------------------------------------- the model


def test_model_sites_shapes_rates_and_errors():
  apply, params, spec, model = T.make_lm(
    11,
    embed_dim=8,
    num_heads=2,
    num_layers=2,
    ff_dim=12,
    max_len=6,
    dropout_att=0.2,
    dropout_ff=0.3,
  )
  toks = jnp.zeros((3, 5), jnp.int32)
  shapes = S.site_shapes(apply, params, toks)
  assert set(shapes) == set(T.site_names(2)) == set(spec.rates)
  assert shapes["emb"].shape == shapes["final"].shape == (3, 5, 8)
  assert shapes["att1"].shape == (3, 2, 5, 5)
  assert shapes["ff0"].shape == (3, 5, 12)
  assert shapes["att_out0"].shape == shapes["ff_out1"].shape == (3, 5, 8)
  assert spec.rates["att0"] == 0.2 and spec.rates["ff1"] == 0.3
  assert spec.rates["att_out1"] == spec.rates["emb"] == 0.1
  assert spec.broadcast_axes == {}
  assert {T.site_kind(n) for n in spec.rates} == set(T.SITE_KINDS)
  with pytest.raises(KeyError, match="not a Transformer site"):
    T.site_kind("h0")
  with pytest.raises(ValueError, match="max_len"):
    apply(params, jnp.zeros((1, 7), jnp.int32), dropjax.identity_sites)
  with pytest.raises(ValueError, match="divisible"):
    T.make_lm(11, embed_dim=6, num_heads=4)
  with pytest.raises(ValueError, match="positions"):
    T.make_lm(11, positions="rotary")
  with pytest.raises(ValueError, match="rate"):
    T.make_lm(11, dropout_att=1.0)


def test_model_is_causal_runs_standalone_and_variants_build():
  for kw in ({}, {"positions": "sinusoidal", "tie_weights": False}):
    apply, params, spec, model = T.make_lm(
      7, embed_dim=8, num_heads=2, num_layers=1, max_len=8, **kw
    )
    toks = jax.random.randint(jax.random.key(0), (2, 6), 0, 7)
    out = apply(params, toks, dropjax.identity_sites)
    # Changing a later token leaves earlier positions' logits unchanged.
    out2 = apply(params, toks.at[:, 4].set(3), dropjax.identity_sites)
    np.testing.assert_allclose(out[:, :4], out2[:, :4], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out[:, 4:], out2[:, 4:])
    model.eval()  # the plain NNX module, no dropout: the same function
    np.testing.assert_allclose(model(toks), out, rtol=1e-6, atol=1e-6)
    model.train()
    assert not np.allclose(model(toks), out)  # its own dropout is on
  sin = T.sinusoidal_positions(4, 5)
  assert sin.shape == (4, 5) and float(sin[0, 0]) == 0.0


REGIMENS = {
  "none": lambda a, s: O.none(a),
  "dropout": lambda a, s: O.dropout(a, rates=s.rates),
  "dropout_k": lambda a, s: O.dropout_k(a, rates=s.rates, k=2),
  "fix_noise": lambda a, s: O.dropout_k_fix_noise(a, rates=s.rates, k=2),
  "dropout_k_implicit": lambda a, s: O.dropout_k_implicit(
    a, rates=s.rates, k=2
  ),
  "implicit": lambda a, s: O.implicit(a, rates=s.rates),
  "explicit": lambda a, s: O.explicit(a, rates=s.rates),
  "explicit_implicit": lambda a, s: O.explicit_implicit(a, rates=s.rates),
  "l2": lambda a, s: O.l2(a, coef=1e-3),
}


def test_every_regimen_runs_jitted_with_seeds_as_a_vmap_axis():
  kw = dict(embed_dim=8, num_heads=2, num_layers=1, max_len=8)
  apply, _, spec, _ = T.make_lm(7, **kw)
  params = train.init_seeds(T.make_lm_init(7, **kw), (0, 1))
  x = jax.random.randint(jax.random.key(0), (4, 6), 0, 7)
  keys = jax.random.split(jax.random.key(1), 2)
  for name, make in REGIMENS.items():
    obj = make(apply, spec)
    grad = jax.jit(
      jax.vmap(jax.grad(lambda p, k: obj(p, (x, (x + 1) % 7), k)[0]))
    )(params, keys)
    flat = jnp.concatenate([a.reshape(2, -1) for a in jax.tree.leaves(grad)], 1)
    assert bool(jnp.all(jnp.isfinite(flat))), name
    # The two seeds differ (weights; and masks for the stochastic regimens).
    assert not np.allclose(flat[0], flat[1]), name


def test_transformer_trains_on_the_engine_sharded_over_devices():
  """Two seeds as a vmap axis, the batch sharded over 2 (fake CPU) devices;
  dropout and explicit + implicit both learn a toy next-token rule."""
  kw = dict(embed_dim=8, num_heads=2, num_layers=1, max_len=8)
  apply, _, spec, _ = T.make_lm(7, **kw)
  init = T.make_lm_init(7, **kw)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 7, size=(32, 6)).astype(np.int32)
  y = (x + 1) % 7  # next token = this one + 1
  opt = train.make_optimizer("adam", 3e-2)
  for name in ("dropout", "explicit_implicit"):
    result = train.train(
      apply,
      REGIMENS[name](apply, spec),
      opt,
      init,
      (x, y),
      steps=30,
      seeds=(0, 1),
      batch_size=16,
      chunk_size=30,
      devices=2,
      progress=False,
    )
    losses = np.asarray(result.history[-1]["train"]["data_loss"])
    assert losses.shape == (2,) and np.all(np.isfinite(losses)), name
    assert np.all(losses < np.log(7) - 0.3), (name, losses)


# ------------------------------------------------- derivations, float64


def tiny(seed=0, *, embed_dim=3, ff_dim=2, heads=1, b=1, t=2, vocab=3, **kw):
  apply, params, spec, _ = T.make_lm(
    vocab,
    key=seed,
    embed_dim=embed_dim,
    num_heads=heads,
    num_layers=1,
    ff_dim=ff_dim,
    max_len=t,
    tie_weights=False,
    **kw,
  )
  ks = iter(jax.random.split(jax.random.key(seed + 100), 64))
  params = jax.tree.map(
    lambda a: 0.8 * jax.random.normal(next(ks), a.shape, jnp.float64), params
  )
  toks = jax.random.randint(next(ks), (b, t), 0, vocab)
  return apply, params, spec, toks


def test_sampled_label_explicit_is_unbiased_for_gauss_newton(x64):
  apply, params, spec, x = tiny(t=3)  # 3**3 label sequences
  rates = {n: 0.1 + 0.05 * i for i, n in enumerate(sorted(spec.rates))}
  expect = _helpers.sampled_label_expectation(apply, params, x, rates)

  @jax.jit
  def gn(p):
    lin = S.linearize_sites(apply, p, x)
    return ex.explicit_from_linearization(lin, rates, estimator="gauss_newton")

  value = gn(params)
  assert value.dtype == jnp.float64 and float(value) > 1e-3
  assert abs(float(expect - value)) < 1e-12, (float(expect), float(value))


def test_implicit_is_zero_mean_with_the_dropout_covariance_over_all_signs(x64):
  apply, params, spec, x = tiny()
  names = ("att0", "ff0")  # 4 + 4 elements -> 256 sign patterns
  rates = {n: 0.0 for n in spec.rates} | {"att0": 0.3, "ff0": 0.2}
  y = jnp.array([[2, 0]])
  vals, grads, expected = _helpers.implicit_over_all_signs(
    apply, params, x, y, rates, names
  )
  assert float(jnp.max(jnp.abs(vals))) > 1e-3
  assert abs(float(jnp.mean(vals))) < 1e-12
  assert float(jnp.max(jnp.abs(jnp.mean(grads, 0)))) < 1e-12
  cov = grads.T @ grads / grads.shape[0]
  assert float(jnp.max(jnp.abs(expected))) > 1e-3
  np.testing.assert_allclose(cov, expected, atol=1e-11, rtol=1e-9)


def _gap_and_terms(apply, params, x, y, site, q):
  """E_mask[L̄] - L̄ over every mask of ``site``, ``R_exp`` (Gauss–Newton)
  and the exact second-order Taylor term with the full Hessian."""
  total, gap, r_gn, taylor = _gap_terms(apply, params, x, y, site, q)
  np.testing.assert_allclose(float(total), 1.0, atol=1e-12)
  return float(gap), float(r_gn), float(taylor)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _gap_terms(apply, params, x, y, site, q):
  loss = "softmax_cross_entropy"
  expected, total = _helpers.expected_dropout_loss(
    apply, params, x, y, site, q, loss
  )
  gap = expected - _helpers.clean_loss(apply, params, x, y, loss)
  lin = S.linearize_sites(apply, params, x)
  r_gn = ex.explicit_from_linearization(
    lin,
    {n: (q if n == site else 0.0) for n in lin.activations},
    estimator="gauss_newton",
  )
  v = lin.activations[site]

  def loss_at(h):
    sites = lambda n, a: h if n == site else a
    return L.mean_loss(loss, apply(params, x, sites), y)

  hdiag = jnp.diag(jax.hessian(loss_at)(v).reshape(v.size, v.size))
  taylor = q / (2 * (1 - q)) * jnp.sum(v.ravel() ** 2 * hdiag)
  return total, gap, r_gn, taylor


def test_expected_dropout_gap_against_the_explicit_regularizer(x64):
  """E_mask[L̄] - L̄, every mask of one site enumerated, against R_exp.

  * ``final`` (the decoder input; the logits are linear in it): R_exp's
    Gauss–Newton form is the exact second-order term, and gap / R_exp -> 1
    as the decoder shrinks (higher-order terms vanish faster).
  * ``att0`` (the attention probabilities, LayerNorms and the feed-forward
    layer behind them): gap / (second-order Taylor term) -> 1 as the
    attention branch shrinks; R_exp is that term without the network's own
    curvature (the Gauss–Newton form, arXiv:2002.12915 §2), and on this
    tiny random model it is under 10 % of it at every scale.
  """
  y = jnp.array([[1, 2]])
  q, scales = 0.3, (0.1, 0.01, 0.001)

  def errors(site, shrink):
    errs, gn = {}, {}
    apply, params0, _, x = tiny()  # one apply: one compilation per site
    for s in scales:
      params = jax.tree.map(lambda a: a, params0)
      shrink(params, s)
      gap, r_gn, taylor = _gap_and_terms(apply, params, x, y, site, q)
      errs[s], gn[s] = abs(gap / taylor - 1), r_gn / taylor
    # Higher-order terms are O(s) relative to the second-order one.
    assert errs[0.001] < 2e-3, errs
    assert errs[0.1] > 5 * errs[0.01] > 25 * errs[0.001], errs
    return gn

  def decoder(p, s):
    p["decoder_kernel"] = s * p["decoder_kernel"]

  def attention_out(p, s):
    out = p["blocks"][0]["att"]["out"]
    out["kernel"] = s * out["kernel"]

  gn = errors("final", decoder)
  np.testing.assert_allclose(list(gn.values()), 1.0, rtol=1e-9)  # GN exact
  gn = errors("att0", attention_out)
  # Behind the attention probabilities the network's own curvature, which
  # Gauss–Newton leaves out, carries most of the second-order term here.
  assert all(0 < r < 0.1 for r in gn.values()), gn
