"""Image-classification datasets as host numpy arrays.

One entry point, :func:`load_dataset`, returns an :class:`ImageDataset` with
``train`` / ``validation`` / ``test`` splits whatever the source:

* ``"fashion_mnist"``: the IDX files of the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, or
  ``data_dir``), checked against pinned sha256 digests. numpy only, under a second.
* ``"idx:/some/dir"``: any directory with the four standard IDX files
  (MNIST, KMNIST, ...), not checksummed.
* ``"tfds:NAME"``: any TensorFlow Datasets image-classification dataset
  (``tfds:mnist``, ``tfds:cifar10``, ...) read from ``data_dir``; needs the
  ``[tfds]`` extra. :mod:`dropjax.data.tfds` also prepares TFDS's
  ``fashion_mnist`` offline from the Debian files.

The validation split is a seeded hold-out from the source's training set; the
test split is the source's test set. Arrays stay on the host; callers put them
on device.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from dropjax.data.idx import (
  DEFAULT_FASHION_MNIST_DIR,
  FASHION_MNIST_SHA256,
  DataError,
  DataNotFoundError,
  TrainTest,
  load_idx_directory,
)

from dropjax.data import idx as _idx
from dropjax.data.text import TextCorpus
from dropjax.data.text import batchify
from dropjax.data.text import bptt_batches
from dropjax.data.text import load_corpus

__all__ = [
  "DEFAULT_FASHION_MNIST_DIR",
  "TextCorpus",
  "batchify",
  "bptt_batches",
  "load_corpus",
  "DataError",
  "DataNotFoundError",
  "ImageDataset",
  "Split",
  "load_dataset",
  "make_image_dataset",
  "parse_source",
  "split_indices",
  "to_float_images",
]

SOURCE_FORMS = (
  "fashion_mnist",
  "idx:/path/to/dir",
  "tfds:NAME (e.g. tfds:mnist, tfds:cifar10)",
)
"""The accepted forms of ``load_dataset``'s ``source``."""

FASHION_MNIST_NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of an image dataset.

  Attributes:
    images: float32 [n, height, width, channels] in [0, 1], read-only.
    labels: int32 [n], read-only.
  """

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """Train, validation and test splits of an image-classification dataset.

  Attributes:
    train: the training split (possibly a ``train_size`` subset).
    validation: the seeded hold-out from the source's training set.
    test: the source's test set.
    num_classes: labels lie in ``[0, num_classes)``.
    name: the canonical source string, e.g. ``"fashion_mnist"``, ``"tfds:mnist"``.
    provenance: one line saying where the data came from and how it was split.
  """

  train: Split
  validation: Split
  test: Split
  num_classes: int
  name: str
  provenance: str

  @property
  def image_shape(self) -> tuple[int, ...]:
    """(height, width, channels) of every image."""
    return tuple(self.train.images.shape[1:])


def parse_source(source: str) -> tuple[str, str]:
  """Splits a source string into (kind, argument).

  Args:
    source: ``"fashion_mnist"``, ``"idx:<dir>"`` or ``"tfds:<name>"``.

  Returns:
    (kind, argument): kind is ``"fashion_mnist"``, ``"idx"`` or ``"tfds"``;
    argument is the directory or TFDS name (``""`` for fashion_mnist).

  Raises:
    ValueError: the string has none of the valid forms (listed in the message).

  Example:
    >>> parse_source("tfds:cifar10")
    ('tfds', 'cifar10')
    >>> parse_source("idx:/data/kmnist")
    ('idx', '/data/kmnist')
  """
  if not isinstance(source, str):
    raise ValueError(
      f"data source must be a string, got {source!r}; valid forms: "
      f"{', '.join(SOURCE_FORMS)}"
    )
  if source == "fashion_mnist":
    return "fashion_mnist", ""
  kind, sep, arg = source.partition(":")
  if sep and kind in ("idx", "tfds") and arg.strip():
    return kind, arg.strip()
  raise ValueError(
    f"unknown data source {source!r}; valid forms: {', '.join(SOURCE_FORMS)}"
  )


def split_indices(
  num_train: int,
  validation_size: int,
  train_size: int | None = None,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Draws the seeded train / validation partition of a training set.

  One permutation of ``range(num_train)`` (from ``numpy.random.default_rng(seed)``)
  gives the validation set (its first ``validation_size`` entries) and the
  training set (the next ``train_size`` entries, or all the rest). So for a
  fixed seed the validation set does not depend on ``train_size``, and a
  smaller ``train_size`` gives a subset of a larger one.

  Args:
    num_train: size of the source's training set.
    validation_size: examples held out, ``0 <= validation_size < num_train``.
    train_size: examples kept for training, ``1 <= train_size <=
      num_train - validation_size``; None keeps all the rest.
    seed: seed of the permutation.

  Returns:
    (train_idx, validation_idx): disjoint sorted int64 index arrays
    [train_size] and [validation_size].

  Raises:
    ValueError: a size is out of range.

  Example:
    >>> train, val = split_indices(10, 3, seed=0)
    >>> len(train), len(val), len(set(train) | set(val))
    (7, 3, 10)
  """
  if not 0 <= validation_size < num_train:
    raise ValueError(
      f"validation_size must be in [0, {num_train}), got {validation_size}"
    )
  remaining = num_train - validation_size
  if train_size is None:
    train_size = remaining
  elif not 1 <= train_size <= remaining:
    raise ValueError(
      f"train_size must be in [1, {remaining}] (training set of "
      f"{num_train} minus validation_size {validation_size}), got {train_size}"
    )
  perm = np.random.default_rng(seed).permutation(num_train)
  validation_idx = np.sort(perm[:validation_size])
  train_idx = np.sort(perm[validation_size : validation_size + train_size])
  return train_idx, validation_idx


