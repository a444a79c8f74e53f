"""Reader for IDX files (the MNIST / Fashion-MNIST / KMNIST on-disk format).

An IDX file is a big-endian header followed by a dense array::

    magic (4 bytes)  = 0x00 0x00 <dtype code> <ndim>
    dims  (4 bytes each, ndim of them, big-endian uint32)
    data  (prod(dims) items)

Image files have magic ``0x00000803`` (unsigned bytes, 3 dims:
``[count, rows, cols]``) and label files ``0x00000801`` (unsigned bytes, 1 dim:
``[count]``). Files may be stored raw or gzip-compressed (``.gz``).

This module needs only numpy and the standard library. Every problem with the
files (missing, truncated, wrong magic, wrong checksum, broken gzip) raises
:class:`DataError` (or its subclass :class:`DataNotFoundError`) with a message
that names the file and the ways to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

IMAGES_MAGIC = 0x00000803
"""Magic number of an IDX file of unsigned bytes with 3 dims (images)."""
LABELS_MAGIC = 0x00000801
"""Magic number of an IDX file of unsigned bytes with 1 dim (labels)."""

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""

# The four standard file stems, by role. Each is looked up as ``<stem>.gz``
# first, then as the raw ``<stem>``.
IDX_FILES = {
  "train_images": "train-images-idx3-ubyte",
  "train_labels": "train-labels-idx1-ubyte",
  "test_images": "t10k-images-idx3-ubyte",
  "test_labels": "t10k-labels-idx1-ubyte",
}

# Accepted sha256 of each Fashion-MNIST file as stored on disk, by file name.
# * ``.gz``: the Debian files (package dataset-fashion-mnist, whose gzip headers
#   carry no file name and a 2020 mtime) and the upstream files (the values
#   registered by TensorFlow Datasets). Both hold the same deflate payload.
# * raw: the decompressed IDX payload, identical for both.
FASHION_MNIST_SHA256: Mapping[str, frozenset[str]] = {
  "train-images-idx3-ubyte.gz": frozenset(
    {
      "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",  # Debian
      "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",  # upstream
    }
  ),
  "train-labels-idx1-ubyte.gz": frozenset(
    {
      "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
      "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    }
  ),
  "t10k-images-idx3-ubyte.gz": frozenset(
    {
      "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
      "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    }
  ),
  "t10k-labels-idx1-ubyte.gz": frozenset(
    {
      "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
      "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    }
  ),
  "train-images-idx3-ubyte": frozenset(
    {
      "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    }
  ),
  "train-labels-idx1-ubyte": frozenset(
    {
      "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    }
  ),
  "t10k-images-idx3-ubyte": frozenset(
    {
      "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    }
  ),
  "t10k-labels-idx1-ubyte": frozenset(
    {
      "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    }
  ),
}

_FIXES = (
  "To fix: install the Debian files with `apt-get install dataset-fashion-mnist` "
  f"(they go to {DEFAULT_FASHION_MNIST_DIR}); or point --config.data.data_dir at a "
  "directory holding the four IDX files (train-images-idx3-ubyte.gz, "
  "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, "
  "gzipped or raw); or pick another source with --config.data.source, e.g. "
  "'tfds:fashion_mnist' (TensorFlow Datasets) or 'idx:/path/to/dir'."
)


IDX_SOURCE_FIXES = (
  "To fix: put the four IDX files (train-images-idx3-ubyte, "
  "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
  "each gzipped (.gz) or raw) in that directory, or name another directory "
  "in the source itself (--config.data.source=idx:/path/to/dir; an idx: "
  "source takes no --config.data.data_dir)."
)
"""The fix hint of an ``idx:<dir>`` source (the directory is the source's)."""


def with_fixes(error: "DataError", fixes: str) -> "DataError":
  """The same error (same class) with another "To fix" hint."""
  return type(error)(str(error).replace(_FIXES, fixes))


class DataError(RuntimeError):
  """Data files are missing, unreadable or corrupt."""


class DataNotFoundError(DataError, FileNotFoundError):
  """A data directory or file does not exist."""


class TrainTest(NamedTuple):
  """Unsplit train and test arrays, as stored.

  Attributes:
    train_images: uint8 [n_train, *image_shape].
    train_labels: integer [n_train].
    test_images: uint8 [n_test, *image_shape].
    test_labels: integer [n_test].
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def data_error(
  path: str | os.PathLike, problem: str, *, missing: bool = False
) -> DataError:
  """Builds the exception for a data problem, with the standard fixes.

  Args:
    path: the file or directory concerned.
    problem: what is wrong with it, one short clause.
    missing: return a :class:`DataNotFoundError` (also a FileNotFoundError).

  Returns:
    The exception (not raised), whose message names ``path``, the problem
    and the ways to fix it.

  Example:
    >>> str(data_error("/d/x.gz", "bad magic")).splitlines()[0]
    '/d/x.gz: bad magic'
  """
  cls = DataNotFoundError if missing else DataError
  return cls(f"{os.fspath(path)}: {problem}\n{_FIXES}")


def sha256_file(path: str | os.PathLike) -> str:
  """Returns the hex sha256 digest of a file's bytes as stored on disk."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def parse_idx(
  data: bytes, *, expected_magic: int | None = None, source: str = "<bytes>"
) -> np.ndarray:
  """Parses the bytes of an (uncompressed) IDX file of unsigned bytes.

  Args:
    data: the whole file content.
    expected_magic: if given, the header's magic number must equal it
      (:data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC`).
    source: name used in error messages (usually the file path).

  Returns:
    A read-only uint8 array whose shape is the header's dims, e.g.
    [count, rows, cols] for images and [count] for labels.

  Raises:
    DataError: the header is short or malformed, the magic is not an
      unsigned-byte IDX magic (or not ``expected_magic``), a dim is zero
      where it must not be, or the payload is shorter or longer than the
      header says.

  Example:
    >>> header = bytes([0, 0, 8, 1, 0, 0, 0, 3])
    >>> parse_idx(header + bytes([7, 0, 9]), expected_magic=LABELS_MAGIC)
    array([7, 0, 9], dtype=uint8)
  """
  if len(data) < 4:
    raise data_error(source, f"truncated IDX header ({len(data)} bytes)")
  magic = int.from_bytes(data[:4], "big")
  zero, dtype_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
  if zero != 0 or dtype_code != 0x08 or ndim == 0:
    raise data_error(
      source,
      f"bad IDX magic number 0x{magic:08x} "
      "(expected 0x00000801 for labels or 0x00000803 for images)",
    )
  if expected_magic is not None and magic != expected_magic:
    raise data_error(
      source, f"IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
    )
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise data_error(
      source,
      f"truncated IDX header ({len(data)} bytes, "
      f"{header_len} needed for {ndim} dims)",
    )
  dims = tuple(
    int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
  )
  if any(d == 0 for d in dims[1:]):
    raise data_error(source, f"IDX dims {dims} contain a zero item size")
  expected = int(np.prod(dims, dtype=np.int64))
  actual = len(data) - header_len
  if actual != expected:
    kind = "truncated" if actual < expected else "trailing bytes in"
    raise data_error(
      source,
      f"{kind} IDX payload: header dims {dims} need "
      f"{expected} bytes, file has {actual}",
    )
  return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx(
  path: str | os.PathLike, *, expected_magic: int | None = None
) -> np.ndarray:
  """Reads one IDX file, gzip-compressed if its name ends in ``.gz``.

  Args:
    path: the file.
    expected_magic: see :func:`parse_idx`.

  Returns:
    A read-only uint8 array shaped as the header's dims.

  Raises:
    DataNotFoundError: the file does not exist.
    DataError: the file cannot be read, is not valid gzip, or is not a valid
      IDX file (see :func:`parse_idx`).
  """
  path = Path(path)
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    raise data_error(path, "file not found", missing=True) from None
  except OSError as e:
    raise data_error(path, f"cannot read file ({e})") from e
  if path.name.endswith(".gz"):
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise data_error(path, f"not a valid gzip file ({e})") from e
  return parse_idx(raw, expected_magic=expected_magic, source=os.fspath(path))


