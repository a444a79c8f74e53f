"""Evaluation without dropout, in bounded memory: classifiers and token streams."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dropjax import losses as _losses
from dropjax import sites as _sites
from dropjax.train.cache import cached as _cached

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


def stacked_eval_fn(
  apply: _sites.Apply, loss: str, preprocess: Callable | None
):
  """``run(params_s, xb, yb, mask, n) -> {"loss": [S], "accuracy": [S]}``.

  ``params_s`` carries a leading seed axis; ``xb, yb, mask`` come from
  :func:`batch_eval_arrays`; ``n`` is static. One ``lax.scan`` over the
  batches, one forward pass per batch for all seeds (``vmap``). Both means
  are per *position*: over the ``n * P`` predictions of ``n`` examples with
  ``P`` positions each (``P = 1`` for one label per example; ``P = T`` for
  ``[n, T]`` sequence labels).
  """
  _losses.check_loss(loss)
  positions = {}  # P, recorded while tracing

  def sums(params, xb, yb, mask):
    if preprocess is not None:
      xb, yb = preprocess(xb, yb)
    out = _sites.outputs_of(apply(params, xb, _sites.inference_sites))
    per = _losses.per_position_loss(loss, out, yb).astype(jnp.float32)
    positions["P"] = math.prod(per.shape[1:])
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
    count = n * positions["P"]
    return {"loss": ls / count, "accuracy": cs / count}

  return run


def evaluate(
  apply: _sites.Apply,
  params,
  x,
  y,
  *,
  loss: str = "softmax_cross_entropy",
  batch_size: int = 1000,
  preprocess: Callable | None = None,
  stacked: bool = False,
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
    ``stacked``): the mean loss and accuracy per position (per example for
    ``[n]`` labels; per label for ``[n, T, ...]`` labels, e.g. a sequence
    model's). Accuracy (argmax of the outputs equals the label) is reported
    as 0 for ``squared_error``.

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
    params, xb, yb, mask, n
  )
  if not stacked:
    out = jax.tree.map(lambda a: a[0], out)
  return out


# ------------------------------------------------------------ classifiers


class ClassifierEvaluator:
  """Evaluates stacked parameters on named ``(x, y)`` sets, sharded.

  ``evaluator(params_s) -> {name: {"loss": [S], "accuracy": [S]}}`` (numpy
  float32), each set zero-padded to batches of ``batch_size`` whose batch
  axis is sharded over the mesh axis ``"data"``; one compiled program for
  all sets of one batch size.

  Args:
    apply: the model.
    sets: ``{name: (x, y)}`` host arrays.
    loss: :data:`dropjax.losses.LOSSES` name.
    preprocess: ``(x, y) -> (x, y)`` per batch, or ``None``.
    batch_size: examples per forward pass (divisible by the devices).
    mesh: the mesh (``None``: one device).
  """

  def __init__(
    self,
    apply,
    sets,
    *,
    loss: str = "softmax_cross_entropy",
    preprocess: Callable | None = None,
    batch_size: int = 1000,
    mesh=None,
  ):
    from jax.sharding import NamedSharding, PartitionSpec as P
    from dropjax.train import sources as _sources
    from dropjax.train.loop import make_mesh

    mesh = mesh if mesh is not None else make_mesh(1)
    _losses.check_loss(loss)
    self._fn = _classifier_eval_cached(apply, loss, preprocess, mesh)
    sh = NamedSharding(mesh, P(None, _sources.DATA_AXIS))
    self._sets = {}
    for name, (ex, ey) in sets.items():
      xb, yb, mask, n = batch_eval_arrays(ex, ey, batch_size)
      self._sets[name] = (
        _sources.put_global(xb, sh),
        _sources.put_global(yb, sh),
        _sources.put_global(mask, sh),
        n,
      )

  def __bool__(self) -> bool:
    return bool(self._sets)

  def __call__(self, params_s) -> dict:
    return {
      name: {
        k: np.asarray(v) for k, v in self._fn(params_s, xb, yb, m, n).items()
      }
      for name, (xb, yb, m, n) in self._sets.items()
    }


def _make_classifier_eval(apply, loss, preprocess, mesh):
  from jax.sharding import NamedSharding, PartitionSpec as P

  return jax.jit(
    stacked_eval_fn(apply, loss, preprocess),
    static_argnums=4,
    out_shardings=NamedSharding(mesh, P()),
  )


# --------------------------------------------------- streams (language models)

LN2 = float(np.log(2.0))


def bits_per_token(mean_nats):
  """``mean cross-entropy / ln 2``: bits per character (or per word)."""
  return mean_nats / LN2


class EvalSet(NamedTuple):
  """A token stream prepared for :func:`evaluate_stream`.

  Attributes:
    inputs, targets: int32 ``[C, B, T]`` from
      :func:`dropjax.data.text.bptt_batches` of a ``batchify``-ed stream.
  """

  inputs: Any
  targets: Any

  @property
  def num_tokens(self) -> int:
    """``C * B * T``, the number of predictions averaged."""
    return int(np.prod(np.shape(self.targets)))


def make_eval_set(
  ids, batch_size: int, bptt: int, max_tokens: int | None = None
) -> EvalSet:
  """Cuts a 1-D token stream into an :class:`EvalSet`.

  Args:
    ids: int token ids ``[n]`` (a corpus split).
    batch_size: parallel streams.
    bptt: chunk length (affects memory and speed only, not the result beyond
      the dropped tail: the state is carried across chunks).
    max_tokens: use only the first ``max_tokens`` ids (``None``: all).

  Returns:
    The set; the last ``< batch_size * bptt + batch_size`` tokens of the
    stream are not predicted (fixed shapes).

  Raises:
    ValueError: if the stream is too short for one chunk.
  """
  from dropjax.data import text as _text

  ids = np.asarray(ids)
  if max_tokens is not None:
    ids = ids[:max_tokens]
  x, y = _text.bptt_batches(_text.batchify(ids, batch_size), bptt)
  return EvalSet(x, y)


def _stream_total(apply, params, inputs, targets, carry0):
  """Sum of the CE over ``inputs [C, B, T]`` read in order (float32)."""

  def body(carry_sum, chunk):
    carry, total = carry_sum
    x, y = chunk
    logits, carry = apply(params, (x, carry), _sites.identity_sites)
    ce = _losses.per_position_loss("softmax_cross_entropy", logits, y)
    return (carry, total + jnp.sum(ce.astype(jnp.float32))), None

  (_, total), _ = jax.lax.scan(
    body, (carry0, jnp.zeros((), jnp.float32)), (inputs, targets)
  )
  return total


def _make_stream_eval(apply, init_carry, batch_size):
  carry0 = init_carry(batch_size)

  def run(params_s, inputs, targets):
    return jax.vmap(lambda p: _stream_total(apply, p, inputs, targets, carry0))(
      params_s
    )

  return jax.jit(run)


def evaluate_stream(
  apply: _sites.Apply,
  params,
  eval_set: EvalSet,
  init_carry: Callable[[int], Any],
  *,
  stacked: bool = False,
) -> np.ndarray:
  """Mean cross-entropy (nats per token) of a token stream, without dropout.

  The set's ``B`` streams are read in order from a zero state, the state
  carried across chunks (as in training with
  :class:`dropjax.train.sources.BPTTStream`).

  Args:
    apply: ``apply(params, (tokens, carry), sites) -> (logits, carry)``.
    params: one model's parameters, or ``S`` models' stacked on a leading
      axis when ``stacked``.
    eval_set: from :func:`make_eval_set`.
    init_carry: ``init_carry(batch_size) -> carry`` (zeros).
    stacked: ``params`` has a leading seed axis.

  Returns:
    float64 numpy scalar, or ``[S]`` when ``stacked``. Divide by ``ln 2``
    (:func:`bits_per_token`) for bits per character.
  """
  fn = _stream_eval_cached(apply, init_carry, int(np.shape(eval_set.inputs)[1]))
  p = (
    params if stacked else jax.tree.map(lambda a: jnp.asarray(a)[None], params)
  )
  total = np.asarray(
    fn(p, jnp.asarray(eval_set.inputs), jnp.asarray(eval_set.targets)),
    np.float64,
  )
  out = total / eval_set.num_tokens
  return out if stacked else out[0]


class StreamEvaluator:
  """Evaluates stacked LM parameters on named :class:`EvalSet` streams.

  ``evaluator(params_s) -> {name: {"loss": [S] nats/token, "bpc": [S]
  bits/token}}`` (numpy float64), for :func:`dropjax.train.train`'s
  ``eval_data``.
  """

  def __init__(self, apply, sets: dict, init_carry: Callable[[int], Any]):
    self.apply, self.sets, self.init_carry = apply, dict(sets), init_carry

  def __bool__(self) -> bool:
    return bool(self.sets)

  def __call__(self, params_s) -> dict:
    out = {}
    for name, es in self.sets.items():
      nats = evaluate_stream(
        self.apply, params_s, es, self.init_carry, stacked=True
      )
      out[name] = {"loss": nats, "bpc": nats / LN2}
    return out


_classifier_eval_cached = _cached(_make_classifier_eval)
_stream_eval_cached = _cached(_make_stream_eval)
