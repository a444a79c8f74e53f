"""Fixed-shape batching of a token stream for truncated BPTT."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# ---------------------------------------------------------------------------
# Batching for truncated BPTT.
# ---------------------------------------------------------------------------


def batchify(ids: np.ndarray | Sequence[int], batch_size: int) -> np.ndarray:
  """Cuts a token stream into ``batch_size`` contiguous rows.

  Row ``b`` is ``ids[b * n_steps : (b + 1) * n_steps]`` with
  ``n_steps = len(ids) // batch_size``; the last ``len(ids) % batch_size``
  tokens are dropped (as in AWD-LSTM's ``batchify``).

  Args:
      ids: 1-D integer token ids, ``[n]``.
      batch_size: number of parallel streams (>= 1).

  Returns:
      int32 ``[batch_size, n_steps]``.

  Raises:
      ValueError: if ``ids`` is not 1-D, ``batch_size < 1``, or
          ``len(ids) < batch_size`` (no step would be left).

  Example:
      >>> batchify(np.arange(7), 2)
      array([[0, 1, 2],
             [3, 4, 5]], dtype=int32)
  """
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n_steps = ids.shape[0] // batch_size
  if n_steps == 0:
    raise ValueError(f"{ids.shape[0]} tokens cannot fill {batch_size} rows")
  return (
    ids[: n_steps * batch_size].reshape(batch_size, n_steps).astype(np.int32)
  )


def bptt_batches(
  stream: np.ndarray, bptt: int
) -> tuple[np.ndarray, np.ndarray]:
  """Fixed-length BPTT chunks of a batchified stream, targets shifted by one.

  Chunk ``i`` covers time steps ``[i * bptt, (i + 1) * bptt)`` of every row:
  ``inputs[i] = stream[:, i*bptt : (i+1)*bptt]`` and
  ``targets[i] = stream[:, i*bptt + 1 : (i+1)*bptt + 1]``. So row ``b`` of
  chunk ``i + 1`` continues row ``b`` of chunk ``i`` exactly: a loop that
  ``lax.scan``\\ s over the leading axis can carry the recurrent state from
  one chunk to the next (truncating gradients at chunk boundaries).
  ``num_chunks = (n_steps - 1) // bptt``; the leftover time steps (fewer
  than ``bptt`` + 1) are dropped so that every chunk has the same shape.

  Unlike AWD-LSTM, the chunk length is not randomised: one shape means one
  compilation of the jitted step.

  Args:
      stream: integer ``[batch, n_steps]`` from :func:`batchify`.
      bptt: chunk length (>= 1).

  Returns:
      ``(inputs, targets)``, both int32 ``[num_chunks, batch, bptt]``.

  Raises:
      ValueError: if ``stream`` is not 2-D, ``bptt < 1``, or
          ``n_steps < bptt + 1`` (not even one chunk with its targets).

  Example:
      >>> x, y = bptt_batches(batchify(np.arange(10), 2), 2)
      >>> x.shape, x[0].tolist(), y[0].tolist()
      ((2, 2, 2), [[0, 1], [5, 6]], [[1, 2], [6, 7]])
  """
  stream = np.asarray(stream)
  if stream.ndim != 2:
    raise ValueError(
      f"stream must be [batch, n_steps], got shape {stream.shape}"
    )
  if bptt < 1:
    raise ValueError(f"bptt must be >= 1, got {bptt}")
  batch, n_steps = stream.shape
  num_chunks = (n_steps - 1) // bptt
  if num_chunks == 0:
    raise ValueError(
      f"a stream of {n_steps} steps per row cannot give one chunk of "
      f"bptt={bptt} plus its shifted targets (needs >= {bptt + 1})"
    )
  n = num_chunks * bptt
  inputs = stream[:, :n].reshape(batch, num_chunks, bptt).transpose(1, 0, 2)
  targets = (
    stream[:, 1 : n + 1].reshape(batch, num_chunks, bptt).transpose(1, 0, 2)
  )
  return (
    np.ascontiguousarray(inputs, dtype=np.int32),
    np.ascontiguousarray(targets, dtype=np.int32),
  )
