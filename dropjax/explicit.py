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

**Locked masks** (``broadcast_axes``, the meaning it has in
:func:`dropjax.dropout`): when one mask value ``eps_g`` is shared by a group
``g`` of elements (e.g. all time steps of one feature of one sequence), the
second-order term keeps the cross terms inside each group:

.. math::

   R_{exp} = \sum_{sites} \frac{q}{2(1-q)} \sum_g u_gᵀ\, \mathrm{GN}_v\, u_g,
   \qquad u_g = v \text{ restricted to } g,

which is the element-wise formula when every group is one element. Every
estimator below has a locked form: it sums ``v ⊙ ∂/∂v`` over each group
before squaring (or draws one sign per group). The normalisation does not
change: for one sampled label per position, ``E[(u_gᵀ ∇L̃)²] = (1/N) u_gᵀ GN
u_g`` because the cross terms between positions have mean zero
(``E_ŷ[p - e_ŷ] = 0``), so ``N (Σ_{j∈g} v_j ∂L̃/∂v_j)²`` is unbiased for the
group's term, with the same ``N`` as element-wise. The default,
``broadcast_axes = ()``, is element-wise, as in the paper's code. This
locked form is dropjax's own; the paper and its code treat every element
independently.

Estimators of the Gauss–Newton term (each unbiased for it unless said
otherwise; ``num_samples = S`` averages ``S`` independent draws, vectorised):

* ``"sampled_label"`` (default; the paper's ``jreg_sample_logit``, and
  ``exp_reg_samples`` for ``S > 1``): one label per position drawn from the
  model's own predictive distribution; by the Fisher identity
  ``E[g gᵀ] = Jᵀ H J``, one backward pass of the sampled loss gives an
  unbiased estimate ``N (v ⊙ ∂L̃/∂v)²`` of each term. The label draw is not
  differentiated but the probabilities in the cotangent ``p - e_ŷ`` are, so
  only the *expected* gradient equals that of ``gauss_newton`` with the
  Hessian held constant.
* ``"curvature_propagation"`` (Martens, Sutskever & Swersky, ICML 2012,
  "Estimating the Hessian by back-propagating curvature", §3): one VJP of
  the cotangent ``F r`` per position, with ``F`` a factor of the output
  Hessian (``H = Fᵀ F``, :func:`dropjax.losses.hessian_factors`, held
  constant) and ``r`` Rademacher: ``E[(Jᵀ F r)(Jᵀ F r)ᵀ] = Jᵀ H J``.
* ``"gauss_newton"``: exact, one VJP per output position and output
  dimension (``N K`` VJPs): the oracle for small models. ``H`` is held
  constant in the gradient unless ``hessian_gradient=True``.
* ``"identity_hessian"`` (an ablation): ``H`` replaced by ``I / K``
  (cross-entropy) or ``I`` (squared error), estimated with one Rademacher
  JVP over all sites at once (Hutchinson). Unbiased for the identity-Hessian
  term (not for Gauss–Newton). The cross-site products of the one JVP have
  mean zero but add variance: with two sites the per-draw standard
  deviation was 1.8× that of the per-site form.
* ``"identity_hessian_per_site"``: the same expectation from one JVP per
  site, as the authors' ``jreg_hess_id`` computes it: lower variance, one
  JVP per site.
* ``"true_label"`` (``jreg_loss``, the empirical Fisher): the true labels
  instead of sampled ones, ``N Σ (v ⊙ ∂L̄/∂v)²``; biased, deterministic.

The variance of each estimator per VJP, measured against ``gauss_newton``
on an MLP and an LSTM, is in ``docs/analytic.md``
(``python -m benchmarks.estimator_variance``).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from dropjax import losses as _losses
from dropjax import sites as _sites

Array = jax.Array

ESTIMATORS = (
  "sampled_label",
  "curvature_propagation",
  "gauss_newton",
  "identity_hessian",
  "identity_hessian_per_site",
  "true_label",
)
STOCHASTIC_ESTIMATORS = (
  "sampled_label",
  "curvature_propagation",
  "identity_hessian",
  "identity_hessian_per_site",
)
"""The estimators that draw random numbers (they need a ``key``; their
``num_samples`` draws are averaged)."""


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


