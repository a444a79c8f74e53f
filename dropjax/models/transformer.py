"""Decoder-only Transformer language model with dropout sites (Flax NNX).

Pre-LayerNorm blocks (GPT-2's arrangement) with dropjax sites where the
Transformer code of Wei, Kakade & Ma (arXiv:2002.12915, §5.3, after
Transformer-XL) applies dropout and attaches its regularizers:

* ``emb``: token + position embedding ``[B, T, E]``;
* ``att{i}``: the attention probabilities of block ``i``, ``[B, H, T, T]``
  (after the softmax; a :class:`dropjax.flax.MultiHeadAttention` site);
* ``att_out{i}``: the attention block's output before the residual sum,
  ``[B, T, E]``;
* ``ff{i}``: the position-wise feed-forward hidden activations ``[B, T, F]``;
* ``ff_out{i}``: the feed-forward output before the residual sum ``[B, T, E]``;
* ``final``: the last hidden state after the final LayerNorm ``[B, T, E]``
  (the decoder input).

Each kind has its own default rate (``dropout_emb``, ``dropout_att``,
``dropout_res`` for both residual branches, ``dropout_ff``,
``dropout_final``), reported per site by :func:`dropjax.flax.site_spec`.
All masks are element-wise (no locked sites).

Block ``i``::

    x = x + att_out_i(Attention_i(LN(x)))      # causal, att_i inside
    x = x + ff_out_i(W2 ff_i(GELU(W1 LN(x))))

Parameters (plain dict from :func:`dropjax.flax.functional`)::

    {"embed": {"embedding": [V, E]}, "pos": {"embedding": [T_max, E]}
     (learned positions only), "blocks": {0: {"ln_att", "att": {"query",
     "key", "value", "out"}, "ln_ff", "ff_in", "ff_out"}, ...},
     "ln_final": {...}, "decoder": {"bias": [V]} (tied) or
     {"kernel": [E, V], "bias": [V]}}

Initialisation as GPT-2: embeddings, positions and kernels N(0, 0.02²),
biases 0.

Example:
  >>> import jax.numpy as jnp, dropjax
  >>> from dropjax.models import transformer
  >>> apply, params, spec, model = transformer.make_lm(
  ...   11, embed_dim=8, num_heads=2, num_layers=1, max_len=16)
  >>> sorted(spec.rates)
  ['att0', 'att_out0', 'emb', 'ff0', 'ff_out0', 'final']
  >>> apply(params, jnp.zeros((3, 5), jnp.int32), dropjax.identity_sites).shape
  (3, 5, 11)
"""

from __future__ import annotations

import math
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from dropjax import attention as _attention
from dropjax import flax as djflax
from dropjax import models as _models

Array = jax.Array

POSITIONS = ("learned", "sinusoidal")
SITE_KINDS = ("emb", "att", "res", "ff", "final")
"""Rate groups: ``res`` covers the ``att_out{i}`` and ``ff_out{i}`` sites."""


def site_names(num_layers: int) -> tuple[str, ...]:
  """The sites in call order: ``emb, att0, att_out0, ff0, ff_out0, ..., final``."""
  names = ["emb"]
  for i in range(num_layers):
    names += [f"att{i}", f"att_out{i}", f"ff{i}", f"ff_out{i}"]
  return tuple(names + ["final"])


def site_kind(name: str) -> str:
  """The rate group of a site name (one of :data:`SITE_KINDS`).

  Raises:
    KeyError: not a site name of this model.
  """
  if name in ("emb", "final"):
    return name
  for prefix, kind in (
    ("att_out", "res"),
    ("ff_out", "res"),
    ("att", "att"),
    ("ff", "ff"),
  ):
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
      return kind
  raise KeyError(
    f"{name!r} is not a Transformer site; sites: emb, att<i>, "
    "att_out<i>, ff<i>, ff_out<i>, final."
  )


