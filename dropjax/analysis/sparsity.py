"""Sparsity and compressibility measurements on trained weights.

Kernels, flatten order, path strings and ``exclude`` follow the conventions
of :mod:`dropjax.analysis.pruning`: a kernel is a leaf with ``ndim >= 2``
viewed as ``(fan_in, n_out)``; biases are never counted. The functions that
take ``params`` measure *all* kernels by default (``exclude=()``).

Definitions and sources:
  * epsilon- and exact sparsity, compression ratio, quantised-and-compressed
    size: standard measures (Han et al. 2016, "Deep compression"; Molchanov
    et al. 2017, "Variational dropout sparsifies DNNs").
  * Hoyer sparsity: Hoyer, "Non-negative matrix factorization with
    sparseness constraints", JMLR 2004, eq. 1.
  * Gini index: Hurley & Rickard, "Comparing measures of sparsity", IEEE
    Trans. Inf. Theory 2009, §III (the ``G`` measure).
  * Dead units: a ReLU unit that outputs <= 0 on every example (activation
    sparsity, Srivastava et al. 2014 §7.2 report mean activations).
"""

from __future__ import annotations

import lzma
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dropjax.analysis.pruning import Exclude, kernel_list

Array = jax.Array

COMPRESSORS = ("zlib", "lzma")
RELATIVE_TO = ("max", "std")


def _kernels_np(params, exclude) -> list[tuple[str, np.ndarray]]:
  return [(p, np.asarray(k)) for p, k in kernel_list(params, exclude=exclude)]


def _float_dtype(x):
  return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def epsilon_sparsity(
  params,
  rel_thresholds: Sequence[float] = (1e-3, 1e-2, 1e-1),
  *,
  relative_to: str = "max",
  exclude: Exclude = (),
) -> dict[float, float]:
  """Fraction of kernel weights that are small relative to their layer.

  For each kernel ``W_l`` let ``scale_l = max |W_l|`` (``relative_to="max"``)
  or the population standard deviation of the entries of ``W_l`` around
  their mean (``relative_to="std"``, ``ddof=0``). A weight counts as
  epsilon-sparse when ``|w| <= eps * scale_l`` (inclusive, so exact zeros
  always count, and an all-zero kernel is entirely sparse). The result pools
  the counts over the kernels: ``sum_l #{|w| <= eps*scale_l} / sum_l
  size(W_l)``, i.e. larger layers weigh more.

  Args:
    params: pytree of arrays (kernels: leaves with ``ndim >= 2``).
    rel_thresholds: the relative thresholds ``eps`` (each ``>= 0``).
    relative_to: ``"max"`` or ``"std"``.
    exclude: kernels to leave out (indices or callable); default none.

  Returns:
    ``{eps: fraction}`` with Python floats, one entry per threshold.

  Raises:
    ValueError: for an unknown ``relative_to``, a negative threshold, or a
      tree without kernels.

  Example:
    >>> import numpy as np
    >>> p = {"k": np.array([[0.0005, 0.005], [0.05, 1.0]])}
    >>> epsilon_sparsity(p)
    {0.001: 0.25, 0.01: 0.5, 0.1: 0.75}
  """
  if relative_to not in RELATIVE_TO:
    raise ValueError(
      f"unknown relative_to {relative_to!r}; valid values are "
      f"{', '.join(repr(r) for r in RELATIVE_TO)}."
    )
  eps = [float(e) for e in rel_thresholds]
  if any(e < 0 for e in eps):
    raise ValueError(f"thresholds must be >= 0, got {rel_thresholds!r}.")
  ks = _kernels_np(params, exclude)
  if not ks:
    raise ValueError("params contain no kernels (leaves with ndim >= 2).")
  counts = np.zeros(len(eps), dtype=np.int64)
  total = 0
  for _, w in ks:
    a = np.abs(w.astype(np.float64))
    scale = a.max() if relative_to == "max" else w.astype(np.float64).std()
    for i, e in enumerate(eps):
      counts[i] += int(np.count_nonzero(a <= e * scale))
    total += a.size
  return {e: float(c / total) for e, c in zip(eps, counts)}