def check_num_samples(num_samples) -> int:
  """Raises ``ValueError`` unless ``num_samples`` is an int ``>= 1``."""
  if (
    not isinstance(num_samples, int)
    or isinstance(num_samples, bool)
    or num_samples < 1
  ):
    raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
  return num_samples


def weighted_squares(
  activations: Mapping[str, Array],
  site_grads: Mapping[str, Array],
  coefficients: Mapping[str, Array],
  broadcast_axes: Mapping[str, tuple[int, ...]] | None = None,
) -> Array:
  """``Σ_site c_site Σ_groups (Σ_{j∈group} v_j g_j)²`` (scalar).

  Groups are the elements that share one locked mask
  (``broadcast_axes[site]``, :func:`dropjax.sites.group_sum`); without
  axes every element is its own group: ``Σ (v ⊙ g)²``.
  """
  axes = broadcast_axes or {}
  total = 0.0
  for name, v in activations.items():
    vg = _sites.group_sum(v * site_grads[name], axes.get(name, ()))
    total = total + coefficients[name] * jnp.sum(jnp.square(vg))
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


def _coefficients(rates: Mapping[str, Array]) -> dict[str, Array]:
  return {k: taylor_coefficient(q) for k, q in rates.items()}


def curvature_propagation_cotangent(
  loss: str, outputs: Array, key: Array
) -> Array:
  """``(1/N) F r`` per position: the curvature-propagation cotangent.

  ``F`` is the output-Hessian factor of :func:`dropjax.losses.hessian_factors`
  (``H = Σ_c F_c F_cᵀ``, held constant: ``stop_gradient``) and ``r`` a
  Rademacher vector of ``K`` signs per position, so the VJP ``w`` of this
  cotangent has ``E[N² w wᵀ] = N · GN`` (Martens, Sutskever & Swersky,
  ICML 2012, §3). Shape and dtype of ``outputs``.
  """
  factors = jax.lax.stop_gradient(_losses.hessian_factors(loss, outputs))
  r = jax.random.rademacher(key, outputs.shape, outputs.dtype)
  n = _losses.num_positions(outputs)
  return jnp.einsum("...c,...ck->...k", r, factors) / n


def _site_grads(lin, estimator, loss, key, y, num_samples, site_grads):
  """Site gradients of the estimator's cotangent (or the given
  ``site_grads``): ``(grads, stacked)``, the grads with a leading ``[S]``
  axis when ``stacked``."""
  if site_grads is not None:
    return site_grads, False

  def cotangent(k):
    if estimator == "curvature_propagation":
      return curvature_propagation_cotangent(loss, lin.outputs, k)
    targets = explicit_targets(estimator, loss, lin.outputs, key=k, y=y)
    return _losses.loss_cotangent(loss, lin.outputs, targets)

  if estimator != "true_label" and key is None:
    raise ValueError(f"estimator={estimator!r} is stochastic and needs a key.")
  if num_samples == 1 or estimator == "true_label":
    return lin.vjp(cotangent(key)), False
  keys = jax.random.split(key, num_samples)
  return jax.vmap(lambda k: lin.vjp(cotangent(k)))(keys), True


def _mean_squares(acts, grads, stacked, coefs, axes) -> Array:
  """:func:`weighted_squares`, averaged over the draws when ``stacked``."""
  if not stacked:
    return weighted_squares(acts, grads, coefs, axes)
  return jnp.mean(
    jax.vmap(lambda g: weighted_squares(acts, g, coefs, axes))(grads)
  )


def _identity_hessian(lin, coefs, loss, key, axes, num_samples, per_site):
  """Hutchinson estimates of the identity-Hessian term: the total of one
  joint JVP, or ``{site: term}`` from one JVP per site (``per_site``)."""
  if key is None:
    raise ValueError(
      "estimator='identity_hessian' is stochastic and needs a key."
    )
  acts = lin.activations
  n = _losses.num_positions(lin.outputs)
  h = _losses.identity_hessian_scale(loss, lin.outputs.shape[-1])

  def one(k):
    tangents = {}
    for name, v in acts.items():
      shape = _sites.group_shape(v.shape, axes.get(name, ()))
      sign = jax.random.rademacher(_sites.site_key(k, name), shape, v.dtype)
      tangents[name] = jnp.sqrt(coefs[name]).astype(v.dtype) * sign * v
    if not per_site:
      return h * jnp.sum(jnp.square(lin.jvp(tangents))) / n
    terms = {}
    for name in acts:
      only = {
        m: t if m == name else jnp.zeros_like(t) for m, t in tangents.items()
      }
      terms[name] = h * jnp.sum(jnp.square(lin.jvp(only))) / n
    return terms

  if num_samples == 1:
    return one(key)
  draws = jax.vmap(one)(jax.random.split(key, num_samples))
  return jax.tree.map(lambda a: jnp.mean(a, axis=0), draws)


