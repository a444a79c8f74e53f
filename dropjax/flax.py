"""Flax NNX adapter: ordinary NNX models as ``apply(params, x, sites)``.

Two pieces:

* :class:`Dropout` replaces ``nnx.Dropout`` one for one. Outside dropjax it
  behaves exactly like ``nnx.Dropout`` (``model.train()`` / ``model.eval()``,
  ``rngs``, ``deterministic``). Inside an ``apply`` made by :func:`functional`
  it becomes the dropout site ``site`` and does whatever the regimen's
  ``sites`` function says (stochastic mask, perturbation for the analytic
  regularizers, identity).
* :func:`functional` splits a model into a pure function and a plain nested
  dict of parameters, the form every dropjax objective, optax and orbax use.

:func:`site` marks any other tensor (e.g. a recurrent weight matrix for
DropConnect) as a site from inside a module.

Example -- the one-line swap from dropout to its analytic replacement:

>>> import jax, jax.numpy as jnp
>>> from flax import nnx
>>> import dropjax
>>> class MLP(nnx.Module):
...   def __init__(self, rngs):
...     self.l1 = nnx.Linear(4, 8, rngs=rngs)
...     self.drop = dropjax.flax.Dropout(0.5, site="h1", rngs=rngs)
...     self.l2 = nnx.Linear(8, 3, rngs=rngs)
...   def __call__(self, x):
...     return self.l2(self.drop(nnx.relu(self.l1(x))))
>>> model = MLP(nnx.Rngs(0))
>>> apply, params = dropjax.flax.functional(model)
>>> spec = dropjax.flax.site_spec(model)
>>> spec.rates
{'h1': 0.5}
>>> batch = (jnp.ones((5, 4)), jnp.array([0, 1, 2, 0, 1]))
>>> objective = dropjax.objectives.dropout(apply, rates=spec.rates)
>>> objective = dropjax.objectives.explicit_implicit(apply, rates=spec.rates)
>>> loss, aux = objective(params, batch, jax.random.key(0))
>>> sorted(aux)
['data_loss', 'explicit', 'implicit', 'penalty']
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Sequence

import flax.nnx as nnx
import jax

from dropjax import attention as _attention
from dropjax import sites as _sites
from dropjax.sites import Sites

Array = jax.Array

_ACTIVE_SITES: contextvars.ContextVar[Sites | None] = contextvars.ContextVar(
  "dropjax_active_sites", default=None
)


@contextlib.contextmanager
def using_sites(sites: Sites):
  """Context in which :class:`Dropout` layers and :func:`site` use ``sites``."""
  token = _ACTIVE_SITES.set(sites)
  try:
    yield
  finally:
    _ACTIVE_SITES.reset(token)


def site(name: str, h: Array) -> Array:
  """Marks ``h`` as the dropout site ``name`` inside an NNX module.

  Inside an ``apply`` made by :func:`functional` this is ``sites(name, h)``;
  elsewhere it returns ``h`` (no dropout). Use it for DropConnect on a weight
  (``w = dropjax.flax.site("w_hh", self.w_hh.value)``).
  """
  sites = _ACTIVE_SITES.get()
  return h if sites is None else sites(name, h)


class Dropout(nnx.Dropout):
  """Drop-in replacement for ``nnx.Dropout`` that is also a dropjax site.

  Args:
    rate: drop probability ``q`` in ``[0, 1)`` used when the layer runs on its
      own (and reported by :func:`site_spec` as the site's default rate).
    site: the site name, unique within the model (a static string). ``None``
      (the default, so that only the import changes when swapping
      ``nnx.Dropout``): the layer's path in the model, e.g.
      ``"blocks.0.dropout"``, given when the model is turned into ``apply``
      (:func:`functional`, :func:`site_spec`).
    broadcast_dims: axes that share one mask (locked dropout); also reported
      by :func:`site_spec` for the regimens that sample masks.
    deterministic, rng_collection, rngs: as for ``nnx.Dropout``.

  Raises:
    ValueError: for a rate outside ``[0, 1)`` or an empty site name.
  """

  def __init__(
    self,
    rate: float,
    *,
    site: str | None = None,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    rngs: nnx.Rngs | nnx.RngStream | None = None,
  ):
    from dropjax.dropout import check_rate

    check_rate(rate)
    if site is not None and (not isinstance(site, str) or not site):
      raise ValueError(
        f"site must be a non-empty string or None (named from the layer's "
        f"path), got {site!r}."
      )
    super().__init__(
      rate,
      broadcast_dims=broadcast_dims,
      deterministic=deterministic,
      rng_collection=rng_collection,
      rngs=rngs,
    )
    self.site = site

  def __call__(
    self, inputs, *, deterministic: bool | None = None, rngs=None
  ) -> Array:
    sites = _ACTIVE_SITES.get()
    if sites is not None:
      if self.site is None:
        raise ValueError(
          "this dropjax.flax.Dropout has no site name: build apply with "
          "dropjax.flax.functional(model), which names it from its path."
        )
      return sites(self.site, inputs)
    return super().__call__(inputs, deterministic=deterministic, rngs=rngs)


_ATTENTION_SITE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  "dropjax_attention_site", default=None
)


def site_dot_product_attention(
  query,
  key,
  value,
  bias=None,
  mask=None,
  broadcast_dropout: bool = True,
  dropout_rng=None,
  dropout_rate: float = 0.0,
  deterministic: bool = False,
  dtype=None,
  precision=None,
  module=None,
  promote_dtype=None,
  is_causal: bool = False,
):
  """The ``attention_fn`` of :class:`MultiHeadAttention`.

  Flax's ``nnx.dot_product_attention`` (same signature), except inside an
  ``apply`` made by :func:`functional`, where the attention probabilities
  go through the site of the calling :class:`MultiHeadAttention`
  (:func:`dropjax.attention.dot_product_attention`) instead of Flax's
  dropout.
  """
  name = _ATTENTION_SITE.get()
  sites = _ACTIVE_SITES.get()
  if name is None or sites is None:
    kw = {} if promote_dtype is None else {"promote_dtype": promote_dtype}
    return nnx.dot_product_attention(
      query,
      key,
      value,
      bias=bias,
      mask=mask,
      broadcast_dropout=broadcast_dropout,
      dropout_rng=dropout_rng,
      dropout_rate=dropout_rate,
      deterministic=deterministic,
      dtype=dtype,
      precision=precision,
      module=module,
      is_causal=is_causal,
      **kw,
    )
  p = _attention.attention_probabilities(
    query,
    key,
    mask=mask,
    bias=bias,
    causal=is_causal,
    dtype=dtype,
    precision=precision,
  )
  if module is not None:
    module.sow(nnx.Intermediate, "attention_weights", p)
  return _attention.attend(sites(name, p), value, precision=precision)


class MultiHeadAttention(nnx.MultiHeadAttention):
  """Drop-in for ``nnx.MultiHeadAttention`` whose attention dropout is a site.

  Flax applies attention dropout inside its attention function, where no
  :class:`Dropout` can reach it. This subclass takes the same constructor
  arguments and call signature and builds the same parameters from the
  same ``rngs`` (so ``nnx.state`` of the two is interchangeable); it adds
  one :class:`Dropout` child, ``attention_dropout``, that names the
  attention-probability site (``[batch, heads, q_len, kv_len]``, after the
  softmax, as in Transformer-XL's ``dropatt``; arXiv:2002.12915 §5.3 puts
  separate regularizer coefficients there).

  * Outside dropjax it *is* ``nnx.MultiHeadAttention``: Flax's attention
    function with Flax's dropout, its random stream and ``deterministic``
    flag.
  * Inside an ``apply`` made by :func:`functional` the probabilities go
    through the regimen's ``sites`` under the site name, and Flax's own
    dropout is off.

  Args:
    *args, **kwargs: those of ``nnx.MultiHeadAttention``. ``dropout_rate``
      is the site's default rate (what :func:`site_spec` reports);
      ``broadcast_dropout=True`` (Flax's default: one mask shared by the
      batch and the heads) makes the site locked along axes ``(0, 1)``, so
      it assumes one batch axis; pass ``False`` for element-wise dropout
      (the reference Transformer code's).
    site: the site name; ``None``: the child's path in the model, e.g.
      ``"blocks.0.attn.attention_dropout"``.

  Differences from ``nnx.MultiHeadAttention``: ``attention_fn`` cannot be
  replaced (the site lives in it); with ``broadcast_dropout=True`` inputs
  must have one batch axis inside dropjax.

  Raises:
    ValueError: a custom ``attention_fn``; (inside dropjax) more than one
      batch axis with ``broadcast_dropout=True``.
  """

  def __init__(
    self, *args, site: str | None = None, attention_fn=None, **kwargs
  ):
    if attention_fn is not None and attention_fn not in (
      nnx.dot_product_attention,
      site_dot_product_attention,
    ):
      raise ValueError(
        "dropjax.flax.MultiHeadAttention routes the attention probabilities "
        "through its own attention function; a custom attention_fn would "
        "bypass the site. Use nnx.MultiHeadAttention for it, or call "
        "dropjax.attention.dot_product_attention inside your function."
      )
    super().__init__(*args, attention_fn=site_dot_product_attention, **kwargs)
    self.attention_dropout = Dropout(
      self.dropout_rate,
      site=site,
      broadcast_dims=(0, 1) if self.broadcast_dropout else (),
    )

  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, **kwargs):
    if _ACTIVE_SITES.get() is None:
      return super().__call__(inputs_q, inputs_k, inputs_v, **kwargs)
    name = self.attention_dropout.site
    if name is None:
      raise ValueError(
        "this dropjax.flax.MultiHeadAttention has no site name: build apply "
        "with dropjax.flax.functional(model), which names it from its path."
      )
    if self.broadcast_dropout and inputs_q.ndim != 3:
      raise ValueError(
        f"broadcast_dropout=True locks the attention site along (batch, "
        f"heads), which needs inputs [batch, length, features]; got "
        f"{inputs_q.shape}. Pass broadcast_dropout=False."
      )
    kwargs["deterministic"] = True  # Flax's dropout off: the site drops
    token = _ATTENTION_SITE.set(name)
    try:
      return super().__call__(inputs_q, inputs_k, inputs_v, **kwargs)
    finally:
      _ATTENTION_SITE.reset(token)


@dataclasses.dataclass(frozen=True)
class SiteSpec:
  """The dropout sites a model declares through :class:`Dropout` layers.

  Attributes:
    rates: ``{site: q}`` from each layer's ``rate``.
    broadcast_axes: ``{site: axes}`` for layers with ``broadcast_dims``.
  """

  rates: dict[str, float]
  broadcast_axes: dict[str, tuple[int, ...]]


def _path_name(path) -> str:
  return ".".join(str(p) for p in path) or "dropout"


def name_sites(model: nnx.Module) -> dict[str, str]:
  """Checks the model's dropout layers and names the unnamed ones.

  Every :class:`Dropout` without a ``site`` gets its path in the model
  (``"blocks.0.dropout"``); named ones keep their name. A stock
  ``flax.nnx.Dropout`` with a non-zero rate is refused: dropjax cannot reach
  it, and inside ``apply`` it would ask for RNG state from another trace.

  Returns:
    ``{site: layer path}`` in graph order.

  Raises:
    ValueError: a stock ``nnx.Dropout``, or a stock
      ``nnx.MultiHeadAttention`` with attention dropout (its path and the
      layer to use instead), or two layers with one site name (both paths).
  """
  owners: dict[str, str] = {}
  for path, m in nnx.iter_graph(model):
    if (
      isinstance(m, nnx.MultiHeadAttention)
      and not isinstance(m, MultiHeadAttention)
      and float(m.dropout_rate) > 0
    ):
      raise ValueError(
        f"layer {_path_name(path)!r} is a stock flax.nnx.MultiHeadAttention "
        f"with dropout_rate {m.dropout_rate}, whose attention dropout "
        "dropjax cannot reach: replace it with "
        "dropjax.flax.MultiHeadAttention (same arguments)."
      )
    if not isinstance(m, nnx.Dropout):
      continue
    where = _path_name(path)
    if not isinstance(m, Dropout):
      if float(m.rate) > 0 and not m.deterministic:
        raise ValueError(
          f"layer {where!r} is a stock flax.nnx.Dropout (rate {m.rate}), "
          "which dropjax cannot reach: replace it with "
          "dropjax.flax.Dropout(rate) (same arguments; the site is named "
          f"{where!r} from its path, or pass site=...)."
        )
      continue
    if m.site is None:
      m.site = where
    if m.site in owners and owners[m.site] != where:
      raise ValueError(
        f"two Dropout layers share the site name {m.site!r}: "
        f"{owners[m.site]!r} and {where!r}."
      )
    owners[m.site] = where
  return owners


def site_spec(model: nnx.Module) -> SiteSpec:
  """Collects the :class:`Dropout` layers' site names, rates and axes.

  Unnamed layers are named from their path first (:func:`name_sites`).

  Raises:
    ValueError: two layers share a site name, or the model holds a stock
      ``nnx.Dropout`` (see :func:`name_sites`).
  """
  name_sites(model)
  rates: dict[str, float] = {}
  axes: dict[str, tuple[int, ...]] = {}
  for _, m in nnx.iter_graph(model):
    if isinstance(m, Dropout) and m.site not in rates:
      rates[m.site] = float(m.rate)
      if m.broadcast_dims:
        axes[m.site] = tuple(m.broadcast_dims)
  return SiteSpec(rates=rates, broadcast_axes=axes)


def _deep_merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for k, v in b.items():
    out[k] = _deep_merge(out[k], v) if k in out else v
  return out


def _take(tree: dict, template: dict) -> dict:
  """The keys of ``template`` (recursively) taken from ``tree``."""
  return {
    k: _take(tree[k], v) if isinstance(v, dict) else tree[k]
    for k, v in template.items()
  }


def _drop(tree: dict, template: dict) -> dict:
  """``tree`` without the leaves of ``template``; emptied dicts removed."""
  out = {}
  for k, v in tree.items():
    if k not in template:
      out[k] = v
    elif isinstance(template[k], dict) and isinstance(v, dict):
      rest = _drop(v, template[k])
      if rest:
        out[k] = rest
  return out


def functional(
  model: nnx.Module, *, wrt=nnx.Param, state=nnx.BatchStat
) -> tuple[Callable[[Any, Any, Sites], Any], dict]:
  """Turns an NNX model into ``apply(params, x, sites)`` and a params dict.

  The model's ``wrt`` variables (``nnx.Param`` by default) become a plain
  nested dict (``nnx.to_pure_dict``); everything else except ``state``
  (RNG streams of the layers, ...) is frozen into ``apply``. ``apply``
  rebuilds the module from ``params`` on every call (cheap at trace time,
  free once jitted) and runs it with :class:`Dropout` layers and
  :func:`site` calls routed to ``sites``. The original ``model`` is never
  mutated.

  **Stateful models** (BatchNorm): variables of the ``state`` filter
  (``nnx.BatchStat`` by default: BatchNorm's running mean and variance) are
  leaves of ``params`` too, beside the layer's ``scale`` and ``bias``, and
  ``apply`` returns ``(outputs, dropjax.sites.StateUpdate(new_stats))``.
  With every site function but :func:`dropjax.sites.inference_sites` the
  module runs as the model was built (``model.train()``: normalised by the
  batch's statistics, running averages updated); with ``inference_sites``
  (the engine's evaluation) it runs as after ``model.eval()`` (running
  averages, nothing updated). The objectives hand the update on as
  ``aux["model_aux"]`` and :func:`dropjax.train.train` writes it into the
  parameters after every step; which forward pass it comes from under each
  regimen is listed in :mod:`dropjax.objectives`. The gradient with respect
  to the statistics is zero, and whatever the optimizer does to them is
  overwritten by the update.

  Args:
    model: an ``nnx.Module`` whose ``__call__(x)`` returns the outputs.
    wrt: the variable filter that selects the parameters.
    state: the filter of the non-trainable variables that the training
      forward pass updates.

  Returns:
    ``(apply, params)``.

  Raises:
    ValueError: the model holds a stock ``nnx.Dropout`` or two layers with
      one site name (:func:`name_sites`, which also names unnamed sites).

  Example (a BatchNorm model; evaluation uses the running averages):

  >>> import jax.numpy as jnp, dropjax
  >>> class Net(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.l1 = nnx.Linear(4, 8, rngs=rngs)
  ...     self.bn = nnx.BatchNorm(8, rngs=rngs)
  ...     self.drop = dropjax.flax.Dropout(0.5, rngs=rngs)
  ...     self.l2 = nnx.Linear(8, 3, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))
  >>> apply, params = dropjax.flax.functional(Net(nnx.Rngs(0)))
  >>> sorted(params["bn"])
  ['bias', 'mean', 'scale', 'var']
  >>> out, update = apply(params, jnp.ones((5, 4)), dropjax.identity_sites)
  >>> sorted(update.values["bn"])
  ['mean', 'var']
  """
  name_sites(model)
  graphdef, trainable, stats, rest = nnx.split(model, wrt, state, ...)
  stats_dict = nnx.to_pure_dict(stats)
  params = _deep_merge(nnx.to_pure_dict(trainable), stats_dict)

  def apply(params, x, sites: Sites):
    st = jax.tree.map(lambda a: a, trainable)
    nnx.replace_by_pure_dict(st, _drop(params, stats_dict))
    ss = jax.tree.map(lambda a: a, stats)
    nnx.replace_by_pure_dict(ss, _take(params, stats_dict))
    module = nnx.merge(graphdef, st, ss, rest)
    if _sites.is_inference(sites):
      module.eval()
    with using_sites(sites):
      out = module(x)
    if not stats_dict:  # no state: the outputs alone
      return out
    _, new_stats, _ = nnx.split(module, state, ...)
    return out, _sites.StateUpdate(nnx.to_pure_dict(new_stats))

  return apply, params
