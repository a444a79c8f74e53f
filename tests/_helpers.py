"""Small models and exact-enumeration helpers shared by several test files.

The derivation tests (tests/test_explicit.py, test_implicit.py,
test_losses.py) run in float64 through the ``x64`` fixture of conftest.py and
compute expectations over dropout masks, sampled labels and Rademacher signs
by enumerating every outcome.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from dropjax import losses as L
from dropjax import sites as S


# --- exact enumeration -----------------------------------------------------------


def all_masks(shape):
  """Every {0,1} mask of `shape`: array [2**size, *shape] (float64)."""
  size = int(np.prod(shape))
  bits = np.array(list(itertools.product([0.0, 1.0], repeat=size)))
  return jnp.asarray(bits.reshape((-1,) + tuple(shape)))


def masks_and_probabilities(shape, q):
  """Every {0,1} mask of `shape` and its probability when each element is
  kept with probability 1 - q: ([2**size, *shape], [2**size])."""
  masks = all_masks(shape)
  keep = masks.reshape(len(masks), -1).sum(1)
  size = int(np.prod(shape))
  return masks, (1 - q) ** keep * q ** (size - keep)


def expected_dropout_loss(apply, params, x, y, site, q, loss):
  """E_mask[L̄] by enumeration over every mask of one site."""
  shape = S.site_shapes(apply, params, x)[site].shape
  masks, probs = masks_and_probabilities(shape, q)

  def loss_for(m):
    sites = lambda n, h: h * m / (1 - q) if n == site else h
    return L.mean_loss(loss, apply(params, x, sites), y)

  return jnp.sum(probs * jax.vmap(loss_for)(masks)), jnp.sum(probs)


def linearised_dropout_noise(apply, params, x, y, site, q, masks, probs):
  """Mean and covariance of the linearised dropout noise
  ``∇_θ <∂L̄/∂v, v ⊙ eps>`` (cross-entropy, ``eps = m / (1 - q) - 1``) over
  the given masks of one site and their probabilities."""

  def lin_noise(m):
    eps = m / (1 - q) - 1

    def inner(p):
      lin = S.linearize_sites(apply, p, x)
      g = lin.vjp(L.loss_cotangent("softmax_cross_entropy", lin.outputs, y))
      return jnp.sum(g[site] * lin.activations[site] * eps)

    return flat_grad(inner, params)

  xi = jax.vmap(lin_noise)(masks)
  mean = probs @ xi
  return mean, (xi * probs[:, None]).T @ xi - jnp.outer(mean, mean)


def label_sequences(shape, k):
  """Every label array of ``shape`` with values in ``[0, k)``:
  ``[k**size, *shape]``."""
  n = int(np.prod(shape))
  return jnp.asarray(
    np.array(list(itertools.product(range(k), repeat=n))).reshape(
      (-1,) + tuple(shape)
    )
  )


def sampled_label_expectation(
  apply, params, x, rates, *, grad=False, broadcast_axes=None, has_aux=False
):
  """E over ŷ ~ softmax(model) of the sampled-label R_exp (or of its
  gradient), every label array enumerated (the estimator with the label
  fixed to ŷ is the ``true_label`` one at ŷ)."""
  from dropjax import explicit as ex

  def r_for(p, y_hat):
    lin = S.linearize_sites(apply, p, x, has_aux=has_aux)
    return ex.explicit_from_linearization(
      lin, rates, estimator="true_label", y=y_hat, broadcast_axes=broadcast_axes
    )

  logits = S.call_apply(apply, params, x, S.identity_sites, has_aux)[0]
  labels = label_sequences(logits.shape[:-1], logits.shape[-1])
  logp = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(
    jnp.sum(
      jnp.take_along_axis(logp[None], labels[..., None], axis=-1)[..., 0],
      axis=tuple(range(1, labels.ndim)),
    )
  )
  np.testing.assert_allclose(float(jnp.sum(probs)), 1.0, atol=1e-12)
  f = jax.grad(r_for) if grad else r_for
  vals = jax.jit(jax.vmap(f, in_axes=(None, 0)))(params, labels)
  return jax.tree.map(lambda v: jnp.tensordot(probs, v, axes=(0, 0)), vals)


def implicit_over_all_signs(
  apply, params, x, y, rates, names, *, has_aux=False
):
  """``R_imp`` and its parameter gradient for every sign pattern of the
  sites ``names`` (other sites' signs fixed at +1, which matters only where
  their rate is 0), and the linearised dropout-noise covariance
  ``Σ_j q_j/(1-q_j) a_j a_jᵀ``, ``a_j = ∇_θ (v_j ∂L̄/∂v_j)``, that the
  gradients' covariance must equal.

  Returns:
    ``(values [P], gradients [P, n_params], expected_covariance)``.
  """
  from dropjax import implicit as im

  lin = S.linearize_sites(apply, params, x, has_aux=has_aux)
  sizes = [lin.activations[n].size for n in names]
  patterns = jnp.asarray(
    list(itertools.product([-1.0, 1.0], repeat=sum(sizes)))
  )

  def split(sv):
    out = {n: jnp.ones_like(v) for n, v in lin.activations.items()}
    i = 0
    for n, size in zip(names, sizes):
      out[n] = sv[i : i + size].reshape(lin.activations[n].shape)
      i += size
    return out

  def r_imp(p, sv):
    l2 = S.linearize_sites(apply, p, x, has_aux=has_aux)
    return im.implicit_from_linearization(
      l2, rates, y=y, key=jax.random.key(0), signs=split(sv)
    )

  flat = lambda t: jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)])
  vals, grads = jax.jit(
    jax.vmap(lambda sv: (r_imp(params, sv), flat(jax.grad(r_imp)(params, sv))))
  )(patterns)

  def u(p):
    l2 = S.linearize_sites(apply, p, x, has_aux=has_aux)
    g = l2.vjp(L.loss_cotangent("softmax_cross_entropy", l2.outputs, y))
    return jnp.concatenate([(l2.activations[n] * g[n]).ravel() for n in names])

  leaves, treedef = jax.tree.flatten(params)

  def unflatten(fp):
    out, i = [], 0
    for leaf in leaves:
      out.append(fp[i : i + leaf.size].reshape(leaf.shape))
      i += leaf.size
    return jax.tree.unflatten(treedef, out)

  a = jax.jit(jax.jacobian(lambda fp: u(unflatten(fp))))(flat(params))
  c = jnp.concatenate(
    [
      jnp.full((size,), rates[n] / (1 - rates[n]))
      for n, size in zip(names, sizes)
    ]
  )
  return vals, grads, (a * c[:, None]).T @ a


def clean_loss(apply, params, x, y, loss):
  return L.mean_loss(loss, apply(params, x, S.identity_sites), y)


def flat_grad(f, params):
  g = jax.grad(f)(params)
  return jnp.concatenate([a.ravel() for a in jax.tree.leaves(g)])


# --- small models ----------------------------------------------------------------


def hidden_model(params, x, sites):
  h = sites("h", jnp.tanh(x @ params["w1"] + params["b1"]))
  return h @ params["w2"] + params["b2"]


def hidden_params(key, d_in=3, d_h=4, d_out=2, readout_scale=1.0):
  k = jax.random.split(key, 4)
  return {
    "w1": jax.random.normal(k[0], (d_in, d_h)),
    "b1": 0.1 * jax.random.normal(k[1], (d_h,)),
    "w2": readout_scale * jax.random.normal(k[2], (d_h, d_out)),
    "b2": 0.1 * jax.random.normal(k[3], (d_out,)),
  }


def recurrent_model(params, x, sites):
  """Tokens [B, T, d] -> outputs [B, T, K]; h_t also feeds z_{t+1}."""
  h = sites("emb", jnp.tanh(x @ params["w1"]))  # [B, T, H]
  prev = jnp.pad(h, ((0, 0), (1, 0), (0, 0)))[:, :-1]
  return (h + 0.7 * prev) @ params["w2"]


def mlp(params, x, sites):
  h = sites("h1", jnp.tanh(x @ params["w1"]))
  h = sites("h2", jnp.tanh(h @ params["w2"]))
  return h @ params["w3"]


def init(key, sizes=(4, 6, 5, 3)):
  ks = jax.random.split(key, len(sizes) - 1)
  return {
    f"w{i + 1}": jax.random.normal(k, (a, b)) / np.sqrt(a)
    for i, (k, a, b) in enumerate(zip(ks, sizes[:-1], sizes[1:]))
  }


PARAMS = init(jax.random.key(0))
BATCH = (
  jax.random.normal(jax.random.key(1), (6, 4)),
  jnp.array([0, 1, 2, 0, 1, 2]),
)
