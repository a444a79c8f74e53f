"""Tests for dropjax.data: IDX reader, splits, errors, Debian Fashion-MNIST, TFDS."""

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import dropjax.data as data
from dropjax.data import idx
from dropjax.data import tfds as tfds_source

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
STEMS = {
  "train_images": "train-images-idx3-ubyte",
  "train_labels": "train-labels-idx1-ubyte",
  "test_images": "t10k-images-idx3-ubyte",
  "test_labels": "t10k-labels-idx1-ubyte",
}
FIX_HINTS = (
  "apt-get install dataset-fashion-mnist",
  "--config.data.source",
  "--config.data.data_dir",
  "tfds:fashion_mnist",
)

needs_debian = pytest.mark.skipif(
  not all((DEBIAN_DIR / f"{s}.gz").is_file() for s in STEMS.values()),
  reason=f"Debian Fashion-MNIST files absent from {DEBIAN_DIR} "
  "(apt-get install dataset-fashion-mnist)",
)


# ----------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, *, magic: bytes | None = None) -> bytes:
  """IDX encoding written independently of the reader (struct by hand)."""
  array = np.asarray(array, dtype=np.uint8)
  head = magic if magic is not None else bytes([0, 0, 8, array.ndim])
  dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  return head + dims + array.tobytes()


def write_idx_dir(
  directory: Path,
  *,
  n_train=40,
  n_test=12,
  shape=(5, 4),
  gz=True,
  num_classes=4,
  seed=0,
):
  """Writes random uint8 images / labels as the four IDX files; returns the arrays."""
  rng = np.random.default_rng(seed)
  arrays = {
    "train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
    "train_labels": rng.integers(0, num_classes, n_train, dtype=np.uint8),
    "test_images": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
    "test_labels": rng.integers(0, num_classes, n_test, dtype=np.uint8),
  }
  directory.mkdir(parents=True, exist_ok=True)
  for role, array in arrays.items():
    write_file(directory, role, idx_bytes(array), gz=gz)
  return arrays


def write_file(directory: Path, role: str, payload: bytes, *, gz=True) -> Path:
  path = directory / (STEMS[role] + (".gz" if gz else ""))
  path.write_bytes(gzip.compress(payload) if gz else payload)
  return path


