"""Batch sources: where each training step's batch comes from.

The engine (:func:`dropjax.train.train`) keeps the whole training set on
device and asks a *source* for step ``t``'s batch inside the jitted
``lax.scan``. A source is a small, hashable description (its arrays are passed
separately, so two runs with equal descriptions share one compiled program)
with a per-seed *source state* that the engine carries from step to step and
checkpoints:

* :class:`RandomBatches` -- random minibatches: each epoch a fresh
  permutation per seed, consecutive slices of ``batch_size``. The state is the
  current epoch's permutations ``[S, n]``.
* :class:`BPTTStream` -- truncated back-propagation through time: ``B``
  parallel token streams read in order, one ``[B, T]`` chunk per step, the
  recurrent state carried from chunk to chunk (gradients truncated at chunk
  boundaries) and reset to zeros at each epoch start. The state is the carry.

Both follow the engine's key discipline: for seed ``s`` with
``k = jax.random.key(s)`` the data order of epoch ``e`` is
``permutation(fold_in(fold_in(k, DATA_TAG), e), n)`` (random batches; a
stream's order is fixed), so every number depends only on ``(seed, step)``.

The protocol (what :func:`dropjax.train.train` calls), for a source ``src``:

* ``src.steps_per_epoch`` -- int.
* ``src.batch_in_axes`` -- the ``vmap`` axes of the batch over seeds.
* ``src.meta()`` -- a JSON dict checked against a checkpoint on resume.
* ``src.device_data(arrays, mesh)`` -- the arrays on the mesh's devices.
* ``src.init(keys, start)`` -- (traced) the source state at step ``start``.
* ``src.next(state, data, data_keys, t, mesh)`` -- (traced) step ``t``'s
  batch (with the seed axis as in ``batch_in_axes``) and the new state.
* ``src.update(state, model_aux)`` -- (traced) the state after the step,
  given the objective's ``aux["model_aux"]`` (``[S, ...]``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Array = jax.Array

DATA_AXIS = "data"
"""Name of the mesh axis the batch is sharded over."""


def put_global(x, sharding: NamedSharding) -> Array:
  """A global array with ``sharding`` from a host array that every process
  holds in full."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def put_replicated(x, mesh: Mesh) -> Array:
  """:func:`put_global` replicated over ``mesh``."""
  return put_global(x, NamedSharding(mesh, P()))


def epoch_permutations(data_keys: Array, epoch, n: int) -> Array:
  """``[S, n]`` int32: each seed's data order in ``epoch``.

  ``data_keys`` are the seeds' ``fold_in(key(s), DATA_TAG)`` keys ``[S]``.
  """
  return jax.vmap(
    lambda dk: jax.random.permutation(jax.random.fold_in(dk, epoch), n).astype(
      jnp.int32
    )
  )(data_keys)


