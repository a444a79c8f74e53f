"""Dot-product attention with a dropout site on the attention probabilities.

In Transformer-XL (Dai et al. 2019) and in the Transformer code of Wei,
Kakade & Ma (arXiv:2002.12915, §5.3) attention dropout acts on the
probabilities after the softmax, ``P = dropout(softmax(Q Kᵀ / √d))``, and the
analytic regularizers attach there with their own coefficients
(``hess_dropatt``, ``imp_dropatt``). :func:`dot_product_attention` computes
exactly Flax's attention (``flax.nnx.nn.attention.dot_product_attention_weights``, then
``P V``) with ``P`` passed through ``sites(site, P)``, so every dropjax
regimen (stochastic masks, the explicit and implicit regularizers, identity)
reaches it like any other site.

Shapes follow Flax: ``query [B, Q, H, D]``, ``key``/``value [B, K, H, D]``,
probabilities ``[B, H, Q, K]`` (the site's shape), output ``[B, Q, H, D]``;
masks are boolean, ``True`` where a query may attend, broadcastable to
``[B, H, Q, K]``.

Example:
  >>> import jax, jax.numpy as jnp, dropjax
  >>> q = k = v = jnp.ones((2, 5, 3, 4))
  >>> out = dropjax.attention.dot_product_attention(
  ...   q, k, v, dropjax.identity_sites, site="att", causal=True)
  >>> out.shape
  (2, 5, 3, 4)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax.nnx.nn.attention import dot_product_attention_weights

from dropjax.sites import Sites

Array = jax.Array


def causal_mask(q_len: int, kv_len: int | None = None) -> Array:
  """``[1, 1, Q, K]`` boolean: query ``i`` attends to keys ``j <= i + K - Q``.

  With ``K == Q`` (the default) the usual lower-triangular mask.
  """
  kv_len = q_len if kv_len is None else kv_len
  q = jnp.arange(q_len)[:, None] + (kv_len - q_len)
  return (jnp.arange(kv_len)[None, :] <= q)[None, None]


def padding_mask(valid: Array) -> Array:
  """``[B, 1, 1, K]`` boolean from ``valid [B, K]`` (``True``: a real token)."""
  valid = jnp.asarray(valid, bool)
  if valid.ndim != 2:
    raise ValueError(
      f"valid must be [batch, kv_len] booleans, got shape {valid.shape}."
    )
  return valid[:, None, None, :]


def _combined_mask(mask, causal, q_len, kv_len):
  masks = [m for m in (mask,) if m is not None]
  if causal:
    masks.append(causal_mask(q_len, kv_len))
  if not masks:
    return None
  out = jnp.asarray(masks[0], bool)
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def attention_probabilities(
  query: Array,
  key: Array,
  *,
  mask: Array | None = None,
  bias: Array | None = None,
  causal: bool = False,
  dtype: Any = None,
  precision: Any = None,
) -> Array:
  """``softmax(Q Kᵀ / √D + bias)`` over keys, masked positions excluded.

  Flax's ``dot_product_attention_weights`` with no dropout (masked scores
  are set to the dtype's most negative value before the softmax).

  Args:
    query: ``[B, Q, H, D]``.
    key: ``[B, K, H, D]``.
    mask: boolean, broadcastable to ``[B, H, Q, K]``; ``True``: attend.
    bias: added to the scores, broadcastable to ``[B, H, Q, K]``.
    causal: also apply :func:`causal_mask`.
    dtype, precision: as for Flax.

  Returns:
    ``[B, H, Q, K]`` probabilities (rows sum to 1 over unmasked keys).

  Raises:
    ValueError: ``query``/``key`` ranks or feature sizes differ, or the
      query heads are not a multiple of the key heads (grouped-query
      attention shares each key head among ``H_q / H_k`` query heads).
  """
  if (
    query.ndim != key.ndim
    or query.shape[-1] != key.shape[-1]
    or query.shape[-2] % key.shape[-2]
  ):
    raise ValueError(
      f"query {query.shape} and key {key.shape} must be [batch, length, "
      "heads, features] with the same features and query heads a multiple "
      "of key heads."
    )
  m = _combined_mask(mask, causal, query.shape[-3], key.shape[-3])
  return dot_product_attention_weights(
    query,
    key,
    bias=bias,
    mask=m,
    deterministic=True,
    dtype=dtype,
    precision=precision,
  )


def dot_product_attention(
  query: Array,
  key: Array,
  value: Array,
  sites: Sites,
  *,
  site: str = "att",
  mask: Array | None = None,
  bias: Array | None = None,
  causal: bool = False,
  dtype: Any = None,
  precision: Any = None,
) -> Array:
  """Attention with the probabilities as the dropout site ``site``.

  ``out = sites(site, P) V`` with ``P`` from :func:`attention_probabilities`
  (Transformer-XL's ``attn_prob = dropatt(softmax(score))``; the site after
  the softmax, as in the reference code). With
  :func:`dropjax.identity_sites` it equals Flax's
  ``nnx.dot_product_attention`` without dropout.

  Args:
    query: ``[B, Q, H, D]``.
    key, value: ``[B, K, H, D]``.
    sites: the regimen's sites function.
    site: the site name of the probabilities ``[B, H, Q, K]``.
    mask, bias, causal, dtype, precision: see
      :func:`attention_probabilities`.

  Returns:
    ``[B, Q, H, D]``.

  Raises:
    ValueError: mismatched shapes (see :func:`attention_probabilities` and
      :func:`attend`).
  """
  p = attention_probabilities(
    query,
    key,
    mask=mask,
    bias=bias,
    causal=causal,
    dtype=dtype,
    precision=precision,
  )
  return attend(sites(site, p), value, precision=precision)


def attend(probabilities: Array, value: Array, *, precision: Any = None):
  """``P V``: ``[B, H, Q, K]`` probabilities, ``[B, K, H_v, D]`` values.

  Grouped-query attention (``H_v`` divides ``H``): query head ``h`` reads
  value head ``h // (H / H_v)``, as in Flax.

  Returns:
    ``[B, Q, H, D]``.

  Raises:
    ValueError: the lengths differ or ``H_v`` does not divide ``H``.
  """
  heads, v_heads = probabilities.shape[-3], value.shape[-2]
  if probabilities.shape[-1] != value.shape[-3] or heads % v_heads:
    raise ValueError(
      f"probabilities {probabilities.shape} ([batch, heads, q_len, kv_len]) "
      f"and value {value.shape} ([batch, kv_len, heads, features]) disagree "
      "in kv_len, or the value heads do not divide the heads."
    )
  if v_heads != heads:
    value = jnp.repeat(value, heads // v_heads, axis=-2)
  return jnp.einsum(
    "...hqk,...khd->...qhd", probabilities, value, precision=precision
  )


__all__ = [
  "attend",
  "attention_probabilities",
  "causal_mask",
  "dot_product_attention",
  "padding_mask",
]
