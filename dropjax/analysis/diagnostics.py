r"""How well the analytic replacement describes dropout on trained networks.

Wei, Kakade & Ma (arXiv:2002.12915) replace dropout by two deterministic
pieces: the *explicit* regularizer ``R_exp``, the second-order (Gauss–Newton)
term of the expected dropout loss (§2), and the *implicit* regularizer
``R_imp``, whose gradient reproduces the linearised dropout gradient noise
(§3). Both are approximations. The two checks here measure, on given
parameters and a fixed batch, how far each is from the dropout it replaces:

* :func:`taylor_check`: the Monte-Carlo expected dropout loss increase
  ``E_mask[L̄(mask)] - L̄`` against ``R_exp`` (exact Gauss–Newton and the
  sampled-label estimator), per site and with every site dropped at once.
  For a network linear in the site with a squared loss the expansion is
  exact (``E_mask[L̄] = L̄ + R_exp``), so the two agree within Monte-Carlo
  error; elsewhere their ratio says how much of dropout's effect on the
  objective the second-order term carries.
* :func:`gradient_noise_check`: the covariance of real dropout minibatch
  gradients across masks against the covariance of ``∇R_imp`` across
  Rademacher signs (traces, and a relative Frobenius distance of a random
  projection), with standard errors and a sampling-noise floor.

Both read parameters and never train. Everything is computed under ``jit``;
the loops over masks and signs are ``lax.map`` / ``lax.scan``, so memory does
not grow with the number of samples.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dropjax import explicit as _explicit
from dropjax import implicit as _implicit
from dropjax import losses as _losses
from dropjax import sites as _sites

Array = jax.Array

ALL_SITES = "all"


def _configs(
  site_rates: Mapping[str, float], per_site: bool
) -> dict[str, dict[str, float]]:
  """``{config: {site: q}}`` over every site: each dropped site alone (the
  others at 0), then every site at its rate (``"all"``)."""
  out = {}
  if per_site:
    for name, q in site_rates.items():
      if q > 0:
        out[name] = {n: (float(q) if n == name else 0.0) for n in site_rates}
  out[ALL_SITES] = {n: float(q) for n, q in site_rates.items()}
  return out


def _site_rates(apply, params, x, rates) -> dict[str, float]:
  names = list(_sites.site_shapes(apply, params, x))
  if not names:
    raise ValueError(
      "the model calls no dropout site (sites(name, h)); there is no "
      "dropout to diagnose."
    )
  return {n: float(q) for n, q in _sites.resolve_rates(rates, names).items()}


def _active_rates(apply, params, x, rates, loss):
  """``({site: q} over every site, {site: q} over the dropped ones)``.

  Raises:
    ValueError: an unknown loss, a model without sites, or every rate 0.
    KeyError: ``rates`` names a site the model does not have.
  """
  _losses.check_loss(loss)
  site_rates = _site_rates(apply, params, x, rates)
  active = {n: q for n, q in site_rates.items() if q > 0}
  if not active:
    raise ValueError("every rate is 0: there is no dropout to diagnose.")
  return site_rates, active


def _common_rate(active: Mapping[str, float], members) -> float | None:
  """The rate shared by ``members``, or ``None`` if they differ."""
  qs = {float(active[n]) for n in members}
  return qs.pop() if len(qs) == 1 else None


def _check_count(value, name, minimum):
  if int(value) != value or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


# ------------------------------------------------------ the explicit term


@functools.partial(
  jax.jit, static_argnames=("apply", "loss", "num_masks", "noise", "chunk")
)
def _mc_losses(
  apply, params, x, y, rates, key, *, loss, num_masks, noise, chunk
):
  """``L̄`` under ``num_masks`` independent masks, shape ``[num_masks]``."""

  def one(k):
    sites = _sites.dropout_sites(k, rates, noise=noise)
    return _losses.mean_loss(
      loss, _sites.outputs_of(apply(params, x, sites)), y
    )

  keys = jax.random.split(key, num_masks)
  return jax.lax.map(one, keys, batch_size=chunk)


def dropout_gap(
  apply: _sites.Apply,
  params,
  x,
  y,
  *,
  rates: _sites.Rates,
  key: Array,
  num_masks: int = 1000,
  loss: str = "softmax_cross_entropy",
  noise: str = "bernoulli",
  chunk: int = 16,
) -> tuple[float, float]:
  r"""Monte-Carlo ``E_mask[L̄(mask)] - L̄`` and its standard error.

  ``L̄(mask)`` is the batch-mean loss with one dropout mask (inverted
  Bernoulli, or Gaussian noise of the same variance) drawn at every site of
  ``rates``; ``L̄`` the clean loss. Each mask is an independent draw, so the
  standard error is the SD of ``L̄(mask)`` over masks ``/ sqrt(num_masks)``.
  This is the quantity ``R_exp`` approximates to second order
  (arXiv:2002.12915 §2).

  Args:
    apply: the model, ``apply(params, x, sites)``; outputs ``[..., K]``.
    params: parameter pytree.
    x, y: a fixed batch (inputs, true targets).
    rates: drop rate ``q`` for every site, or ``{site: q}``.
    key: ``jax.random.key`` for the masks.
    num_masks: number of masks (>= 2).
    loss: ``"softmax_cross_entropy"`` or ``"squared_error"``.
    noise: ``"bernoulli"`` or ``"gaussian"``.
    chunk: masks evaluated together (``lax.map``'s ``batch_size``): memory.

  Returns:
    ``(gap, standard_error)`` as Python floats (units of the loss: nats for
    cross-entropy).

  Raises:
    ValueError: a bad count, rate, loss or noise; a model without sites.
    KeyError: ``rates`` names a site the model does not have.
  """
  num_masks = _check_count(num_masks, "num_masks", 2)
  _losses.check_loss(loss)
  site_rates = _site_rates(apply, params, x, rates)
  return _gap(
    apply,
    params,
    x,
    y,
    site_rates,
    key,
    clean=_clean_loss(apply, params, x, y, loss),
    loss=loss,
    num_masks=num_masks,
    noise=noise,
    chunk=chunk,
  )


def _clean_loss(apply, params, x, y, loss) -> float:
  return float(
    _losses.mean_loss(
      loss, _sites.outputs_of(apply(params, x, _sites.identity_sites)), y
    )
  )


def _gap(
  apply, params, x, y, site_rates, key, *, clean, loss, num_masks, noise, chunk
):
  """:func:`dropout_gap` on checked inputs, given the clean loss."""
  per_mask = _mc_losses(
    apply,
    params,
    x,
    y,
    site_rates,
    key,
    loss=loss,
    num_masks=num_masks,
    noise=noise,
    chunk=min(int(chunk), num_masks),
  )
  d = np.asarray(per_mask, np.float64) - clean
  return float(d.mean()), float(d.std(ddof=1) / math.sqrt(num_masks))


@functools.partial(jax.jit, static_argnames=("apply", "loss"))
def _gauss_newton_terms(apply, params, x, rates, *, loss):
  """Exact per-site Gauss–Newton ``R_exp``, one example at a time."""

  def one(xi):
    lin = _sites.linearize_sites(apply, params, xi[None])
    return _explicit.explicit_terms(
      lin, rates, estimator="gauss_newton", loss=loss
    )

  per_example = jax.lax.map(one, x, batch_size=32)
  return {n: jnp.mean(v) for n, v in per_example.items()}


@functools.partial(
  jax.jit, static_argnames=("apply", "loss", "num_label_samples")
)
def _sampled_label_terms(
  apply, params, x, rates, key, *, loss, num_label_samples
):
  """Per-site sampled-label ``R_exp`` for each of the label draws."""
  lin = _sites.linearize_sites(apply, params, x)

  def one(k):
    return _explicit.explicit_terms(
      lin, rates, estimator="sampled_label", loss=loss, key=k
    )

  return jax.vmap(one)(jax.random.split(key, num_label_samples))


def taylor_check(
  apply: _sites.Apply,
  params,
  x,
  y,
  *,
  rates: _sites.Rates,
  key: Array,
  num_masks: int = 1000,
  num_label_samples: int = 16,
  loss: str = "softmax_cross_entropy",
  per_site: bool = True,
  chunk: int = 16,
) -> dict[str, dict[str, float]]:
  r"""The expected dropout loss increase against the explicit regularizer.

  For each site alone (the other sites undropped) and for every site at
  once (key ``"all"``): the Monte-Carlo gap ``E_mask[L̄(mask)] - L̄``
  (:func:`dropout_gap`) and ``R_exp`` at scale 1 (Taylor-faithful,
  ``q / (2 (1 - q)) Σ_j v_j² [GN]_jj``, arXiv:2002.12915 §2) by two
  estimators: exact Gauss–Newton and the mean of ``num_label_samples``
  sampled-label (Fisher) draws. ``R_exp`` is additive over sites, so the
  ``"all"`` entry's ``R_exp`` is the sum of the sites'; the Monte-Carlo gap
  is not (higher-order and cross-site terms), which is part of what this
  measures.

  The exact Gauss–Newton term is computed one example at a time
  (``N K`` VJPs of one example each instead of the batch's), which equals
  the batch's value when the model's output for an example depends on that
  example alone (no batch statistics, no attention across the batch). It is
  exact at every site shape, sequences included.

  Args:
    apply: the model, ``apply(params, x, sites)``; outputs ``[..., K]``.
    params: parameter pytree.
    x, y: a fixed batch ``[N, ...]`` (inputs, true targets).
    rates: drop rate ``q`` for every site, or ``{site: q}``.
    key: ``jax.random.key`` (masks and label draws).
    num_masks: Monte-Carlo masks per configuration (>= 2).
    num_label_samples: sampled-label draws (>= 2).
    loss: ``"softmax_cross_entropy"`` or ``"squared_error"``.
    per_site: also check every site alone (else only ``"all"``).
    chunk: masks evaluated together (memory).

  Returns:
    ``{config: {"rate", "mc_gap", "mc_se", "r_exp_gauss_newton",
    "r_exp_sampled_label", "r_exp_sampled_label_se"}}`` with ``config`` each
    site with a non-zero rate, then ``"all"``; floats in loss units.

  Raises:
    ValueError: a bad count, rate or loss; a model without sites.
    KeyError: ``rates`` names a site the model does not have.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> def apply(w, x, sites):     # linear in the site: the expansion is exact
    ...   return sites("x", x) @ w
    >>> x = jax.random.normal(jax.random.key(0), (64, 3))
    >>> w = jnp.ones((3, 1))
    >>> r = taylor_check(apply, w, x, x @ w, rates=0.3, key=jax.random.key(1),
    ...                  num_masks=4000, loss="squared_error")
    >>> d = r["all"]
    >>> abs(d["mc_gap"] - d["r_exp_gauss_newton"]) < 4 * d["mc_se"]
    True
  """
  num_masks = _check_count(num_masks, "num_masks", 2)
  num_label_samples = _check_count(num_label_samples, "num_label_samples", 2)
  site_rates, active = _active_rates(apply, params, x, rates, loss)
  k_gap, k_label = jax.random.split(key)
  gn = _gauss_newton_terms(apply, params, x, site_rates, loss=loss)
  sl = _sampled_label_terms(
    apply,
    params,
    x,
    site_rates,
    k_label,
    loss=loss,
    num_label_samples=num_label_samples,
  )
  gn = {n: float(v) for n, v in gn.items()}
  sl = {n: np.asarray(v, np.float64) for n, v in sl.items()}
  out = {}
  clean = _clean_loss(apply, params, x, y, loss)
  for i, (name, cfg_rates) in enumerate(_configs(site_rates, per_site).items()):
    gap, se = _gap(
      apply,
      params,
      x,
      y,
      cfg_rates,
      jax.random.fold_in(k_gap, i),
      clean=clean,
      loss=loss,
      num_masks=num_masks,
      noise="bernoulli",
      chunk=chunk,
    )
    members = list(active) if name == ALL_SITES else [name]
    draws = sum(sl[n] for n in members)
    out[name] = {
      "rate": _common_rate(active, members),
      "mc_gap": gap,
      "mc_se": se,
      "r_exp_gauss_newton": float(sum(gn[n] for n in members)),
      "r_exp_sampled_label": float(draws.mean()),
      "r_exp_sampled_label_se": float(
        draws.std(ddof=1) / math.sqrt(draws.size)
      ),
    }
  return out


# ------------------------------------------------------ the implicit term


@functools.partial(
  jax.jit, static_argnames=("apply", "loss", "kind", "groups", "per_group")
)
def _noise_moments(
  apply, params, x, y, rates, key, proj, *, loss, kind, groups, per_group
):
  """Per-group sums of gradient deviations from the clean gradient.

  Returns ``s1 [groups, d]`` (sum of ``g - g0``), ``s2 [groups]`` (sum of
  ``|g - g0|²``) and the projected deviations ``[groups, per_group, m]``.
  """
  flat0, unravel = ravel_pytree(params)

  def data_loss(p, sites):
    return _losses.mean_loss(loss, _sites.outputs_of(apply(p, x, sites)), y)

  g_clean = ravel_pytree(
    jax.grad(lambda p: data_loss(p, _sites.identity_sites))(params)
  )[0]

  def grad(k):
    if kind == "dropout":
      g = jax.grad(lambda p: data_loss(p, _sites.dropout_sites(k, rates)))(
        params
      )
      return ravel_pytree(g)[0] - g_clean
    # The implicit regularizer's gradient: zero-mean noise by itself.
    g = jax.grad(
      lambda p: _implicit.implicit_regularizer(
        apply, p, x, y, rates=rates, key=k, loss=loss
      )
    )(params)
    return ravel_pytree(g)[0]

  def group(_, ks):
    def body(carry, k):
      s1, s2 = carry
      d = grad(k)
      return (s1 + d, s2 + jnp.vdot(d, d)), d @ proj

    zero = jnp.zeros_like(flat0)
    (s1, s2), pr = jax.lax.scan(body, (zero, jnp.zeros((), flat0.dtype)), ks)
    return None, (s1, s2, pr)

  keys = jax.random.split(key, groups * per_group).reshape(groups, per_group)
  _, out = jax.lax.scan(group, None, keys)
  return out


def _trace_and_se(s1, s2, per_group):
  """Unbiased trace of the covariance, and its SE from the groups."""
  s1 = np.asarray(s1, np.float64)
  s2 = np.asarray(s2, np.float64)
  groups = s1.shape[0]
  n = groups * per_group
  tot1 = s1.sum(0)
  trace = (s2.sum() - tot1 @ tot1 / n) / (n - 1)
  per = (s2 - np.einsum("gd,gd->g", s1, s1) / per_group) / (per_group - 1)
  return float(trace), float(per.std(ddof=1) / math.sqrt(groups))


def _cov(z):
  z = z - z.mean(0)
  return z.T @ z / (len(z) - 1)


def _rel_dist(za, zb, ref):
  return float(np.linalg.norm(_cov(za) - _cov(zb)) / np.linalg.norm(ref))


def gradient_noise_check(
  apply: _sites.Apply,
  params,
  x,
  y,
  *,
  rates: _sites.Rates,
  key: Array,
  num_samples: int = 128,
  projection_dim: int = 32,
  groups: int = 8,
  loss: str = "softmax_cross_entropy",
  per_site: bool = True,
  num_bootstrap: int = 200,
) -> dict[str, dict[str, float]]:
  r"""Dropout's gradient noise against the implicit regularizer's.

  At fixed parameters and a fixed batch, for each site alone and for every
  site at once (``"all"``):

  * ``trace_dropout``: ``tr Cov_mask(∇_θ L̄(mask))``, the covariance across
    ``num_samples`` inverted Bernoulli masks of the true dropout gradient;
  * ``trace_implicit``: ``tr Cov_s(∇_θ R_imp(s))`` across as many
    Rademacher sign draws, ``R_imp`` at scale 1 (arXiv:2002.12915 §3; its
    covariance is the *linearised* dropout noise covariance
    ``q/(1-q) Σ_j a_j a_jᵀ``);
  * ``trace_ratio`` = implicit / dropout (1 where the linearisation holds);
  * ``relative_distance``: ``‖C_drop - C_imp‖_F / ‖C_drop‖_F`` of the two
    covariances of the gradients projected on ``projection_dim`` random
    Gaussian directions (shared by both), with a bootstrap SE over samples;
  * ``noise_floor``: the same distance between the covariances of two
    disjoint halves of the dropout samples, divided by ``√2`` (two half-size
    estimates differ by ``√2`` times more than two full-size ones): the
    distance that sampling alone produces.

  The traces are unbiased (sample covariance, ``ddof = 1``); their SEs come
  from ``groups`` equal groups of samples (SD of the group estimates
  ``/ √groups``), and the ratio's by the delta method.

  Args:
    apply: the model, ``apply(params, x, sites)``; outputs ``[..., K]``.
    params: parameter pytree (float arrays).
    x, y: a fixed batch (inputs, true targets).
    rates: drop rate ``q`` for every site, or ``{site: q}``.
    key: ``jax.random.key`` (masks, signs, projection, bootstrap).
    num_samples: gradients per covariance; a multiple of ``groups``.
    projection_dim: random directions of the projected covariance.
    groups: groups for the trace SEs (>= 2, each of >= 2 samples).
    loss: ``"softmax_cross_entropy"`` or ``"squared_error"``.
    per_site: also check every site alone (else only ``"all"``).
    num_bootstrap: resamples for the distance's SE.

  Returns:
    ``{config: {"rate", "trace_dropout", "trace_dropout_se",
    "trace_implicit", "trace_implicit_se", "trace_ratio", "trace_ratio_se",
    "relative_distance", "relative_distance_se", "noise_floor"}}``; traces
    in squared loss-gradient units.

  Raises:
    ValueError: bad counts, rate or loss; a model without sites.
    KeyError: ``rates`` names a site the model does not have.
  """
  groups = _check_count(groups, "groups", 2)
  num_samples = _check_count(num_samples, "num_samples", 2 * groups)
  if num_samples % groups:
    raise ValueError(
      f"num_samples ({num_samples}) must be a multiple of groups ({groups})."
    )
  projection_dim = _check_count(projection_dim, "projection_dim", 1)
  site_rates, active = _active_rates(apply, params, x, rates, loss)
  per_group = num_samples // groups
  flat, _ = ravel_pytree(params)
  k_proj, k_boot, key = jax.random.split(key, 3)
  proj = jax.random.normal(k_proj, (flat.size, projection_dim), flat.dtype)
  rng = np.random.default_rng(
    np.asarray(jax.random.key_data(k_boot)).ravel().tolist()
  )
  out = {}
  for i, (name, cfg_rates) in enumerate(_configs(site_rates, per_site).items()):
    k_cfg = jax.random.fold_in(key, i)
    res = {}
    for j, kind in enumerate(("dropout", "implicit")):
      s1, s2, pr = _noise_moments(
        apply,
        params,
        x,
        y,
        cfg_rates,
        jax.random.fold_in(k_cfg, j),
        proj,
        loss=loss,
        kind=kind,
        groups=groups,
        per_group=per_group,
      )
      res[kind] = (
        *_trace_and_se(s1, s2, per_group),
        np.asarray(pr, np.float64).reshape(num_samples, projection_dim),
      )
    td, td_se, zd = res["dropout"]
    ti, ti_se, zi = res["implicit"]
    ratio = ti / td if td > 0 else float("nan")
    ratio_se = (
      abs(ratio) * math.hypot(td_se / td, ti_se / ti)
      if td > 0 and ti > 0
      else float("nan")
    )
    ref = _cov(zd)
    dist = _rel_dist(zd, zi, ref)
    boots = []
    for _ in range(int(num_bootstrap)):
      a = rng.integers(0, num_samples, num_samples)
      b = rng.integers(0, num_samples, num_samples)
      boots.append(_rel_dist(zd[a], zi[b], _cov(zd[a])))
    half = num_samples // 2
    floor = _rel_dist(zd[:half], zd[half:], ref) / math.sqrt(2.0)
    members = list(active) if name == ALL_SITES else [name]
    out[name] = {
      "rate": _common_rate(active, members),
      "trace_dropout": td,
      "trace_dropout_se": td_se,
      "trace_implicit": ti,
      "trace_implicit_se": ti_se,
      "trace_ratio": float(ratio),
      "trace_ratio_se": float(ratio_se),
      "relative_distance": dist,
      "relative_distance_se": float(np.std(boots, ddof=1))
      if len(boots) > 1
      else float("nan"),
      "noise_floor": floor,
    }
  return out
