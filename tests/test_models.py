"""Tests for dropjax.models: architecture, naming, init, and the Flax adapter
against a hand-written pure-JAX model."""

import math

import chex
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dropjax.flax as djflax
from dropjax import models
from dropjax import objectives
from dropjax import sites as sites_lib

SIZES = (784, 48, 40, 32, 10)  # distinct widths catch transposed weights


def ref_mlp_apply(params, x, sites):
  """The MLP written by hand in pure JAX (the reference for the adapter)."""
  h = jnp.reshape(x, (x.shape[0], -1))
  hidden = sorted(k for k in params if k.startswith("hidden_"))
  for name in hidden:
    h = jax.nn.relu(h @ params[name]["kernel"] + params[name]["bias"])
    h = sites(name, h)
  return h @ params["output"]["kernel"] + params["output"]["bias"]


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(n, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, size=n).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(y)


def _abstract(name, **kwargs):
  """The model built abstractly (shapes only, no FLOPs or compilation)."""
  model = nnx.eval_shape(
    lambda: models.MODELS[name](**kwargs, rngs=nnx.Rngs(0))
  )
  return djflax.functional(model)[1], djflax.site_spec(model).rates


@pytest.fixture(scope="module")
def small_mlp():
  model = models.build("mlp", 5, layer_sizes=SIZES)
  apply, params = djflax.functional(model)
  return model, apply, params, djflax.site_spec(model).rates


def _close(a, b, rtol=1e-5, atol=1e-6):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)
  assert jax.tree.structure(a) == jax.tree.structure(b)


# ------------------------------------------------------------------- MLP


def test_mlp_default_architecture_and_names():
  apply, params, rates = models.make_model("mlp", key=0)
  assert list(params) == [
    "hidden_0",
    "hidden_1",
    "hidden_2",
    "hidden_3",
    "output",
  ]
  assert rates == {f"hidden_{i}": 0.5 for i in range(4)}
  shapes = [(784, 256), (256, 256), (256, 256), (256, 256), (256, 10)]
  kernels = [l for l in jax.tree.leaves(params) if l.ndim == 2]
  assert [k.shape for k in kernels] == shapes  # flatten order == depth order
  for name in params:
    np.testing.assert_array_equal(params[name]["bias"], 0.0)
  # Glorot uniform: |w| <= sqrt(6 / (fan_in + fan_out)), variance 2/(in+out).
  k = np.asarray(params["hidden_1"]["kernel"])
  limit = math.sqrt(6 / 512)
  assert np.abs(k).max() <= limit
  np.testing.assert_allclose(k.var(), 2 / 512, rtol=0.05)
  out = apply(params, jnp.zeros((3, 28, 28, 1)), sites_lib.identity_sites)
  chex.assert_shape(out, (3, 10))
  assert out.dtype == jnp.float32
  shapes = sites_lib.site_shapes(apply, params, jnp.zeros((3, 28, 28, 1)))
  assert list(shapes) == [f"hidden_{i}" for i in range(4)]
  assert all(s.shape == (3, 256) for s in shapes.values())


@pytest.mark.parametrize("shape", [(784, 256), (3, 3, 4, 8), (5, 7)])
def test_glorot_uniform_equals_flax(shape):
  key = jax.random.key(9)
  np.testing.assert_array_equal(
    models.glorot_uniform(key, shape),
    nnx.initializers.glorot_uniform()(key, shape, jnp.float32),
  )


def test_mlp_many_layers_sort_in_depth_order():
  sizes = (5,) + tuple(range(20, 32)) + (3,)  # 12 hidden layers
  params, rates = _abstract("mlp", layer_sizes=sizes)
  assert list(rates) == [f"hidden_{i:02d}" for i in range(12)]
  kernels = [l for l in jax.tree.leaves(params) if len(l.shape) == 2]
  assert [k.shape for k in kernels] == list(zip(sizes[:-1], sizes[1:]))
  assert models.layer_names(3) == ["hidden_0", "hidden_1", "hidden_2"]
  assert models.layer_names(11)[-1] == "hidden_10"


def test_mlp_per_layer_rates_and_errors():
  _, rates = _abstract("mlp", layer_sizes=(4, 3, 3, 2), dropout_rate=(0.1, 0.3))
  assert rates == {"hidden_0": 0.1, "hidden_1": 0.3}
  with pytest.raises(ValueError, match="one rate per hidden layer"):
    models.make_model("mlp", layer_sizes=(4, 3, 3, 2), dropout_rate=(0.1,))
  with pytest.raises(ValueError):
    models.make_model("mlp", layer_sizes=(4, 3, 2), dropout_rate=1.0)
  with pytest.raises(ValueError, match=">= 2 positive"):
    models.make_model("mlp", layer_sizes=(4,))
  with pytest.raises(ValueError, match="unknown model 'resnet'"):
    models.make_model("resnet")
  with pytest.raises(ValueError, match="unknown model 'resnet'"):
    models.make_init("resnet")
  with pytest.raises(TypeError, match="typed"):
    models.make_model("mlp", key=jax.random.PRNGKey(0))