def exact_sparsity(params, *, exclude: Exclude = ()) -> float:
  """Fraction of kernel weights exactly equal to zero (pooled over kernels).

  Args:
    params: pytree of arrays.
    exclude: kernels to leave out; default none.

  Returns:
    ``#{w == 0} / #weights`` over the kernels, a Python float.

  Raises:
    ValueError: for a tree without kernels.

  Example:
    >>> import numpy as np
    >>> exact_sparsity({"k": np.array([[0., 1.], [0., 2.]]), "b": np.zeros(9)})
    0.5
  """
  ks = _kernels_np(params, exclude)
  if not ks:
    raise ValueError("params contain no kernels (leaves with ndim >= 2).")
  zeros = sum(int(np.count_nonzero(w == 0)) for _, w in ks)
  return zeros / sum(w.size for _, w in ks)


def hoyer_sparsity(w) -> Array:
  r"""Hoyer's sparsity ``(sqrt(n) - ||w||_1 / ||w||_2) / (sqrt(n) - 1)``.

  Computed on all ``n`` entries of ``w`` (flattened). It is 1 for exactly one
  non-zero entry, 0 when all entries have the same magnitude, and invariant
  to scaling (Hoyer 2004, eq. 1). The vector is divided by ``max |w|`` first
  so that the squares cannot overflow.

  Args:
    w: array of any shape with ``n = w.size >= 2`` entries.

  Returns:
    A float scalar array (float32, or the input's wider float dtype); NaN
    when all entries are zero (the ratio is undefined there).

  Raises:
    ValueError: if ``w`` has fewer than 2 entries.

  Example:
    >>> import numpy as np
    >>> round(float(hoyer_sparsity(np.array([3., 4., 0., 0.]))), 6)
    0.6
  """
  w = jnp.asarray(w)
  n = w.size
  if n < 2:
    raise ValueError(f"Hoyer sparsity needs at least 2 entries, got {n}.")
  a = jnp.abs(w.astype(_float_dtype(w))).ravel()
  a = a / jnp.max(a)
  ratio = jnp.sum(a) / jnp.sqrt(jnp.sum(a * a))
  sqrt_n = np.sqrt(n)
  return (sqrt_n - ratio) / (sqrt_n - 1.0)


def gini_index(w) -> Array:
  r"""Gini index of ``|w|`` (Hurley & Rickard 2009).

  With ``c_1 <= ... <= c_N`` the magnitudes sorted ascending,
  ``G = 1 - 2 * sum_k (c_k / ||c||_1) * (N - k + 1/2) / N``. It is 0 when all
  magnitudes are equal, ``1 - 1/N`` for a single non-zero entry (it tends to
  1 as ``N`` grows), and invariant to scaling and permutation.

  Args:
    w: array of any shape with at least one entry (flattened).

  Returns:
    A float scalar array; NaN when all entries are zero.

  Raises:
    ValueError: if ``w`` is empty.

  Example:
    >>> import numpy as np
    >>> round(float(gini_index(np.array([0., 0., 0., 1.]))), 6)
    0.75
  """
  w = jnp.asarray(w)
  n = w.size
  if n < 1:
    raise ValueError("the Gini index needs at least one entry.")
  c = jnp.sort(jnp.abs(w.astype(_float_dtype(w))).ravel())
  k = jnp.arange(1, n + 1, dtype=c.dtype)
  weights = (n - k + 0.5) / n
  return 1.0 - 2.0 * jnp.sum(c / jnp.sum(c) * weights)


def dead_unit_fraction(activations, *, tol: float = 0.0) -> Array:
  """Fraction of hidden units that are dead on a batch.

  A unit is dead when its activation is ``<= tol`` for every example.

  Args:
    activations: array ``[batch, units]`` (more leading axes are treated as
      further examples: ``[..., units]``), any real dtype.
    tol: the threshold; ``0`` suits ReLU outputs.

  Returns:
    A float32 scalar array: ``#dead units / units``.

  Raises:
    ValueError: if ``activations`` has fewer than 2 dimensions.

  Example:
    >>> import numpy as np
    >>> h = np.array([[0., 1., 0.], [0., 0., 2.]])
    >>> float(dead_unit_fraction(h))
    0.3333333432674408
  """
  h = jnp.asarray(activations)
  if h.ndim < 2:
    raise ValueError(
      f"activations must have shape [batch, units], got {h.shape}."
    )
  h = h.reshape(-1, h.shape[-1])
  dead = jnp.all(h <= tol, axis=0)
  return jnp.mean(dead.astype(jnp.float32))


