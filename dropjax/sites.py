"""The dropout-site contract.

Every model in dropjax is a pure function::

    apply(params, x, sites) -> outputs

that calls ``h = sites(name, h)`` at every place where dropout may act (a
*site*). ``name`` is a static string, unique within one forward pass; ``h`` is
the activation there (or, for DropConnect, the weight). Each regimen is just a
different choice of ``sites``:

* :func:`identity_sites` -- no dropout, the model in training mode (the
  ``none`` regimen, or the clean forward pass of the analytic regularizers);
* :func:`inference_sites` -- no dropout, the model in inference mode
  (evaluation: BatchNorm uses its running averages);
* :func:`dropout_sites` -- stochastic dropout with per-site rates and noise;
* :func:`perturbation_sites` -- ``h + delta[name]``; with ``delta = 0`` the
  outputs are unchanged and ``dL/d delta = dL/dh``, which is how the explicit
  and implicit regularizers reach the activations and their gradients without
  knowing the architecture.

A model with state that its training-mode forward pass updates (BatchNorm's
running statistics) keeps that state in ``params`` as well and returns
``(outputs, StateUpdate(new_values))``: the objectives pass the update on as
``aux["model_aux"]`` and the training engine writes it into the parameters
after each step (:class:`StateUpdate`).

Sites must be called at the top level of ``apply``'s trace (not inside a
``lax.scan``/``cond`` body): the analytic regularizers capture the site value
``h`` and would otherwise leak a tracer. Write recurrent models so that the
site wraps the whole sequence (e.g. ``[batch, time, features]``), which is
also what locked dropout needs.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence, Union

import jax
import jax.numpy as jnp

from dropjax import dropout as _dropout

Array = jax.Array
Params = Any
Rates = Union[float, Array, Mapping[str, Any]]


class Sites(Protocol):
  """``sites(name, h) -> h'``: what happens at a dropout site."""

  def __call__(self, name: str, h: Array) -> Array: ...


Apply = Callable[[Params, Any, Sites], Any]
"""``apply(params, x, sites) -> outputs`` (or ``(outputs, aux)``)."""


def identity_sites(name: str, h: Array) -> Array:
  """The no-dropout site function: returns ``h`` unchanged."""
  del name
  return h


def inference_sites(name: str, h: Array) -> Array:
  """The evaluation site function: returns ``h`` unchanged, like
  :func:`identity_sites`, and also tells a model that distinguishes training
  from inference (BatchNorm, :func:`dropjax.flax.functional`) to run in
  inference mode (:func:`is_inference`). For a model without such layers the
  two are the same function."""
  del name
  return h


def is_inference(sites: Sites) -> bool:
  """Whether ``sites`` is :func:`inference_sites` (the model should run in
  inference mode: running averages, no state update)."""
  return sites is inference_sites


class StateUpdate(NamedTuple):
  """New values for a stateful model's non-trainable leaves.

  A model whose training forward pass updates state (BatchNorm's running
  mean and variance) keeps that state as leaves of ``params`` and returns
  ``(outputs, StateUpdate(values))``, ``values`` being the new leaves as a
  nested dict that mirrors ``params`` (only the state's keys). Every
  objective passes it on as ``aux["model_aux"]`` (from the pass named in
  its docstring), and :func:`dropjax.train.make_train_step` writes it into
  the parameters after the optimizer's update (:func:`apply_state_update`),
  so the optimizer's step on those leaves (their gradient is zero) is
  replaced by the new statistics. Evaluation (:func:`inference_sites`)
  ignores it (:func:`outputs_of`).

  Attributes:
    values: nested dict of arrays, a sub-tree of ``params``.
  """

  values: Any


def outputs_of(result):
  """The outputs of ``apply(...)``, without a :class:`StateUpdate`."""
  if _is_stateful(result):
    return result[0]
  return result


def _is_stateful(result) -> bool:
  return (
    isinstance(result, tuple)
    and len(result) == 2
    and isinstance(result[1], StateUpdate)
  )


