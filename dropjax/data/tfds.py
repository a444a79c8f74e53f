"""TensorFlow Datasets sources: reading any image dataset, and offline Fashion-MNIST.

Needs the ``[tfds]`` extra (``tensorflow-datasets``, ``tensorflow-cpu``,
``importlib_resources``, ``pillow``). Every function imports
``tensorflow_datasets`` when called, so importing this module does not need it.

Offline preparation of TFDS's ``fashion_mnist``: the Debian package
``dataset-fashion-mnist`` ships the upstream files with rewritten gzip headers
(same deflate payload, different bytes), so the stock TFDS builder rejects them
with a checksum error. :func:`prepare_tfds_fashion_mnist` uses a subclass of
the stock builder, with the same name, version, features and URLs, whose
checksums come from ``checksums.tsv`` beside this module (TFDS's convention for
a builder's module): the same URLs with the Debian files' sizes and sha256.
Checksums are still verified, the installed TFDS package is not modified, and
the result is the ordinary ``<data_dir>/fashion_mnist/<version>/`` that the
stock ``tfds.load("fashion_mnist", data_dir=..., download=False)`` reads.

Command line::

    python -m dropjax.data.tfds --prepare-fashion-mnist --data_dir ~/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dropjax.data.idx import (
  DEFAULT_FASHION_MNIST_DIR,
  DataError,
  DataNotFoundError,
  TrainTest,
  data_error,
  find_idx_files,
  sha256_file,
)

CHECKSUMS_PATH = Path(__file__).with_name("checksums.tsv")
"""TFDS checksums of the Debian Fashion-MNIST files (url, size, sha256, file name)."""

_INSTALL_HINT = (
  "TFDS sources need the [tfds] extra: "
  "`pip install tensorflow-cpu tensorflow-datasets importlib_resources pillow`; "
  "or use --config.data.source=fashion_mnist (numpy IDX reader, no TensorFlow)."
)


def _expand(path: str | os.PathLike | None) -> str | None:
  """Returns ``path`` as a string with ``~`` expanded (None stays None)."""
  return None if path is None else os.path.expanduser(os.fspath(path))


def _import_tfds():
  """Imports tensorflow_datasets, hiding any GPU from TensorFlow.

  Raises:
    ImportError: tensorflow_datasets is not installed (message says how to get it).
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
      f"cannot import tensorflow_datasets ({e}). {_INSTALL_HINT}"
    ) from e
  try:  # TF must not grab accelerator memory that JAX needs.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
  except (
    ImportError,
    RuntimeError,
  ):  # no TF (array_record reads) or already initialised
    pass
  return tfds