def symmetric_quantize(w, bits: int = 8) -> tuple[np.ndarray, float]:
  """Symmetric uniform quantisation of one kernel to signed ``bits``-bit ints.

  ``q_max = 2**(bits-1) - 1``, ``scale = max|w| / q_max`` (``1.0`` for an
  all-zero ``w``), ``q = clip(rint(w / scale), -q_max, q_max)`` with
  round-half-to-even; ``w ~ q * scale``. The grid is symmetric and uses
  ``2 * q_max + 1`` levels (``-2**(bits-1)`` is never produced).

  Args:
    w: float array of any shape.
    bits: bits per value, an int in ``[2, 16]``.

  Returns:
    ``(q, scale)``: ``q`` an int8 (``bits <= 8``) or int16 array of ``w``'s
    shape, and ``scale`` a Python float.

  Raises:
    ValueError: for ``bits`` outside ``[2, 16]``.

  Example:
    >>> import numpy as np
    >>> q, s = symmetric_quantize(np.array([-1.0, 0.5, 0.25]), bits=3)
    >>> q.tolist(), s
    ([-3, 2, 1], 0.3333333333333333)
  """
  if not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 16:
    raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}.")
  w = np.asarray(w, dtype=np.float64)
  q_max = 2 ** (int(bits) - 1) - 1
  m = float(np.max(np.abs(w))) if w.size else 0.0
  scale = m / q_max if m > 0 else 1.0
  q = np.clip(np.rint(w / scale), -q_max, q_max)
  return q.astype(np.int8 if bits <= 8 else np.int16), scale


def compressed_bits_per_weight(
  params, *, bits: int = 8, compressor: str = "zlib", exclude: Exclude = ()
) -> float:
  """Size of the quantised, losslessly compressed kernels, in bits per weight.

  A cheap proxy for the "quantise + entropy-code" stage of Deep Compression
  (Han et al. 2016). Protocol:

  1. Each kernel (flatten order) is quantised with
     :func:`symmetric_quantize` at ``bits`` bits (per-layer scale).
  2. The byte stream is, per kernel: the scale as a little-endian float32
     (4 bytes), then the integers in C order, one byte each for ``bits <= 8``
     (int8) or two bytes, little-endian, for ``bits > 8`` (int16). There is
     no bit packing: the compressor's entropy coding is what exploits a
     smaller alphabet.
  3. The concatenated stream is compressed once with ``zlib.compress(data,
     level=9)`` or ``lzma.compress(data)`` (xz container, preset 6).
  4. The result is ``8 * len(compressed) / n_weights``, headers included.

  Incompressible uniform weights give about ``bits`` (slightly more for
  ``bits = 8`` because of the container overhead); an all-zero kernel gives a
  few hundredths of a bit.

  Args:
    params: pytree of arrays.
    bits: quantisation bits in ``[2, 16]``.
    compressor: ``"zlib"`` or ``"lzma"``.
    exclude: kernels to leave out; default none.

  Returns:
    Compressed bits per kernel weight, a Python float.

  Raises:
    ValueError: for an unknown compressor, bad ``bits`` or no kernels.
  """
  if compressor not in COMPRESSORS:
    raise ValueError(
      f"unknown compressor {compressor!r}; valid compressors "
      f"are {', '.join(repr(c) for c in COMPRESSORS)}."
    )
  ks = _kernels_np(params, exclude)
  if not ks:
    raise ValueError("params contain no kernels (leaves with ndim >= 2).")
  chunks, n = [], 0
  for _, w in ks:
    q, scale = symmetric_quantize(w, bits)
    chunks.append(np.float32(scale).astype("<f4").tobytes())
    chunks.append(q.astype("<i1" if bits <= 8 else "<i2").tobytes(order="C"))
    n += w.size
  data = b"".join(chunks)
  if compressor == "zlib":
    packed = zlib.compress(data, 9)
  else:
    packed = lzma.compress(data)
  return 8.0 * len(packed) / n


