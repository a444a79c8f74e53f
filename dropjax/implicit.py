r"""The implicit regularizer of dropout: its gradient noise.

Wei, Kakade & Ma, "The Implicit and Explicit Regularization Effects of
Dropout", ICML 2020, arXiv:2002.12915: the implicit regularizer, the
``taylor_fo`` update of the authors' code (``cwein3/dropout-analytical``).

A dropout gradient is ``∇ E_mask L̄ + ξ`` with zero-mean noise ``ξ``.
Linearising the loss in the dropout noise ``eps`` at every site element,
keeping ``eps`` fixed while differentiating in ``θ``:

.. math::

   ξ ≈ Σ_j eps_j a_j,\qquad a_j = ∇_θ (v_j ∂\bar L/∂v_j),\qquad
   \mathrm{Cov}(ξ) ≈ \frac{q}{1-q} Σ_j a_j a_jᵀ.

The paper's ``taylor_fo`` noise replaces ``eps`` by Rademacher signs ``s``
with the same first two moments. The scalar

.. math::

   R_{imp} = Σ_{sites} \sqrt{scale · q/(1-q)}\; Σ_j A_j\, s_j\, v_j,
   \qquad A = ∂\bar L/∂v \text{ (true labels, clean forward pass)},

has mean exactly 0 over the signs, and its gradient ``∇_θ R_imp`` (through
both ``A`` and ``v``: second derivatives) is zero-mean noise whose covariance
is ``scale · q/(1-q) Σ_j a_j a_jᵀ``: at ``scale = 1`` exactly the linearised
dropout-noise covariance (DROPOUT_1). Added to DROPOUT_k, ``scale = 1 - 1/k``
restores DROPOUT_1's noise level (by analogy with the fix-noise update,
``drop_fix_noise`` in the same code).

**Coefficient mapping.** The LSTM code's ``imp_reg*`` is a covariance scale,
``imp_reg = scale · q / (1 - q)``; the Transformer code's ``imp_drop`` is a
standard-deviation scale, ``imp_drop = sqrt(scale · q / (1 - q))``.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp

from dropjax import losses as _losses
from dropjax import sites as _sites

Array = jax.Array


def packed_rademacher(key: Array, shape, dtype) -> Array:
  """Independent fair ±1 signs of ``shape``, 32 from each random word.

  Same distribution as ``jax.random.rademacher`` (which spends a 32-bit
  random word per sign), with 1/32 of the random-number work: one
  ``jax.random.bits`` word gives the signs of 32 elements, one per bit.
  """
  size = math.prod(shape)
  words = jax.random.bits(key, (-(-size // 32),), jnp.uint32)
  bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  bits = bits.reshape(-1)[:size].reshape(shape)
  return (2 * bits.astype(dtype) - 1).astype(dtype)


def rademacher_signs(
  key: Array, activations: Mapping[str, Array]
) -> dict[str, Array]:
  """Independent ±1 signs for every element of every site (per-site keys,
  :func:`packed_rademacher`)."""
  return {
    n: packed_rademacher(_sites.site_key(key, n), v.shape, v.dtype)
    for n, v in activations.items()
  }


def implicit_from_linearization(
  lin: _sites.Linearization,
  rates: Mapping[str, Array],
  *,
  y: Array,
  key: Array,
  loss: str = "softmax_cross_entropy",
  scale=1.0,
  site_grads: Mapping[str, Array] | None = None,
  signs: Mapping[str, Array] | None = None,
) -> Array:
  """``R_imp`` from a clean forward pass (see :func:`implicit_regularizer`).

  Args:
    lin: the clean forward pass (:func:`dropjax.sites.linearize_sites`).
    rates: ``{site: q}`` for every site.
    y: true targets.
    key: ``jax.random.key`` for the signs.
    loss: the loss name.
    scale: covariance multiplier.
    site_grads: precomputed ``∂L̄/∂v`` (true labels); computed if ``None``.
    signs: ``{site: ±1 array}`` to use instead of drawing them from ``key``
      (lets tests enumerate every sign pattern).

  Returns:
    Scalar ``R_imp``.
  """
  acts = lin.activations
  if site_grads is None:
    site_grads = lin.vjp(_losses.loss_cotangent(loss, lin.outputs, y))
  if signs is None:
    signs = rademacher_signs(key, acts)
  total = 0.0
  for name, v in acts.items():
    c = jnp.sqrt(scale * _sites.noise_variance(rates[name])).astype(v.dtype)
    total = total + c * jnp.sum(site_grads[name] * signs[name] * v)
  return jnp.asarray(total)


def implicit_regularizer(
  apply: _sites.Apply,
  params,
  x,
  y,
  *,
  rates: _sites.Rates,
  key: Array,
  loss: str = "softmax_cross_entropy",
  scale=1.0,
  has_aux: bool = False,
) -> Array:
  r"""The implicit regularizer ``R_imp`` (the paper's ``taylor_fo`` noise).

  ``R_imp = Σ_sites sqrt(scale · q/(1-q)) Σ_j (∂L̄/∂v)_j s_j v_j`` with fresh
  Rademacher signs ``s`` from ``key``. Its value has mean zero; add it to the
  loss and ``∇_θ R_imp`` is the first-order Taylor approximation of dropout's
  gradient noise, with covariance ``scale`` times that of the linearised
  dropout noise, ``(q/(1-q)) Σ_j a_j a_jᵀ``. ``scale = 1`` matches DROPOUT_1;
  ``scale = 1 - 1/k`` tops DROPOUT_k up to it.

  Args:
    apply: the model, ``apply(params, x, sites)``; outputs ``[..., K]``.
    params: parameter pytree.
    x: model input.
    y: true targets (int labels ``[...]`` or floats ``[..., K]``).
    rates: drop rate ``q`` for every site, or ``{site: q}``.
    key: ``jax.random.key`` for the signs.
    loss: ``"softmax_cross_entropy"`` or ``"squared_error"``.
    scale: covariance multiplier (float or array, ``>= 0``).
    has_aux: ``apply`` returns ``(outputs, aux)``.

  Returns:
    Scalar ``R_imp``.

  Raises:
    ValueError: unknown loss, a rate outside ``[0, 1)``, a model without
      sites, mismatched target shape.
    KeyError: ``rates`` names a site the model does not have.
  """
  _losses.check_loss(loss)
  lin = _sites.linearize_sites(apply, params, x, has_aux=has_aux)
  rates = _sites.resolve_rates(rates, lin.activations)
  return implicit_from_linearization(
    lin, rates, y=y, key=key, loss=loss, scale=scale
  )
