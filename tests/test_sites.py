"""The dropout-site contract (dropjax.sites): site functions, shapes, rates
and the clean-pass linearisation the analytic regularizers build on."""

import chex
import jax
import jax.numpy as jnp
import pytest

import dropjax
from dropjax import losses as L
from dropjax import sites as S

from _helpers import BATCH
from _helpers import PARAMS
from _helpers import mlp


def test_dropconnect_on_a_weight_is_one_mask_shared_by_the_batch():
  w = jnp.ones((5, 4))
  x = jnp.ones((3, 5))
  sites = dropjax.dropout_sites(jax.random.key(3), 0.5)
  out = x @ sites("w", w)
  assert bool(jnp.all(out == out[0]))  # every example sees one mask


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_rates_raise(bad):
  with pytest.raises(ValueError, match="drop probability"):
    dropjax.dropout_sites(jax.random.key(0), {"h": bad})


def test_duplicate_site_name_is_a_clear_error():
  def dup(p, x, sites):
    h = sites("h", jnp.tanh(x @ p["w1"]))
    h = sites("h", jnp.tanh(h @ p["w2"]))
    return h @ p["w3"]

  with pytest.raises(ValueError, match="called twice"):
    dropjax.site_shapes(dup, PARAMS, BATCH[0])


def test_site_shapes_and_resolve_rates():
  shapes = dropjax.site_shapes(mlp, PARAMS, BATCH[0])
  assert list(shapes) == ["h1", "h2"]  # call order
  assert shapes["h1"].shape == (6, 6) and shapes["h2"].shape == (6, 5)
  assert S.resolve_rates(0.3, shapes) == {"h1": 0.3, "h2": 0.3}
  assert S.resolve_rates({"h2": 0.4}, shapes) == {"h1": 0.0, "h2": 0.4}
  with pytest.raises(KeyError, match=r"h1.*h2"):
    S.resolve_rates({"h3": 0.1}, shapes)
  chex.assert_trees_all_close(S.noise_variance(0.4), 0.4 / 0.6, rtol=1e-6)


def test_zero_perturbation_gives_the_clean_pass_and_site_gradients():
  """h + 0 leaves the outputs alone; d/d delta is d/dh at the site."""
  x, y = BATCH
  clean = mlp(PARAMS, x, S.identity_sites)
  zeros = {
    n: jnp.zeros(s.shape, s.dtype)
    for n, s in dropjax.site_shapes(mlp, PARAMS, x).items()
  }
  chex.assert_trees_all_equal(
    mlp(PARAMS, x, S.perturbation_sites(zeros)), clean
  )
  grads = jax.grad(
    lambda d: L.mean_loss(
      "softmax_cross_entropy", mlp(PARAMS, x, S.perturbation_sites(d)), y
    )
  )(zeros)
  # By hand: the loss as a function of h2 alone.
  h2 = jnp.tanh(jnp.tanh(x @ PARAMS["w1"]) @ PARAMS["w2"])
  want = jax.grad(
    lambda h: L.mean_loss("softmax_cross_entropy", h @ PARAMS["w3"], y)
  )(h2)
  chex.assert_trees_all_close(grads["h2"], want, rtol=1e-6, atol=1e-7)
  with pytest.raises(KeyError, match="no perturbation for site 'h1'"):
    mlp(PARAMS, x, S.perturbation_sites({"h2": zeros["h2"]}))


def test_linearization_matches_jax_vjp_and_jvp():
  x, y = BATCH
  lin = dropjax.linearize_sites(mlp, PARAMS, x)
  assert list(lin.activations) == ["h1", "h2"] and lin.aux is None
  chex.assert_trees_all_close(
    lin.outputs, mlp(PARAMS, x, S.identity_sites), rtol=1e-6
  )
  zeros = jax.tree.map(jnp.zeros_like, lin.activations)
  f = lambda d: mlp(PARAMS, x, S.perturbation_sites(d))
  out, vjp = jax.vjp(f, zeros)
  cot = L.loss_cotangent("softmax_cross_entropy", out, y)
  chex.assert_trees_all_close(lin.vjp(cot), vjp(cot)[0], rtol=1e-6, atol=1e-8)
  tangents = jax.tree.map(
    lambda a: jax.random.normal(jax.random.key(5), a.shape), zeros
  )
  chex.assert_trees_all_close(
    lin.jvp(tangents),
    jax.jvp(f, (zeros,), (tangents,))[1],
    rtol=1e-6,
    atol=1e-7,
  )
  with pytest.raises(ValueError, match="no dropout site"):
    dropjax.linearize_sites(lambda p, x, s: x @ p["w1"], PARAMS, x)