def _hoyer_np(w: np.ndarray) -> float:
  """NumPy float64 twin of :func:`hoyer_sparsity` (no compilation)."""
  a = np.abs(np.asarray(w, dtype=np.float64)).ravel()
  if a.size < 2:
    return float("nan")
  m = a.max()
  if m == 0:
    return float("nan")
  a = a / m
  sqrt_n = np.sqrt(a.size)
  return float((sqrt_n - a.sum() / np.sqrt(np.sum(a * a))) / (sqrt_n - 1.0))


def _gini_np(w: np.ndarray) -> float:
  """NumPy float64 twin of :func:`gini_index` (no compilation)."""
  c = np.sort(np.abs(np.asarray(w, dtype=np.float64)).ravel())
  n = c.size
  total = c.sum()
  if total == 0:
    return float("nan")
  k = np.arange(1, n + 1, dtype=np.float64)
  return float(1.0 - 2.0 * np.sum(c / total * (n - k + 0.5) / n))


def sparsity_report(
  params,
  *,
  rel_thresholds: Sequence[float] = (1e-3, 1e-2, 1e-1),
  bits: int = 8,
  compressor: str = "zlib",
  exclude: Exclude = (),
) -> dict[str, Any]:
  """Gathers the sparsity measurements of a network's kernels.

  Args:
    params: pytree of arrays.
    rel_thresholds: thresholds for :func:`epsilon_sparsity`.
    bits: quantisation bits for :func:`compressed_bits_per_weight`.
    compressor: ``"zlib"`` or ``"lzma"``.
    exclude: kernels to leave out; default none.

  Returns:
    A dict of Python scalars:

    * ``n_kernels``, ``n_weights``, ``n_nonzero``;
    * ``exact_sparsity`` (:func:`exact_sparsity`);
    * ``compression_ratio`` = ``n_weights / n_nonzero`` (``inf`` when all
      weights are zero; Molchanov et al. 2017);
    * ``epsilon_sparsity_max`` and ``epsilon_sparsity_std``:
      ``{eps: fraction}`` (:func:`epsilon_sparsity`);
    * ``hoyer`` and ``gini``: :func:`hoyer_sparsity` and :func:`gini_index`
      of all kernel weights concatenated (computed in float64 NumPy; NaN
      where undefined);
    * ``bits_per_weight``: :func:`compressed_bits_per_weight`;
    * ``layers``: one dict per kernel with ``path``, ``shape``,
      ``n_weights``, ``exact_sparsity``, ``hoyer``, ``gini`` and
      ``zero_unit_fraction`` (the fraction of output units -- columns of the
      ``(fan_in, n_out)`` view -- whose incoming weights are all zero).

  Raises:
    ValueError: as the individual measurements.
  """
  ks = _kernels_np(params, exclude)
  if not ks:
    raise ValueError("params contain no kernels (leaves with ndim >= 2).")
  layers = []
  for path, w in ks:
    m = w.reshape(-1, w.shape[-1])
    layers.append(
      {
        "path": path,
        "shape": tuple(int(d) for d in w.shape),
        "n_weights": int(w.size),
        "exact_sparsity": float(np.count_nonzero(w == 0) / w.size),
        "hoyer": _hoyer_np(w),
        "gini": _gini_np(w),
        "zero_unit_fraction": float(np.mean(np.all(m == 0, axis=0))),
      }
    )
  allw = np.concatenate([w.astype(np.float64).ravel() for _, w in ks])
  n = int(allw.size)
  nnz = int(np.count_nonzero(allw))
  return {
    "n_kernels": len(ks),
    "n_weights": n,
    "n_nonzero": nnz,
    "exact_sparsity": 1.0 - nnz / n,
    "compression_ratio": n / nnz if nnz else float("inf"),
    "epsilon_sparsity_max": epsilon_sparsity(
      params, rel_thresholds, relative_to="max", exclude=exclude
    ),
    "epsilon_sparsity_std": epsilon_sparsity(
      params, rel_thresholds, relative_to="std", exclude=exclude
    ),
    "hoyer": _hoyer_np(allw),
    "gini": _gini_np(allw),
    "bits_per_weight": compressed_bits_per_weight(
      params, bits=bits, compressor=compressor, exclude=exclude
    ),
    "layers": layers,
  }
