r"""The explicit regularizer of dropout (Wei, Kakade & Ma, ICML 2020).

Wei, Kakade & Ma, "The Implicit and Explicit Regularization Effects of
Dropout", arXiv:2002.12915: the explicit regularizer, a second-order
expansion of the expected dropout objective in the dropout noise, reduced to
its Gauss–Newton part.

Dropout changes the expected training objective. To second order in the
dropout noise ``eps`` (``Var eps = q / (1 - q)``), with independent masks at
every element of every site ``v``, keeping the Gauss–Newton part of the
Hessian:

.. math::

   E_{mask}[\bar L] \approx \bar L + R_{exp},\qquad
   R_{exp} = \sum_{sites} \frac{q}{2(1-q)} \sum_j v_j^2\,
             [\mathrm{GN}_v(\bar L)]_{jj},

where ``GN_v(L̄) = (1/N) Σ_t J_tᵀ H_t J_t`` is the Gauss–Newton part of the
Hessian of the batch-mean loss with respect to the site activations
(``J_t = ∂z_t/∂v``, ``H_t`` the loss Hessian at output position ``t``).

**Normalisation.** Everything here is Taylor-faithful: with ``scale = 1``,
``L̄ + R_exp`` matches ``E_mask[L̄]`` to second order (constant
``q / (2 (1 - q))`` per element). The paper's code uses
``R_code = λ Σ v² diag(GN)`` with no 1/2 (``exp_reg*`` in the LSTM code,
``hess_drop`` in the Transformer code), so ``λ = scale · q / (2 (1 - q))``,
i.e. ``scale = 2 λ (1 - q) / q``. The tuned LSTM value ``λ = 0.66`` at
``q = 0.4`` is ``scale ≈ 1.98``.

Estimators of ``diag(GN)``:

* ``"sampled_label"`` (default; the paper's ``jreg_sample_logit``): one label
  per position drawn from the model's own predictive distribution; by the
  Fisher identity ``E[g gᵀ] = Jᵀ H J``, one backward pass of the sampled loss
  gives an unbiased estimate ``N (∂L̃/∂v)²`` of the diagonal. The sampling is
  not differentiated, so the *expected gradient* is that of ``gauss_newton``
  with the Hessian held constant (``stop_gradient`` on the probabilities).
* ``"gauss_newton"``: exact, one VJP per output position and output
  dimension (``N K`` VJPs): the oracle for small models. ``H`` is held
  constant in the gradient unless ``hessian_gradient=True``.
* ``"identity_hessian"`` (``jreg_hess_id``, an ablation): ``H`` replaced by
  ``I / K`` (cross-entropy) or ``I`` (squared error); estimated with one
  Rademacher JVP (Hutchinson), unbiased.
* ``"true_label"`` (``jreg_loss``, the empirical Fisher): the true labels
  instead of sampled ones, ``N Σ (v ⊙ ∂L̄/∂v)²``.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from dropjax import losses as _losses
from dropjax import sites as _sites

Array = jax.Array

ESTIMATORS = ("sampled_label", "gauss_newton", "identity_hessian", "true_label")


def check_estimator(estimator: str) -> str:
  """Raises ``ValueError`` listing the valid estimators for an unknown name."""
  if estimator not in ESTIMATORS:
    raise ValueError(
      f"unknown explicit-regularizer estimator {estimator!r}; "
      f"valid: {', '.join(ESTIMATORS)}."
    )
  return estimator


def taylor_coefficient(rate) -> Array:
  """``q / (2 (1 - q))``: half the dropout-noise variance ``q / (1 - q)``."""
  return 0.5 * _sites.noise_variance(rate)


def weighted_squares(
  activations: Mapping[str, Array],
  site_grads: Mapping[str, Array],
  coefficients: Mapping[str, Array],
) -> Array:
  """``Σ_site c_site Σ_elements (v ⊙ g)²`` (scalar)."""
  total = 0.0
  for name, v in activations.items():
    total = total + coefficients[name] * jnp.sum(
      jnp.square(v * site_grads[name])
    )
  return jnp.asarray(total)


def explicit_targets(
  estimator: str,
  loss: str,
  outputs: Array,
  *,
  key: Array | None,
  y: Array | None,
) -> Array:
  """The labels whose loss gradient estimates ``diag(GN)``: sampled or true."""
  if estimator == "true_label":
    if y is None:
      raise ValueError("estimator='true_label' needs the true targets y.")
    return y
  if key is None:
    raise ValueError(f"estimator={estimator!r} is stochastic and needs a key.")
  return _losses.sample_targets(loss, key, outputs)


def _label_site_grads(lin, estimator, loss, key, y, site_grads):
  """``∂L̃/∂v`` of the sampled- or true-label loss (or the given ones)."""
  if site_grads is not None:
    return site_grads
  targets = explicit_targets(estimator, loss, lin.outputs, key=key, y=y)
  return lin.vjp(_losses.loss_cotangent(loss, lin.outputs, targets))


def _coefficients(rates: Mapping[str, Array]) -> dict[str, Array]:
  return {k: taylor_coefficient(q) for k, q in rates.items()}


def explicit_terms(
  lin: _sites.Linearization,
  rates: Mapping[str, Array],
  *,
  estimator: str = "sampled_label",
  loss: str = "softmax_cross_entropy",
  key: Array | None = None,
  y: Array | None = None,
  site_grads: Mapping[str, Array] | None = None,
  hessian_gradient: bool = False,
) -> dict[str, Array]:
  """``R_exp`` at ``scale = 1``, one term per site, from a clean forward pass.

  ``R_exp`` is a sum over sites (arXiv:2002.12915 §2, the sum over the
  dropout layers); this returns its terms ``{site: R_site}`` (scalars), so
  that ``sum(terms.values())`` is :func:`explicit_from_linearization`.

  Args:
    lin: the clean forward pass (:func:`dropjax.sites.linearize_sites`).
    rates: ``{site: q}`` for every site (:func:`dropjax.sites.resolve_rates`).
    estimator: ``"sampled_label"``, ``"gauss_newton"`` or ``"true_label"``.
    loss, key, y: as in :func:`explicit_regularizer`.
    site_grads: precomputed ``∂L̃/∂v`` for ``sampled_label`` / ``true_label``
      (lets callers share one batched backward pass); computed if ``None``.
    hessian_gradient: ``gauss_newton`` only: differentiate through the
      Hessian's dependence on the probabilities (the full gradient of the
      regularizer, unlike the paper's estimators).

  Returns:
    ``{site: scalar}`` in the order of ``lin.activations``.

  Raises:
    ValueError: an unknown estimator or loss, a missing key or ``y``, or
      ``"identity_hessian"``, whose single JVP mixes the sites (its terms are
      not separable: call it with one site's rates instead).
  """
  check_estimator(estimator)
  _losses.check_loss(loss)
  if estimator == "identity_hessian":
    raise ValueError(
      "estimator='identity_hessian' estimates all sites with one JVP, so its "
      "value does not split into per-site terms; call explicit_regularizer "
      "with one site's rates for a per-site value."
    )
  outputs, acts = lin.outputs, lin.activations
  n = _losses.num_positions(outputs)
  coefs = _coefficients(rates)

  if estimator in ("sampled_label", "true_label"):
    site_grads = _label_site_grads(lin, estimator, loss, key, y, site_grads)
    return {
      name: n * weighted_squares({name: v}, site_grads, coefs)
      for name, v in acts.items()
    }

  # gauss_newton: one VJP per output position and Hessian factor.
  factors = _losses.hessian_factors(loss, outputs)
  if not hessian_gradient:
    factors = jax.lax.stop_gradient(factors)
  k = outputs.shape[-1]
  flat = factors.reshape(n, k, k)  # [position, factor c, output k]

  def grads_for(pos, c):
    ct = jnp.zeros((n, k), outputs.dtype).at[pos].set(flat[pos, c])
    return lin.vjp(ct.reshape(outputs.shape))

  grads = jax.vmap(jax.vmap(grads_for, in_axes=(None, 0)), in_axes=(0, None))(
    jnp.arange(n), jnp.arange(k)
  )
  terms = {}
  for name, v in acts.items():
    diag = jnp.sum(jnp.square(grads[name]), axis=(0, 1)) / n
    terms[name] = coefs[name] * jnp.sum(jnp.square(v) * diag)
  return terms


def explicit_from_linearization(
  lin: _sites.Linearization,
  rates: Mapping[str, Array],
  *,
  estimator: str = "sampled_label",
  loss: str = "softmax_cross_entropy",
  key: Array | None = None,
  y: Array | None = None,
  site_grads: Mapping[str, Array] | None = None,
  hessian_gradient: bool = False,
) -> Array:
  """``R_exp`` at ``scale = 1`` from a clean forward pass.

  Args:
    lin: the clean forward pass (:func:`dropjax.sites.linearize_sites`).
    rates: ``{site: q}`` for every site (:func:`dropjax.sites.resolve_rates`).
    estimator, loss, key, y: as in :func:`explicit_regularizer`.
    site_grads: precomputed ``∂L̃/∂v`` for ``sampled_label`` / ``true_label``
      (lets callers share one batched backward pass); computed if ``None``.
    hessian_gradient: ``gauss_newton`` only: differentiate through the
      Hessian's dependence on the probabilities (the full gradient of the
      regularizer, unlike the paper's estimators).

  Returns:
    Scalar ``R_exp`` (the sum of :func:`explicit_terms`).
  """
  check_estimator(estimator)
  _losses.check_loss(loss)
  outputs, acts = lin.outputs, lin.activations

  if estimator in ("sampled_label", "true_label"):
    # One weighted sum over every site (the per-site terms of
    # explicit_terms add up to it up to float rounding).
    site_grads = _label_site_grads(lin, estimator, loss, key, y, site_grads)
    n = _losses.num_positions(outputs)
    return n * weighted_squares(acts, site_grads, _coefficients(rates))

  if estimator == "gauss_newton":
    total = 0.0
    for term in explicit_terms(
      lin,
      rates,
      estimator=estimator,
      loss=loss,
      hessian_gradient=hessian_gradient,
    ).values():
      total = total + term
    return jnp.asarray(total)

  # identity_hessian: Hutchinson with Rademacher signs, one JVP.
  if key is None:
    raise ValueError(
      "estimator='identity_hessian' is stochastic and needs a key."
    )
  coefs = _coefficients(rates)
  n = _losses.num_positions(outputs)
  tangents = {}
  for name, v in acts.items():
    s = jax.random.rademacher(_sites.site_key(key, name), v.shape, v.dtype)
    tangents[name] = jnp.sqrt(coefs[name]).astype(v.dtype) * s * v
  d = lin.jvp(tangents)
  h = _losses.identity_hessian_scale(loss, outputs.shape[-1])
  return h * jnp.sum(jnp.square(d)) / n


def explicit_regularizer(
  apply: _sites.Apply,
  params,
  x,
  *,
  rates: _sites.Rates,
  key: Array | None = None,
  estimator: str = "sampled_label",
  loss: str = "softmax_cross_entropy",
  y: Array | None = None,
  scale=1.0,
  has_aux: bool = False,
) -> Array:
  r"""The explicit regularizer ``R_exp`` of dropout (arXiv:2002.12915).

  ``R_exp = scale · Σ_sites q/(2(1-q)) Σ_j v_j² [GN_v(L̄)]_jj`` with ``GN``
  estimated by ``estimator`` (see the module docstring). It is a mean over the
  batch (``L̄`` is the batch-mean loss).

  With ``scale = 1`` this is Taylor-faithful: ``L̄ + R_exp ≈ E_mask[L̄]``,
  exactly so for a squared loss and a model linear in the site. The paper's
  code coefficient ``λ`` (``exp_reg*``, ``hess_drop``) equals
  ``scale · q / (2 (1 - q))``.

  Args:
    apply: the model, ``apply(params, x, sites)``; outputs ``[..., K]``.
    params: parameter pytree.
    x: model input.
    rates: drop rate ``q`` for every site, or ``{site: q}``.
    key: ``jax.random.key``; needed by ``sampled_label`` and
      ``identity_hessian``.
    estimator: ``"sampled_label"`` (default), ``"gauss_newton"``,
      ``"identity_hessian"`` or ``"true_label"``.
    loss: ``"softmax_cross_entropy"`` (int labels ``[...]``) or
      ``"squared_error"`` (``0.5 ||f - y||²``, targets ``[..., K]``).
    y: true targets; needed by ``true_label``.
    scale: multiplier on the Taylor-faithful value (float or array).
    has_aux: ``apply`` returns ``(outputs, aux)``.

  Returns:
    Scalar ``R_exp`` (dtype of the activations).

  Raises:
    ValueError: unknown estimator or loss (the message lists the valid ones),
      a missing key or ``y``, a rate outside ``[0, 1)``, a model without sites.
    KeyError: ``rates`` names a site the model does not have (the message
      lists the model's sites).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> def apply(w, x, sites):              # linear regression, input dropout
    ...   return sites("x", x) @ w
    >>> w, x = jnp.array([[1.0], [2.0]]), jnp.array([[1.0, 1.0]])
    >>> r = explicit_regularizer(apply, w, x, rates=0.5,
    ...                          estimator="gauss_newton", loss="squared_error")
    >>> float(r)    # q/(2(1-q)) * (x1² w1² + x2² w2²) = 0.5 * 5
    2.5
  """
  check_estimator(estimator)
  _losses.check_loss(loss)
  if estimator == "true_label" and y is None:
    raise ValueError("estimator='true_label' needs the true targets y.")
  if estimator in ("sampled_label", "identity_hessian") and key is None:
    raise ValueError(f"estimator={estimator!r} is stochastic and needs a key.")
  lin = _sites.linearize_sites(apply, params, x, has_aux=has_aux)
  rates = _sites.resolve_rates(rates, lin.activations)
  return scale * explicit_from_linearization(
    lin, rates, estimator=estimator, loss=loss, key=key, y=y
  )
