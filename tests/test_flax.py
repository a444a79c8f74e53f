"""The Flax NNX adapter: dropjax.flax.Dropout and functional()."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dropjax
import dropjax.train


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


# ----------------------------------------------------------------- BatchNorm


class BNNet(nnx.Module):
  """A small CNN with BatchNorm between two dropout sites."""

  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.drop_in = dropjax.flax.Dropout(0.2, rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.5, rngs=rngs)
    self.drop = dropjax.flax.Dropout(0.3, rngs=rngs)
    self.fc = nnx.Linear(4 * 6 * 6, 3, rngs=rngs)

  def __call__(self, x):
    h = self.drop(nnx.relu(self.bn(self.drop_in(self.conv(x)))))
    return self.fc(h.reshape(h.shape[0], -1))


BN_X = jax.random.normal(jax.random.key(3), (32, 6, 6, 1)) * 2.0 + 1.0
BN_Y = (BN_X[:, 2, 2, 0] > 1.0).astype(jnp.int32) + (BN_X[:, 0, 0, 0] > 2.0)


def _stats(model):
  return jax.tree.map(
    np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  )


def _bn_objectives(apply):
  O = dropjax.objectives
  return {
    "none": O.none(apply),
    "dropout": O.dropout(apply, rates=0.3),
    "dropout_k": O.dropout_k(apply, rates=0.3, k=2),
    "explicit": O.explicit(apply, rates=0.3),
    "explicit_implicit": O.explicit_implicit(apply, rates=0.3),
    "targeted_weight": O.targeted_weight(apply, gamma=0.5, alpha=0.5),
  }


def test_batchnorm_model_trains_under_every_regimen_and_is_not_mutated():
  model = BNNet(nnx.Rngs(0))
  before = _stats(model)
  apply, params = dropjax.flax.functional(model)
  assert sorted(params["bn"]) == ["bias", "mean", "scale", "var"]
  for name, obj in _bn_objectives(apply).items():
    result = dropjax.train.train(
      apply,
      obj,
      dropjax.train.make_optimizer("adam", 1e-2),
      jax.tree.map(lambda a: a[None], params),
      (BN_X, BN_Y),
      steps=6,
      batch_size=8,
      chunk_size=3,
      eval_data={"train": (BN_X, BN_Y)},
      devices=1,
      progress=False,
    )
    trained = jax.tree.map(lambda a: a[0], result.state.params)
    # The running statistics moved: the step wrote the forward pass's update.
    assert not np.allclose(trained["bn"]["mean"], 0.0), name
    assert not np.allclose(trained["bn"]["var"], 1.0), name
    # Evaluation ran in inference mode: it equals the stock module, given the
    # trained variables and put in eval mode.
    stock = BNNet(nnx.Rngs(0))
    state = nnx.state(stock, nnx.Any(nnx.Param, nnx.BatchStat))
    nnx.replace_by_pure_dict(state, trained)
    nnx.update(stock, state)
    stock.eval()
    loss = dropjax.losses.mean_loss("softmax_cross_entropy", stock(BN_X), BN_Y)
    got = result.history[-1]["eval"]["train"]["loss"][0]
    np.testing.assert_allclose(got, float(loss), rtol=1e-5, err_msg=name)
  # Neither functional() nor training touched the original model.
  jax.tree.map(np.testing.assert_array_equal, _stats(model), before)
  apply(params, BN_X, dropjax.identity_sites)  # eager call, training mode
  jax.jit(apply, static_argnums=2)(params, BN_X, dropjax.identity_sites)
  jax.tree.map(np.testing.assert_array_equal, _stats(model), before)


def test_batchnorm_update_comes_from_the_documented_pass():
  model = BNNet(nnx.Rngs(1))
  apply, params = dropjax.flax.functional(model)
  objs = _bn_objectives(apply)
  key = jax.random.key(5)
  batch = (BN_X, BN_Y)

  def update_of(name):
    return objs[name](params, batch, key)[1]["model_aux"].values

  def update_under(sites):
    return apply(params, BN_X, sites)[1].values

  clean = update_under(dropjax.identity_sites)
  for name in ("none", "explicit", "explicit_implicit"):
    jax.tree.map(np.testing.assert_array_equal, update_of(name), clean)
  # dropout: the masked pass (the objective's mask key is split(key)[0]).
  mask_key = jax.random.split(jax.random.split(key)[0], 1)[0]
  masked = update_under(dropjax.dropout_sites(mask_key, 0.3))
  jax.tree.map(np.testing.assert_array_equal, update_of("dropout"), masked)
  # The site drop_in feeds BatchNorm, so the two passes differ.
  assert not np.allclose(masked["bn"]["var"], clean["bn"]["var"])
  # Inference mode updates nothing.
  same = apply(params, BN_X, dropjax.sites.inference_sites)[1].values
  jax.tree.map(np.testing.assert_array_equal, same, _take_stats(params))


def _take_stats(params):
  return {"bn": {"mean": params["bn"]["mean"], "var": params["bn"]["var"]}}


def test_state_update_names_only_existing_leaves():
  params = {"bn": {"mean": jnp.zeros(2), "scale": jnp.ones(2)}}
  new = dropjax.sites.apply_state_update(
    params, dropjax.sites.StateUpdate({"bn": {"mean": jnp.ones(2)}})
  )
  np.testing.assert_array_equal(new["bn"]["mean"], 1.0)
  assert new["bn"]["scale"] is params["bn"]["scale"]
  with pytest.raises(KeyError, match="bn/var"):
    dropjax.sites.apply_state_update(
      params, dropjax.sites.StateUpdate({"bn": {"var": jnp.ones(2)}})
    )


def test_batchnorm_step_equals_stock_flax_training_step():
  """One SGD step through the engine equals NNX's own training step with
  the model in train mode (parameters and running statistics)."""
  model = BNNet(nnx.Rngs(2))
  model.drop.rate = model.drop_in.rate = 0.0  # stock = `none` exactly
  apply, params = dropjax.flax.functional(model)
  opt = optax.sgd(0.1)
  step = jax.jit(
    dropjax.train.make_train_step(dropjax.objectives.none(apply), opt)
  )
  state, _ = step(
    dropjax.train.init_state(params, opt), (BN_X, BN_Y), jax.random.key(0)
  )

  stock = BNNet(nnx.Rngs(2))
  stock.drop.rate = stock.drop_in.rate = 0.0
  optimizer = nnx.Optimizer(stock, opt, wrt=nnx.Param)

  def loss_fn(m):
    return dropjax.losses.mean_loss("softmax_cross_entropy", m(BN_X), BN_Y)

  grads = nnx.grad(loss_fn)(stock)
  optimizer.update(stock, grads)
  want = nnx.to_pure_dict(nnx.state(stock, nnx.Any(nnx.Param, nnx.BatchStat)))
  want = jax.tree.map(np.asarray, want)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    state.params,
    want,
  )
