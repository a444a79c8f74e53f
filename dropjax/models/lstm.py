"""LSTM language model with AWD-LSTM's dropout sites (Flax NNX).

``embedding -> L LSTM layers -> decoder`` with dropjax dropout sites where
AWD-LSTM (Merity et al. 2018, and the LSTM code of Wei, Kakade & Ma 2020)
puts its dropout:

* ``emb``: the embedding output ``[B, T, E]``; locked (one mask per
  sequence and unit, shared over time).
* ``h{i}`` (``i < L - 1``): the output of LSTM layer ``i``, ``[B, T, H_i]``
  (the input of layer ``i + 1``); locked.
* ``out``: the output of the last LSTM layer, ``[B, T, H_{L-1}]`` (the
  decoder input); locked.
* ``w_hh{i}``: the hidden-to-hidden weight of layer ``i``, ``[H_i, 4 H_i]``;
  DropConnect: one element-wise mask per forward pass, shared by the whole
  batch and all time steps.

Every site is a :class:`dropjax.flax.Dropout` layer: ``emb``/``h{i}``/``out``
with ``broadcast_dims=(1,)`` (the time axis), ``w_hh{i}`` applied to the
weight matrix itself. So :func:`dropjax.flax.site_spec` reports all of them
(rates and locked axes), the module runs on its own in Flax with the same
dropout (``model.train()`` / ``model.eval()``), and inside
:func:`dropjax.flax.functional` every site is routed to the regimen's
``sites``. All sites are called at the top level of the forward pass on whole
sequences / the whole weight (the recurrence is a ``lax.scan`` *inside* each
layer, after the sites), as the site contract requires.

The model's input is ``(tokens, carry)`` and its output ``(logits,
new_carry)``: use it with ``has_aux=True`` in :mod:`dropjax.objectives`, and
carry ``new_carry`` (under ``stop_gradient``) into the next BPTT chunk.

Parameters (plain dict from :func:`dropjax.flax.functional`)::

    {"embed": {"embedding": [V, E]},
     "lstm_0": {"w_ih": [E, 4 H_0], "w_hh": [H_0, 4 H_0], "bias": [4 H_0]},
     ...,
     "decoder": {"bias": [V]} (tied) or {"kernel": [H_{L-1}, V], "bias": [V]}}

Gate order in the ``4 H`` axis: input, forget, cell candidate, output.
Initialisation: embedding and decoder kernel uniform(±0.1), decoder bias 0
(AWD-LSTM); LSTM weights uniform(±1/sqrt(H)) (PyTorch's ``nn.LSTM``); LSTM
bias 0 except the forget gate, which starts at ``forget_bias``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import dropjax
  >>> from dropjax.models import lstm
  >>> model = lstm.LSTMLanguageModel(10, embed_dim=4, hidden_size=6,
  ...                                num_layers=2, rngs=nnx.Rngs(0))
  >>> apply, params = dropjax.flax.functional(model)
  >>> spec = dropjax.flax.site_spec(model)
  >>> sorted(spec.rates)
  ['emb', 'h0', 'out', 'w_hh0', 'w_hh1']
  >>> tokens = jnp.zeros((3, 5), jnp.int32)
  >>> carry = model.initial_carry(3)
  >>> logits, new_carry = apply(params, (tokens, carry), dropjax.identity_sites)
  >>> logits.shape, new_carry[1][0].shape
  ((3, 5, 10), (3, 6))
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from dropjax import flax as djflax
from dropjax import models as _models

Array = jax.Array
Carry = tuple[tuple[Array, Array], ...]
"""Per layer ``(h, c)``, each ``[B, H_i]``."""

LOCKED_AXES = (1,)
"""The time axis of ``[B, T, F]`` activations: locked masks are shared there."""


def layer_sizes(
  num_layers: int, hidden_size: int, embed_dim: int, tie_weights: bool
) -> tuple[int, ...]:
  """Hidden sizes of the LSTM layers.

  AWD-LSTM's rule: every layer has ``hidden_size`` units, except that the
  last one has ``embed_dim`` units when the decoder is tied to the embedding.

  Raises:
    ValueError: ``num_layers < 1`` or a non-positive size.
  """
  if num_layers < 1 or hidden_size < 1 or embed_dim < 1:
    raise ValueError(
      f"num_layers, hidden_size and embed_dim must be >= 1, got "
      f"{num_layers}, {hidden_size}, {embed_dim}."
    )
  sizes = [hidden_size] * num_layers
  if tie_weights:
    sizes[-1] = embed_dim
  return tuple(sizes)


def site_names(num_layers: int) -> tuple[str, ...]:
  """The model's sites in call order: ``emb, w_hh0, h0, w_hh1, ..., out``."""
  names = ["emb"]
  for i in range(num_layers):
    names.append(f"w_hh{i}")
    names.append(f"h{i}" if i < num_layers - 1 else "out")
  return tuple(names)


