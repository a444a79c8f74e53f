"""Gradual magnitude pruning during training: schedule, masked optimizer, hook.

The pieces of Zhu & Gupta's gradual pruning as TF Model Optimization runs it
(``prune_low_magnitude``, used by Filan et al. 2021 for their pruned nets):

* :class:`PruningSchedule` -- when masks are recomputed and at which target
  sparsity: the polynomial schedule of Zhu & Gupta (2017), eq. (1),
  ``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt)) ** 3``, evaluated
  every ``dt = frequency`` steps from ``t_0 = begin_step`` to ``end_step``;
* :func:`masked_optimizer` -- an optax wrapper whose state carries the masks
  (:class:`MaskedOptState`) and keeps masked kernel entries exactly zero
  after every update;
* :func:`pruning_hook` -- the per-step mask update, a pure
  ``hook(state, t) -> state`` for one model's
  :class:`dropjax.train.TrainState`, to be called before each update inside a
  jitted (and seed-vmapped) training loop.

The masks themselves come from
:func:`dropjax.analysis.layerwise_magnitude_masks` by default (TF-MOT's
``_update_mask``: per kernel, keep the ``max(1, round(n * (1 - s)))`` largest
``|w|``).

Sources:
  * Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
    pruning for model compression", arXiv:1710.01878, section 3, eq. (1).
  * TF Model Optimization (``tensorflow/model-optimization``):
    ``tensorflow_model_optimization/python/core/sparsity/keras/``
    ``pruning_schedule.py`` (``PolynomialDecay``,
    ``PruningSchedule._should_prune_in_step``) and ``pruning_impl.py``
    (``Pruning._update_mask``, ``Pruning.weight_mask_op``: the masks are
    recomputed on schedule and re-applied after every optimizer step).
  * Filan et al., "Clusterability in neural networks", arXiv:2103.03386
    (``src/train_nn.py``): initial 0.5, final 0.9, cubic, every 10 steps.

Example (one seed; under :func:`dropjax.train.train` the hook runs vmapped
over the seeds):

>>> import jax, jax.numpy as jnp
>>> from dropjax import train
>>> opt = masked_optimizer(train.make_optimizer("sgd", 0.1))
>>> state = train.init_state({"w": jnp.arange(1., 13.).reshape(4, 3),
...                           "b": jnp.ones(3)}, opt)
>>> hook = jax.jit(pruning_hook(PruningSchedule(end_step=20, frequency=10)))
>>> state = hook(state, jnp.int32(0))   # an update step: sparsity 0.5
>>> int((state.params["w"] == 0).sum()), state.opt_state.masks["b"]
(6, None)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dropjax.analysis.pruning import apply_masks
from dropjax.analysis.pruning import is_mask_update_step
from dropjax.analysis.pruning import layerwise_magnitude_masks
from dropjax.analysis.pruning import polynomial_sparsity
from dropjax.tree import is_kernel

Array = jax.Array
MaskFn = Callable[[Any, Array], Any]


@dataclasses.dataclass(frozen=True)
class PruningSchedule:
  """TF-MOT's polynomial-decay pruning schedule (Zhu & Gupta 2017, eq. (1)).

  The target sparsity rises from ``initial`` at ``begin_step`` to ``final``
  at ``end_step`` as ``final + (initial - final) * (1 - p) ** power`` with
  ``p`` the elapsed fraction (:func:`dropjax.analysis.polynomial_sparsity`),
  and the masks are recomputed at ``begin_step + i * frequency`` up to
  ``end_step`` (:func:`dropjax.analysis.is_mask_update_step`); TF-MOT's
  ``PolynomialDecay`` in ``pruning_schedule.py`` (see the module docstring
  for the path). Both methods are traceable in the step.

  Attributes:
    end_step: last step of the schedule (the sparsity reaches ``final``).
    initial: sparsity at ``begin_step``, in ``[0, 1)``.
    final: sparsity at ``end_step`` and after, in ``[0, 1)``.
    power: exponent of the decay (3: cubic, Zhu & Gupta's choice).
    frequency: masks are recomputed at ``begin_step + i * frequency``.
    begin_step: first step of the schedule.

  Example:
    >>> s = PruningSchedule(end_step=20, frequency=10)
    >>> [round(float(s.sparsity(t)), 4) for t in (0, 10, 20, 30)]
    [0.5, 0.85, 0.9, 0.9]
    >>> [bool(s.is_update(t)) for t in (0, 5, 10, 20, 30)]
    [True, False, True, True, False]
  """

  end_step: int
  initial: float = 0.5
  final: float = 0.9
  power: float = 3.0
  frequency: int = 10
  begin_step: int = 0

  def sparsity(self, step) -> Array:
    """Target sparsity at ``step`` (``polynomial_sparsity``).

    Args:
      step: int or (traced) integer scalar.

    Returns:
      A float32 scalar array (float64 under x64).

    Raises:
      ValueError: for a bad schedule (see ``polynomial_sparsity``).
    """
    return polynomial_sparsity(
      step,
      initial=self.initial,
      final=self.final,
      begin_step=self.begin_step,
      end_step=self.end_step,
      power=self.power,
    )

  def is_update(self, step) -> Array:
    """Whether masks are recomputed before ``step``'s update.

    Args:
      step: int or (traced) integer scalar.

    Returns:
      A bool scalar array (:func:`dropjax.analysis.is_mask_update_step`).

    Raises:
      ValueError: for ``frequency <= 0``.
    """
    return is_mask_update_step(
      step,
      begin_step=self.begin_step,
      end_step=self.end_step,
      frequency=self.frequency,
    )


def last_update_step(steps: int, frequency: int, begin_step: int = 0) -> int:
  """The last mask-update step within ``steps`` updates (``0 .. steps-1``).

  Used as the schedule's ``end_step`` so that the final sparsity is reached
  exactly, at the last update of the phase (TF-MOT with Filan et al.'s
  ``end_step = steps`` never runs that update; the target there is reached
  up to ~1e-9).

  Args:
    steps: number of updates of the pruning phase.
    frequency: mask-update period in steps.
    begin_step: first step of the schedule.

  Returns:
    ``begin_step + frequency * ((steps - 1 - begin_step) // frequency)``.

  Raises:
    ValueError: if no update after ``begin_step`` fits in ``steps``.

  Example:
    >>> last_update_step(9360, 10), last_update_step(15, 5)
    (9350, 10)
  """
  end = begin_step + frequency * ((steps - 1 - begin_step) // frequency)
  if end <= begin_step:
    raise ValueError(
      f"a pruning phase of {steps} steps with mask updates every "
      f"{frequency} steps has no update after step {begin_step}; use more "
      "steps or a smaller frequency."
    )
  return end


class MaskedOptState(NamedTuple):
  """State of :func:`masked_optimizer`: the inner state and the masks.

  Attributes:
    inner: the wrapped optimizer's state.
    masks: a tree like the params: a bool array of the kernel's shape at
      every kernel (``True`` = kept) and ``None`` at every other leaf.
  """

  inner: Any
  masks: Any


def masked_optimizer(
  inner: optax.GradientTransformation,
) -> optax.GradientTransformation:
  """Wraps an optimizer so that masked kernel entries stay exactly zero.

  The state (:class:`MaskedOptState`) carries a masks tree (bool at every
  kernel, i.e. leaf with ``ndim >= 2``, ``True`` = kept; ``None`` elsewhere;
  all ``True`` after ``init``). ``update`` runs the inner optimizer and
  replaces the update of every masked entry by ``-param``, so ``params +
  updates`` is exactly 0 there (TF-MOT re-applies its masks after every step
  to the same effect, ``pruning_impl.py``). The inner optimizer's state
  (e.g. Adam's moments) still sees the raw gradients. The masks are set
  from outside, by :func:`pruning_hook`.

  Args:
    inner: any optax transformation (e.g. Adam 1e-3).

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> opt = masked_optimizer(optax.sgd(0.1))
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    >>> state = opt.init(params)
    >>> state = state._replace(masks={"w": jnp.eye(2, dtype=bool),
    ...                               "b": None})
    >>> upd, _ = opt.update({"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
    ...                     state, params)
    >>> optax.apply_updates(params, upd)["w"].tolist()
    [[0.9, 0.0], [0.0, 0.9]]
  """

  def init(params):
    masks = jax.tree.map(
      lambda p: jnp.ones(jnp.shape(p), bool) if is_kernel(p) else None, params
    )
    return MaskedOptState(inner.init(params), masks)

  def update(updates, state, params=None):
    upd, inner_state = inner.update(updates, state.inner, params)
    upd = jax.tree.map(
      lambda m, u, p: u if m is None else jnp.where(m, u, -p),
      state.masks,
      upd,
      params,
      is_leaf=lambda x: x is None,
    )
    return upd, MaskedOptState(inner_state, state.masks)

  return optax.GradientTransformation(init, update)


def pruning_hook(
  schedule: PruningSchedule, mask_fn: MaskFn | None = None
) -> Callable[[Any, Array], Any]:
  """The mask update of gradual pruning, as a pure per-step hook.

  ``hook(state, t)`` is meant to run before the update of global step ``t``
  (inside the jitted scan of a training loop, under ``vmap`` over seeds with
  ``t`` unbatched, so the ``lax.cond`` stays a branch). When
  ``schedule.is_update(t)``, it recomputes the masks
  ``mask_fn(state.params, schedule.sparsity(t))``, zeroes the masked
  parameters (:func:`dropjax.analysis.apply_masks`) and stores the masks in
  ``state.opt_state.masks``, where :func:`masked_optimizer` holds them until
  the next update; at every other step it returns ``state`` unchanged. This
  is TF-MOT's ``Pruning.conditional_mask_update`` followed by
  ``Pruning.weight_mask_op`` (``pruning_impl.py``).

  Args:
    schedule: the :class:`PruningSchedule`.
    mask_fn: ``(params, sparsity) -> masks`` with the masks convention of
      :class:`MaskedOptState`; default
      :func:`dropjax.analysis.layerwise_magnitude_masks` (every kernel).

  Returns:
    ``hook(state, t) -> state``: ``state`` is one model's
    :class:`dropjax.train.TrainState` (``params``, ``opt_state``, ``step``)
    whose ``opt_state`` is a :class:`MaskedOptState`; ``t`` is an int32
    scalar (the global step). The result has the same structure, shapes and
    dtypes; ``state.step`` is never changed.

  Raises:
    TypeError: (when ``hook`` is called) if ``state.opt_state`` is not a
      :class:`MaskedOptState`.
  """
  mask_fn = mask_fn or layerwise_magnitude_masks

  def remask(state, t):
    masks = mask_fn(state.params, schedule.sparsity(t))
    return state._replace(
      params=apply_masks(state.params, masks),
      opt_state=state.opt_state._replace(masks=masks),
    )

  def hook(state, t):
    if not isinstance(state.opt_state, MaskedOptState):
      raise TypeError(
        "pruning_hook needs a train state whose opt_state is a "
        "MaskedOptState (build the optimizer with masked_optimizer); got "
        f"{type(state.opt_state).__name__}."
      )
    return jax.lax.cond(
      schedule.is_update(t), lambda s: remask(s, t), lambda s: s, state
    )

  return hook
