"""Stochastic dropout noise: Bernoulli, Gaussian, locked, DropConnect, targeted.

Every function here is pure: it takes an explicit ``jax.random.key`` and returns
a new array. ``rate`` is the drop probability ``q`` (as in Flax and in Wei,
Kakade & Ma 2020); it may be a Python float or a (traced) array, so a sweep
over rates can be ``jax.vmap``-ped.

References:
  * Srivastava et al., "Dropout: a simple way to prevent neural networks from
    overfitting", JMLR 2014 (Bernoulli and Gaussian dropout).
  * Gal & Ghahramani, "A theoretically grounded application of dropout in
    recurrent neural networks", NeurIPS 2016 (locked / variational dropout).
  * Wan et al., "Regularization of neural networks using DropConnect",
    ICML 2013.
  * Gomez et al., "Learning sparse networks using targeted dropout",
    arXiv:1905.13678 (targeted weight and unit dropout).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dropjax.selection import kth_smallest

Array = jax.Array


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_rate(rate, *, name: str = "rate", upper_inclusive: bool = False):
  """Validates a drop probability when its value is known at trace time.

  Args:
    rate: a float or array of drop probabilities.
    name: the argument name used in the error message.
    upper_inclusive: accept 1 as well (``[0, 1]`` instead of ``[0, 1)``).

  Raises:
    ValueError: if ``rate`` is concrete and any element lies outside
      ``[0, 1)`` (or ``[0, 1]``), or is NaN. Traced rates cannot be checked
      and are passed through unchanged.
  """
  if _is_concrete(rate):
    r = np.asarray(rate, dtype=np.float64)
    hi_ok = (r <= 1.0) if upper_inclusive else (r < 1.0)
    if not np.all((r >= 0.0) & hi_ok):
      interval = "[0, 1]" if upper_inclusive else "[0, 1)"
      raise ValueError(
        f"{name} must lie in {interval} (it is a drop probability q), "
        f"got {rate!r}."
      )
  return rate


def _keep_prob(rate, dtype) -> Array:
  return (1.0 - jnp.asarray(rate)).astype(dtype)


def _check_scale_fits(rate, dtype) -> None:
  """Refuses a concrete ``q`` whose ``1 / (1 - q)`` overflows ``dtype``."""
  if not _is_concrete(rate) or not jnp.issubdtype(dtype, jnp.floating):
    return
  q = np.asarray(rate, np.float64)
  biggest = float(jnp.finfo(dtype).max)
  if np.any(1.0 / (1.0 - q) > biggest):
    raise ValueError(
      f"rate {float(np.max(q))!r} scales kept entries by 1/(1-q) = "
      f"{1.0 / (1.0 - float(np.max(q))):.3g}, more than {jnp.dtype(dtype).name} "
      f"can hold ({biggest:.3g}): use a lower rate or a wider dtype "
      "(e.g. x.astype(jnp.float32))."
    )


def _normalise_axes(axes: Sequence[int], ndim: int) -> tuple[int, ...]:
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(
        f"broadcast axis {a} is out of range for an array of rank {ndim}."
      )
    out.append(a % ndim)
  return tuple(sorted(set(out)))


def dropout_mask(
  key: Array, shape: Sequence[int], rate, *, broadcast_axes: Sequence[int] = ()
) -> Array:
  """Draws a Bernoulli keep-mask (``True`` = kept) with ``P(keep) = 1 - rate``.

  Args:
    key: a ``jax.random.key``.
    shape: shape of the array the mask will multiply.
    rate: drop probability ``q`` in ``[0, 1)``; float or (traced) array.
    broadcast_axes: axes along which one mask value is shared (the mask has
      size 1 there), as in locked/variational dropout.

  Returns:
    A bool array of ``shape`` with size 1 along ``broadcast_axes``.

  Raises:
    ValueError: for a concrete rate outside ``[0, 1)`` or a bad axis.
  """
  check_rate(rate)
  axes = _normalise_axes(broadcast_axes, len(shape))
  mask_shape = tuple(1 if i in axes else d for i, d in enumerate(shape))
  return jax.random.bernoulli(
    key, 1.0 - jnp.asarray(rate, jnp.float32), mask_shape
  )


def dropout(
  key: Array, x: Array, rate, *, broadcast_axes: Sequence[int] = ()
) -> Array:
  r"""Inverted Bernoulli dropout, ``x * m / (1 - q)`` with ``m ~ Bernoulli(1 - q)``.

  Each element is kept with probability ``1 - q`` and rescaled by
  ``1 / (1 - q)``, so ``E[dropout(x)] = x`` and the multiplicative noise
  ``m / (1 - q) = 1 + eps`` has ``Var(eps) = q / (1 - q)`` (the noise model
  of Wei, Kakade & Ma 2020, arXiv:2002.12915).

  * ``broadcast_axes`` shares one mask value along the given axes: locked
    (variational) dropout when the axis is time.
  * Applied to a weight matrix instead of an activation, this is DropConnect
    (one mask per call, shared by the whole batch).

  Args:
    key: a ``jax.random.key``.
    x: any float array, e.g. activations ``[batch, features]`` or
      ``[batch, time, features]``, or a weight matrix.
    rate: drop probability ``q`` in ``[0, 1)``; a float or (traced) array.
      ``q = 0`` returns ``x`` unchanged. ``q`` close to 1 gives large
      values for the kept entries, ``x / (1 - q)``: finite as long as
      ``|x| / (1 - q)`` fits the dtype (float32: ``q <= 1 - 3e-38 |x|``;
      float16: ``q <= 1 - |x| / 65504``, e.g. ``q <= 0.9998`` for
      ``|x| <= 10``). A concrete rate whose scale ``1 / (1 - q)`` alone
      overflows ``x``'s dtype is refused.
    broadcast_axes: axes of ``x`` along which the mask is shared.

  Returns:
    An array with the shape and dtype of ``x``.

  Raises:
    ValueError: if a concrete ``rate`` is outside ``[0, 1)``, its scale
      ``1 / (1 - q)`` overflows ``x``'s dtype, or an axis is out of range.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> y = dropout(jax.random.key(0), jnp.ones((2, 4)), 0.5)
    >>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [2.0], [0.0])
    True
  """
  mask = dropout_mask(key, x.shape, rate, broadcast_axes=broadcast_axes)
  _check_scale_fits(rate, x.dtype)
  keep = _keep_prob(rate, x.dtype)
  return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


def gaussian_dropout(key: Array, x: Array, rate) -> Array:
  r"""Gaussian (multiplicative) dropout, ``x * (1 + sqrt(q / (1 - q)) * z)``.

  ``z ~ N(0, 1)`` element-wise, so the multiplicative noise has mean 1 and the
  same variance ``q / (1 - q)`` as inverted Bernoulli dropout at rate ``q``
  (Srivastava et al. 2014, section 10).

  Args:
    key: a ``jax.random.key``.
    x: float array of any shape.
    rate: drop probability ``q`` in ``[0, 1)`` whose noise variance is
      matched; float or (traced) array.

  Returns:
    Array with the shape and dtype of ``x``.

  Raises:
    ValueError: if a concrete ``rate`` is outside ``[0, 1)``.
  """
  check_rate(rate)
  rate = jnp.asarray(rate, x.dtype)
  std = jnp.sqrt(rate / (1.0 - rate))
  return x * (1.0 + std * jax.random.normal(key, x.shape, x.dtype))


def _as_columns(w: Array) -> Array:
  if w.ndim < 2:
    raise ValueError(
      "targeted dropout acts on kernels of rank >= 2 viewed as "
      f"(fan_in, n_out); got shape {w.shape}."
    )
  return w.reshape(-1, w.shape[-1])


def _check_fraction(v, name):
  if _is_concrete(v):
    a = np.asarray(v, dtype=np.float64)
    if not np.all((a >= 0.0) & (a <= 1.0)):
      raise ValueError(f"{name} must lie in [0, 1], got {v!r}.")


def _lowest_fraction(scores: Array, gamma, axis: int) -> Array:
  """Bool mask of entries strictly below the floor(gamma*n)-th smallest score.

  Matches ``for-ai/TD``: ``idx = floor(gamma * n)``; the threshold is the
  ``idx``-th smallest score (0-based) along ``axis``; candidates are the
  entries with score ``< threshold``. ``gamma = 1`` makes every entry a
  candidate. The threshold comes from :func:`dropjax.selection.kth_smallest`
  (the value ``jnp.sort`` would give, without the sort).
  """
  n = scores.shape[axis]
  idx = jnp.floor(jnp.asarray(gamma, jnp.float32) * n).astype(jnp.int32)
  thr = kth_smallest(scores, jnp.clip(idx, 0, n - 1), axis=axis)
  thr = jnp.where(idx >= n, jnp.inf, thr)
  return scores < thr


def targeted_weight_candidates(w: Array, gamma) -> Array:
  """Targeted-dropout candidates at the weight level (deterministic).

  The kernel is viewed as ``(fan_in, n_out)``; within each column (output
  unit), the entries whose ``|w|`` is below the ``floor(gamma * fan_in)``-th
  smallest are candidates. Zeroing them all is the code-faithful evaluation
  mask of Gomez et al. (``for-ai/TD``, ``targeted_weight`` at eval time).

  Args:
    w: kernel of rank >= 2, e.g. ``[fan_in, n_out]`` or ``[h, w, c_in, c_out]``.
    gamma: targeting proportion in ``[0, 1]``.

  Returns:
    Bool array with the shape of ``w``.
  """
  _check_fraction(gamma, "gamma")
  cols = jax.lax.stop_gradient(jnp.abs(_as_columns(w)))
  return _lowest_fraction(cols, gamma, axis=0).reshape(w.shape)


def targeted_unit_candidates(w: Array, gamma) -> Array:
  """Targeted-dropout candidate units (columns) of a kernel (deterministic).

  Columns of the ``(fan_in, n_out)`` view are ranked by their L2 norm; the
  ``floor(gamma * n_out)`` smallest are candidates.

  Args:
    w: kernel of rank >= 2.
    gamma: targeting proportion in ``[0, 1]``.

  Returns:
    Bool array of shape ``[n_out]``.
  """
  _check_fraction(gamma, "gamma")
  norms = jax.lax.stop_gradient(jnp.linalg.norm(_as_columns(w), axis=0))
  return _lowest_fraction(norms, gamma, axis=0)


def targeted_weight_dropout(key: Array, w: Array, *, gamma, alpha) -> Array:
  """Targeted weight dropout (Gomez et al. 2019, section 3; ``for-ai/TD``).

  Within each output column of the ``(fan_in, n_out)`` view, the lowest-
  magnitude ``gamma`` fraction of weights are candidates; each candidate is
  zeroed independently with probability ``alpha``. One mask per call (shared
  by the minibatch, applied to the weights); **no rescaling** of the kept
  weights; the mask is constant, so dropped weights get zero gradient.

  Matches the authors' code (``models/utils/dropouts.py::targeted_weight``)
  in training mode: the threshold is the ``floor(gamma * fan_in)``-th smallest
  ``|w|`` (0-based) and candidates are strictly below it. The code also zeroes
  *all* candidates at evaluation time in conv layers; that evaluation mask is
  :func:`targeted_weight_candidates`, applied by the caller if wanted.

  Args:
    key: a ``jax.random.key``.
    w: kernel of rank >= 2 (``[fan_in, n_out]``, or a conv kernel
      ``[..., c_in, c_out]``).
    gamma: targeting proportion in ``[0, 1]``.
    alpha: drop probability of a candidate in ``[0, 1]``.

  Returns:
    The thinned kernel, same shape and dtype as ``w``.

  Raises:
    ValueError: for concrete ``gamma`` or ``alpha`` outside ``[0, 1]`` or a
      kernel of rank < 2.
  """
  _check_fraction(alpha, "alpha")
  cand = targeted_weight_candidates(w, gamma)
  drop = cand & jax.random.bernoulli(
    key, jnp.asarray(alpha, jnp.float32), w.shape
  )
  return jnp.where(drop, jnp.zeros((), w.dtype), w)


def targeted_unit_dropout(
  key: Array, w: Array, *, gamma, alpha, elementwise: bool = False
) -> Array:
  """Targeted unit dropout (Gomez et al. 2019, section 3; ``for-ai/TD``).

  Output units (columns of the ``(fan_in, n_out)`` view) are ranked by the L2
  norm of their incoming weights; the ``floor(gamma * n_out)`` smallest are
  candidates, and each candidate unit is dropped (its whole column zeroed)
  with probability ``alpha``, as the paper describes. No rescaling; one mask
  per call.

  The authors' code (``targeted_unit``) instead draws the Bernoulli variable
  for every *weight* inside a candidate column; ``elementwise=True``
  reproduces that.

  Args:
    key: a ``jax.random.key``.
    w: kernel of rank >= 2.
    gamma: targeting proportion in ``[0, 1]``.
    alpha: drop probability of a candidate in ``[0, 1]``.
    elementwise: draw per weight inside candidate columns (code-faithful)
      instead of per unit (paper).

  Returns:
    The thinned kernel, same shape and dtype as ``w``.

  Raises:
    ValueError: for concrete ``gamma`` or ``alpha`` outside ``[0, 1]`` or a
      kernel of rank < 2.
  """
  _check_fraction(alpha, "alpha")
  cand = targeted_unit_candidates(w, gamma)  # [n_out]
  a = jnp.asarray(alpha, jnp.float32)
  if elementwise:
    drop = cand & jax.random.bernoulli(key, a, w.shape)
  else:
    drop = jnp.broadcast_to(
      cand & jax.random.bernoulli(key, a, cand.shape), w.shape
    )
  return jnp.where(drop, jnp.zeros((), w.dtype), w)