def to_float_images(images: np.ndarray) -> np.ndarray:
  """Converts uint8 images to float32 in [0, 1] with a channel axis.

  Args:
    images: uint8 [n, height, width] or [n, height, width, channels].

  Returns:
    float32 [n, height, width, channels] (channels = 1 for 3-d input), equal
    to ``images / 255``.

  Raises:
    ValueError: images are not uint8 or not 3-d / 4-d.

  Example:
    >>> to_float_images(np.array([[[0, 255]]], np.uint8)).tolist()
    [[[[0.0], [1.0]]]]
  """
  if images.dtype != np.uint8:
    raise ValueError(f"expected uint8 images, got {images.dtype}")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(
      f"expected images [n, h, w] or [n, h, w, c], got shape {images.shape}"
    )
  return images.astype(np.float32) / np.float32(255)


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
  images = to_float_images(images)
  labels = np.asarray(labels).astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return Split(images=images, labels=labels)


def make_image_dataset(
  arrays: TrainTest,
  *,
  num_classes: int,
  name: str,
  provenance: str,
  validation_size: int = 5000,
  train_size: int | None = None,
  seed: int = 0,
) -> ImageDataset:
  """Splits unsplit train/test arrays into an :class:`ImageDataset`.

  Args:
    arrays: uint8 images [n, h, w] or [n, h, w, c] and integer labels [n].
    num_classes: number of classes; every label must lie in ``[0, num_classes)``.
    name: canonical source string.
    provenance: where the arrays came from; the split is appended.
    validation_size, train_size, seed: see :func:`split_indices`.

  Returns:
    The dataset; split images are float32 [n, h, w, c] in [0, 1], labels int32 [n].

  Raises:
    ValueError: a size is out of range, or a label lies outside
      ``[0, num_classes)``.
  """
  for part in ("train_labels", "test_labels"):
    labels = getattr(arrays, part)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(
        f"{name}: {part} outside [0, {num_classes}): "
        f"min {labels.min()}, max {labels.max()}"
      )
  num_train = arrays.train_labels.shape[0]
  train_idx, validation_idx = split_indices(
    num_train, validation_size, train_size, seed
  )
  provenance = (
    f"{provenance}; validation: {validation_size} of {num_train} train examples "
    f"held out with seed {seed}; train: {len(train_idx)} examples"
  )
  return ImageDataset(
    train=_split(
      arrays.train_images[train_idx], arrays.train_labels[train_idx]
    ),
    validation=_split(
      arrays.train_images[validation_idx], arrays.train_labels[validation_idx]
    ),
    test=_split(arrays.test_images, arrays.test_labels),
    num_classes=int(num_classes),
    name=name,
    provenance=provenance,
  )


