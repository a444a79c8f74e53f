"""Multi-layer perceptron with a dropjax dropout site after every hidden layer.

The architecture of the main Fashion-MNIST experiments (Filan et al. 2021's
``784-256-256-256-256-10`` MLP): input images are flattened, every hidden
layer is ``Dense -> ReLU -> Dropout``, the output layer gives logits. Kernels
are Glorot-uniform (the Keras default), biases zero.

Layers are named so that the plain-dict parameters
(:func:`dropjax.flax.functional`) flatten in depth order: ``hidden_0``,
``hidden_1``, ..., ``output`` (indices zero-padded when there are more than
ten hidden layers, so that sorted order is depth order). The dropout site
after ``hidden_i`` is also called ``hidden_i``.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from dropjax import flax as djflax

Array = jax.Array
Rate = Union[float, Sequence[float]]


def glorot_uniform(
  key: Array, shape: Sequence[int], dtype=jnp.float32
) -> Array:
  """Glorot uniform: ``U(-a, a)`` with ``a = sqrt(6 / (fan_in + fan_out))``.

  The same values as ``nnx.initializers.glorot_uniform()`` (Keras's default),
  fans computed the same way (``in`` axis ``-2``, ``out`` axis ``-1``, the
  other axes a receptive field), but drawn as one flat vector and reshaped:
  the bits are identical, and under ``jax.vmap`` (seeds) the rank-2 draw
  compiles about twice as fast on XLA:CPU as a rank-3+ one.
  """
  shape = tuple(int(d) for d in shape)
  receptive = math.prod(shape[:-2])
  fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  scale = math.sqrt(3.0 * 2.0 / (fan_in + fan_out))
  u = jax.random.uniform(key, (math.prod(shape),), dtype, -1.0, 1.0)
  return (u * scale).reshape(shape)


def layer_names(n_hidden: int) -> list[str]:
  """``["hidden_0", ..., "hidden_{n-1}"]``, zero-padded to a common width.

  Sorted order equals depth order for any ``n_hidden`` (e.g. ``hidden_00`` ..
  ``hidden_11`` for twelve layers), and ``"output"`` sorts after all of them.
  """
  width = len(str(max(n_hidden - 1, 0)))
  return [f"hidden_{i:0{width}d}" for i in range(n_hidden)]


def _per_layer(rate: Rate, n: int, what: str) -> list[float]:
  if isinstance(rate, (int, float)):
    return [float(rate)] * n
  rates = [float(r) for r in rate]
  if len(rates) != n:
    raise ValueError(
      f"{what}: need one rate per hidden layer ({n}), got {len(rates)}."
    )
  return rates


class MLP(nnx.Module):
  """``Dense -> ReLU -> Dropout`` hidden layers and a logits layer.

  Args:
    layer_sizes: ``(d_in, h_1, ..., h_L, n_out)``; at least ``(d_in, n_out)``.
      Inputs of any shape ``[batch, ...]`` are flattened to ``[batch, d_in]``
      (e.g. Fashion-MNIST ``[B, 28, 28, 1]`` to ``[B, 784]``).
    dropout_rate: drop probability ``q`` after every hidden layer, or one per
      hidden layer. It is the layer's own rate (used when the module runs on
      its own) and the default rate reported by
      :func:`dropjax.flax.site_spec`; the regimens may override it.
    rngs: ``nnx.Rngs`` for the initial weights (stream ``params``) and the
      layers' own dropout (stream ``dropout``); ``nnx.Rngs(key)`` serves both.

  Call: ``model(x)`` with ``x`` float ``[batch, ...]`` (``prod(...) == d_in``)
  returns logits ``[batch, n_out]`` in ``x``'s float dtype.

  Raises:
    ValueError: fewer than two layer sizes, a non-positive size, or a wrong
      number of per-layer rates / a rate outside ``[0, 1)``.
  """

  def __init__(
    self,
    layer_sizes: Sequence[int] = (784, 256, 256, 256, 256, 10),
    *,
    dropout_rate: Rate = 0.5,
    rngs: nnx.Rngs,
  ):
    sizes = [int(s) for s in layer_sizes]
    if len(sizes) < 2 or min(sizes) < 1:
      raise ValueError(
        f"layer_sizes must have >= 2 positive entries, got "
        f"{tuple(layer_sizes)}."
      )
    self.layer_sizes = tuple(sizes)
    n_hidden = len(sizes) - 2
    self.hidden_names = tuple(layer_names(n_hidden))
    rates = _per_layer(dropout_rate, n_hidden, "dropout_rate")
    init = dict(
      kernel_init=glorot_uniform, bias_init=nnx.initializers.zeros_init()
    )
    for i, name in enumerate(self.hidden_names):
      setattr(self, name, nnx.Linear(sizes[i], sizes[i + 1], rngs=rngs, **init))
      setattr(
        self,
        "drop_" + name.split("_", 1)[1],
        djflax.Dropout(rates[i], site=name, rngs=rngs),
      )
    self.output = nnx.Linear(sizes[-2], sizes[-1], rngs=rngs, **init)

  def __call__(self, x: Array) -> Array:
    h = jnp.reshape(x, (x.shape[0], -1))
    for name in self.hidden_names:
      h = nnx.relu(getattr(self, name)(h))
      h = getattr(self, "drop_" + name.split("_", 1)[1])(h)
    return self.output(h)