def lstm_scan(
  w_ih: Array,
  w_hh: Array,
  bias: Array,
  x: Array,
  carry: tuple[Array, Array],
  *,
  unroll: int | bool = 1,
) -> tuple[Array, tuple[Array, Array]]:
  """One LSTM layer over a whole sequence (``lax.scan`` over time).

  The input projection of all time steps is one matmul outside the scan; the
  scan body does only ``h @ w_hh`` and the gates.

  Args:
    w_ih: ``[F, 4H]`` input weights.
    w_hh: ``[H, 4H]`` hidden-to-hidden weights (already dropped, for
      DropConnect: the same matrix at every step).
    bias: ``[4H]``.
    x: ``[B, T, F]`` inputs.
    carry: ``(h, c)``, each ``[B, H]``: the state before the first step.
    unroll: time steps per iteration of the compiled loop
      (``jax.lax.scan``'s ``unroll``; ``True``: the whole sequence). The
      same arithmetic in the same order; it trades compile time for less
      per-iteration overhead (``docs/benchmarks.md``, LSTM step cost).

  Returns:
    ``(outputs [B, T, H], (h_T, c_T))``; dtype of the promoted inputs.
  """
  xw = jnp.einsum("btf,fg->tbg", x, w_ih) + bias  # [T, B, 4H]

  def step(hc, xw_t):
    h, c = hc
    z = xw_t + h @ w_hh
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  dt = xw.dtype
  carry = (carry[0].astype(dt), carry[1].astype(dt))
  carry, hs = jax.lax.scan(step, carry, xw, unroll=unroll)
  return jnp.swapaxes(hs, 0, 1), carry


