r"""Predictive metrics of a classifier: likelihood, accuracy, calibration.

The analytic regularizers act on the predictive distribution (the explicit
regularizer penalises the curvature of the loss in the outputs,
arXiv:2002.12915 §2), so a comparison with dropout reports accuracy,
likelihood and calibration separately. This module computes all of them in
one pass over the data, for one model or ``S`` stacked ones:

* negative log-likelihood (mean softmax cross-entropy, nats per example);
* accuracy (argmax equals the label);
* expected calibration error, Guo et al., "On Calibration of Modern Neural
  Networks", ICML 2017, arXiv:1706.04599, §2 eq. (3), with ``M = 15``
  equal-width confidence bins ``((b-1)/M, b/M]`` (the paper's choice):
  ``ECE = Σ_b (n_b / n) |acc_b - conf_b|``, where ``conf`` is the top-class
  probability;
* the mean predictive entropy ``-Σ_k p_k log p_k`` (nats);
* the per-bin counts, mean confidence and accuracy, for a reliability
  diagram (Guo et al., Figure 1).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dropjax import sites as _sites
from dropjax.train.cache import cached as _cached
from dropjax.train.evaluation import batch_eval_arrays

Array = jax.Array

NUM_BINS = 15


def bin_index(confidence: Array, num_bins: int = NUM_BINS) -> Array:
  """The bin ``b`` in ``0..num_bins-1`` with ``conf in (b/M, (b+1)/M]``.

  Bins are right-closed as in Guo et al. (arXiv:1706.04599 §2); a
  confidence of exactly 0 falls into bin 0.
  """
  b = jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1
  return jnp.clip(b, 0, num_bins - 1)


def calibration_sums(
  logits: Array,
  labels: Array,
  mask: Array | None = None,
  *,
  num_bins: int = NUM_BINS,
) -> dict[str, Array]:
  """Per-bin and total sums of one batch of predictions.

  Args:
    logits: ``[n, K]`` float.
    labels: ``[n]`` int in ``[0, K)``.
    mask: ``[n]`` bool, ``False`` for padding (``None``: all real).
    num_bins: number of equal-width confidence bins.

  Returns:
    float32 sums: ``count``, ``confidence``, ``correct`` (each
    ``[num_bins]``), and scalars ``nll``, ``entropy``, ``n``.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  conf = jnp.max(p, axis=-1)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  ent = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
  m = (
    jnp.ones(conf.shape, jnp.float32)
    if mask is None
    else mask.astype(jnp.float32)
  )
  onehot = jax.nn.one_hot(bin_index(conf, num_bins), num_bins) * m[:, None]
  return {
    "count": jnp.sum(onehot, 0),
    "confidence": jnp.sum(onehot * conf[:, None], 0),
    "correct": jnp.sum(onehot * correct[:, None], 0),
    "nll": jnp.sum(nll * m),
    "entropy": jnp.sum(ent * m),
    "n": jnp.sum(m),
  }


def from_sums(sums: dict[str, Array]) -> dict[str, Array]:
  """Metrics from (summed) :func:`calibration_sums` output.

  Returns:
    ``loss`` (mean NLL, nats), ``accuracy``, ``ece``, ``entropy`` (mean,
    nats), and ``bins``: ``{"count", "confidence", "accuracy"}`` per bin
    (mean confidence and accuracy of the examples in the bin; 0 where the
    bin is empty). Leading axes of the sums are kept.
  """
  n = sums["n"]
  count = sums["count"]
  safe = jnp.maximum(count, 1.0)
  gap = jnp.abs(sums["correct"] - sums["confidence"])  # n_b |acc_b - conf_b|
  return {
    "loss": sums["nll"] / n,
    "accuracy": jnp.sum(sums["correct"], -1) / n,
    "ece": jnp.sum(gap, -1) / n,
    "entropy": sums["entropy"] / n,
    "bins": {
      "count": count,
      "confidence": sums["confidence"] / safe,
      "accuracy": sums["correct"] / safe,
    },
  }


def expected_calibration_error(
  logits: Array, labels: Array, *, num_bins: int = NUM_BINS
) -> Array:
  """ECE of ``[n, K]`` logits against ``[n]`` labels (Guo et al. eq. 3).

  Example:

  >>> import jax.numpy as jnp
  >>> logits = jnp.log(jnp.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]]))
  >>> # bin (0.8667, 0.9333]: conf 0.9, acc 1/2; bin (0.6, 0.6667]: 0.6, 1
  >>> ece = expected_calibration_error(logits, jnp.array([0, 1, 0]))
  >>> round(float(ece), 4)  # (2 * 0.4 + 1 * 0.4) / 3
  0.4
  """
  return from_sums(calibration_sums(logits, labels, num_bins=num_bins))["ece"]


def predictive_metrics(
  apply: _sites.Apply,
  params,
  x,
  y,
  *,
  num_bins: int = NUM_BINS,
  batch_size: int = 1000,
  stacked: bool = False,
  preprocess: Callable | None = None,
) -> dict:
  """NLL, accuracy, ECE, entropy and reliability bins, without dropout.

  One jitted ``lax.scan`` over zero-padded batches (padding masked out);
  ``S`` stacked models are evaluated together with ``vmap``.

  Args:
    apply: the classifier ``apply(params, x, sites)`` -> logits ``[n, K]``.
    params: one model's parameters, or ``S`` models' stacked on a leading
      axis when ``stacked``.
    x: inputs ``[n, ...]``.
    y: int labels ``[n]`` in ``[0, K)``.
    num_bins: equal-width confidence bins for the ECE (15, as Guo et al.).
    batch_size: examples per forward pass.
    stacked: ``params`` has a leading model axis.
    preprocess: optional ``(x, y) -> (x, y)`` per batch.

  Returns:
    The dict of :func:`from_sums` as float32 arrays: scalars (``[S]`` when
    ``stacked``), bins ``[num_bins]`` (``[S, num_bins]``).

  Raises:
    ValueError: ``x`` and ``y`` differ in length, or ``num_bins < 1``.
  """
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
  xb, yb, mask, _ = batch_eval_arrays(x, y, batch_size)
  if not stacked:
    params = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
  sums = _scan_sums_cached(apply, preprocess, int(num_bins))(
    params, xb, yb, mask
  )
  out = from_sums(sums)
  if not stacked:
    out = jax.tree.map(lambda a: a[0], out)
  return out


def _scan_sums(apply, preprocess, num_bins):
  def one(params, xb, yb, m):
    if preprocess is not None:
      xb, yb = preprocess(xb, yb)
    out = _sites.outputs_of(apply(params, xb, _sites.inference_sites))
    return calibration_sums(out, yb, m, num_bins=num_bins)

  @jax.jit
  def run(params_s, xb, yb, mask):
    def body(carry, inp):
      s = jax.vmap(one, in_axes=(0, None, None, None))(params_s, *inp)
      return jax.tree.map(jnp.add, carry, s), None

    first = jax.vmap(one, in_axes=(0, None, None, None))(
      params_s, xb[0], yb[0], mask[0]
    )
    total, _ = jax.lax.scan(body, first, (xb[1:], yb[1:], mask[1:]))
    return total

  return run


_scan_sums_cached = _cached(_scan_sums)