def find_idx_files(directory: str | os.PathLike) -> dict[str, Path]:
  """Locates the four standard IDX files in a directory.

  Each file is looked up as ``<stem>.gz`` first, then as the raw ``<stem>``
  (stems in :data:`IDX_FILES`).

  Args:
    directory: the directory.

  Returns:
    {role: path} for the roles ``train_images``, ``train_labels``,
    ``test_images``, ``test_labels``.

  Raises:
    DataNotFoundError: the directory or one of the files does not exist.
  """
  directory = Path(directory)
  if not directory.is_dir():
    raise data_error(directory, "data directory not found", missing=True)
  found = {}
  for role, stem in IDX_FILES.items():
    candidates = [directory / f"{stem}.gz", directory / stem]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
      raise data_error(
        candidates[0],
        f"file not found (nor {candidates[1].name})",
        missing=True,
      )
    found[role] = path
  return found


def verify_sha256(
  path: str | os.PathLike, pins: Mapping[str, frozenset[str]]
) -> None:
  """Checks a file's sha256 against the pins for its name.

  Args:
    path: the file.
    pins: {file name: accepted hex sha256 digests}. Files whose name has no
      pin are not checked.

  Raises:
    DataError: the file's digest is not among the accepted ones.
  """
  accepted = pins.get(Path(path).name)
  if accepted is None:
    return
  digest = sha256_file(path)
  if digest not in accepted:
    raise data_error(
      path,
      f"sha256 mismatch: got {digest}, expected one of "
      f"{sorted(accepted)} (file corrupt or not the expected dataset)",
    )


def load_idx_directory(
  directory: str | os.PathLike,
  *,
  pins: Mapping[str, frozenset[str]] | None = None,
) -> TrainTest:
  """Loads and validates the four standard IDX files of a directory.

  Args:
    directory: holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped
      (``.gz``) or raw.
    pins: optional {file name: accepted sha256 digests} checked before
      parsing, e.g. :data:`FASHION_MNIST_SHA256`.

  Returns:
    :class:`TrainTest` with uint8 images [n, rows, cols] and uint8 labels [n].

  Raises:
    DataNotFoundError: the directory or a file is missing.
    DataError: a checksum does not match, a file is corrupt (see
      :func:`read_idx`), image and label counts of a split disagree, or train
      and test images differ in shape.
  """
  paths = find_idx_files(directory)
  if pins:
    for path in paths.values():
      verify_sha256(path, pins)
  arrays = {}
  for role, path in paths.items():
    magic = IMAGES_MAGIC if role.endswith("images") else LABELS_MAGIC
    arrays[role] = read_idx(path, expected_magic=magic)
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.shape[0] != labels.shape[0]:
      raise data_error(
        paths[f"{split}_labels"],
        f"{labels.shape[0]} labels but {images.shape[0]} images in "
        f"{paths[f'{split}_images'].name}",
      )
  if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
    raise data_error(
      paths["test_images"],
      f"test image shape {arrays['test_images'].shape[1:]} differs "
      f"from train image shape {arrays['train_images'].shape[1:]}",
    )
  return TrainTest(**arrays)