def sinusoidal_positions(max_len: int, dim: int) -> Array:
  """``[max_len, dim]`` float32 sinusoids (Vaswani et al. 2017, §3.5)."""
  pos = jnp.arange(max_len, dtype=jnp.float32)[:, None]
  half = dim // 2
  freq = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / max(half, 1))
  ang = pos * freq[None, :]
  out = jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)
  return jnp.pad(out, ((0, 0), (0, dim - 2 * half)))


_normal = nnx.initializers.normal(0.02)


class Block(nnx.Module):
  """One pre-LayerNorm block (attention, then feed-forward); see the module
  docstring for its sites. Call: ``block(x [B, T, E], mask) -> [B, T, E]``."""

  def __init__(
    self,
    index: int,
    embed_dim: int,
    num_heads: int,
    ff_dim: int,
    *,
    rates: dict[str, float],
    rngs: nnx.Rngs,
  ):
    i = index
    self.ln_att = nnx.LayerNorm(embed_dim, rngs=rngs)
    self.att = djflax.MultiHeadAttention(
      num_heads,
      embed_dim,
      kernel_init=_normal,
      dropout_rate=rates["att"],
      broadcast_dropout=False,
      decode=False,
      deterministic=False,  # like dropjax.flax.Dropout; model.eval() sets it
      site=f"att{i}",
      rngs=rngs,
    )
    self.drop_att_out = djflax.Dropout(
      rates["res"], site=f"att_out{i}", rngs=rngs
    )
    self.ln_ff = nnx.LayerNorm(embed_dim, rngs=rngs)
    self.ff_in = nnx.Linear(embed_dim, ff_dim, kernel_init=_normal, rngs=rngs)
    self.drop_ff = djflax.Dropout(rates["ff"], site=f"ff{i}", rngs=rngs)
    self.ff_out = nnx.Linear(ff_dim, embed_dim, kernel_init=_normal, rngs=rngs)
    self.drop_ff_out = djflax.Dropout(
      rates["res"], site=f"ff_out{i}", rngs=rngs
    )

  def __call__(self, x: Array, mask: Array) -> Array:
    x = x + self.drop_att_out(self.att(self.ln_att(x), mask=mask))
    h = self.drop_ff(nnx.gelu(self.ff_in(self.ln_ff(x))))
    return x + self.drop_ff_out(self.ff_out(h))


