"""Drop rates that follow the training step, inside ``jit``.

Flax's and Keras' dropout layers take a static rate, so a rate that changes
during training means a new program (or a Python-side model rebuild) per
change. dropjax rates may be traced arrays, so a schedule is just a function
of the step evaluated inside the jitted training chunk: one compiled program
serves every step.

* A *schedule* is ``schedule(step) -> q``: a pure function of the int32 step
  (any optax schedule qualifies), returning a rate in ``[0, 1)`` (a scalar, or
  anything the objective's ``rates`` accepts).
* :func:`scheduled` turns ``build(q) -> objective`` and a schedule into an
  objective whose rates (and, for the analytic regimens, the coefficients
  ``q / (2 (1 - q))`` of ``R_exp`` and ``sqrt(q / (1 - q))`` of ``R_imp``,
  which follow ``q``) are those of the current step. The training step
  (:func:`dropjax.train.make_train_step`) passes ``state.step`` to it.

Schedules of Liu et al., "Dropout Reduces Underfitting", ICML 2023
(arXiv:2303.01500, §3 and their ``drop_scheduler.py``, modes
standard / early / late with constant or linear decay):

* :func:`constant` -- ``q`` at every step (``standard``);
* :func:`early` -- ``q`` for the first ``until`` steps, then 0; with
  ``decay="linear"`` falling linearly from ``q`` towards 0 over those steps
  (``early``, ``constant`` / ``linear``);
* :func:`late` -- 0 for the first ``start`` steps, then ``q`` (``late``);
* :func:`linear` -- from ``q0`` to ``q1`` over ``steps`` steps, then ``q1``.

Example: early dropout and its analytic replacement on the same schedule.

>>> import jax, jax.numpy as jnp
>>> from dropjax import objectives, schedules
>>> apply = lambda p, x, sites: sites("h", jnp.tanh(x @ p["w1"])) @ p["w2"]
>>> q = schedules.early(0.3, until=100)
>>> [float(q(t)) for t in (0, 99, 100)]
[0.3, 0.3, 0.0]
>>> obj = schedules.scheduled(lambda r: objectives.dropout(apply, rates=r), q)
>>> obj = schedules.scheduled(
...     lambda r: objectives.explicit_implicit(apply, rates=r), q)
>>> params = {"w1": jnp.ones((3, 4)) / 3, "w2": jnp.ones((4, 2)) / 4}
>>> batch = (jnp.ones((8, 3)), jnp.zeros((8,), jnp.int32))
>>> loss, aux = obj(params, batch, jax.random.key(0), step=jnp.int32(150))
>>> float(aux["explicit"]), float(aux["implicit"])   # q = 0 after step 100
(0.0, 0.0)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from dropjax import dropout as _dropout

Array = jax.Array
Schedule = Callable[[Array], Any]
Objective = Callable[..., tuple[Array, dict]]

DECAYS = ("constant", "linear")


def _check_steps(n, name: str) -> int:
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise ValueError(f"{name} must be an int >= 0 (steps), got {n!r}.")
  return n


def constant(q: float) -> Schedule:
  """``q`` at every step.

  Raises:
    ValueError: ``q`` outside ``[0, 1)``.
  """
  _dropout.check_rate(q)
  return lambda step: jnp.full((), q, jnp.float32)


def early(q: float, until: int, *, decay: str = "constant") -> Schedule:
  """Early dropout: ``q`` for steps ``t < until``, 0 from then on.

  With ``decay="linear"`` the rate falls linearly, ``q (1 - t / until)`` for
  ``t < until`` (Liu et al. 2023, ``drop_scheduler`` mode ``early``).

  Raises:
    ValueError: ``q`` outside ``[0, 1)``, ``until < 0`` or an unknown
      ``decay``.
  """
  _dropout.check_rate(q)
  _check_steps(until, "until")
  if decay not in DECAYS:
    raise ValueError(f"unknown decay {decay!r}; valid: {', '.join(DECAYS)}.")

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    on = jnp.asarray(step) < until
    if decay == "linear":
      rate = q * (1.0 - t / max(until, 1))
    else:
      rate = jnp.full((), q, jnp.float32)
    return jnp.where(on, rate, 0.0).astype(jnp.float32)

  return schedule


def late(q: float, start: int) -> Schedule:
  """Late dropout: 0 for steps ``t < start``, ``q`` from then on.

  Raises:
    ValueError: ``q`` outside ``[0, 1)`` or ``start < 0``.
  """
  _dropout.check_rate(q)
  _check_steps(start, "start")
  return lambda step: jnp.where(jnp.asarray(step) < start, 0.0, q).astype(
    jnp.float32
  )


def linear(q0: float, q1: float, steps: int) -> Schedule:
  """From ``q0`` at step 0 to ``q1`` at ``steps`` (then ``q1``):
  ``optax.linear_schedule``.

  Raises:
    ValueError: a rate outside ``[0, 1)`` or ``steps < 1``.
  """
  _dropout.check_rate(q0)
  _dropout.check_rate(q1)
  if _check_steps(steps, "steps") < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  return optax.linear_schedule(q0, q1, steps)


class Scheduled:
  """An objective whose drop rates follow the step (see :func:`scheduled`).

  Calling it: ``objective(params, batch, key, step=t)``. The training step
  of :mod:`dropjax.train` sees :attr:`needs_step` and passes
  ``state.step``.
  """

  needs_step = True

  def __init__(self, build: Callable[[Any], Objective], schedule: Schedule):
    if not callable(build) or not callable(schedule):
      raise TypeError(
        "scheduled(build, schedule) takes two callables: build(q) -> "
        "objective and schedule(step) -> q."
      )
    self.build = build
    self.schedule = schedule

  def rate(self, step) -> Any:
    """The rate(s) at ``step``."""
    return self.schedule(step)

  def __call__(self, params, batch, key, *, step=None):
    if step is None:
      raise ValueError(
        "a scheduled objective needs the step: call it as "
        "objective(params, batch, key, step=t) (dropjax.train passes "
        "state.step)."
      )
    return self.build(self.schedule(step))(params, batch, key)


def scheduled(
  build: Callable[[Any], Objective], schedule: Schedule
) -> Scheduled:
  """An objective whose rates are ``schedule(step)`` at every step.

  Args:
    build: ``build(q) -> objective``, e.g.
      ``lambda q: objectives.dropout(apply, rates=q)``; ``q`` is a traced
      float32 scalar (or whatever ``schedule`` returns), so ``build`` must
      not branch on its value in Python. The analytic objectives' terms
      follow ``q`` (their coefficients are functions of it).
    schedule: ``schedule(step) -> q`` (:func:`early`, :func:`late`, ...,
      or any optax schedule).

  Returns:
    A :class:`Scheduled` objective: ``objective(params, batch, key,
    step=t)``. Inside :func:`dropjax.train.train` one compiled chunk serves
    every rate.

  Raises:
    TypeError: ``build`` or ``schedule`` not callable.
  """
  return Scheduled(build, schedule)


__all__ = [
  "DECAYS",
  "Schedule",
  "Scheduled",
  "constant",
  "early",
  "late",
  "linear",
  "scheduled",
]