def load_tfds_arrays(
  name: str,
  *,
  data_dir: str | os.PathLike | None = None,
  download: bool = False,
) -> tuple[TrainTest, int, str]:
  """Reads a TFDS image-classification dataset's train and test splits.

  Args:
    name: TFDS name, optionally with config / version (``"mnist"``,
      ``"cifar10"``, ``"fashion_mnist:3.0.1"``).
    data_dir: TFDS data directory (None: TFDS's default).
    download: let TFDS download and prepare the dataset if it is not
      prepared yet (needs network access).

  Returns:
    (arrays, num_classes, provenance): uint8 images [n, h, w, c] and int64
    labels [n] for ``train`` and ``test``; the label feature's class count;
    a one-line description.

  Raises:
    ImportError: tensorflow_datasets is missing.
    ValueError: TFDS knows no dataset of that name.
    DataNotFoundError: the dataset is not prepared in ``data_dir`` (and
      ``download`` is False).
    DataError: no ``train`` / ``test`` split, no (image, label) supervised
      keys, or images that are not fixed-shape uint8.
  """
  tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=_expand(data_dir))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
      f"tfds:{name}: unknown TFDS dataset ({str(e).splitlines()[0]}); "
      "valid data sources: fashion_mnist, idx:/path/to/dir, tfds:NAME"
    ) from e
  where = os.fspath(builder.data_dir)
  if not builder.is_prepared():
    if not download:
      raise DataNotFoundError(
        f"{where}: TFDS dataset {name!r} is not prepared in this TFDS data directory.\n"
        "To fix: point --config.data.data_dir at the TFDS data directory that holds "
        f"it; or prepare it there (tfds.builder({name!r}, data_dir=DIR)"
        ".download_and_prepare() where the network is reachable, or pass download=True"
        "); for fashion_mnist without network: `apt-get install dataset-fashion-mnist`, "
        "then `python -m dropjax.data.tfds --prepare-fashion-mnist --data_dir DIR`, or "
        "skip TFDS with --config.data.source=fashion_mnist (numpy IDX reader)."
      )
    builder.download_and_prepare()
  info = builder.info
  missing = {"train", "test"} - set(info.splits.keys())
  if missing:
    raise DataError(
      f"tfds:{name}: needs train and test splits, has "
      f"{sorted(info.splits.keys())}"
    )
  keys = info.supervised_keys
  if not keys or len(keys) != 2:
    raise DataError(
      f"tfds:{name}: not an (image, label) dataset (supervised keys {keys!r})"
    )
  image_feature, label_feature = info.features[keys[0]], info.features[keys[1]]
  shape = getattr(image_feature, "shape", None)
  if (
    shape is None
    or None in shape
    or np.dtype(image_feature.np_dtype) != np.uint8
  ):
    raise DataError(
      f"tfds:{name}: images must be fixed-shape uint8, feature "
      f"{keys[0]!r} is {image_feature!r}"
    )
  num_classes = getattr(label_feature, "num_classes", None)
  if not num_classes:
    raise DataError(
      f"tfds:{name}: label feature {keys[1]!r} is not a ClassLabel"
    )
  arrays = {}
  for split in ("train", "test"):
    images, labels = tfds.as_numpy(
      builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
    )
    arrays[f"{split}_images"] = np.asarray(images, dtype=np.uint8)
    arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
  provenance = f"tfds:{name}: TFDS {builder.name} {builder.version} in {where}"
  return TrainTest(**arrays), int(num_classes), provenance


@functools.cache
def debian_fashion_mnist_builder_class():
  """Returns TFDS's ``FashionMNIST`` builder that accepts the Debian files.

  A subclass of ``tfds.image_classification.FashionMNIST`` named
  ``fashion_mnist`` (not registered, so the stock builder stays the one TFDS
  finds by name) whose URL checksums are read from :data:`CHECKSUMS_PATH`.

  Raises:
    ImportError: tensorflow_datasets is missing.
  """
  tfds = _import_tfds()

  class DebianFashionMNIST(
    tfds.image_classification.FashionMNIST, skip_registration=True
  ):
    """TFDS fashion_mnist prepared from the Debian package's IDX files."""

    name = "fashion_mnist"

  # TFDS reads a builder's checksums from `checksums.tsv` next to the file
  # that defines the class (its `code_path`); check that this holds here.
  found = DebianFashionMNIST._checksums_path  # pylint: disable=protected-access
  if found is None or os.fspath(found) != os.fspath(CHECKSUMS_PATH):
    raise RuntimeError(
      f"TFDS looks for the builder's checksums at {found}, "
      f"expected {CHECKSUMS_PATH}"
    )
  return DebianFashionMNIST


