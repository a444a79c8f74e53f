"""Magnitude pruning of trained parameters: one-shot masks, curves, schedules.

Everything here reads parameters and returns new ones; nothing trains.

Conventions (shared by the whole ``dropjax.analysis`` package):

* ``params`` is any pytree (nested dicts, a Flax ``nnx.State``, ...) of arrays.
* A *kernel* is a leaf with ``ndim >= 2``. It is viewed as a matrix
  ``(fan_in, n_out) = (prod(shape[:-1]), shape[-1])``: a dense kernel is
  already ``(in, out)``; a conv kernel ``(H, W, C_in, C_out)`` becomes
  ``(H*W*C_in, C_out)`` (Gomez et al. 2019, ``for-ai/TD``).
  Leaves with ``ndim < 2`` (biases, scales, counters) are never pruned and
  never counted as kernels.
* Layer order is the pytree flatten order
  (``jax.tree_util.tree_flatten_with_path``); models in this project name
  their layers so that this equals depth order.
* A *path string* is the leaf's key path joined with ``/``, e.g.
  ``"layers/0/kernel"`` for a dict or ``"dense1/kernel/value"`` for an
  ``nnx.State``.
* ``exclude`` selects kernels to leave untouched: a tuple of indices into
  the list of kernels (negative indices count from the end) or a callable
  ``(path_string, leaf) -> bool``. Under ``jax.jit`` the callable sees a
  traced leaf, so it may only use the path and the shape.
* Masks are returned as a pytree with the structure of ``params``: a bool
  array of the kernel's shape at every kernel (``True`` = kept; all ``True``
  for an excluded kernel) and ``None`` at every other leaf (the convention
  of ``jaxpruner``). :func:`apply_masks` accepts such trees.

Sources:
  * Gomez et al., "Learning sparse networks using targeted dropout",
    arXiv:1905.13678, and its code ``for-ai/TD`` (``scripts/prune``):
    per-column weight pruning, per-layer unit pruning, no fine-tuning,
    stem and logits excluded.
  * Zhu & Gupta, "To prune, or not to prune", arXiv:1710.01878, as
    implemented by TF Model Optimization (``PolynomialDecay`` and
    ``pruning_impl.Pruning._update_mask``), used for gradual pruning by
    Filan et al., "Clusterability in neural networks", arXiv:2103.03386.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from dropjax.selection import kth_smallest
from dropjax.tree import is_kernel
from dropjax.tree import path_string

Array = jax.Array
Params = Any
Exclude = Union[Sequence[int], int, Callable[[str, Any], bool]]

GRANULARITIES = ("weight", "unit", "global")
DEFAULT_EXCLUDE = (0, -1)
DEFAULT_FRACTIONS = (
  0.0,
  0.1,
  0.2,
  0.3,
  0.4,
  0.5,
  0.6,
  0.7,
  0.8,
  0.9,
  0.95,
  0.99,
)

# Relative slack added to fraction * n before taking the floor, so that a
# product such as 0.29 * 100 = 28.999999999999996 counts as 29.
_COUNT_RTOL = 1e-6


# --------------------------------------------------------------------------
# Pytree helpers shared by the analysis modules.
# --------------------------------------------------------------------------


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


# ``is_kernel`` and ``path_string`` live in :mod:`dropjax.tree` and are
# re-exported here (and from ``dropjax.analysis``) under their old names.


@dataclasses.dataclass(frozen=True)
class _Flat:
  """A flattened params tree with its kernels located."""

  leaves: list
  paths: list
  treedef: Any
  kernel_pos: list  # positions in ``leaves`` of the kernels, in order

  @property
  def kernels(self) -> list:
    return [self.leaves[i] for i in self.kernel_pos]

  @property
  def kernel_paths(self) -> list:
    return [self.paths[i] for i in self.kernel_pos]

  def unflatten(self, leaves):
    return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _flatten(params) -> _Flat:
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [path_string(p) for p, _ in with_path]
  leaves = [leaf for _, leaf in with_path]
  kernel_pos = [i for i, leaf in enumerate(leaves) if is_kernel(leaf)]
  return _Flat(leaves, paths, treedef, kernel_pos)


def _excluded_flags(
  paths: Sequence[str], kernels: Sequence[Any], exclude: Exclude
) -> list[bool]:
  """Resolves ``exclude`` to one flag per kernel."""
  n = len(kernels)
  if callable(exclude):
    return [bool(exclude(p, k)) for p, k in zip(paths, kernels)]
  if isinstance(exclude, (int, np.integer)):
    exclude = (exclude,)
  flags = [False] * n
  for i in exclude:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
      raise TypeError(
        "exclude must be a sequence of kernel indices or a callable "
        f"(path, leaf) -> bool; got element {i!r}."
      )
    if n == 0:
      continue
    if not -n <= i < n:
      raise ValueError(f"exclude index {i} is out of range for {n} kernels.")
    flags[int(i)] = True
  return flags


def kernel_list(params, *, exclude: Exclude = ()) -> list[tuple[str, Array]]:
  """Lists the kernels of ``params`` in flatten order as ``(path, array)``.

  Args:
    params: a pytree of arrays.
    exclude: kernel indices or a ``(path, leaf) -> bool`` callable; the
      selected kernels are left out of the list.

  Returns:
    A list of ``(path_string, kernel)`` pairs in layer (flatten) order, with
    the kernels in their original shapes.

  Raises:
    ValueError: for an out-of-range exclude index.

  Example:
    >>> import numpy as np
    >>> p = {"a": {"kernel": np.ones((2, 3)), "bias": np.ones(3)},
    ...      "b": {"kernel": np.ones((3, 1))}}
    >>> [path for path, _ in kernel_list(p)]
    ['a/kernel', 'b/kernel']
  """
  flat = _flatten(params)
  flags = _excluded_flags(flat.kernel_paths, flat.kernels, exclude)
  return [
    (p, k) for p, k, f in zip(flat.kernel_paths, flat.kernels, flags) if not f
  ]


def _as_matrix(w):
  return w.reshape(-1, w.shape[-1])


# --------------------------------------------------------------------------
# Counts and thresholds.
# --------------------------------------------------------------------------


def _check_unit_interval(v, name: str):
  if _is_concrete(v):
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got shape {a.shape}.")
    if not 0.0 <= float(a) <= 1.0:
      raise ValueError(f"{name} must lie in [0, 1], got {v!r}.")


def prune_count(fraction, n: int):
  """Number of entries to prune: ``floor(fraction * n)`` clipped to ``[0, n]``.

  The product gets a relative slack of ``1e-6`` before the floor, so float
  rounding cannot lose one (``0.29 * 100`` gives 29, not 28). A concrete
  ``fraction`` is evaluated in float64 and returns a Python ``int``; a traced
  one is evaluated in JAX's default float dtype (float32 unless x64 is on)
  and returns an int32 array; for ``n`` above about ``1e6`` the two may differ
  by one.

  Args:
    fraction: a scalar in ``[0, 1]`` (float or traced array).
    n: the number of candidates.

  Returns:
    ``int`` (concrete fraction) or int32 scalar array (traced fraction).

  Example:
    >>> prune_count(0.29, 100), prune_count(0.35, 10), prune_count(1.0, 7)
    (29, 3, 7)
  """
  if _is_concrete(fraction):
    k = math.floor(float(fraction) * n * (1.0 + _COUNT_RTOL))
    return min(max(k, 0), n)
  f = jnp.asarray(fraction, dtype=jnp.result_type(float))
  k = jnp.floor(f * n * (1.0 + _COUNT_RTOL)).astype(jnp.int32)
  return jnp.clip(k, 0, n)


def _abs_float(w: Array) -> Array:
  w = jnp.asarray(w)
  dtype = jnp.promote_types(w.dtype, jnp.float32)
  return jnp.abs(w.astype(dtype))


def _weight_keep(w: Array, fraction) -> Array:
  """Per-column mask: keep ``|w| >= `` the ``floor(f*fan_in)``-th smallest."""
  a = _abs_float(_as_matrix(w))
  k = prune_count(fraction, a.shape[0])
  t = kth_smallest(a, k, axis=0)  # (1, n_out); +inf when k == fan_in
  return (a >= t).reshape(w.shape)


def _unit_keep(w: Array, fraction) -> Array:
  """Per-layer mask: drop the ``floor(f*n_out)`` lowest-L2-norm columns."""
  a = _abs_float(_as_matrix(w))
  n_out = a.shape[1]
  norms = jnp.sqrt(jnp.sum(jnp.square(a), axis=0))
  k = prune_count(fraction, n_out)
  order = jnp.argsort(norms, stable=True)
  rank = (
    jnp.zeros((n_out,), jnp.int32)
    .at[order]
    .set(jnp.arange(n_out, dtype=jnp.int32))
  )
  keep_col = rank >= k
  return jnp.broadcast_to(keep_col[None, :], a.shape).reshape(w.shape)


def _global_keep(ws: Sequence[Array], fraction) -> list[Array]:
  """Masks keeping ``|w| >= `` the global ``floor(f*N)``-th smallest ``|w|``."""
  if not ws:
    return []
  absw = [_abs_float(w) for w in ws]
  dtype = jnp.result_type(*absw)
  flat = jnp.concatenate([a.astype(dtype).ravel() for a in absw])
  k = prune_count(fraction, flat.shape[0])
  t = kth_smallest(flat, k, axis=0)[0]
  return [a.astype(dtype) >= t for a in absw]


# --------------------------------------------------------------------------
# One-shot magnitude pruning.
# --------------------------------------------------------------------------


def magnitude_prune(
  params: Params,
  fraction,
  *,
  granularity: str = "weight",
  exclude: Exclude = DEFAULT_EXCLUDE,
):
  """One-shot magnitude pruning (no fine-tuning) at a given granularity.

  Each kernel is viewed as ``(fan_in, n_out)``. With ``k = floor(fraction *
  n)`` (see :func:`prune_count`):

  * ``"weight"`` -- per column (output unit / conv filter) with
    ``n = fan_in``: the threshold ``t_j`` is the ``k``-th smallest ``|w|`` of
    column ``j`` (0-based; ``+inf`` when ``k = fan_in``) and entries with
    ``|w| >= t_j`` are kept, exactly as Gomez et al.'s ``for-ai/TD`` pruning
    script. **Ties:** entries equal to the threshold all survive, so a column
    with repeated magnitudes (e.g. already-zero weights) may lose *fewer* than
    ``k`` entries; with distinct magnitudes exactly ``k`` are zeroed.
  * ``"unit"`` -- per layer with ``n = n_out``: zero the ``k`` columns with
    the smallest L2 norm of their incoming weights (``for-ai/TD``). Exactly
    ``k`` columns are zeroed; among equal norms the lower column index is
    pruned first.
  * ``"global"`` -- over all non-excluded kernels together with ``n`` = their
    total size: threshold at the ``k``-th smallest ``|w|`` of the pooled
    weights, keep ``|w| >= t`` (same tie rule as ``"weight"``).

  Biases and other leaves with ``ndim < 2`` are returned unchanged.

  The function is jit-able with ``granularity`` and ``exclude`` static, and
  ``fraction`` may be traced:
  ``jax.jit(magnitude_prune, static_argnames=("granularity", "exclude"))``.

  Args:
    params: pytree of arrays; kernels are the leaves with ``ndim >= 2``.
    fraction: fraction to prune, a scalar in ``[0, 1]`` (float or traced).
    granularity: ``"weight"``, ``"unit"`` or ``"global"``.
    exclude: kernels to leave untouched: indices into the list of kernels
      (negative allowed) or a callable ``(path_string, leaf) -> bool``. The
      default ``(0, -1)`` excludes the first and last kernel (the stem and
      the logits, as in targeted dropout's protocol, Gomez et al. 2019,
      ``scripts/prune``).

  Returns:
    ``(pruned_params, masks)``. ``pruned_params`` has the structure, shapes
    and dtypes of ``params`` with pruned kernel entries set to zero.
    ``masks`` has the structure of ``params``: a bool array (``True`` = kept)
    for every kernel (all ``True`` when excluded) and ``None`` for every
    other leaf.

  Raises:
    ValueError: for an unknown ``granularity`` (the message lists the valid
      ones), a concrete ``fraction`` outside ``[0, 1]`` (or NaN), or an
      out-of-range exclude index.
    TypeError: for a malformed ``exclude``.

  Example:
    >>> import numpy as np
    >>> w = np.array([[1., -4.], [-2., 3.], [3., 1.], [0.5, 2.]])
    >>> p = {"d": {"kernel": w}}
    >>> pruned, masks = magnitude_prune(p, 0.5, exclude=())
    >>> np.asarray(pruned["d"]["kernel"]).tolist()
    [[0.0, -4.0], [-2.0, 3.0], [3.0, 0.0], [0.0, 0.0]]
  """
  if granularity not in GRANULARITIES:
    raise ValueError(
      f"unknown granularity {granularity!r}; valid granularities are "
      f"{', '.join(repr(g) for g in GRANULARITIES)}."
    )
  _check_unit_interval(fraction, "fraction")
  flat = _flatten(params)
  kernels = flat.kernels
  flags = _excluded_flags(flat.kernel_paths, kernels, exclude)

  keeps: list = [None] * len(kernels)
  active = [i for i, f in enumerate(flags) if not f]
  if granularity == "global":
    for i, m in zip(
      active, _global_keep([kernels[i] for i in active], fraction)
    ):
      keeps[i] = m
  else:
    fn = _weight_keep if granularity == "weight" else _unit_keep
    for i in active:
      keeps[i] = fn(kernels[i], fraction)
  for i, f in enumerate(flags):
    if f:
      keeps[i] = jnp.ones(kernels[i].shape, dtype=bool)

  new_leaves = list(flat.leaves)
  mask_leaves: list = [None] * len(flat.leaves)
  for j, pos in enumerate(flat.kernel_pos):
    w = jnp.asarray(flat.leaves[pos])
    mask_leaves[pos] = keeps[j]
    if not flags[j]:
      new_leaves[pos] = jnp.where(keeps[j], w, jnp.zeros((), w.dtype))
  return flat.unflatten(new_leaves), flat.unflatten(mask_leaves)


def apply_masks(params: Params, masks) -> Params:
  """Zeroes the entries of ``params`` where ``masks`` is ``False``.

  Args:
    params: pytree of arrays.
    masks: a tree with the structure of ``params`` holding a bool array
      (broadcastable to the leaf) or ``None`` (leaf left unchanged) at every
      leaf, as returned by :func:`magnitude_prune` and
      :func:`layerwise_magnitude_masks`.

  Returns:
    A pytree like ``params`` (same dtypes) with masked entries set to zero.

  Raises:
    ValueError: if the two trees have different structures.

  Example:
    >>> import numpy as np
    >>> p = {"k": np.array([[1., 2.], [3., 4.]]), "b": np.array([5., 6.])}
    >>> m = {"k": np.array([[True, False], [False, True]]), "b": None}
    >>> out = apply_masks(p, m)
    >>> np.asarray(out["k"]).tolist(), np.asarray(out["b"]).tolist()
    ([[1.0, 0.0], [0.0, 4.0]], [5.0, 6.0])
  """

  def one(m, p):
    if m is None:
      return p
    p = jnp.asarray(p)
    return jnp.where(m, p, jnp.zeros((), p.dtype))

  try:
    return jax.tree_util.tree_map(
      one, masks, params, is_leaf=lambda x: x is None
    )
  except ValueError as e:
    raise ValueError(
      f"masks and params have different tree structures: {e}"
    ) from e


# --------------------------------------------------------------------------
# Prune-accuracy curves.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PruneCurve:
  """Accuracy of one-shot magnitude-pruned copies of a network.

  Attributes:
    fractions: float64 ``[n]``, the tested prune fractions, strictly
      increasing.
    accuracies: float64 ``[n]``, ``evaluate`` at each fraction.
    baseline: accuracy of the unpruned parameters (the value at fraction 0
      when 0 is tested, else one extra ``evaluate(params)`` call).
    achieved_sparsity: float64 ``[n]``, the fraction of zeroed entries among
      the pruned (non-excluded) kernels at each fraction; it can fall short of
      the fraction when magnitudes tie (see :func:`magnitude_prune`).
    granularity: the granularity used.
  """

  fractions: np.ndarray
  accuracies: np.ndarray
  baseline: float
  achieved_sparsity: np.ndarray
  granularity: str

  @property
  def auc(self) -> float:
    """Area under accuracy-vs-fraction (trapezoid), divided by the range.

    ``trapezoid(accuracies, fractions) / (fractions[-1] - fractions[0])``:
    the mean accuracy over the tested range, in the units of ``evaluate``.
    With a single tested fraction it is that fraction's accuracy.
    """
    f, a = self.fractions, self.accuracies
    if f.size == 1:
      return float(a[0])
    return float(np.trapezoid(a, f) / (f[-1] - f[0]))

  def max_fraction_within(self, tolerance: float = 0.01) -> float:
    """Largest tested fraction reached before accuracy leaves the tolerance.

    Contiguous (strict) definition: the largest tested fraction ``f`` such
    that **every** tested fraction ``<= f`` has accuracy ``>= baseline -
    tolerance``. A later fraction that recovers after a drop does not count.
    ``tolerance`` is in the units ``evaluate`` returns: ``0.01`` is one
    percentage point when accuracy is a fraction in ``[0, 1]``.

    Args:
      tolerance: allowed accuracy drop below the unpruned accuracy (>= 0).

    Returns:
      The fraction as a float; ``0.0`` when even the smallest tested
      fraction is outside the tolerance (only the unpruned net qualifies).

    Raises:
      ValueError: for a negative tolerance.
    """
    if tolerance < 0:
      raise ValueError(f"tolerance must be >= 0, got {tolerance}.")
    best = 0.0
    floor = self.baseline - tolerance - 1e-12
    for f, a in zip(self.fractions, self.accuracies):
      if a >= floor:
        best = float(f)
      else:
        break
    return best


def prune_curve(
  params: Params,
  evaluate: Callable[[Params], Any],
  fractions: Sequence[float] = DEFAULT_FRACTIONS,
  *,
  granularity: str = "weight",
  exclude: Exclude = DEFAULT_EXCLUDE,
) -> PruneCurve:
  """Evaluates one-shot magnitude-pruned copies of ``params``.

  For each fraction, :func:`magnitude_prune` is applied to the *original*
  parameters (not cumulatively) and ``evaluate`` is called on the result,
  with no fine-tuning (Gomez et al. 2019, ``for-ai/TD`` ``scripts/prune``).

  Args:
    params: pytree of trained parameters.
    evaluate: ``evaluate(params) -> accuracy`` (a scalar), supplied by the
      caller, e.g. test accuracy as a fraction in ``[0, 1]``.
    fractions: strictly increasing prune fractions in ``[0, 1]``. The default
      is ``0, 0.1, ..., 0.9, 0.95, 0.99``.
    granularity: ``"weight"``, ``"unit"`` or ``"global"``.
    exclude: as in :func:`magnitude_prune` (default: first and last kernel).

  Returns:
    A :class:`PruneCurve`.

  Raises:
    ValueError: for empty, unsorted, repeated or out-of-range fractions, or
      the errors of :func:`magnitude_prune`.
  """
  fr = np.asarray(fractions, dtype=np.float64).ravel()
  if fr.size == 0:
    raise ValueError("fractions must not be empty.")
  if np.any(~np.isfinite(fr)) or fr.min() < 0 or fr.max() > 1:
    raise ValueError(f"fractions must lie in [0, 1], got {fractions!r}.")
  if np.any(np.diff(fr) <= 0):
    raise ValueError(
      f"fractions must be strictly increasing, got {fractions!r}."
    )
  flat = _flatten(params)
  flags = _excluded_flags(flat.kernel_paths, flat.kernels, exclude)
  accs, achieved = [], []
  for f in fr:
    pruned, masks = magnitude_prune(
      params, float(f), granularity=granularity, exclude=exclude
    )
    accs.append(float(evaluate(pruned)))
    mflat = _flatten(masks)  # None leaves vanish: only kernels remain
    kept = total = 0
    for m, excluded in zip(mflat.leaves, flags):
      if not excluded:
        kept += int(np.count_nonzero(np.asarray(m)))
        total += int(np.size(m))
    achieved.append(1.0 - kept / total if total else 0.0)
  accs = np.asarray(accs, dtype=np.float64)
  baseline = float(accs[0]) if fr[0] == 0.0 else float(evaluate(params))
  return PruneCurve(
    fractions=fr,
    accuracies=accs,
    baseline=baseline,
    achieved_sparsity=np.asarray(achieved, dtype=np.float64),
    granularity=granularity,
  )


# --------------------------------------------------------------------------
# Gradual magnitude pruning (TF-MOT PolynomialDecay + per-layer masks).
# --------------------------------------------------------------------------


def polynomial_sparsity(
  step,
  *,
  initial: float = 0.5,
  final: float = 0.9,
  begin_step: int = 0,
  end_step: int,
  power: float = 3,
) -> Array:
  """Target sparsity of TF-MOT's ``PolynomialDecay`` pruning schedule.

  ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`` and
  ``s = final + (initial - final) * (1 - p) ** power`` (Zhu & Gupta 2017;
  ``tfmot.sparsity.keras.PolynomialDecay``). Before ``begin_step`` it returns
  ``initial``, after ``end_step`` ``final``. Filan et al. (2021) prune with
  ``initial=0.5, final=0.9, power=3, begin_step=0, end_step=9380`` (20
  epochs of 469 steps), updating masks every 10 steps.

  Args:
    step: the training step, an int or (traced) integer/float scalar array.
    initial: sparsity at ``begin_step``, in ``[0, 1)``.
    final: sparsity at ``end_step`` and after, in ``[0, 1)``.
    begin_step: first step of the schedule, ``>= 0``.
    end_step: last step of the schedule, ``> begin_step`` (required).
    power: the exponent (3 in TF-MOT's default).

  Returns:
    A float32 scalar array (float64 under x64), traceable in ``step``.

  Raises:
    ValueError: for ``initial``/``final`` outside ``[0, 1)`` (TF-MOT's
      check), ``begin_step < 0`` or ``end_step <= begin_step``.

  Example:
    >>> round(float(polynomial_sparsity(50, end_step=100)), 6)
    0.85
  """
  for v, name in ((initial, "initial"), (final, "final")):
    if not 0.0 <= float(v) < 1.0:
      raise ValueError(f"{name} sparsity must lie in [0, 1), got {v!r}.")
  if begin_step < 0:
    raise ValueError(f"begin_step must be >= 0, got {begin_step}.")
  if end_step <= begin_step:
    raise ValueError(
      f"end_step ({end_step}) must be greater than begin_step ({begin_step})."
    )
  dtype = jnp.result_type(float)
  step = jnp.asarray(step).astype(dtype)
  p = jnp.clip((step - begin_step) / (end_step - begin_step), 0.0, 1.0)
  return (final + (initial - final) * (1.0 - p) ** power).astype(dtype)


def is_mask_update_step(
  step, *, begin_step: int = 0, end_step: int, frequency: int = 10
) -> Array:
  """Whether the masks are recomputed at ``step`` (as TF-MOT schedules do).

  True when ``begin_step <= step <= end_step`` and ``(step - begin_step) %
  frequency == 0`` (TF-MOT's ``PruningSchedule._should_prune_in_step``;
  TF-MOT keeps applying the last masks after ``end_step``).

  Args:
    step: int or (traced) integer scalar array.
    begin_step: first step of the schedule.
    end_step: last step of the schedule.
    frequency: update period in steps (10 in Filan et al. 2021), ``> 0``.

  Returns:
    A bool scalar array.

  Raises:
    ValueError: for ``frequency <= 0``.

  Example:
    >>> [bool(is_mask_update_step(s, end_step=30)) for s in (0, 5, 10, 40)]
    [True, False, True, False]
  """
  if frequency <= 0:
    raise ValueError(f"frequency must be > 0, got {frequency}.")
  step = jnp.asarray(step)
  in_range = (step >= begin_step) & (step <= end_step)
  return in_range & (jnp.mod(step - begin_step, frequency) == 0)


def _layer_keep_tfmot(w: Array, sparsity) -> Array:
  """TF-MOT ``_update_mask``: keep the ``max(1, round(n*(1-s)))`` largest."""
  a = _abs_float(w)
  n = a.size
  s = jnp.asarray(sparsity, jnp.float32)
  k = jnp.maximum(jnp.round(jnp.float32(n) * (1.0 - s)), 1.0).astype(jnp.int32)
  t = kth_smallest(a.ravel(), n - k, axis=0)[0]  # the k-th largest
  return a >= t


def layerwise_magnitude_masks(
  params: Params, sparsity, *, exclude: Exclude = ()
):
  """Per-layer magnitude masks at a target sparsity (TF-MOT semantics).

  For every kernel (all leaves with ``ndim >= 2``, including the first and
  the output layer unless excluded), with ``n`` its size, keep
  ``k = max(1, round(n * (1 - sparsity)))`` entries: the threshold is the
  ``k``-th largest ``|w|`` and entries with ``|w| >= threshold`` are kept, so
  ties at the threshold survive (TF Model Optimization,
  ``pruning_impl.Pruning._update_mask``; the count is computed in float32
  with round-half-to-even, as there). Biases are never masked. This is the
  per-layer gradual-pruning step of Filan et al. (2021, ``src/train_nn.py``
  with ``prune_low_magnitude``); combine with :func:`polynomial_sparsity`,
  :func:`is_mask_update_step` and :func:`apply_masks`.

  ``sparsity`` may be traced (the threshold is an order statistic found by
  :func:`dropjax.selection.kth_smallest`, equal to the sort-based one), so
  the function can run inside a jitted training step.

  Args:
    params: pytree of arrays.
    sparsity: target fraction of zeros per kernel, scalar in ``[0, 1]``.
    exclude: kernels to leave unmasked (indices or a callable); default none.

  Returns:
    A masks tree like :func:`magnitude_prune`'s: bool arrays at kernels
    (``True`` = kept, all ``True`` if excluded), ``None`` elsewhere.

  Raises:
    ValueError: for a concrete ``sparsity`` outside ``[0, 1]`` or a bad
      exclude index.

  Example:
    >>> import numpy as np
    >>> p = {"k": np.array([[0.1, -0.4], [0.3, 0.2]]), "b": np.zeros(2)}
    >>> m = layerwise_magnitude_masks(p, 0.5)
    >>> np.asarray(m["k"]).tolist(), m["b"]
    ([[False, True], [True, False]], None)
  """
  _check_unit_interval(sparsity, "sparsity")
  flat = _flatten(params)
  flags = _excluded_flags(flat.kernel_paths, flat.kernels, exclude)
  mask_leaves: list = [None] * len(flat.leaves)
  for pos, excluded in zip(flat.kernel_pos, flags):
    w = flat.leaves[pos]
    mask_leaves[pos] = (
      jnp.ones(w.shape, bool) if excluded else _layer_keep_tfmot(w, sparsity)
    )
  return flat.unflatten(mask_leaves)