def _gauss_newton_terms(lin, coefs, loss, axes, hessian_gradient):
  """Exact ``{site: term}``: one VJP per output position and Hessian
  factor."""
  outputs, acts = lin.outputs, lin.activations
  n = _losses.num_positions(outputs)
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
    ax = axes.get(name, ())
    if not ax:
      diag = jnp.sum(jnp.square(grads[name]), axis=(0, 1)) / n
      terms[name] = coefs[name] * jnp.sum(jnp.square(v) * diag)
      continue
    group = lambda g, v=v, ax=ax: _sites.group_sum(v * g, ax)
    vg = jax.vmap(jax.vmap(group))(grads[name])  # [n, k, groups...]
    terms[name] = coefs[name] * jnp.sum(jnp.square(vg)) / n
  return terms


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
  num_samples: int = 1,
  broadcast_axes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, Array]:
  """``R_exp`` at ``scale = 1``, one term per site, from a clean forward pass.

  ``R_exp`` is a sum over sites (arXiv:2002.12915 §2, the sum over the
  dropout layers); this returns its terms ``{site: R_site}`` (scalars), so
  that ``sum(terms.values())`` is :func:`explicit_from_linearization`.

  Args:
    lin: the clean forward pass (:func:`dropjax.sites.linearize_sites`).
    rates: ``{site: q}`` for every site (:func:`dropjax.sites.resolve_rates`).
    estimator: any of :data:`ESTIMATORS` but ``"identity_hessian"``.
    loss, key, y, num_samples: as in :func:`explicit_regularizer`.
    site_grads: precomputed ``∂L̃/∂v`` (one draw) for ``sampled_label`` /
      ``true_label`` (lets callers share one backward pass); computed if
      ``None``.
    hessian_gradient: ``gauss_newton`` only: differentiate through the
      Hessian's dependence on the probabilities (the full gradient of the
      regularizer, unlike the paper's estimators).
    broadcast_axes: ``{site: axes}`` of locked masks
      (:func:`dropjax.sites.resolve_broadcast_axes`); absent: element-wise.

  Returns:
    ``{site: scalar}`` in the order of ``lin.activations``.

  Raises:
    ValueError: an unknown estimator or loss, a missing key or ``y``, bad
      ``num_samples`` or axes, or ``"identity_hessian"``, whose single JVP
      mixes the sites (use ``"identity_hessian_per_site"``).
  """
  check_estimator(estimator)
  _losses.check_loss(loss)
  check_num_samples(num_samples)
  if estimator == "identity_hessian":
    raise ValueError(
      "estimator='identity_hessian' estimates all sites with one JVP, so its "
      "value does not split into per-site terms; use "
      "'identity_hessian_per_site' (one JVP per site) for per-site terms."
    )
  acts = lin.activations
  axes = dict(broadcast_axes or {})
  coefs = _coefficients(rates)
  if estimator == "gauss_newton":
    return _gauss_newton_terms(lin, coefs, loss, axes, hessian_gradient)
  if estimator == "identity_hessian_per_site":
    return _identity_hessian(lin, coefs, loss, key, axes, num_samples, True)
  n = _losses.num_positions(lin.outputs)
  grads, stacked = _site_grads(
    lin, estimator, loss, key, y, num_samples, site_grads
  )
  return {
    name: n * _mean_squares({name: v}, grads, stacked, coefs, axes)
    for name, v in acts.items()
  }


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
  num_samples: int = 1,
  broadcast_axes: Mapping[str, tuple[int, ...]] | None = None,
) -> Array:
  """``R_exp`` at ``scale = 1`` from a clean forward pass.

  Args:
    lin: the clean forward pass (:func:`dropjax.sites.linearize_sites`).
    rates: ``{site: q}`` for every site (:func:`dropjax.sites.resolve_rates`).
    estimator, loss, key, y, num_samples: as in
      :func:`explicit_regularizer`.
    site_grads: precomputed ``∂L̃/∂v`` (one draw) for ``sampled_label`` /
      ``true_label`` (lets callers share one backward pass); computed if
      ``None``.
    hessian_gradient: ``gauss_newton`` only: differentiate through the
      Hessian's dependence on the probabilities (the full gradient of the
      regularizer, unlike the paper's estimators).
    broadcast_axes: ``{site: axes}`` of locked masks
      (:func:`dropjax.sites.resolve_broadcast_axes`); absent: element-wise.

  Returns:
    Scalar ``R_exp`` (the sum of :func:`explicit_terms`).
  """
  check_estimator(estimator)
  _losses.check_loss(loss)
  check_num_samples(num_samples)
  acts = lin.activations
  axes = dict(broadcast_axes or {})
  coefs = _coefficients(rates)

  if estimator in ("sampled_label", "true_label", "curvature_propagation"):
    # One weighted sum over every site (the per-site terms of
    # explicit_terms add up to it up to float rounding).
    n = _losses.num_positions(lin.outputs)
    grads, stacked = _site_grads(
      lin, estimator, loss, key, y, num_samples, site_grads
    )
    return n * _mean_squares(acts, grads, stacked, coefs, axes)

  if estimator == "identity_hessian":
    return _identity_hessian(lin, coefs, loss, key, axes, num_samples, False)

  total = 0.0
  for term in explicit_terms(
    lin,
    rates,
    estimator=estimator,
    loss=loss,
    key=key,
    hessian_gradient=hessian_gradient,
    num_samples=num_samples,
    broadcast_axes=axes,
  ).values():
    total = total + term
  return jnp.asarray(total)


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
  num_samples: int = 1,
  broadcast_axes: _sites.BroadcastAxes = None,
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
    key: ``jax.random.key``; needed by the stochastic estimators
      (:data:`STOCHASTIC_ESTIMATORS`).
    estimator: ``"sampled_label"`` (default), ``"curvature_propagation"``,
      ``"gauss_newton"``, ``"identity_hessian"``,
      ``"identity_hessian_per_site"`` or ``"true_label"`` (module
      docstring).
    loss: ``"softmax_cross_entropy"`` (int labels ``[...]``) or
      ``"squared_error"`` (``0.5 ||f - y||²``, targets ``[..., K]``).
    y: true targets; needed by ``true_label``.
    scale: multiplier on the Taylor-faithful value (float or array).
    num_samples: ``S``, the stochastic estimators' independent draws
      averaged (vectorised with ``vmap``; ``S`` times the VJPs or JVPs).
    broadcast_axes: locked masks, with :func:`dropjax.dropout`'s meaning:
      one tuple of axes for every site or ``{site: axes}``; ``R_exp`` is
      then the second-order term of the shared mask, cross terms inside
      each group included (module docstring). Default: element-wise.
    has_aux: ``apply`` returns ``(outputs, aux)``.

  Returns:
    Scalar ``R_exp`` (dtype of the activations).

  Raises:
    ValueError: unknown estimator or loss (the message lists the valid ones),
      a missing key or ``y``, a rate outside ``[0, 1)``, a model without
      sites, ``num_samples < 1``, an axis out of a site's range.
    KeyError: ``rates`` or ``broadcast_axes`` names a site the model does
      not have (the message lists the model's sites).
    TypeError: ``broadcast_axes`` neither a mapping nor a tuple of ints.

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
  if estimator in STOCHASTIC_ESTIMATORS and key is None:
    raise ValueError(f"estimator={estimator!r} is stochastic and needs a key.")
  check_num_samples(num_samples)
  _sites.check_broadcast_axes(broadcast_axes)
  lin = _sites.linearize_sites(apply, params, x, has_aux=has_aux)
  rates = _sites.resolve_rates(rates, lin.activations)
  axes = _sites.resolve_broadcast_axes(broadcast_axes, lin.activations)
  return scale * explicit_from_linearization(
    lin,
    rates,
    estimator=estimator,
    loss=loss,
    key=key,
    y=y,
    num_samples=num_samples,
    broadcast_axes=axes,
  )