@dataclasses.dataclass(frozen=True)
class RandomBatches:
  """Random minibatches of an on-device data set ``(x, y)``.

  Step ``t`` of seed ``s`` uses examples ``perm_e[pos : pos + batch_size]``
  with ``e = t // steps_per_epoch``, ``pos = (t % steps_per_epoch) *
  batch_size`` and ``perm_e`` that seed's permutation of epoch ``e``; the
  ``n % batch_size`` left-over examples of each permutation are skipped. The
  batch axis is sharded over the mesh axis ``"data"``.

  Attributes:
    n: number of training examples.
    batch_size: examples per step, ``1 <= batch_size <= n``.
    preprocess: ``(x, y) -> (x, y)`` applied inside jit to one seed's batch
      (e.g. uint8 to float32), or ``None``.
  """

  n: int
  batch_size: int
  preprocess: Callable[[Any, Any], tuple] | None = None

  batch_in_axes = 0

  @property
  def steps_per_epoch(self) -> int:
    return self.n // self.batch_size

  def meta(self) -> dict:
    return {"batch_size": self.batch_size, "n_train": self.n}

  def device_data(self, arrays, mesh: Mesh):
    x, y = arrays
    return put_replicated(x, mesh), put_replicated(y, mesh)

  def init(self, keys: Array, start) -> Array:
    from dropjax.train.loop import data_keys as _data_keys

    return epoch_permutations(
      _data_keys(keys), start // self.steps_per_epoch, self.n
    )

  def next(self, perms, data, data_keys, t, mesh: Mesh):
    x, y = data
    spe, bs = self.steps_per_epoch, self.batch_size
    pos = (t % spe) * bs
    perms = jax.lax.cond(
      pos == 0,
      lambda: epoch_permutations(data_keys, t // spe, self.n),
      lambda: perms,
    )
    n_seeds = data_keys.shape[0]
    idx = jax.lax.dynamic_slice(perms, (0, pos), (n_seeds, bs))
    idx = jax.lax.with_sharding_constraint(
      idx, NamedSharding(mesh, P(None, DATA_AXIS))
    )
    xb, yb = x[idx], y[idx]  # [S, B, ...], batch axis sharded
    if self.preprocess is not None:
      xb, yb = jax.vmap(self.preprocess)(xb, yb)
    return (xb, yb), perms

  def update(self, perms, model_aux):
    del model_aux
    return perms


@dataclasses.dataclass(frozen=True)
class BPTTStream:
  """Truncated BPTT over ``B`` token streams with a carried recurrent state.

  The data are ``inputs, targets`` int32 ``[C, B, T]`` (from
  :func:`dropjax.data.text.bptt_batches`: row ``b`` of chunk ``c + 1``
  continues row ``b`` of chunk ``c``). Step ``t`` reads chunk ``t mod C``;
  the objective's batch is ``((tokens [B, T], carry), targets [B, T])``, the
  same tokens for every seed, each seed with its own carry, and the new
  carry is the objective's ``aux["model_aux"]`` (built with
  ``has_aux=True``; for DROPOUT_k the first mask's pass, for the analytic
  regimens the clean pass) under ``stop_gradient``. The carry is reset to
  ``init_carry(B)`` at every epoch start (chunk 0). The stream axis ``B`` is
  sharded over the mesh axis ``"data"``.

  Attributes:
    shape: ``(C, B, T)``.
    init_carry: ``init_carry(batch_size) -> carry`` (zeros), e.g.
      :meth:`dropjax.models.lstm.LSTMLanguageModel.initial_carry`.
  """

  shape: tuple[int, int, int]
  init_carry: Callable[[int], Any]

  batch_in_axes = ((None, 0), None)

  @property
  def steps_per_epoch(self) -> int:
    return self.shape[0]

  def meta(self) -> dict:
    return {"data_shape": list(self.shape)}

  def device_data(self, arrays, mesh: Mesh):
    inputs, targets = arrays
    return (
      put_replicated(np.asarray(inputs, np.int32), mesh),
      put_replicated(np.asarray(targets, np.int32), mesh),
    )

  def _zeros(self, n_seeds: int):
    carry = self.init_carry(self.shape[1])
    return jax.tree.map(
      lambda c: jnp.broadcast_to(c, (n_seeds,) + c.shape), carry
    )

  def init(self, keys: Array, start) -> Any:
    del start  # a resumed run restores its carry from the checkpoint
    return self._zeros(keys.shape[0])

  def next(self, carry, data, data_keys, t, mesh: Mesh):
    inputs, targets = data
    idx = t % self.shape[0]
    zeros = self._zeros(data_keys.shape[0])
    carry = jax.tree.map(lambda c, z: jnp.where(idx == 0, z, c), carry, zeros)
    sharded = NamedSharding(mesh, P(DATA_AXIS))
    x = jax.lax.with_sharding_constraint(inputs[idx], sharded)
    y = jax.lax.with_sharding_constraint(targets[idx], sharded)
    return ((x, carry), y), carry

  def update(self, carry, model_aux):
    new = jax.lax.stop_gradient(model_aux)
    return jax.tree.map(lambda a, b: a.astype(b.dtype), new, carry)


class Source(NamedTuple):
  """A batch source and its host arrays: what :func:`dropjax.train.train`
  accepts as ``train_data`` besides a plain ``(x, y)`` pair."""

  spec: Any
  arrays: Any


def random_batches(
  x, y, batch_size: int, preprocess: Callable | None = None
) -> Source:
  """:class:`RandomBatches` over ``(x, y)``.

  Raises:
    ValueError: if ``x`` and ``y`` differ in length or ``batch_size`` is not
      in ``[1, n]``.
  """
  n = int(np.shape(x)[0])
  if int(np.shape(y)[0]) != n:
    raise ValueError(f"train x has {n} examples, y has {np.shape(y)[0]}.")
  if not 1 <= batch_size <= n:
    raise ValueError(f"batch_size {batch_size} must be in [1, n={n}].")
  return Source(RandomBatches(n, int(batch_size), preprocess), (x, y))


def bptt_stream(inputs, targets, init_carry: Callable[[int], Any]) -> Source:
  """:class:`BPTTStream` over ``inputs, targets`` int ``[C, B, T]``.

  Raises:
    ValueError: if the arrays are not both ``[C, B, T]`` of one shape.
  """
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  if inputs.ndim != 3 or inputs.shape != targets.shape:
    raise ValueError(
      "inputs and targets must both be [C, B, T], got "
      f"{inputs.shape} and {targets.shape}."
    )
  return Source(
    BPTTStream(tuple(int(d) for d in inputs.shape), init_carry),
    (inputs.astype(np.int32), targets.astype(np.int32)),
  )