def apply_state_update(params, update: StateUpdate):
  """``params`` with the leaves named in ``update.values`` replaced (cast
  to the old dtypes, under ``stop_gradient``).

  Raises:
    KeyError: ``update`` names a leaf that ``params`` lacks.
  """

  def merge(old, new, path):
    if isinstance(new, Mapping):
      if not isinstance(old, Mapping):
        raise KeyError(f"state update at {path or '/'} is not in params.")
      out = dict(old)
      for k, v in new.items():
        if k not in old:
          raise KeyError(
            f"state update names {path}/{k}, which params lack; params "
            f"there have {sorted(map(str, old))}."
          )
        out[k] = merge(old[k], v, f"{path}/{k}")
      return out
    return jax.lax.stop_gradient(new).astype(jnp.result_type(old))

  return merge(params, update.values, "")


def site_key(key: Array, name: str) -> Array:
  """A per-site key: ``fold_in(key, crc32(name))``, stable across runs."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def rate_for(rates: Rates, name: str):
  """The drop rate of site ``name``: the float itself, or ``rates[name]``.

  Sites absent from a mapping get rate 0 (no dropout there); check mappings
  against the model's sites with :func:`resolve_rates` to catch typos.
  """
  if isinstance(rates, Mapping):
    return rates.get(name, 0.0)
  return rates


def check_rates(rates: Rates) -> Rates:
  """Validates one rate or every rate of a ``{site: q}`` mapping.

  Raises:
    ValueError: for a concrete rate outside ``[0, 1)``.
  """
  for q in rates.values() if isinstance(rates, Mapping) else (rates,):
    _dropout.check_rate(q)
  return rates


def dropout_sites(
  key: Array,
  rates: Rates,
  *,
  broadcast_axes: Mapping[str, Sequence[int]] | None = None,
  noise: str = "bernoulli",
) -> Sites:
  """Site function for stochastic dropout.

  Args:
    key: a ``jax.random.key``; each site uses ``site_key(key, name)``, so a
      site called twice with the same key gets the same mask.
    rates: one drop rate ``q`` for every site, or ``{site_name: q}`` (absent
      sites are not dropped). Rates may be traced arrays.
    broadcast_axes: ``{site_name: axes}`` along which the mask is shared
      (locked / variational dropout, e.g. the time axis).
    noise: ``"bernoulli"`` (inverted dropout, :func:`dropjax.dropout`) or
      ``"gaussian"`` (:func:`dropjax.gaussian_dropout`).

  Returns:
    ``sites(name, h)`` applying the noise.

  Raises:
    ValueError: for an unknown ``noise`` or a concrete rate outside [0, 1).
  """
  if noise not in ("bernoulli", "gaussian"):
    raise ValueError(
      f"unknown noise {noise!r}; valid: 'bernoulli', 'gaussian'."
    )
  axes = dict(broadcast_axes or {})
  check_rates(rates)

  def sites(name: str, h: Array) -> Array:
    q = rate_for(rates, name)
    k = site_key(key, name)
    if noise == "gaussian":
      return _dropout.gaussian_dropout(k, h, q)
    return _dropout.dropout(k, h, q, broadcast_axes=axes.get(name, ()))

  return sites


def perturbation_sites(deltas: Mapping[str, Array]) -> Sites:
  """Site function ``h + deltas[name]``.

  With zero ``deltas`` the forward pass is unchanged, and the gradient of any
  function of the outputs with respect to ``deltas[name]`` equals its gradient
  with respect to the activation ``h`` at that site.

  Raises:
    KeyError: (at call time) for a site missing from ``deltas``.
  """

  def sites(name: str, h: Array) -> Array:
    if name not in deltas:
      raise KeyError(
        f"no perturbation for site {name!r}; given: {sorted(deltas)}."
      )
    return h + deltas[name]

  return sites


def call_apply(apply: Apply, params, x, sites: Sites, has_aux: bool):
  """Calls ``apply`` and returns ``(outputs, model_aux)``.

  A stateful model's ``(outputs, StateUpdate)`` is taken as
  ``(outputs, model_aux)`` whatever ``has_aux`` says.
  """
  out = apply(params, x, sites)
  if _is_stateful(out):
    return out
  if has_aux:
    if not (isinstance(out, tuple) and len(out) == 2):
      raise ValueError("has_aux=True needs apply to return (outputs, aux).")
    return out
  return out, None


def _recording_sites(store: dict, transform: Callable[[str, Array], Array]):

  def sites(name: str, h: Array) -> Array:
    if not isinstance(name, str):
      raise TypeError(f"site names must be strings, got {name!r}.")
    if name in store:
      raise ValueError(
        f"site {name!r} was called twice in one forward pass; site names "
        "must be unique (call a site once on the whole tensor, e.g. the "
        "whole sequence, rather than inside a loop)."
      )
    store[name] = h
    return transform(name, h)

  return sites


def site_shapes(
  apply: Apply, params, x, *, has_aux: bool = False
) -> dict[str, jax.ShapeDtypeStruct]:
  """The model's dropout sites, in call order, with their shapes and dtypes.

  Traces ``apply`` abstractly (``jax.eval_shape``; no FLOPs are spent).

  Args:
    apply: the model, ``apply(params, x, sites)``.
    params: parameter pytree (arrays or ``ShapeDtypeStruct``s).
    x: a model input (arrays or ``ShapeDtypeStruct``s).
    has_aux: ``apply`` returns ``(outputs, aux)``.

  Returns:
    ``{site_name: ShapeDtypeStruct}`` in the order the sites are called.

  Raises:
    ValueError: if a site name is used twice in one forward pass.
  """
  names: list[str] = []

  def run(p, xx):
    store: dict = {}
    out = call_apply(
      apply, p, xx, _recording_sites(store, lambda n, h: h), has_aux
    )
    names.extend(store)
    return out, store

  _, shapes = jax.eval_shape(run, params, x)
  return {n: shapes[n] for n in names}


def resolve_rates(rates: Rates, site_names: Sequence[str]) -> dict[str, Any]:
  """Expands ``rates`` to ``{site_name: q}`` over the model's sites.

  Args:
    rates: one rate for all sites, or a mapping from site name to rate.
    site_names: the model's sites (e.g. ``site_shapes(...).keys()``).

  Returns:
    A dict with one entry per site (sites absent from a mapping get 0).

  Raises:
    KeyError: if the mapping names a site the model does not have; the
      message lists the model's sites.
    ValueError: for a concrete rate outside ``[0, 1)``.
  """
  site_names = list(site_names)
  if isinstance(rates, Mapping):
    unknown = [n for n in rates if n not in site_names]
    if unknown:
      raise KeyError(
        f"unknown dropout site(s) {unknown}; the model's sites are "
        f"{site_names}."
      )
    out = {n: rates.get(n, 0.0) for n in site_names}
  else:
    out = {n: rates for n in site_names}
  for q in out.values():
    _dropout.check_rate(q)
  return out


BroadcastAxes = Union[Mapping[str, Sequence[int]], Sequence[int], None]
"""Locked masks: ``{site: axes}``, or one tuple of axes for every site."""


def check_broadcast_axes(
  broadcast_axes: BroadcastAxes,
) -> tuple[int, ...] | None:
  """The axes tuple when one tuple of ints is given for every site;
  ``None`` for a mapping (or ``None``).

  Raises:
    TypeError: anything else, naming the accepted forms.
  """
  if broadcast_axes is None or isinstance(broadcast_axes, Mapping):
    return None
  if isinstance(broadcast_axes, (tuple, list)) and all(
    isinstance(a, int) and not isinstance(a, bool) for a in broadcast_axes
  ):
    return tuple(broadcast_axes)
  raise TypeError(
    "broadcast_axes must be a {site: axes} mapping (e.g. {'emb': (1,)}) or "
    f"one tuple of axes for every site (e.g. (1,)), got {broadcast_axes!r}."
  )


def resolve_broadcast_axes(
  broadcast_axes: BroadcastAxes, site_names: Sequence[str]
) -> dict[str, tuple[int, ...]]:
  """Expands ``broadcast_axes`` to ``{site: axes}`` over the model's sites.

  Args:
    broadcast_axes: ``{site: axes}`` (absent sites: ``()``, element-wise),
      one tuple of axes for every site, or ``None`` (element-wise
      everywhere). The axes have :func:`dropjax.dropout`'s meaning: one mask
      value is shared along them.
    site_names: the model's sites.

  Returns:
    ``{site: axes}`` for every site, axes as given (checked against each
    site's rank where they are used).

  Raises:
    TypeError: ``broadcast_axes`` of another type.
    KeyError: a mapping naming a site the model does not have.
  """
  every = check_broadcast_axes(broadcast_axes)
  site_names = list(site_names)
  if every is not None:
    return {n: every for n in site_names}
  axes = {k: tuple(v) for k, v in (broadcast_axes or {}).items()}
  unknown = sorted(set(axes) - set(site_names))
  if unknown:
    raise KeyError(
      f"broadcast_axes names unknown dropout site(s) {unknown}; the "
      f"model's sites are {site_names}."
    )
  return {n: axes.get(n, ()) for n in site_names}


def group_sum(x: Array, axes: Sequence[int]) -> Array:
  """``x`` summed over ``axes`` (kept as size 1): the sum over each group of
  elements that share one locked mask value. ``axes = ()`` returns ``x``.

  Raises:
    ValueError: an axis out of range for ``x``'s rank.
  """
  if not axes:
    return x
  return jnp.sum(x, axis=_dropout._normalise_axes(axes, x.ndim), keepdims=True)


def group_shape(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
  """``shape`` with size 1 along ``axes``: one entry per mask group.

  Raises:
    ValueError: an axis out of range for the rank.
  """
  shared = _dropout._normalise_axes(axes, len(shape))
  return tuple(1 if i in shared else d for i, d in enumerate(shape))


def noise_variance(rate) -> Array:
  """``q / (1 - q)``: variance of the multiplicative dropout noise."""
  rate = jnp.asarray(rate)
  return rate / (1.0 - rate)


class Linearization(NamedTuple):
  """A clean forward pass with its dropout sites exposed (:func:`linearize_sites`).

  Attributes:
    outputs: the model outputs at ``delta = 0`` (no dropout).
    aux: the model's aux output (``None`` unless ``has_aux``).
    activations: ``{site_name: h}`` in call order.
    vjp: ``vjp(cotangent) -> {site_name: d<cotangent, outputs>/dh}``.
    jvp: ``jvp({site_name: tangent}) -> d outputs`` (a second forward pass).
  """

  outputs: Any
  aux: Any
  activations: dict
  vjp: Callable[[Any], dict]
  jvp: Callable[[dict], Any]


def linearize_sites(
  apply: Apply, params, x, *, has_aux: bool = False
) -> Linearization:
  """One clean forward pass that exposes the sites for differentiation.

  Runs ``apply`` with :func:`perturbation_sites` at ``delta = 0`` and returns
  the outputs, the site activations and a VJP with respect to the deltas, so
  several cotangents (true labels, sampled labels, ...) can share one forward
  pass. Everything stays differentiable with respect to ``params`` (double
  backpropagation works).

  Args:
    apply: the model.
    params: parameter pytree.
    x: model input.
    has_aux: ``apply`` returns ``(outputs, aux)``.

  Returns:
    A :class:`Linearization`.

  Raises:
    ValueError: if the model has no dropout sites, or reuses a site name.
  """
  shapes = site_shapes(apply, params, x, has_aux=has_aux)
  if not shapes:
    raise ValueError(
      "the model calls no dropout site (sites(name, h)); the "
      "analytic regularizers have nothing to act on."
    )
  zeros = {n: jnp.zeros(s.shape, s.dtype) for n, s in shapes.items()}

  def f(deltas):
    store: dict = {}
    sites = _recording_sites(store, perturbation_sites(deltas))
    out, aux = call_apply(apply, params, x, sites, has_aux)
    return out, (aux, store)

  out, vjp, (aux, acts) = jax.vjp(f, zeros, has_aux=True)
  acts = {n: acts[n] for n in shapes}

  def site_vjp(cotangent):
    (g,) = vjp(cotangent)
    return g

  def site_jvp(tangents):
    return jax.jvp(lambda d: f(d)[0], (zeros,), (tangents,))[1]

  return Linearization(out, aux, acts, site_vjp, site_jvp)
