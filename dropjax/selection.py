"""Exact order statistics without sorting (bisection on the float bit pattern).

IEEE floats order like their bit patterns once the negative ones are
reflected: with ``b`` the bits read as a signed integer, the key ``b`` for
``b >= 0`` and ``b ^ 0x7F...F`` for ``b < 0`` is strictly increasing in the
value. A bisection over integer keys whose every step counts ``key <= mid``
along an axis therefore finds the exact ``k``-th smallest entry in one pass
per key bit (32 for float32, 64 for float64), each pass a compare and a sum
that XLA fuses. On CPU that is about ten times faster than ``jnp.sort`` for
a 784x256 kernel; the result is the same value as
``jnp.sort(a, axis)[k]``.

Every magnitude threshold of the library goes through :func:`kth_smallest`:
targeted dropout (:mod:`dropjax.dropout`) and weight, global and gradual
magnitude pruning (:mod:`dropjax.analysis.pruning`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _float_spec(dtype):
  """(compute dtype, int dtype, number of key bits) for a float dtype."""
  if jnp.dtype(dtype).itemsize == 8:
    return jnp.float64, jnp.int64, 64
  # float16 / bfloat16 widen to float32 exactly and order the same.
  return jnp.float32, jnp.int32, 32


def _kth_by_bisection(a: Array, k: Array, axis: int) -> Array:
  fdtype, idtype, nbits = _float_spec(a.dtype)
  info = np.iinfo(idtype)
  imin = idtype(info.min)
  magnitude = idtype(info.max)  # 0x7F...F
  inf_bits = jax.lax.bitcast_convert_type(jnp.asarray(np.inf, fdtype), idtype)
  nan_bits = jax.lax.bitcast_convert_type(jnp.asarray(np.nan, fdtype), idtype)
  x = a.astype(fdtype)
  bits = jax.lax.bitcast_convert_type(x, idtype)
  bits = jnp.where(bits == imin, jnp.zeros((), idtype), bits)  # -0.0 -> 0.0
  bits = jnp.where(jnp.isnan(x), nan_bits, bits)  # every NaN above +inf
  keys = jnp.where(bits < 0, bits ^ magnitude, bits)
  shape = list(a.shape)
  shape[axis] = 1
  # Invariant: count(keys <= lo) <= k < count(keys <= hi); the key of -inf
  # is -1 - inf_bits, so lo starts one below it, hi at the (only) NaN key.
  lo = jnp.full(shape, -inf_bits - 2, idtype)
  hi = jnp.full(shape, nan_bits, idtype)
  need = k.astype(jnp.int32) + 1

  def body(_, lohi):
    lo, hi = lohi
    mid = (lo & hi) + ((lo ^ hi) >> 1)  # floor((lo + hi) / 2)
    enough = (
      jnp.sum(keys <= mid, axis=axis, keepdims=True, dtype=jnp.int32) >= need
    )
    return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

  _, hi = jax.lax.fori_loop(0, nbits, body, (lo, hi))
  bits = jnp.where(hi < 0, hi ^ magnitude, hi)
  out = jax.lax.bitcast_convert_type(bits, fdtype)
  return out.astype(a.dtype)


@functools.partial(jax.jit, static_argnames=("axis", "keepdims"))
def kth_smallest(a, k, axis: int = 0, keepdims: bool = True) -> Array:
  """The ``k``-th smallest (0-based) entry of an array along an axis.

  Equals ``jnp.take(jnp.sort(a, axis), k, axis)`` for ``0 <= k < n`` (``n =
  a.shape[axis]``), bit for bit up to the sign of a zero (``-0.0`` and
  ``0.0`` are one value here; the result is ``+0.0``), with NaNs ordered
  after ``+inf`` as ``jnp.sort`` does. (Where the backend flushes subnormals
  to zero, as XLA:CPU does, ``jnp.sort`` treats them as ties of ``0.0`` and
  may return ``0.0`` where this returns a subnormal or vice versa; the two
  compare equal there, so thresholds give the same masks.) Out of range,
  ``a`` counts as padded with its dtype's extremes: ``k >= n`` gives ``+inf``
  (the largest value of an integer dtype, ``True`` for bool) and ``k < 0``
  gives ``-inf`` (the smallest value, ``False``), so ``a >=
  kth_smallest(a, k)`` keeps the ``n - k`` largest entries (and their ties)
  for every ``0 <= k <= n``.

  Floats are found by bisection on their bit pattern (see the module
  docstring): 32 count passes for float32, float16 and bfloat16 (computed in
  float32, which holds them exactly), 64 for float64. Integer and bool arrays
  fall back to ``jnp.sort``. The result is treated as a constant: its
  gradient is zero (thresholds are meant to be compared with, not
  differentiated).

  Args:
    a: array of any real dtype and shape, ``ndim >= 1``.
    k: int, or integer array (possibly traced, under ``jit`` or ``vmap``)
      broadcastable to ``a``'s shape with ``axis`` of size 1 (one ``k`` per
      column, say).
    axis: the axis to select along (negative counts from the end).
    keepdims: keep ``axis`` with size 1 (default, so the result broadcasts
      against ``a``) or drop it.

  Returns:
    Array of ``a``'s dtype: ``a``'s shape with ``axis`` of size 1, or
    removed when ``keepdims=False``.

  Raises:
    ValueError: for a 0-d array or an ``axis`` out of range.
    TypeError: for a complex array.

  Example:
    >>> import numpy as np
    >>> a = np.array([[3., 0.5], [1., 2.], [0., 7.]], np.float32)
    >>> np.asarray(kth_smallest(a, 1, axis=0)).tolist()
    [[1.0, 2.0]]
    >>> np.asarray(kth_smallest(a, np.array([0, 2]), axis=0,
    ...                         keepdims=False)).tolist()
    [0.0, 7.0]
    >>> float(kth_smallest(a.ravel(), 6)[0])
    inf
  """
  a = jax.lax.stop_gradient(jnp.asarray(a))
  if a.ndim == 0:
    raise ValueError("kth_smallest needs an array with at least one axis.")
  if not -a.ndim <= axis < a.ndim:
    raise ValueError(
      f"axis {axis} is out of range for an array of rank {a.ndim}."
    )
  axis = axis % a.ndim
  if jnp.issubdtype(a.dtype, jnp.complexfloating):
    raise TypeError("kth_smallest needs a real array, got complex.")
  n = a.shape[axis]
  k = jnp.asarray(k)
  if jnp.issubdtype(a.dtype, jnp.floating):
    top = jnp.asarray(np.inf, a.dtype)
    bottom = jnp.asarray(-np.inf, a.dtype)
    out = _kth_by_bisection(a, k, axis)
  else:
    if a.dtype == jnp.bool_:
      top, bottom = jnp.asarray(True), jnp.asarray(False)
    else:
      info = jnp.iinfo(a.dtype)
      top = jnp.asarray(info.max, a.dtype)
      bottom = jnp.asarray(info.min, a.dtype)
    kept = tuple(1 if i == axis else d for i, d in enumerate(a.shape))
    idx = jnp.broadcast_to(
      jnp.clip(k, 0, max(n - 1, 0)).astype(jnp.int32), kept
    )
    out = (
      jnp.take_along_axis(jnp.sort(a, axis=axis), idx, axis=axis)
      if n
      else jnp.broadcast_to(top, kept)
    )
  out = jnp.where(k >= n, top, jnp.where(k < 0, bottom, out))
  return out if keepdims else jnp.squeeze(out, axis)