class TransformerLanguageModel(nnx.Module):
  """Token and position embeddings, ``L`` causal blocks, LayerNorm, decoder.

  Args:
    vocab_size: ``V``.
    embed_dim: ``E`` (divisible by ``num_heads``).
    num_heads: attention heads ``H``.
    num_layers: blocks ``L >= 1``.
    ff_dim: feed-forward width ``F`` (default ``4 E``).
    max_len: longest sequence (learned positions have ``max_len`` rows).
    positions: ``"learned"`` or ``"sinusoidal"``.
    tie_weights: the decoder kernel is the transposed token embedding.
    dropout_emb, dropout_att, dropout_res, dropout_ff, dropout_final: drop
      rates of the site kinds (``att``: attention probabilities; ``res``:
      both residual branches), the layers' own rates and what
      :func:`dropjax.flax.site_spec` reports; regimens may override them.
    rngs: ``nnx.Rngs`` for the weights (``params``) and the layers' own
      dropout (``dropout``).

  Call: ``model(tokens)`` with int ``[B, T]``, ``T <= max_len``, returns
  logits ``[B, T, V]`` in the parameters' dtype.

  Raises:
    ValueError: bad sizes, an unknown ``positions``, a rate outside
      ``[0, 1)``; (when called) a sequence longer than ``max_len``.
  """

  def __init__(
    self,
    vocab_size: int,
    *,
    embed_dim: int = 64,
    num_heads: int = 4,
    num_layers: int = 2,
    ff_dim: int | None = None,
    max_len: int = 256,
    positions: str = "learned",
    tie_weights: bool = True,
    dropout_emb: float = 0.1,
    dropout_att: float = 0.1,
    dropout_res: float = 0.1,
    dropout_ff: float = 0.1,
    dropout_final: float = 0.1,
    rngs: nnx.Rngs,
  ):
    sizes = dict(
      vocab_size=vocab_size,
      embed_dim=embed_dim,
      num_heads=num_heads,
      num_layers=num_layers,
      max_len=max_len,
    )
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 1}
    if bad:
      raise ValueError(f"sizes must be ints >= 1, got {bad}.")
    if embed_dim % num_heads:
      raise ValueError(
        f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})."
      )
    if positions not in POSITIONS:
      raise ValueError(
        f"unknown positions {positions!r}; valid: {', '.join(POSITIONS)}."
      )
    self.vocab_size = vocab_size
    self.num_layers = num_layers
    self.max_len = max_len
    self.positions = positions
    self.tie_weights = bool(tie_weights)
    ff_dim = 4 * embed_dim if ff_dim is None else ff_dim
    rates = dict(
      emb=dropout_emb,
      att=dropout_att,
      res=dropout_res,
      ff=dropout_ff,
      final=dropout_final,
    )
    self.embed = nnx.Embed(
      vocab_size, embed_dim, embedding_init=_normal, rngs=rngs
    )
    if positions == "learned":
      self.pos = nnx.Embed(
        max_len, embed_dim, embedding_init=_normal, rngs=rngs
      )
    self.drop_emb = djflax.Dropout(rates["emb"], site="emb", rngs=rngs)
    self.blocks = nnx.List(
      [
        Block(i, embed_dim, num_heads, ff_dim, rates=rates, rngs=rngs)
        for i in range(num_layers)
      ]
    )
    self.ln_final = nnx.LayerNorm(embed_dim, rngs=rngs)
    self.drop_final = djflax.Dropout(rates["final"], site="final", rngs=rngs)
    if not self.tie_weights:
      self.decoder_kernel = nnx.Param(
        _normal(rngs.params(), (embed_dim, vocab_size))
      )
    self.decoder_bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))

  def __call__(self, tokens: Array) -> Array:
    t = tokens.shape[-1]
    if t > self.max_len:
      raise ValueError(
        f"sequence length {t} exceeds the model's max_len {self.max_len}."
      )
    emb = self.embed.embedding[...]
    x = jnp.take(emb, tokens, axis=0)
    if self.positions == "learned":
      x = x + self.pos.embedding[...][:t]
    else:
      x = x + sinusoidal_positions(t, x.shape[-1]).astype(x.dtype)
    x = self.drop_emb(x)
    mask = _attention.causal_mask(t)
    for block in self.blocks:
      x = block(x, mask)
    h = self.drop_final(self.ln_final(x))
    kernel = emb.T if self.tie_weights else self.decoder_kernel[...]
    return h @ kernel + self.decoder_bias[...]


def make_lm(vocab_size: int, *, key: Any = 0, **kwargs):
  """The model in functional form.

  Args:
    vocab_size: ``V``.
    key: int seed or typed ``jax.random.key`` for the initial weights.
    **kwargs: :class:`TransformerLanguageModel` arguments.

  Returns:
    ``(apply, params, spec, model)``: ``apply(params, tokens, sites) ->
    logits``, the parameter dict, the :class:`dropjax.flax.SiteSpec` and the
    module.
  """
  return _models.functional_model(
    TransformerLanguageModel, vocab_size, key=key, **kwargs
  )


def make_lm_init(vocab_size: int, **kwargs):
  """``init(key) -> params`` as a pure function (``vmap``-able over typed
  keys), equal to ``make_lm(vocab_size, key=key, **kwargs)[1]``."""
  return _models.functional_init(TransformerLanguageModel, vocab_size, **kwargs)


__all__ = [
  "Block",
  "POSITIONS",
  "SITE_KINDS",
  "TransformerLanguageModel",
  "make_lm",
  "make_lm_init",
  "site_kind",
  "site_names",
  "sinusoidal_positions",
]
