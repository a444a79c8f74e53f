"""The train state and one pure update step."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dropjax import sites as _sites

Array = jax.Array
Objective = Callable[[Any, tuple, Array], tuple[Array, dict]]
Batch = tuple[Any, Any]


class TrainState(NamedTuple):
  """What one model's training carries from step to step.

  Attributes:
    params: the parameter pytree.
    opt_state: the optax state.
    step: int32 scalar, the number of updates done.

  In :func:`dropjax.train.train` every leaf has a leading seed axis
  ``[S, ...]``.
  """

  params: Any
  opt_state: Any
  step: Array


def init_state(params, optimizer: optax.GradientTransformation) -> TrainState:
  """``TrainState(params, optimizer.init(params), step=0)``."""
  return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def make_train_step(
  objective: Objective, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Batch, Array], tuple[TrainState, dict]]:
  """One update of a dropjax objective, as a pure function.

  Args:
    objective: ``(params, batch, key) -> (loss, aux)`` (any of
      :mod:`dropjax.objectives`), or a :class:`dropjax.schedules.Scheduled`
      objective, which is given ``step=state.step`` (rates that follow a
      schedule, with no recompilation).
    optimizer: an optax transformation.

  Returns:
    ``step(state, batch, key) -> (state, metrics)``: differentiates the
    objective at ``state.params`` with ``key``, applies the optimizer and
    increments ``state.step``. A stateful model's new statistics (the
    objective's ``aux["model_aux"]``, a :class:`dropjax.sites.StateUpdate`)
    then replace those leaves of the parameters. ``metrics`` is a dict of
    float scalars: ``loss`` (the total objective), every scalar entry of
    ``aux`` (``data_loss``, ``explicit``, ``implicit``, ``penalty``;
    non-scalar entries such as ``model_aux`` are dropped) and ``grad_norm``
    (global L2 norm of the gradient). Nothing is checked for NaN here (that would need a
    host sync); :func:`dropjax.train.train` checks between chunks.

  Example:

  >>> import jax, jax.numpy as jnp
  >>> from dropjax import objectives, train
  >>> apply = lambda p, x, sites: sites("h", x @ p["w"])
  >>> obj = objectives.dropout(apply, rates=0.5)
  >>> opt = train.make_optimizer("sgd", 0.1)
  >>> state = train.init_state({"w": jnp.ones((3, 2))}, opt)
  >>> batch = (jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]))
  >>> state, metrics = jax.jit(train.make_train_step(obj, opt))(
  ...     state, batch, jax.random.key(0))
  >>> int(state.step), sorted(metrics)
  (1, ['data_loss', 'explicit', 'grad_norm', 'implicit', 'loss', 'penalty'])
  """
  step = make_train_step_with_aux(objective, optimizer)

  def step_without_aux(state: TrainState, batch: Batch, key: Array):
    state, metrics, _ = step(state, batch, key)
    return state, metrics

  return step_without_aux


def make_train_step_with_aux(
  objective: Objective, optimizer: optax.GradientTransformation
):
  """:func:`make_train_step` that also returns the objective's
  ``aux.get("model_aux")`` (e.g. a recurrent model's new carry, ``None``
  when absent): ``step(state, batch, key) -> (state, metrics, model_aux)``."""
  needs_step = getattr(objective, "needs_step", False)  # schedules.Scheduled

  def loss_fn(params, batch, key, step):
    if needs_step:
      return objective(params, batch, key, step=step)
    return objective(params, batch, key)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: Batch, key: Array):
    (loss, aux), grads = grad_fn(state.params, batch, key, state.step)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model_aux = aux.get("model_aux")
    if isinstance(model_aux, _sites.StateUpdate):
      params = _sites.apply_state_update(params, model_aux)
    metrics = {"loss": loss}
    for k, v in aux.items():
      if k != "model_aux" and jnp.ndim(v) == 0:
        metrics[k] = v
    metrics["grad_norm"] = optax.tree.norm(grads)
    return (
      TrainState(params, opt_state, state.step + 1),
      metrics,
      model_aux,
    )

  return step
