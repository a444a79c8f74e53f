"""Evaluation without dropout, batched so memory stays bounded."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dropjax import losses as _losses
from dropjax import sites as _sites

Array = jax.Array


def batch_eval_arrays(x, y, batch_size: int):
  """Zero-pads ``(x, y)`` to a multiple of ``batch_size``, reshapes to batches.

  Returns:
    ``(xb [nb, bs, ...], yb [nb, bs, ...], mask bool [nb, bs], n)``; ``mask``
    is ``False`` on the padding, ``n`` the number of real examples.

  Raises:
    ValueError: if ``x`` and ``y`` differ in length or ``batch_size < 1``.
  """
  x, y = np.asarray(x), np.asarray(y)
  n = x.shape[0]
  if y.shape[0] != n:
    raise ValueError(f"x has {n} examples but y has {y.shape[0]}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  nb = max(1, -(-n // batch_size))
  pad = nb * batch_size - n

  def padded(a):
    a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
    return a.reshape((nb, batch_size) + a.shape[1:])

  mask = (np.arange(nb * batch_size) < n).reshape(nb, batch_size)
  return padded(x), padded(y), mask, n


def stacked_eval_fn(apply: _sites.Apply, loss: str,
                    preprocess: Callable | None):
  """``run(params_s, xb, yb, mask, n) -> {"loss": [S], "accuracy": [S]}``.

  ``params_s`` carries a leading seed axis; ``xb, yb, mask`` come from
  :func:`batch_eval_arrays`; ``n`` is static. One ``lax.scan`` over the
  batches, one forward pass per batch for all seeds (``vmap``).
  """
  _losses.check_loss(loss)

  def sums(params, xb, yb, mask):
    if preprocess is not None:
      xb, yb = preprocess(xb, yb)
    out = apply(params, xb, _sites.identity_sites)
    per = _losses.per_position_loss(loss, out, yb).astype(jnp.float32)
    m = mask.reshape(mask.shape + (1,) * (per.ndim - 1)).astype(jnp.float32)
    loss_sum = jnp.sum(per * m)
    if loss == "softmax_cross_entropy":
      correct = (jnp.argmax(out, -1) == yb).astype(jnp.float32)
      correct_sum = jnp.sum(correct * m)
    else:
      correct_sum = jnp.zeros((), jnp.float32)
    return loss_sum, correct_sum

  def run(params_s, xb, yb, mask, n):
    def body(carry, inp):
      x, y, m = inp
      ls, cs = jax.vmap(sums, in_axes=(0, None, None, None))(params_s, x, y, m)
      return (carry[0] + ls, carry[1] + cs), None

    s = jax.tree.leaves(params_s)[0].shape[0]
    zero = jnp.zeros((s,), jnp.float32)
    (ls, cs), _ = jax.lax.scan(body, (zero, zero), (xb, yb, mask))
    return {"loss": ls / n, "accuracy": cs / n}

  return run


def evaluate(apply: _sites.Apply, params, x, y, *,
             loss: str = "softmax_cross_entropy", batch_size: int = 1000,
             preprocess: Callable | None = None, stacked: bool = False
             ) -> dict[str, Array]:
  """Mean loss and accuracy of a model without dropout, in bounded memory.

  Args:
    apply: the model ``apply(params, x, sites)``.
    params: one model's parameters, or ``S`` models' stacked on a leading
      axis when ``stacked``.
    x: inputs ``[n, ...]``.
    y: targets ``[n]`` (int labels) or ``[n, K]`` (squared error).
    loss: loss name (:data:`dropjax.losses.LOSSES`).
    batch_size: examples per forward pass (the set is zero-padded to a
      multiple of it; padding is masked out).
    preprocess: optional ``(x, y) -> (x, y)`` applied to each batch.
    stacked: ``params`` carries a leading seed axis.

  Returns:
    ``{"loss": ..., "accuracy": ...}``, float32 scalars (or ``[S]`` when
    ``stacked``). Accuracy (argmax of the outputs equals the label) is
    reported as 0 for ``squared_error``.

  Raises:
    ValueError: unknown loss or mismatched ``x``/``y`` lengths.

  Example:

  >>> import jax.numpy as jnp
  >>> apply = lambda p, x, sites: x @ p["w"]
  >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  >>> out = evaluate(apply, {"w": jnp.eye(2)}, x, jnp.array([0, 1, 0]),
  ...                batch_size=2)
  >>> round(float(out["accuracy"]), 4)
  0.6667
  """
  xb, yb, mask, n = batch_eval_arrays(x, y, batch_size)
  if not stacked:
    params = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
  out = jax.jit(stacked_eval_fn(apply, loss, preprocess), static_argnums=4)(
      params, xb, yb, mask, n)
  if not stacked:
    out = jax.tree.map(lambda a: a[0], out)
  return out
