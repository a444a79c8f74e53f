"""Optimizers as optax chains."""

from __future__ import annotations

import optax

# ``True`` for kernels (leaves of rank >= 2), ``False`` for biases etc.; the
# one definition lives in :mod:`dropjax.tree`.
from dropjax.tree import kernel_mask


def make_optimizer(
  name: str = "adam",
  learning_rate: float | optax.Schedule = 1e-3,
  *,
  momentum: float = 0.9,
  nesterov: bool = False,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  clip_norm: float | None = None,
) -> optax.GradientTransformation:
  """Adam or SGD(+momentum) as an optax chain.

  The chain is ``[clip_by_global_norm] -> preconditioner -> [decoupled weight
  decay on kernels] -> -learning_rate``. With ``"adam"`` it equals
  ``optax.adam`` (``weight_decay = 0``) or ``optax.adamw`` with the decay
  masked to kernels (rank >= 2 leaves; biases are not decayed); with
  ``"sgd"`` it equals ``optax.sgd(learning_rate, momentum, nesterov)``, and
  the decay is added after the momentum trace (SGDW, Loshchilov & Hutter
  2019). Weight penalties that belong to a regimen (L1/L2) live in the
  objective, not here.

  Args:
    name: ``"adam"`` or ``"sgd"``.
    learning_rate: a float or an optax schedule.
    momentum: SGD momentum (0 for plain SGD); ignored by Adam.
    nesterov: Nesterov momentum for SGD.
    b1, b2, eps: Adam's constants.
    weight_decay: decoupled decay coefficient (multiplied by the learning
      rate, as in AdamW).
    clip_norm: clip the gradient to this global norm first (``None``: off).

  Returns:
    An ``optax.GradientTransformation``.

  Raises:
    ValueError: for an unknown name, a negative coefficient or a
      non-positive ``clip_norm``.
  """
  if name not in ("adam", "sgd"):
    raise ValueError(f"unknown optimizer {name!r}; valid: 'adam', 'sgd'.")
  if (
    weight_decay < 0
    or momentum < 0
    or (clip_norm is not None and clip_norm <= 0)
  ):
    raise ValueError(
      "weight_decay and momentum must be >= 0 and clip_norm "
      f"> 0; got {weight_decay}, {momentum}, {clip_norm}."
    )
  parts = []
  if clip_norm is not None:
    parts.append(optax.clip_by_global_norm(clip_norm))
  if name == "adam":
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  elif momentum:
    parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=kernel_mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
