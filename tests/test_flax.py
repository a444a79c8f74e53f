"""The Flax NNX adapter: dropjax.flax.Dropout and functional()."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dropjax


class Net(nnx.Module):
  def __init__(self, rngs, drop_cls=dropjax.flax.Dropout):
    self.l1 = nnx.Linear(4, 8, rngs=rngs)
    self.l2 = nnx.Linear(8, 3, rngs=rngs)
    if drop_cls is nnx.Dropout:
      self.d1 = nnx.Dropout(0.3, rngs=rngs)
    else:
      self.d1 = drop_cls(0.3, site="h1", broadcast_dims=(0,), rngs=rngs)

  def __call__(self, x):
    return self.l2(self.d1(nnx.relu(self.l1(x))))


X = jax.random.normal(jax.random.key(0), (5, 4))


def test_standalone_layer_behaves_exactly_like_nnx_dropout():
  ours = dropjax.flax.Dropout(0.4, site="h", rngs=nnx.Rngs(dropout=3))
  stock = nnx.Dropout(0.4, rngs=nnx.Rngs(dropout=3))
  x = jnp.ones((6, 7))
  np.testing.assert_array_equal(ours(x), stock(x))
  np.testing.assert_array_equal(ours(x), stock(x))  # streams advance
  ours.eval()
  np.testing.assert_array_equal(ours(x), x)


def test_functional_apply_with_identity_sites_is_the_eval_model():
  model = Net(nnx.Rngs(1))
  apply, params = dropjax.flax.functional(model)
  model.eval()
  np.testing.assert_allclose(
    apply(params, X, dropjax.identity_sites), model(X), rtol=1e-6
  )
  assert set(params) == {"l1", "l2"}


def test_sites_are_routed_and_spec_is_reported():
  model = Net(nnx.Rngs(1))
  apply, params = dropjax.flax.functional(model)
  spec = dropjax.flax.site_spec(model)
  assert spec.rates == {"h1": 0.3}
  assert spec.broadcast_axes == {"h1": (0,)}
  assert list(dropjax.site_shapes(apply, params, X)) == ["h1"]
  seen = []
  apply(params, X, lambda n, h: seen.append((n, h.shape)) or h)
  assert seen == [("h1", (5, 8))]


def test_functional_params_gradients_match_the_module():
  model = Net(nnx.Rngs(2))
  apply, params = dropjax.flax.functional(model)
  obj = dropjax.objectives.explicit_implicit(apply, rates=0.3)
  y = jnp.array([0, 1, 2, 0, 1])
  loss, grads = jax.jit(
    jax.value_and_grad(lambda p: obj(p, (X, y), jax.random.key(0))[0])
  )(params)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert bool(jnp.isfinite(loss))


def test_site_helper_outside_apply_is_identity():
  h = jnp.ones((2, 2))
  np.testing.assert_array_equal(dropjax.flax.site("w", h), h)
  with dropjax.flax.using_sites(lambda n, h: 2 * h):
    np.testing.assert_array_equal(dropjax.flax.site("w", h), 2 * h)
  np.testing.assert_array_equal(dropjax.flax.site("w", h), h)


def test_bad_layers():
  with pytest.raises(ValueError, match="drop probability"):
    dropjax.flax.Dropout(1.0, site="h")
  with pytest.raises(ValueError, match="site"):
    dropjax.flax.Dropout(0.5, site="")

  class Dup(nnx.Module):
    def __init__(self):
      self.a = dropjax.flax.Dropout(0.5, site="h")
      self.b = dropjax.flax.Dropout(0.5, site="h")

  with pytest.raises(ValueError, match="share the site name"):
    dropjax.flax.site_spec(Dup())


class _Block(nnx.Module):
  def __init__(self, rngs, drop):
    self.lin = nnx.Linear(4, 4, rngs=rngs)
    self.dropout = drop(0.3, rngs=rngs)

  def __call__(self, x):
    return self.dropout(nnx.relu(self.lin(x)))


class _Net(nnx.Module):
  """Two blocks and a head, dropout layers built by ``drop``."""

  def __init__(self, rngs, drop):
    self.blocks = nnx.List([_Block(rngs, drop), _Block(rngs, drop)])
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    for b in self.blocks:
      x = b(x)
    return self.head(x)


def test_only_the_import_changes_sites_are_named_from_their_paths():
  model = _Net(nnx.Rngs(0), dropjax.flax.Dropout)  # no site= anywhere
  spec = dropjax.flax.site_spec(model)
  assert spec.rates == {"blocks.0.dropout": 0.3, "blocks.1.dropout": 0.3}
  apply, params = dropjax.flax.functional(model)
  batch = (jnp.ones((5, 4)), jnp.array([0, 1, 2, 0, 1]))
  for make in (
    dropjax.objectives.dropout,
    dropjax.objectives.explicit_implicit,
  ):
    obj = make(apply, rates=spec.rates)
    (loss, aux), g = jax.value_and_grad(obj, has_aux=True)(
      params, batch, jax.random.key(0)
    )
    assert jnp.isfinite(loss)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))
  # The sites are real: identity sites give the eval model, dropout differs.
  x = batch[0]
  model.eval()
  np.testing.assert_allclose(
    apply(params, x, dropjax.sites.identity_sites), model(x), rtol=1e-6
  )
  dropped = apply(
    params, x, dropjax.sites.dropout_sites(jax.random.key(1), 0.9)
  )
  assert not np.allclose(dropped, model(x))


def test_stock_nnx_dropout_is_refused_with_the_layer_to_swap():
  model = _Net(nnx.Rngs(0), nnx.Dropout)
  for fn in (dropjax.flax.functional, dropjax.flax.site_spec):
    with pytest.raises(ValueError) as e:
      fn(model)
    msg = str(e.value)
    assert "'blocks.0.dropout' is a stock flax.nnx.Dropout" in msg
    assert "dropjax.flax.Dropout(rate)" in msg
  # A stock layer that never drops (rate 0, or deterministic) is harmless.
  quiet = _Net(nnx.Rngs(0), lambda q, rngs: nnx.Dropout(0.0, rngs=rngs))
  assert dropjax.flax.site_spec(quiet).rates == {}


def test_a_given_name_that_collides_with_a_path_name_is_refused():
  class Clash(nnx.Module):
    def __init__(self, rngs):
      self.a = dropjax.flax.Dropout(0.5, rngs=rngs)  # named "a"
      self.b = dropjax.flax.Dropout(0.5, site="a", rngs=rngs)

  with pytest.raises(ValueError, match="share the site name 'a': 'a' and 'b'"):
    dropjax.flax.site_spec(Clash(nnx.Rngs(0)))


def _both(build, call):
  """``call(layer)`` for a stock ``nnx.Dropout`` and a
  ``dropjax.flax.Dropout`` built alike (``build(cls)``, no site name):
  ``("ok", output)`` or ``("error", type, message)`` for each."""
  out = []
  for cls in (nnx.Dropout, dropjax.flax.Dropout):
    layer = build(cls)
    try:
      out.append(("ok", np.asarray(call(layer))))
    except Exception as e:  # noqa: BLE001 -- compared, not swallowed
      out.append(("error", type(e), str(e)))
  return out


@pytest.mark.parametrize(
  "case",
  [
    "layer rngs",
    "call rngs",
    "call rngs override layer rngs",
    "deterministic at the call",
    "deterministic attribute, call overrides",
    "no rngs anywhere",
    "under nnx.jit, twice",
  ],
)
def test_drop_in_for_nnx_dropout_in_each_calling_convention(case):
  """The behaviours a user of nnx.Dropout relies on (where the random
  stream comes from, how `deterministic` is resolved, the error without
  rngs, jit), checked against stock nnx.Dropout itself: only the class
  differs, and no site name is given."""
  x = jnp.ones((3, 10))
  layer_rngs = lambda cls: cls(0.5, rngs=nnx.Rngs(dropout=0))  # noqa: E731
  bare = lambda cls: cls(0.5)  # noqa: E731
  cases = {
    "layer rngs": (layer_rngs, lambda m: m(x)),
    "call rngs": (bare, lambda m: m(x, rngs=nnx.Rngs(dropout=1))),
    "call rngs override layer rngs": (
      layer_rngs,
      lambda m: m(x, rngs=nnx.Rngs(dropout=1)),
    ),
    "deterministic at the call": (
      layer_rngs,
      lambda m: m(x, deterministic=True),
    ),
    "deterministic attribute, call overrides": (
      lambda cls: cls(0.5, deterministic=True, rngs=nnx.Rngs(dropout=0)),
      lambda m: m(x, deterministic=False),
    ),
    "no rngs anywhere": (bare, lambda m: m(x)),
    "under nnx.jit, twice": (
      layer_rngs,
      lambda m: jnp.stack([nnx.jit(lambda m, x: m(x))(m, x) for _ in "ab"]),
    ),
  }
  stock, ours = _both(*cases[case])
  assert stock[0] == ours[0], (stock, ours)
  if stock[0] == "ok":
    np.testing.assert_array_equal(ours[1], stock[1])
    if case not in ("deterministic at the call",):
      assert (ours[1] == 0).any()  # dropout did act
    if case == "under nnx.jit, twice":
      assert (ours[1][0] != ours[1][1]).any()  # the stream advanced
  else:
    assert ours[1] is stock[1] and ours[2] == stock[2]