def _symmetric_uniform(bound: float):
  """Initializer drawing uniformly from ``[-bound, bound)``."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Decoder(nnx.Module):
  """The output layer's parameters: ``kernel [H, V]`` (untied) and ``bias [V]``.

  Args:
    in_size: ``H``, or ``None`` for a decoder tied to the embedding (bias
      only; the kernel is the transposed embedding).
    vocab_size: ``V``.
    rngs: ``nnx.Rngs``.
  """

  def __init__(self, in_size: int | None, vocab_size: int, *, rngs: nnx.Rngs):
    if in_size is not None:
      self.kernel = nnx.Param(
        _symmetric_uniform(0.1)(rngs.params(), (in_size, vocab_size))
      )
    self.bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))


class LSTMLayer(nnx.Module):
  """Parameters of one LSTM layer (the recurrence is :func:`lstm_scan`).

  Args:
    in_size: input features ``F``.
    hidden_size: units ``H``.
    forget_bias: initial bias of the forget gate.
    rngs: ``nnx.Rngs`` (stream ``params``).
  """

  def __init__(
    self, in_size: int, hidden_size: int, *, forget_bias: float, rngs: nnx.Rngs
  ):
    init = _symmetric_uniform(1.0 / float(hidden_size) ** 0.5)
    self.hidden_size = hidden_size
    self.w_ih = nnx.Param(init(rngs.params(), (in_size, 4 * hidden_size)))
    self.w_hh = nnx.Param(init(rngs.params(), (hidden_size, 4 * hidden_size)))
    b = jnp.zeros((4 * hidden_size,), jnp.float32)
    self.bias = nnx.Param(b.at[hidden_size : 2 * hidden_size].set(forget_bias))


class LSTMLanguageModel(nnx.Module):
  """Embedding, ``L`` LSTM layers, decoder; AWD-LSTM dropout sites.

  Args:
    vocab_size: ``V``, number of token ids.
    embed_dim: ``E``.
    hidden_size: units of every LSTM layer (the last one has ``E`` units
      when ``tie_weights``; see :func:`layer_sizes`).
    num_layers: ``L >= 1``.
    tie_weights: the decoder kernel is the transposed embedding.
    dropout_emb, dropout_hidden, dropout_out, dropout_weight: drop rates of
      the ``emb``, ``h{i}``, ``out`` and ``w_hh{i}`` sites (AWD-LSTM's
      ``dropouti``, ``dropouth``, ``dropout``, ``wdrop``). They are the
      layers' own rates and what :func:`dropjax.flax.site_spec` reports;
      regimens may override them.
    forget_bias: initial forget-gate bias.
    unroll: time steps per iteration of each layer's compiled loop (see
      :func:`lstm_scan`); changes speed and compile time, not the model.
    rngs: ``nnx.Rngs`` for the weights (``params``) and the layers' own
      dropout (``dropout``).

  Call: ``model((tokens, carry))`` with ``tokens`` int ``[B, T]`` and
  ``carry`` from :meth:`initial_carry` (or a previous call) returns
  ``(logits [B, T, V], new_carry)``. Logits have the parameters' dtype.

  Raises:
    ValueError: a non-positive size or a rate outside ``[0, 1)``.
  """

  def __init__(
    self,
    vocab_size: int,
    *,
    embed_dim: int = 64,
    hidden_size: int = 256,
    num_layers: int = 1,
    tie_weights: bool = False,
    dropout_emb: float = 0.4,
    dropout_hidden: float = 0.4,
    dropout_out: float = 0.4,
    dropout_weight: float = 0.4,
    forget_bias: float = 1.0,
    unroll: int | bool = 1,
    rngs: nnx.Rngs,
  ):
    if vocab_size < 1:
      raise ValueError(f"vocab_size must be >= 1, got {vocab_size}.")
    self.vocab_size = int(vocab_size)
    self.embed_dim = int(embed_dim)
    self.num_layers = int(num_layers)
    self.tie_weights = bool(tie_weights)
    if not isinstance(unroll, bool) and (
      not isinstance(unroll, int) or unroll < 1
    ):
      raise ValueError(f"unroll must be an int >= 1 or a bool, got {unroll!r}.")
    self.unroll = unroll
    self.sizes = layer_sizes(num_layers, hidden_size, embed_dim, tie_weights)
    self.embed = nnx.Embed(
      vocab_size, embed_dim, embedding_init=_symmetric_uniform(0.1), rngs=rngs
    )
    self.drop_emb = djflax.Dropout(
      dropout_emb, site="emb", broadcast_dims=LOCKED_AXES, rngs=rngs
    )
    in_size = embed_dim
    for i, h in enumerate(self.sizes):
      setattr(
        self,
        f"lstm_{i}",
        LSTMLayer(in_size, h, forget_bias=forget_bias, rngs=rngs),
      )
      setattr(
        self,
        f"drop_w_hh{i}",
        djflax.Dropout(dropout_weight, site=f"w_hh{i}", rngs=rngs),
      )
      last = i == self.num_layers - 1
      setattr(
        self,
        f"drop_{'out' if last else f'h{i}'}",
        djflax.Dropout(
          dropout_out if last else dropout_hidden,
          site="out" if last else f"h{i}",
          broadcast_dims=LOCKED_AXES,
          rngs=rngs,
        ),
      )
      in_size = h
    self.decoder = Decoder(
      None if tie_weights else self.sizes[-1], vocab_size, rngs=rngs
    )

  def initial_carry(self, batch_size: int, dtype=jnp.float32) -> Carry:
    """Zero state ``((h, c) per layer)``, each ``[batch_size, H_i]``."""
    return tuple(
      (jnp.zeros((batch_size, h), dtype), jnp.zeros((batch_size, h), dtype))
      for h in self.sizes
    )

  def __call__(self, x: tuple[Array, Carry]) -> tuple[Array, Carry]:
    tokens, carry = x
    if len(carry) != self.num_layers:
      raise ValueError(
        f"carry has {len(carry)} layers, the model {self.num_layers}."
      )
    emb = self.embed.embedding[...]
    h = jnp.take(emb, tokens, axis=0)  # [B, T, E]
    h = self.drop_emb(h)
    new_carry = []
    for i in range(self.num_layers):
      layer = getattr(self, f"lstm_{i}")
      w_hh = getattr(self, f"drop_w_hh{i}")(layer.w_hh[...])
      h, c_i = lstm_scan(
        layer.w_ih[...],
        w_hh,
        layer.bias[...],
        h,
        carry[i],
        unroll=self.unroll,
      )
      new_carry.append(c_i)
      last = i == self.num_layers - 1
      h = getattr(self, f"drop_{'out' if last else f'h{i}'}")(h)
    if self.tie_weights:
      logits = h @ emb.T + self.decoder.bias[...]
    else:
      logits = h @ self.decoder.kernel[...] + self.decoder.bias[...]
    return logits, tuple(new_carry)


def zero_carry(
  sizes: Sequence[int], batch_size: int, dtype=jnp.float32
) -> Carry:
  """Zero state for layers of the given sizes (see :meth:`initial_carry`)."""
  return tuple(
    (jnp.zeros((batch_size, h), dtype), jnp.zeros((batch_size, h), dtype))
    for h in sizes
  )


def make_lm(vocab_size: int, *, key: Any = 0, **kwargs):
  """The model in functional form.

  Args:
    vocab_size: ``V``.
    key: int seed or typed ``jax.random.key`` for the initial weights.
    **kwargs: :class:`LSTMLanguageModel` arguments.

  Returns:
    ``(apply, params, spec, model)``: ``apply(params, (tokens, carry),
    sites) -> (logits, new_carry)``, the parameter dict, the
    :class:`dropjax.flax.SiteSpec` (rates and locked axes of every site) and
    the module (for :meth:`~LSTMLanguageModel.initial_carry` and sizes).
  """
  return _models.functional_model(
    LSTMLanguageModel, vocab_size, key=key, **kwargs
  )


def make_lm_init(vocab_size: int, **kwargs):
  """``init(key) -> params`` as a pure function (``vmap``-able over typed
  keys), equal to ``make_lm(vocab_size, key=key, **kwargs)[1]``."""
  return _models.functional_init(LSTMLanguageModel, vocab_size, **kwargs)


__all__ = [
  "Decoder",
  "LSTMLanguageModel",
  "LSTMLayer",
  "LOCKED_AXES",
  "layer_sizes",
  "lstm_scan",
  "make_lm",
  "make_lm_init",
  "site_names",
  "zero_carry",
]