def _same_dir(a: str | os.PathLike, b: str | os.PathLike) -> bool:
  try:
    return Path(a).resolve() == Path(b).resolve()
  except OSError:
    return False


def load_dataset(
  source: str = "fashion_mnist",
  *,
  data_dir: str | os.PathLike | None = None,
  validation_size: int = 5000,
  train_size: int | None = None,
  seed: int = 0,
  download: bool = False,
) -> ImageDataset:
  """Loads an image-classification dataset into host numpy arrays.

  Args:
    source: ``"fashion_mnist"`` (IDX files, sha256-verified), ``"idx:<dir>"``
      (any directory with the four standard IDX files; verified only if it is
      the Debian Fashion-MNIST directory) or ``"tfds:<name>"`` (a TensorFlow
      Datasets image-classification dataset with ``train`` and ``test`` splits).
    data_dir: for ``fashion_mnist``, the IDX directory (default
      :data:`DEFAULT_FASHION_MNIST_DIR`); for ``tfds:``, the TFDS data
      directory (default: TFDS's own). Must be None for ``idx:`` sources,
      which name their directory.
    validation_size: training examples held out for validation (seeded).
    train_size: if given, keep only this many of the remaining training
      examples (seeded; nested in larger subsets for the same seed).
    seed: seed of the hold-out and subset draws.
    download: ``tfds:`` sources only: let TFDS download and prepare the
      dataset if it is not prepared in ``data_dir`` yet.

  Returns:
    :class:`ImageDataset` whose splits hold float32 images [n, h, w, c] in
    [0, 1] (Fashion-MNIST: [n, 28, 28, 1]) and int32 labels [n].

  Raises:
    ValueError: unknown source form, ``data_dir`` given with an ``idx:``
      source, or sizes out of range.
    DataNotFoundError: the data directory or a file is missing (also a
      FileNotFoundError).
    DataError: a file is corrupt or fails its checksum, or a TFDS dataset is
      unavailable or unsuitable. Messages name the file and the fixes.

  Example:
    >>> ds = load_dataset("fashion_mnist", validation_size=5000)  # doctest: +SKIP
    >>> len(ds.train), len(ds.validation), len(ds.test), ds.image_shape  # doctest: +SKIP
    (55000, 5000, 10000, (28, 28, 1))
  """
  kind, arg = parse_source(source)
  split_args = dict(
    validation_size=validation_size, train_size=train_size, seed=seed
  )
  if kind == "tfds":
    from dropjax.data import (
      tfds as tfds_source,
    )  # lazy: needs tensorflow_datasets

    arrays, num_classes, provenance = tfds_source.load_tfds_arrays(
      arg, data_dir=data_dir, download=download
    )
    return make_image_dataset(
      arrays,
      num_classes=num_classes,
      name=f"tfds:{arg}",
      provenance=provenance,
      **split_args,
    )
  if kind == "fashion_mnist":
    directory = (
      os.path.expanduser(os.fspath(data_dir))
      if data_dir is not None
      else DEFAULT_FASHION_MNIST_DIR
    )
    pins = FASHION_MNIST_SHA256
    name = "fashion_mnist"
  else:
    if data_dir is not None:
      raise ValueError(
        f"source {source!r} names its directory; data_dir must be None "
        f"(got {data_dir!r})"
      )
    directory = os.path.expanduser(arg)
    pins = (
      FASHION_MNIST_SHA256
      if _same_dir(directory, DEFAULT_FASHION_MNIST_DIR)
      else None
    )
    name = f"idx:{arg}"
  try:
    arrays = load_idx_directory(directory, pins=pins)
  except DataError as e:
    if kind == "fashion_mnist" or pins:
      raise
    raise _idx.with_fixes(e, _idx.IDX_SOURCE_FIXES) from None
  if kind == "fashion_mnist":
    num_classes = FASHION_MNIST_NUM_CLASSES
  else:
    num_classes = (
      int(
        max(
          arrays.train_labels.max(initial=0), arrays.test_labels.max(initial=0)
        )
      )
      + 1
    )
  checked = "sha256 verified" if pins else "not checksummed"
  provenance = f"{name}: IDX files in {directory} ({checked})"
  return make_image_dataset(
    arrays,
    num_classes=num_classes,
    name=name,
    provenance=provenance,
    **split_args,
  )