def row_multiset(images, labels) -> np.ndarray:
  """Sorted (image bytes + label) records: equal iff same multiset of pairs."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = np.rint(images * 255).astype(np.uint8)
  labels = np.asarray(labels)
  rows = np.concatenate(
    [images.reshape(len(labels), -1), labels.astype(np.uint8)[:, None]], axis=1
  )
  rows = np.ascontiguousarray(rows)
  return np.sort(rows.view(np.dtype((np.void, rows.shape[1]))).ravel())


# An idx:<dir> source's own hint: the directory is the source's, so it names
# neither the Debian package nor --config.data.data_dir.
IDX_SOURCE_HINTS = ("--config.data.source=idx:/path/to/dir", "four IDX files")


def assert_fix_hints(message: str, path, *, source: str = "fashion_mnist"):
  assert os.fspath(path) in message
  hints = IDX_SOURCE_HINTS if source == "idx" else FIX_HINTS
  for hint in hints:
    assert hint in message, f"{hint!r} missing from: {message}"
  if source == "idx":
    assert "apt-get install" not in message, message


# ----------------------------------------------------------------- IDX reader


def test_parse_idx_images_and_labels():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3, 2, 5), dtype=np.uint8)
  labels = np.array([9, 0, 4], np.uint8)
  got_images = idx.parse_idx(idx_bytes(images), expected_magic=idx.IMAGES_MAGIC)
  got_labels = idx.parse_idx(idx_bytes(labels), expected_magic=idx.LABELS_MAGIC)
  assert got_images.dtype == np.uint8 and got_images.shape == (3, 2, 5)
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_load_idx_directory(tmp_path, gz):
  written = write_idx_dir(tmp_path, gz=gz)
  loaded = idx.load_idx_directory(tmp_path)
  for role, array in written.items():
    np.testing.assert_array_equal(getattr(loaded, role), array)


def test_gzip_file_preferred_over_raw(tmp_path):
  gz_arrays = write_idx_dir(tmp_path, gz=True, seed=1)
  write_idx_dir(tmp_path, gz=False, seed=2)
  loaded = idx.load_idx_directory(tmp_path)
  np.testing.assert_array_equal(loaded.train_images, gz_arrays["train_images"])


def test_load_dataset_idx_source(tmp_path):
  written = write_idx_dir(
    tmp_path, n_train=40, n_test=12, shape=(5, 4), num_classes=4
  )
  ds = data.load_dataset(f"idx:{tmp_path}", validation_size=10, seed=3)
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (30, 10, 12)
  assert ds.image_shape == (5, 4, 1)
  assert ds.name == f"idx:{tmp_path}"
  assert str(tmp_path) in ds.provenance and "not checksummed" in ds.provenance
  assert ds.num_classes == 1 + max(
    written["train_labels"].max(), written["test_labels"].max()
  )
  for split in (ds.train, ds.validation, ds.test):
    assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
    assert split.images.shape[1:] == (5, 4, 1)
    assert 0.0 <= split.images.min() and split.images.max() <= 1.0
  np.testing.assert_allclose(
    ds.test.images[..., 0], written["test_images"] / 255.0, rtol=1e-6
  )
  np.testing.assert_array_equal(ds.test.labels, written["test_labels"])
  # train + validation is the written training set, with images still paired to labels.
  np.testing.assert_array_equal(
    row_multiset(
      np.concatenate([ds.train.images, ds.validation.images]),
      np.concatenate([ds.train.labels, ds.validation.labels]),
    ),
    row_multiset(written["train_images"], written["train_labels"]),
  )


def test_splits_are_read_only_and_frozen(tmp_path):
  write_idx_dir(tmp_path)
  ds = data.load_dataset(f"idx:{tmp_path}", validation_size=5)
  with pytest.raises(ValueError):
    ds.train.images[0, 0, 0, 0] = 1.0
  with pytest.raises(AttributeError):
    ds.num_classes = 3


# ----------------------------------------------------------------- splits


def test_split_indices_partition_and_determinism():
  train, val = data.split_indices(100, 20, seed=7)
  assert len(train) == 80 and len(val) == 20
  assert not set(train) & set(val)
  assert set(train) | set(val) == set(range(100))
  train2, val2 = data.split_indices(100, 20, seed=7)
  np.testing.assert_array_equal(train, train2)
  np.testing.assert_array_equal(val, val2)
  _, val_other = data.split_indices(100, 20, seed=8)
  assert set(val_other) != set(val)


def test_split_indices_train_size_subsets():
  _, val_all = data.split_indices(100, 20, seed=4)
  small, val_small = data.split_indices(100, 20, train_size=10, seed=4)
  large, val_large = data.split_indices(100, 20, train_size=50, seed=4)
  assert len(small) == 10 and len(large) == 50
  np.testing.assert_array_equal(
    val_small, val_all
  )  # hold-out independent of train_size
  np.testing.assert_array_equal(val_large, val_all)
  assert set(small) <= set(large) and not set(large) & set(val_all)


@pytest.mark.parametrize(
  "validation_size,train_size", [(-1, None), (100, None), (20, 0), (20, 81)]
)
def test_split_indices_rejects_bad_sizes(validation_size, train_size):
  with pytest.raises(ValueError, match="must be in"):
    data.split_indices(100, validation_size, train_size)


def test_load_dataset_train_size(tmp_path):
  write_idx_dir(tmp_path, n_train=50)
  full = data.load_dataset(f"idx:{tmp_path}", validation_size=10, seed=1)
  sub = data.load_dataset(
    f"idx:{tmp_path}", validation_size=10, train_size=15, seed=1
  )
  assert len(sub.train) == 15 and len(sub.validation) == 10
  np.testing.assert_array_equal(sub.validation.images, full.validation.images)
  full_rows = set(row_multiset(full.train.images, full.train.labels).tolist())
  assert (
    set(row_multiset(sub.train.images, sub.train.labels).tolist()) <= full_rows
  )


def test_validation_size_zero(tmp_path):
  write_idx_dir(tmp_path, n_train=20)
  ds = data.load_dataset(f"idx:{tmp_path}", validation_size=0)
  assert len(ds.train) == 20 and len(ds.validation) == 0
  assert ds.validation.images.shape == (0, 5, 4, 1)


def test_label_outside_num_classes_rejected():
  arrays = idx.TrainTest(
    np.zeros((4, 2, 2), np.uint8),
    np.array([0, 1, 2, 5], np.uint8),
    np.zeros((2, 2, 2), np.uint8),
    np.array([0, 1], np.uint8),
  )
  with pytest.raises(ValueError, match="outside"):
    data.make_image_dataset(
      arrays, num_classes=3, name="x", provenance="x", validation_size=1
    )


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize(
  "source", ["mnist", "fashion-mnist", "idx:", "tfds:", "hf:mnist", ""]
)
def test_unknown_source(source):
  with pytest.raises(ValueError, match="valid forms") as err:
    data.load_dataset(source)
  for form in ("fashion_mnist", "idx:", "tfds:"):
    assert form in str(err.value)


def test_idx_source_rejects_data_dir(tmp_path):
  with pytest.raises(ValueError, match="data_dir"):
    data.load_dataset(f"idx:{tmp_path}", data_dir=tmp_path)


def test_missing_directory(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError) as err:
    data.load_dataset("fashion_mnist", data_dir=missing)
  assert isinstance(err.value, data.DataError)
  assert_fix_hints(str(err.value), missing)


def test_missing_file(tmp_path):
  write_idx_dir(tmp_path)
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(data.DataNotFoundError) as err:
    data.load_dataset(f"idx:{tmp_path}", validation_size=1)
  assert_fix_hints(
    str(err.value), tmp_path / "t10k-labels-idx1-ubyte.gz", source="idx"
  )


@pytest.mark.parametrize(
  "magic",
  [
    bytes([0, 0, 8, 1]),
    bytes([0, 0, 9, 3]),
    bytes([1, 2, 8, 3]),
    b"\x1f\x8b\x08\x00",
  ],
)
def test_bad_magic(tmp_path, magic):
  arrays = write_idx_dir(tmp_path)
  path = write_file(
    tmp_path, "train_images", idx_bytes(arrays["train_images"], magic=magic)
  )
  with pytest.raises(data.DataError, match="magic") as err:
    data.load_dataset(f"idx:{tmp_path}", validation_size=1)
  assert_fix_hints(str(err.value), path, source="idx")


@pytest.mark.parametrize(
  "cut", [1, 100, 10**6], ids=["payload-1", "payload-100", "header"]
)
def test_truncated_file(tmp_path, cut):
  arrays = write_idx_dir(tmp_path)
  full = idx_bytes(arrays["train_images"])
  path = write_file(tmp_path, "train_images", full[: max(len(full) - cut, 6)])
  with pytest.raises(data.DataError, match="truncated") as err:
    data.load_dataset(f"idx:{tmp_path}", validation_size=1)
  assert_fix_hints(str(err.value), path, source="idx")


def test_trailing_bytes(tmp_path):
  arrays = write_idx_dir(tmp_path)
  write_file(
    tmp_path, "test_labels", idx_bytes(arrays["test_labels"]) + b"\x00"
  )
  with pytest.raises(data.DataError, match="trailing"):
    idx.load_idx_directory(tmp_path)


def test_image_label_count_mismatch(tmp_path):
  arrays = write_idx_dir(tmp_path)
  path = write_file(
    tmp_path, "train_labels", idx_bytes(arrays["train_labels"][:-1])
  )
  with pytest.raises(data.DataError, match="labels but") as err:
    idx.load_idx_directory(tmp_path)
  assert_fix_hints(str(err.value), path)


def test_train_test_shape_mismatch(tmp_path):
  arrays = write_idx_dir(tmp_path)
  write_file(
    tmp_path, "test_images", idx_bytes(arrays["test_images"][:, :, :3])
  )
  with pytest.raises(data.DataError, match="shape"):
    idx.load_idx_directory(tmp_path)


@pytest.mark.parametrize(
  "corrupt", ["not-gzip", "truncated-gzip", "flipped-byte"]
)
def test_bad_gzip(tmp_path, corrupt):
  arrays = write_idx_dir(tmp_path)
  packed = gzip.compress(idx_bytes(arrays["train_images"]))
  if corrupt == "not-gzip":
    packed = idx_bytes(arrays["train_images"])
  elif corrupt == "truncated-gzip":
    packed = packed[: len(packed) // 2]
  else:  # a flipped byte inside the deflate stream: CRC or stream error
    packed = bytearray(packed)
    packed[len(packed) // 2] ^= 0xFF
    packed = bytes(packed)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(packed)
  with pytest.raises(data.DataError) as err:
    idx.load_idx_directory(tmp_path)
  assert_fix_hints(str(err.value), path)


def test_sha_mismatch_with_pins(tmp_path):
  write_idx_dir(tmp_path)
  label_path = tmp_path / "train-labels-idx1-ubyte.gz"
  good = idx.sha256_file(label_path)
  assert good == hashlib.sha256(label_path.read_bytes()).hexdigest()
  idx.load_idx_directory(tmp_path, pins={label_path.name: frozenset({good})})
  with pytest.raises(data.DataError, match="sha256 mismatch") as err:
    idx.load_idx_directory(
      tmp_path, pins={label_path.name: frozenset({"0" * 64})}
    )
  assert_fix_hints(str(err.value), label_path)


def test_fashion_mnist_source_checks_pins(tmp_path):
  # Valid IDX files that are not Fashion-MNIST: fine as idx:, rejected as fashion_mnist.
  write_idx_dir(tmp_path)
  data.load_dataset(f"idx:{tmp_path}", validation_size=1)
  with pytest.raises(data.DataError, match="sha256 mismatch"):
    data.load_dataset("fashion_mnist", data_dir=tmp_path, validation_size=1)


# ----------------------------------------------------------------- real data


@needs_debian
def test_debian_fashion_mnist():
  ds = data.load_dataset("fashion_mnist", seed=0)
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (
    55000,
    5000,
    10000,
  )
  assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10
  assert ds.name == "fashion_mnist" and "sha256 verified" in ds.provenance
  for split in (ds.train, ds.validation, ds.test):
    assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
    assert split.labels.min() == 0 and split.labels.max() == 9
    assert split.images.min() == 0.0 and split.images.max() == 1.0
  full_train = np.concatenate([ds.train.labels, ds.validation.labels])
  np.testing.assert_array_equal(
    np.bincount(full_train, minlength=10), np.full(10, 6000)
  )
  np.testing.assert_array_equal(
    np.bincount(ds.test.labels, minlength=10), np.full(10, 1000)
  )
  # Same seed, same split; another seed, another hold-out of the same size.
  again = data.load_dataset("fashion_mnist", seed=0, train_size=1000)
  np.testing.assert_array_equal(again.validation.labels, ds.validation.labels)
  other = data.load_dataset(f"idx:{DEBIAN_DIR}", seed=1)
  assert len(other.validation) == 5000
  assert not np.array_equal(other.validation.images, ds.validation.images)


@needs_debian
def test_debian_pins_match_files():
  for stem in STEMS.values():
    gz_path = DEBIAN_DIR / f"{stem}.gz"
    assert idx.sha256_file(gz_path) in idx.FASHION_MNIST_SHA256[gz_path.name]
    payload = gzip.decompress(gz_path.read_bytes())
    assert hashlib.sha256(payload).hexdigest() in idx.FASHION_MNIST_SHA256[stem]
  # The TFDS checksums file lists the Debian files' sizes and sha256.
  for name, (size, digest) in tfds_source.read_checksums().items():
    assert (DEBIAN_DIR / name).stat().st_size == size
    assert idx.sha256_file(DEBIAN_DIR / name) == digest


@needs_debian
def test_debian_dir_is_pinned_also_as_idx_source(monkeypatch):
  bogus = {name: frozenset({"0" * 64}) for name in idx.FASHION_MNIST_SHA256}
  monkeypatch.setattr(data, "FASHION_MNIST_SHA256", bogus)
  for source in ("fashion_mnist", f"idx:{DEBIAN_DIR}"):
    with pytest.raises(data.DataError, match="sha256 mismatch"):
      data.load_dataset(source)


@needs_debian
def test_corrupted_copy_of_debian_files(tmp_path):
  for stem in STEMS.values():
    (tmp_path / f"{stem}.gz").symlink_to(DEBIAN_DIR / f"{stem}.gz")
  corrupted = tmp_path / "train-labels-idx1-ubyte.gz"
  blob = bytearray(corrupted.read_bytes())
  corrupted.unlink()
  blob[len(blob) // 2] ^= 0x01
  corrupted.write_bytes(bytes(blob))
  with pytest.raises(data.DataError, match="sha256 mismatch") as err:
    data.load_dataset("fashion_mnist", data_dir=tmp_path)
  assert_fix_hints(str(err.value), corrupted)
  with pytest.raises(
    data.DataError, match="gzip"
  ):  # unpinned: gzip's CRC catches it
    data.load_dataset(f"idx:{tmp_path}")


# ----------------------------------------------------------------- TFDS (no TF needed)


def test_importing_data_modules_does_not_import_tensorflow():
  code = (
    "import sys, dropjax.data, dropjax.data.tfds, dropjax.data.idx; "
    "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
    "sys.exit(f'imported {bad}' if bad else 0)"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-2000:]


def test_cli_help(capsys):
  with pytest.raises(SystemExit) as exit_info:
    tfds_source.main(["--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert "--prepare-fashion-mnist" in out and "--data_dir" in out


def test_prepare_rejects_non_debian_files(tmp_path, capsys):
  write_idx_dir(tmp_path / "src")
  with pytest.raises(data.DataError, match="not the Debian"):
    tfds_source.prepare_tfds_fashion_mnist(
      tmp_path / "out", source_dir=tmp_path / "src"
    )
  code = tfds_source.main(
    [
      "--prepare-fashion-mnist",
      "--data_dir",
      str(tmp_path / "out"),
      "--source_dir",
      str(tmp_path / "src"),
    ]
  )
  assert code == 1 and "not the Debian" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- TFDS (needs TF)


@pytest.mark.tfds
def test_checksums_tsv_has_the_stock_builder_urls():
  tfds = pytest.importorskip("tensorflow_datasets")
  stock = tfds.image_classification.FashionMNIST.url_infos
  ours = tfds_source.debian_fashion_mnist_builder_class().url_infos
  assert (
    set(ours)
    == set(stock)
    == {
      tfds.image_classification.FashionMNIST.URL + f"{s}.gz"
      for s in STEMS.values()
    }
  )
  for url in (
    stock
  ):  # Debian gzip headers omit the stored file name: a few bytes less.
    assert ours[url].checksum != stock[url].checksum
    assert (
      0
      < int(stock[url].size) - int(ours[url].size)
      <= len(url.rsplit("/", 1)[1]) + 1
    )


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
  """Routes tempfile into tmp_path: TFDS leaves an empty /tmp/tmp*tfds per unprepared builder."""
  (tmp_path / "tempfile").mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tempfile"))


@pytest.mark.tfds
def test_tfds_unknown_or_unprepared(tmp_path, private_tempdir):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(ValueError, match="unknown TFDS dataset"):
    data.load_dataset("tfds:no_such_dataset_xyz", data_dir=tmp_path)
  with pytest.raises(data.DataNotFoundError, match="not prepared") as err:
    data.load_dataset("tfds:mnist", data_dir=tmp_path)
  assert "--config.data.data_dir" in str(err.value)


@pytest.mark.tfds
@needs_debian
def test_prepare_tfds_fashion_mnist_offline(tmp_path, private_tempdir):
  tfds = pytest.importorskip("tensorflow_datasets")
  out = tfds_source.prepare_tfds_fashion_mnist(tmp_path / "tfds")
  assert out == tmp_path / "tfds" / "fashion_mnist" / str(
    tfds.image_classification.FashionMNIST.VERSION
  )
  raw = idx.load_idx_directory(DEBIAN_DIR)
  # The stock loader reads it without network access.
  images, labels = tfds.as_numpy(
    tfds.load(
      "fashion_mnist",
      split="test",
      data_dir=tmp_path / "tfds",
      download=False,
      batch_size=-1,
      as_supervised=True,
    )
  )
  assert images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(
    row_multiset(images, labels), row_multiset(raw.test_images, raw.test_labels)
  )
  # And so does load_dataset's tfds: source, train split included.
  ds = data.load_dataset("tfds:fashion_mnist", data_dir=tmp_path / "tfds")
  assert ds.name == "tfds:fashion_mnist" and ds.num_classes == 10
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (
    55000,
    5000,
    10000,
  )
  assert ds.image_shape == (28, 28, 1)
  np.testing.assert_array_equal(
    row_multiset(
      np.concatenate([ds.train.images, ds.validation.images]),
      np.concatenate([ds.train.labels, ds.validation.labels]),
    ),
    row_multiset(raw.train_images, raw.train_labels),
  )
  np.testing.assert_array_equal(
    row_multiset(ds.test.images, ds.test.labels),
    row_multiset(raw.test_images, raw.test_labels),
  )
  assert not (
    tmp_path / "tfds" / "downloads"
  ).exists()  # extracted to a temporary dir
  assert not list(
    (tmp_path / "tempfile").glob("dropjax-tfds-*")
  )  # ... which was removed
  shutil.rmtree(out)


def test_idx_source_errors_hint_at_the_source_not_the_debian_package(tmp_path):
  with pytest.raises(data.DataNotFoundError) as e:
    data.load_dataset(f"idx:{tmp_path / 'nowhere'}")
  msg = str(e.value)
  assert "idx:/path/to/dir" in msg and "takes no --config.data.data_dir" in msg
  assert "apt-get install" not in msg
  with pytest.raises(data.DataNotFoundError, match="apt-get install"):
    data.load_dataset("fashion_mnist", data_dir=str(tmp_path / "nowhere"))