def test_mlp_as_plain_nnx_module(small_mlp):
  """Outside dropjax the model is an ordinary NNX module with dropout."""
  model, apply, params, _ = small_mlp
  x, _ = _batch(8)
  model.eval()
  np.testing.assert_allclose(
    model(x), apply(params, x, sites_lib.identity_sites), rtol=1e-5, atol=1e-6
  )
  model.train()
  assert not np.allclose(model(x), apply(params, x, sites_lib.identity_sites))
  model.eval()


def test_make_init_vmap_matches_make_model():
  params5 = models.make_model("mlp", key=5, layer_sizes=SIZES)[1]
  init = models.make_init("mlp", layer_sizes=SIZES)
  keys = jnp.stack([jax.random.key(5), jax.random.key(6)])
  stacked = jax.jit(jax.vmap(init))(keys)
  _close(jax.tree.map(lambda a: a[0], stacked), params5, rtol=0, atol=0)
  assert not np.allclose(
    stacked["hidden_0"]["kernel"][0], stacked["hidden_0"]["kernel"][1]
  )


# ----------------------------------------- adapter vs hand-written pure JAX


REGIMENS = {
  "none": lambda apply, rates: objectives.none(apply),
  "dropout": lambda apply, rates: objectives.dropout(apply, rates=rates),
  "explicit_implicit": lambda apply, rates: objectives.explicit_implicit(
    apply, rates=rates
  ),
}


def test_adapter_forward_matches_pure_jax(small_mlp):
  _, apply, params, rates = small_mlp
  x, _ = _batch()
  key = jax.random.key(7)
  for sites in (sites_lib.identity_sites, sites_lib.dropout_sites(key, rates)):
    _close(apply(params, x, sites), ref_mlp_apply(params, x, sites))


@pytest.mark.parametrize("regimen", list(REGIMENS))
def test_adapter_objective_and_gradients_match_pure_jax(regimen, small_mlp):
  """Same loss, aux and parameter gradients through every regimen's
  objective, with the same weights and the same key."""
  _, apply, params, rates = small_mlp
  rates = dict(rates, hidden_1=0.3)  # per-site rates reach both the same way
  batch = _batch()
  key = jax.random.key(11)
  got = jax.jit(
    jax.value_and_grad(REGIMENS[regimen](apply, rates), has_aux=True)
  )(params, batch, key)
  want = jax.jit(
    jax.value_and_grad(REGIMENS[regimen](ref_mlp_apply, rates), has_aux=True)
  )(params, batch, key)
  (loss, aux), grads = got
  (loss_r, aux_r), grads_r = want
  chex.assert_tree_all_finite(loss)
  _close(loss, loss_r)
  _close(aux, aux_r)
  _close(grads, grads_r)
  if regimen != "none":  # the regimen really did something
    clean = objectives.none(apply)(params, batch, key)[0]
    assert abs(float(loss) - float(clean)) > 1e-6


# ------------------------------------------------------------------- CNN


def test_cnn_default_architecture():
  params, rates = _abstract("cnn")
  assert list(params) == ["conv_0", "conv_1", "dense_0", "output"]
  assert rates == {"dense_0": 0.5}
  assert params["conv_0"]["kernel"].shape == (3, 3, 1, 32)
  assert params["conv_1"]["kernel"].shape == (3, 3, 32, 64)
  assert params["dense_0"]["kernel"].shape == (7 * 7 * 64, 128)
  assert params["output"]["kernel"].shape == (128, 10)
  with pytest.raises(ValueError, match="divisible by 4"):
    _abstract("cnn", in_shape=(30, 30, 1))


def test_cnn_sites_forward_and_objective():
  kwargs = dict(conv_dropout_rate=0.1, channels=(4, 8), hidden=16)
  model = models.build("cnn", 2, **kwargs)
  apply, params = djflax.functional(model)
  rates = djflax.site_spec(model).rates
  assert rates == {"conv_0": 0.1, "conv_1": 0.1, "dense_0": 0.5}
  x, y = _batch(4)
  shapes = sites_lib.site_shapes(apply, params, x)
  assert {n: s.shape for n, s in shapes.items()} == {
    "conv_0": (4, 14, 14, 4),
    "conv_1": (4, 7, 7, 8),
    "dense_0": (4, 16),
  }
  model.eval()
  np.testing.assert_allclose(
    model(x), apply(params, x, sites_lib.identity_sites), rtol=1e-5, atol=1e-6
  )
  obj = objectives.explicit_implicit(apply, rates=rates)
  loss, aux = jax.jit(obj)(params, (x, y), jax.random.key(0))
  assert np.isfinite(loss) and float(aux["explicit"]) > 0
