"""A small convolutional network for 28x28 images, with dropjax sites.

``conv_0 -> ReLU -> maxpool -> conv_1 -> ReLU -> maxpool -> flatten ->
dense_0 -> ReLU -> Dropout -> output``: two 3x3 ``SAME`` convolution blocks
(32 and 64 channels by default, each followed by a 2x2 stride-2 max-pool), a
dense hidden layer (128 units) and the logits layer. Kernels Glorot-uniform,
biases zero.

Dropout sites: ``dense_0`` after the dense hidden layer, and optionally
``conv_0`` / ``conv_1`` after each pooled conv block (only when
``conv_dropout_rate > 0``; a site with nothing to drop would only cost the
analytic regularizers work). Layer names sort in depth order
(``conv_0 < conv_1 < dense_0 < output``), so the plain-dict parameters flatten
in depth order.
"""

from __future__ import annotations

from typing import Sequence

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from dropjax import flax as djflax
from dropjax.models.mlp import glorot_uniform

Array = jax.Array


class CNN(nnx.Module):
  """Two conv blocks, one dense hidden layer, logits.

  Args:
    in_shape: ``(height, width, channels)`` of one input, default
      ``(28, 28, 1)``; height and width must be divisible by 4.
    channels: output channels of the two conv blocks.
    hidden: width of the dense hidden layer.
    n_out: number of outputs (classes).
    dropout_rate: ``q`` of the ``dense_0`` site.
    conv_dropout_rate: ``q`` of the ``conv_0``/``conv_1`` sites; 0 (default)
      creates no conv sites.
    rngs: ``nnx.Rngs`` (``params`` and ``dropout`` streams).

  Call: ``model(x)`` with ``x`` float ``[batch, H, W, C]`` (a ``[batch, H*W*C]``
  input is reshaped) returns logits ``[batch, n_out]``.

  Raises:
    ValueError: for a bad shape, size or rate.
  """

  def __init__(
    self,
    in_shape: Sequence[int] = (28, 28, 1),
    *,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    n_out: int = 10,
    dropout_rate: float = 0.5,
    conv_dropout_rate: float = 0.0,
    rngs: nnx.Rngs,
  ):
    in_shape = tuple(int(s) for s in in_shape)
    if len(in_shape) != 3 or in_shape[0] % 4 or in_shape[1] % 4:
      raise ValueError(
        f"in_shape must be (H, W, C) with H, W divisible by 4, got {in_shape}."
      )
    if len(channels) != 2 or min(channels) < 1 or hidden < 1 or n_out < 1:
      raise ValueError(
        "need two positive conv widths, hidden >= 1, n_out >= 1."
      )
    self.in_shape = in_shape
    init = dict(
      kernel_init=glorot_uniform, bias_init=nnx.initializers.zeros_init()
    )
    c_in = in_shape[2]
    self.conv_0 = nnx.Conv(
      c_in, channels[0], (3, 3), padding="SAME", rngs=rngs, **init
    )
    self.conv_1 = nnx.Conv(
      channels[0], channels[1], (3, 3), padding="SAME", rngs=rngs, **init
    )
    flat = (in_shape[0] // 4) * (in_shape[1] // 4) * channels[1]
    self.dense_0 = nnx.Linear(flat, hidden, rngs=rngs, **init)
    self.output = nnx.Linear(hidden, n_out, rngs=rngs, **init)
    self.conv_sites = conv_dropout_rate > 0
    if self.conv_sites:
      self.drop_conv_0 = djflax.Dropout(
        conv_dropout_rate, site="conv_0", rngs=rngs
      )
      self.drop_conv_1 = djflax.Dropout(
        conv_dropout_rate, site="conv_1", rngs=rngs
      )
    else:
      djflax.Dropout(conv_dropout_rate, site="conv_0")  # validates the rate
    self.drop_dense_0 = djflax.Dropout(dropout_rate, site="dense_0", rngs=rngs)

  def __call__(self, x: Array) -> Array:
    h = jnp.reshape(x, (x.shape[0],) + self.in_shape)
    for i, conv in enumerate((self.conv_0, self.conv_1)):
      h = nnx.max_pool(nnx.relu(conv(h)), (2, 2), strides=(2, 2))
      if self.conv_sites:
        h = getattr(self, f"drop_conv_{i}")(h)
    h = jnp.reshape(h, (h.shape[0], -1))
    h = self.drop_dense_0(nnx.relu(self.dense_0(h)))
    return self.output(h)