def prepare_tfds_fashion_mnist(
  data_dir: str | os.PathLike,
  *,
  source_dir: str | os.PathLike = DEFAULT_FASHION_MNIST_DIR,
  file_format: str | None = None,
) -> Path:
  """Prepares TFDS's ``fashion_mnist`` offline from the Debian IDX files.

  Afterwards the stock ``tfds.load("fashion_mnist", data_dir=data_dir,
  download=False)`` (and, with ``file_format="array_record"``,
  ``tfds.data_source``) reads it. Does nothing if it is already prepared.
  Extracted temporary files go to a temporary directory that is removed.

  Args:
    data_dir: TFDS data directory to write ``fashion_mnist/<version>/`` into.
    source_dir: directory with the four Debian ``.gz`` IDX files.
    file_format: TFDS file format, ``"tfrecord"`` (TFDS default) or
      ``"array_record"``.

  Returns:
    The prepared dataset directory, ``<data_dir>/fashion_mnist/<version>``.

  Raises:
    ImportError: tensorflow_datasets is missing.
    DataNotFoundError: ``source_dir`` or a ``.gz`` file is missing.
    DataError: a file's sha256 is not the Debian one in :data:`CHECKSUMS_PATH`.
  """
  expected = read_checksums()
  data_dir, source_dir = _expand(data_dir), _expand(source_dir)
  paths = find_idx_files(source_dir)
  for path in paths.values():
    if path.name not in expected:
      raise data_error(
        path,
        f"offline TFDS preparation needs the gzipped files {sorted(expected)}",
        missing=True,
      )
    size, digest = expected[path.name]
    if path.stat().st_size != size or sha256_file(path) != digest:
      raise data_error(
        path,
        "not the Debian dataset-fashion-mnist file (size or sha256 "
        f"differs from {CHECKSUMS_PATH.name}: {size} bytes, {digest})",
      )
  tfds = _import_tfds()
  builder = debian_fashion_mnist_builder_class()(data_dir=data_dir)
  with tempfile.TemporaryDirectory(prefix="dropjax-tfds-") as tmp:
    builder.download_and_prepare(
      download_dir=tmp,
      download_config=tfds.download.DownloadConfig(manual_dir=source_dir),
      file_format=file_format,
    )
  return Path(os.fspath(builder.data_dir))


def read_checksums(
  path: str | os.PathLike = CHECKSUMS_PATH,
) -> dict[str, tuple[int, str]]:
  """Reads a TFDS checksums TSV.

  Args:
    path: lines ``url<TAB>size<TAB>sha256[<TAB>file name]``; ``#`` starts a comment.

  Returns:
    {file name: (size in bytes, hex sha256)}; the file name defaults to the
    URL's last path component.

  Example:
    >>> sorted(read_checksums())  # doctest: +NORMALIZE_WHITESPACE
    ['t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz',
     'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz']
  """
  entries = {}
  for line in Path(path).read_text().splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    url, size, digest, *rest = line.split("\t")
    filename = rest[0] if rest else url.rstrip("/").rsplit("/", 1)[-1]
    entries[filename] = (int(size), digest)
  return entries


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: ``python -m dropjax.data.tfds --prepare-fashion-mnist --data_dir DIR``."""
  parser = argparse.ArgumentParser(
    prog="python -m dropjax.data.tfds",
    description="Prepare TFDS's fashion_mnist offline from the Debian package "
    "dataset-fashion-mnist, so that tfds.load('fashion_mnist', data_dir=DIR, "
    "download=False) and --config.data.source=tfds:fashion_mnist work "
    "without network access.",
  )
  parser.add_argument(
    "--prepare-fashion-mnist",
    action="store_true",
    required=True,
    help="prepare fashion_mnist (the only action so far)",
  )
  parser.add_argument(
    "--data_dir",
    "--data-dir",
    required=True,
    help="TFDS data directory to write fashion_mnist/<version>/ into",
  )
  parser.add_argument(
    "--source_dir",
    "--source-dir",
    default=DEFAULT_FASHION_MNIST_DIR,
    help="directory with the Debian .gz IDX files (default: %(default)s)",
  )
  parser.add_argument(
    "--file_format",
    "--file-format",
    choices=("tfrecord", "array_record"),
    default=None,
    help="TFDS file format (default: TFDS's, tfrecord); "
    "array_record also allows tfds.data_source",
  )
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    out = prepare_tfds_fashion_mnist(
      args.data_dir, source_dir=args.source_dir, file_format=args.file_format
    )
  except (DataError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(
    f"prepared {out}; read it with "
    f"tfds.load('fashion_mnist', data_dir={os.fspath(args.data_dir)!r}, download=False) "
    f"or --config.data.source=tfds:fashion_mnist --config.data.data_dir={args.data_dir}"
  )
  return 0


if __name__ == "__main__":
  # Run through the importable module, so that the builder class defined
  # there has the module path TFDS uses to find checksums.tsv.
  from dropjax.data import tfds as _module

  sys.exit(_module.main())
