"""Pytree conventions shared by the library: kernels, path strings, params IO.

* A *kernel* is a leaf with ``ndim >= 2`` (:func:`is_kernel`): dense and conv
  kernels, never biases, scales or counters. Penalties, targeted dropout,
  weight decay and the analysis package all use this one test.
* A *path string* is a leaf's ``jax.tree_util`` key path joined with ``/``
  (:func:`path_string`), e.g. ``"hidden_0/kernel"`` for nested dicts or
  ``"dense1/kernel/value"`` for a Flax ``nnx.State``. Leaf filters
  ``(path, leaf) -> bool`` and ``exclude`` callables receive it.
* :func:`save_params` / :func:`load_params` store a nested-dict parameter
  tree as one ``.npz`` file keyed by path string.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def is_kernel(leaf) -> bool:
  """True for a leaf that counts as a layer kernel (an array with ndim >= 2).

  Args:
    leaf: any pytree leaf; objects without an ``ndim`` attribute (Python
      scalars) count as rank 0.

  Returns:
    A Python bool.

  Example:
    >>> import numpy as np
    >>> is_kernel(np.ones((3, 2))), is_kernel(np.ones(2)), is_kernel(1.0)
    (True, False, False)
  """
  return getattr(leaf, "ndim", 0) >= 2


def kernel_mask(params) -> Any:
  """``True`` at every kernel (:func:`is_kernel`), ``False`` at other leaves.

  Args:
    params: any pytree of arrays.

  Returns:
    A pytree of Python bools with the structure of ``params`` (usable as an
    optax ``mask``).
  """
  return jax.tree.map(is_kernel, params)


def path_string(path) -> str:
  """Joins a ``jax.tree_util`` key path with ``/`` (e.g. ``"l1/kernel"``).

  Dict keys, attribute names and sequence indices are written bare
  (``jax.tree_util.keystr(path, simple=True, separator="/")``).

  Args:
    path: a key path from ``jax.tree_util.tree_flatten_with_path``.

  Returns:
    The path string.

  Example:
    >>> import jax
    >>> tree = {"a": [0, {"kernel": 1}]}
    >>> [path_string(p) for p, _ in
    ...  jax.tree_util.tree_flatten_with_path(tree)[0]]
    ['a/0', 'a/1/kernel']
  """
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


# --------------------------------------------------------------------------
# Parameter files.
# --------------------------------------------------------------------------


def flatten_params(params) -> dict[str, np.ndarray]:
  """``{path_string: host array}`` for every leaf of ``params``.

  Args:
    params: a pytree of arrays (for a round trip through
      :func:`unflatten_params`: nested dicts with string keys without ``/``).

  Returns:
    A dict of numpy arrays in flatten order.
  """
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    flat[path_string(path)] = np.asarray(leaf)
  return flat


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict:
  """Rebuilds the nested dicts of :func:`flatten_params`.

  Args:
    flat: ``{"a/b/kernel": array, ...}``.

  Returns:
    Nested dicts split at ``/``, with ``jax.Array`` leaves (same dtypes and
    values as ``flat``).
  """
  out: dict = {}
  for key, value in flat.items():
    node = out
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = jnp.asarray(value)
  return out


def save_params(path: str, params) -> None:
  """Saves one net's parameters (a nested dict) as ``.npz``, atomically.

  The file is written to ``path.<pid>.tmp`` in the same directory, synced,
  and renamed over ``path``, so readers never see a partial file.

  Args:
    path: destination file; its directory is created if needed.
    params: nested dicts of arrays (see :func:`flatten_params`).
  """
  buf = io.BytesIO()
  np.savez(buf, **flatten_params(params))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    f.write(buf.getvalue())
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def load_params(path: str) -> dict:
  """Loads parameters saved by :func:`save_params`.

  Args:
    path: an ``.npz`` file written by :func:`save_params`.

  Returns:
    Nested dicts of ``jax.Array`` (:func:`unflatten_params`).

  Raises:
    OSError: if the file cannot be read.
  """
  with np.load(path) as z:
    return unflatten_params({k: z[k] for k in z.files})
