"""Losses and the pieces of their output Hessians the regularizers need.

Two losses, each with its *sampled-label* form (a label drawn from the
model's own predictive distribution, whose gradient outer product equals the
loss Hessian in expectation -- the Fisher identity behind the sampled-label
estimator of Wei, Kakade & Ma 2020, arXiv:2002.12915):

=========================  ===========================  =====================
loss                        per position                 sampled label
=========================  ===========================  =====================
``softmax_cross_entropy``   ``-log softmax(z)[y]``       ``y ~ Categorical(p)``
``squared_error``           ``0.5 * ||f - y||^2``        ``y ~ N(f, I)``
=========================  ===========================  =====================

Outputs have shape ``[..., K]``; every leading index is one *position* (an
example, or a token of a sequence). Targets are int labels of shape ``[...]``
(cross-entropy) or floats of shape ``[..., K]`` (squared error). Losses are
averaged over all positions (the batch mean ``L̄`` of the paper).

Labels must lie in ``[0, K)``; inside ``jit`` they cannot be checked without
a host sync, and out-of-range labels give no error: a label ``>= K`` makes
that position's cross-entropy NaN, and a negative label wraps around (``-1``
is read as class ``K - 1``, a finite, wrong loss). Check a data set once,
before training, with :func:`check_labels`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array

LOSSES = ("softmax_cross_entropy", "squared_error")


def check_loss(loss: str) -> str:
  """Raises ``ValueError`` listing the valid losses for an unknown name."""
  if loss not in LOSSES:
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}.")
  return loss


def check_labels(labels, num_classes: int, *, what: str = "labels") -> None:
  """Checks host integer labels against the model's output size.

  Args:
    labels: int array of any shape (e.g. a data set's ``[n]`` labels).
    num_classes: ``K``, the number of model outputs.
    what: how the message names the labels (e.g. ``"training labels"``).

  Raises:
    ValueError: for non-integer labels or labels outside ``[0, K)``; the
      message gives the range found and ``K``.

  Example:

  >>> import numpy as np
  >>> check_labels(np.array([0, 2, 9]), 10)
  >>> check_labels(np.array([0, 10]), 10)
  Traceback (most recent call last):
  ...
  ValueError: labels lie in [0, 10] but the model has 10 outputs: every label must be in [0, 10).
  """
  import numpy as np

  labels = np.asarray(labels)
  if labels.size == 0:
    return
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f"{what} must be integers for softmax_cross_entropy, got dtype "
      f"{labels.dtype}."
    )
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= num_classes:
    raise ValueError(
      f"{what} lie in [{lo}, {hi}] but the model has {num_classes} outputs: "
      f"every label must be in [0, {num_classes})."
    )


def _check_targets(loss: str, outputs: Array, targets: Array):
  want = (
    outputs.shape[:-1] if loss == "softmax_cross_entropy" else outputs.shape
  )
  if tuple(targets.shape) != tuple(want):
    what = "int labels" if loss == "softmax_cross_entropy" else "float targets"
    raise ValueError(
      f"{loss}: outputs of shape {outputs.shape} need {what} of shape "
      f"{tuple(want)}, got {tuple(targets.shape)}."
    )


def per_position_loss(loss: str, outputs: Array, targets: Array) -> Array:
  """Loss at every position, shape ``outputs.shape[:-1]``.

  Raises:
    ValueError: for an unknown loss or mismatched target shape.
  """
  check_loss(loss)
  _check_targets(loss, outputs, targets)
  if loss == "softmax_cross_entropy":
    return optax.losses.softmax_cross_entropy_with_integer_labels(
      outputs, targets
    )
  return 0.5 * jnp.sum(jnp.square(outputs - targets), axis=-1)


def mean_loss(loss: str, outputs: Array, targets: Array) -> Array:
  """Batch-mean loss ``L̄`` (scalar)."""
  return jnp.mean(per_position_loss(loss, outputs, targets))


def num_positions(outputs: Array) -> int:
  """``N``: the number of positions the mean loss averages over."""
  n = 1
  for d in outputs.shape[:-1]:
    n *= d
  return n


def sample_targets(loss: str, key: Array, outputs: Array) -> Array:
  """Draws targets from the model's predictive distribution (no gradient).

  Cross-entropy: ``y ~ Categorical(softmax(z))``; squared error:
  ``y ~ N(f, I)``. ``stop_gradient`` is applied to the outputs, as in the
  paper's code (the sampling is not differentiated).
  """
  check_loss(loss)
  out = jax.lax.stop_gradient(outputs)
  if loss == "softmax_cross_entropy":
    return jax.random.categorical(key, out, axis=-1)
  return out + jax.random.normal(key, out.shape, out.dtype)


def loss_cotangent(loss: str, outputs: Array, targets: Array) -> Array:
  """``d L̄ / d outputs`` (differentiable with respect to the outputs)."""
  return jax.grad(lambda o: mean_loss(loss, o, targets))(outputs)


def hessian_factors(loss: str, outputs: Array) -> Array:
  r"""Factors ``F`` with ``∇²_z ℓ = Σ_c F[..., c, :] F[..., c, :]ᵀ`` per position.

  Cross-entropy: ``F_c = sqrt(p_c) (e_c - p)``, so
  ``Σ_c F_c F_cᵀ = diag(p) - p pᵀ = E_{ŷ~p}[(p - e_ŷ)(p - e_ŷ)ᵀ]``.
  Squared error: ``F = I``. Shape ``[..., K, K]``.
  """
  check_loss(loss)
  k = outputs.shape[-1]
  eye = jnp.eye(k, dtype=outputs.dtype)
  if loss == "squared_error":
    return jnp.broadcast_to(eye, outputs.shape[:-1] + (k, k))
  p = jax.nn.softmax(outputs, axis=-1)
  return jnp.sqrt(p)[..., :, None] * (eye - p[..., None, :])


def identity_hessian_scale(loss: str, num_outputs: int) -> float:
  """The constant Hessian ``h I`` of the identity-Hessian ablation.

  ``1 / K`` for cross-entropy (the Hessian of a uniform softmax without its
  rank-one term, as in the paper's ``jreg_hess_id``), ``1`` for squared error
  (its exact Hessian).
  """
  check_loss(loss)
  return 1.0 / num_outputs if loss == "softmax_cross_entropy" else 1.0
