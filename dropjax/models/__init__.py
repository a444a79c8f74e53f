"""Flax NNX models with dropjax dropout sites, and their functional form.

Every model here is an ordinary ``nnx.Module`` whose dropout layers are
:class:`dropjax.flax.Dropout` sites, so it runs as-is in Flax and, through
:func:`make_model`, as the pure ``apply(params, x, sites)`` that every dropjax
objective takes.

>>> import jax, jax.numpy as jnp
>>> from dropjax import models, objectives
>>> apply, params, rates = models.make_model("mlp", key=0,
...                                          layer_sizes=(784, 32, 32, 10))
>>> list(params), rates
(['hidden_0', 'hidden_1', 'output'], {'hidden_0': 0.5, 'hidden_1': 0.5})
>>> x = jnp.zeros((8, 28, 28, 1)); y = jnp.zeros((8,), jnp.int32)
>>> obj = objectives.dropout(apply, rates=rates)  # or explicit_implicit(...)
>>> loss, aux = jax.jit(obj)(params, (x, y), jax.random.key(1))
>>> loss.shape
()
"""

from __future__ import annotations

from typing import Any, Callable

import flax.nnx as nnx
import jax

from dropjax import flax as djflax
from dropjax.models.cnn import CNN
from dropjax.models.mlp import MLP
from dropjax.models.mlp import glorot_uniform
from dropjax.models.mlp import layer_names

MODELS: dict[str, type[nnx.Module]] = {"mlp": MLP, "cnn": CNN}


def _key(key) -> jax.Array:
  if isinstance(key, int):
    return jax.random.key(key)
  if not jax.dtypes.issubdtype(
    getattr(key, "dtype", None), jax.dtypes.prng_key
  ):
    raise TypeError(
      "key must be an int seed or a typed jax.random.key(...), "
      f"got {type(key).__name__} of dtype "
      f"{getattr(key, 'dtype', None)}."
    )
  return key


def build(name: str, key=0, **kwargs) -> nnx.Module:
  """The NNX module ``MODELS[name](**kwargs, rngs=nnx.Rngs(key))``.

  Args:
    name: ``"mlp"`` or ``"cnn"``.
    key: an int seed or a typed ``jax.random.key``; the initial weights are
      a function of it alone.
    **kwargs: the model's constructor arguments.

  Raises:
    ValueError: unknown model name (the message lists the valid ones).
    TypeError: a raw (uint32) key.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}.")
  key = _key(key)

  def ctor(k):
    return MODELS[name](**kwargs, rngs=nnx.Rngs(k))

  # Same module as ``ctor(key)`` run eagerly, but the initial state is
  # computed by one jitted program instead of one compiled op at a time
  # (about twice as fast on CPU).
  graphdef, _ = nnx.split(nnx.eval_shape(ctor, key))
  state = jax.jit(lambda k: nnx.split(ctor(k))[1])(key)
  return nnx.merge(graphdef, state)


def make_model(
  name: str, *, key=0, **kwargs
) -> tuple[Callable[..., Any], dict, dict[str, float]]:
  """A model as ``(apply, params, site_rates)``.

  Args:
    name: ``"mlp"`` or ``"cnn"``.
    key: int seed or typed key for the initial weights.
    **kwargs: constructor arguments (e.g. ``layer_sizes``, ``dropout_rate``).

  Returns:
    ``apply(params, x, sites) -> logits``; ``params``, a plain nested dict
    ``{layer: {"kernel": ..., "bias": ...}}`` whose flatten order is depth
    order; ``site_rates``, ``{site: q}`` from the model's dropout layers.
  """
  model = build(name, key, **kwargs)
  apply, params = djflax.functional(model)
  return apply, params, djflax.site_spec(model).rates


def make_init(name: str, **kwargs) -> Callable[[jax.Array], dict]:
  """``init(key) -> params``: the initial parameters as a pure function.

  ``init(key)`` equals ``make_model(name, key=key, **kwargs)[1]`` and may be
  ``jax.vmap``-ped over a batch of typed keys (``jax.random.split(k, S)``) to
  initialise ``S`` seeds at once, e.g. by :func:`dropjax.train.train`. (Under
  ``vmap`` the keys must be typed keys: ``nnx.Rngs`` rejects traced int
  seeds.)
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}.")

  def init(key: jax.Array) -> dict:
    model = MODELS[name](**kwargs, rngs=nnx.Rngs(_key(key)))
    return djflax.functional(model)[1]

  return init


def functional_model(cls: type[nnx.Module], *args, key: Any = 0, **kwargs):
  """``cls(*args, **kwargs, rngs=nnx.Rngs(key))`` in functional form.

  Returns:
    ``(apply, params, spec, module)``: :func:`dropjax.flax.functional`'s
    ``apply`` and parameter dict, the :class:`dropjax.flax.SiteSpec` and the
    module itself (for its sizes and helpers).

  Raises:
    TypeError: a raw (uint32) key.
  """
  model = cls(*args, **kwargs, rngs=nnx.Rngs(_key(key)))
  apply, params = djflax.functional(model)
  return apply, params, djflax.site_spec(model), model


def functional_init(cls: type[nnx.Module], *args, **kwargs):
  """``init(key) -> params`` as a pure function (``vmap``-able over typed
  keys), equal to ``functional_model(cls, *args, key=key, **kwargs)[1]``."""

  def init(key: jax.Array) -> dict:
    model = cls(*args, **kwargs, rngs=nnx.Rngs(_key(key)))
    return djflax.functional(model)[1]

  return init


__all__ = [
  "CNN",
  "MLP",
  "MODELS",
  "build",
  "functional_init",
  "functional_model",
  "glorot_uniform",
  "layer_names",
  "make_init",
  "make_model",
]
