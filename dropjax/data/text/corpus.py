"""The token-id container, vocabularies and tokenisation shared by every
text source."""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


#: Unknown-character token of character-level vocabularies (U+FFFD, the
#: Unicode replacement character): one character, so decoded text keeps its
#: length.
CHAR_UNK = "\ufffd"
#: Unknown-word token of word-level vocabularies (the PTB / WikiText spelling).
WORD_UNK = "<unk>"
#: End-of-line token appended to every line of word-level text.
WORD_EOS = "<eos>"
#: Split names, in the order used everywhere in this module.
SPLITS = ("train", "validation", "test")

_LEVELS = ("char", "word")


# ---------------------------------------------------------------------------
# The container.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
  """A tokenised corpus: three splits of int32 ids and their vocabulary.

  Attributes:
      train: int32 ``[n_train]`` token ids of the training split.
      validation: int32 ``[n_validation]`` token ids.
      test: int32 ``[n_test]`` token ids.
      vocab: ``vocab[i]`` is the token with id ``i``. Built from the
          training split only. ``vocab[0]`` is :attr:`unk_token`; for
          ``level="word"``, ``vocab[1]`` is ``"<eos>"``.
      level: ``"char"`` (a token is one Unicode character) or ``"word"``
          (a token is a whitespace-separated word, or ``"<eos>"``).
      name: Short name of the source, e.g. ``"shakespeare"``.
      provenance: Human-readable account of where the text came from and
          how it was split and preprocessed.
      unk_token: The token that ids of unseen symbols decode to:
          :data:`CHAR_UNK` for characters, ``"<unk>"`` for words.

  The arrays are stored read-only. Equality is identity (``eq=False``):
  numpy arrays have no single truth value.

  Raises:
      ValueError: (at construction) if ``level`` is not ``"char"`` or
          ``"word"``, the vocabulary has duplicates or lacks ``unk_token``,
          a split is not 1-D, or an id is outside ``[0, len(vocab))``.
  """

  train: np.ndarray
  validation: np.ndarray
  test: np.ndarray
  vocab: tuple[str, ...]
  level: str
  name: str
  provenance: str = ""
  unk_token: str = CHAR_UNK

  def __post_init__(self):
    if self.level not in _LEVELS:
      raise ValueError(f"level must be one of {_LEVELS}, got {self.level!r}")
    vocab = tuple(self.vocab)
    if len(set(vocab)) != len(vocab):
      raise ValueError("vocab has duplicate tokens")
    if self.unk_token not in vocab:
      raise ValueError(f"unk_token {self.unk_token!r} is not in vocab")
    object.__setattr__(self, "vocab", vocab)
    for split in SPLITS:
      ids = np.array(getattr(self, split), dtype=np.int32, copy=True)
      if ids.ndim != 1:
        raise ValueError(f"{split} must be 1-D, got shape {ids.shape}")
      if ids.size and (ids.min() < 0 or ids.max() >= len(vocab)):
        raise ValueError(
          f"{split} has ids outside [0, {len(vocab)}): "
          f"min {ids.min()}, max {ids.max()}"
        )
      ids.setflags(write=False)
      object.__setattr__(self, split, ids)

  @property
  def vocab_size(self) -> int:
    """Number of distinct ids, unknown token included."""
    return len(self.vocab)

  @property
  def unk_id(self) -> int:
    """Id of :attr:`unk_token` (0 for corpora built by this module)."""
    return self._index[self.unk_token]

  @functools.cached_property
  def _index(self) -> dict[str, int]:
    return {tok: i for i, tok in enumerate(self.vocab)}

  def split(self, name: str) -> np.ndarray:
    """Returns the int32 ids of split ``name`` (``"valid"`` = validation).

    Raises:
        ValueError: if ``name`` is not a split name.
    """
    name = {"valid": "validation"}.get(name, name)
    if name not in SPLITS:
      raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    return getattr(self, name)

  def encode(self, text: str | Iterable[str]) -> np.ndarray:
    """Maps text to int32 ids; unseen symbols map to :attr:`unk_id`.

    Args:
        text: For ``level="char"``: a string (one id per character).
            For ``level="word"``: a string, split on whitespace (no
            ``"<eos>"`` is added; use :func:`word_tokens` to tokenise
            lines the way the corpus was built), or an iterable of
            tokens, mapped as given.

    Returns:
        int32 ``[n_tokens]``.
    """
    if isinstance(text, str) and self.level == "word":
      text = text.split()
    index, unk = self._index, self.unk_id
    return np.fromiter((index.get(t, unk) for t in text), dtype=np.int32)

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Maps ids back to text.

    Args:
        ids: integer ids in ``[0, vocab_size)``, any shape (flattened).

    Returns:
        The characters concatenated (``"char"``) or the words joined by
        single spaces (``"word"``). The unknown id decodes to
        :attr:`unk_token`.

    Raises:
        IndexError: if an id is out of range.
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= len(self.vocab)):
      raise IndexError(f"ids must lie in [0, {len(self.vocab)})")
    sep = "" if self.level == "char" else " "
    return sep.join(self.vocab[int(i)] for i in ids)

  def __repr__(self) -> str:
    sizes = ", ".join(f"{s}={getattr(self, s).size}" for s in SPLITS)
    return (
      f"TextCorpus(name={self.name!r}, level={self.level!r}, "
      f"vocab_size={self.vocab_size}, {sizes})"
    )


# ---------------------------------------------------------------------------
# Vocabularies and the generic builder.
# ---------------------------------------------------------------------------


def build_char_vocab(text: str, unk_token: str = CHAR_UNK) -> tuple[str, ...]:
  """Character vocabulary: ``unk_token`` first, then sorted code points.

  Args:
      text: the training text.
      unk_token: reserved at id 0. A literal occurrence of it in the text
          maps to the unknown id as well.

  Returns:
      ``(unk_token, *sorted(set(text) - {unk_token}))``.

  Example:
      >>> build_char_vocab("hello")[1:]
      ('e', 'h', 'l', 'o')
  """
  return (unk_token, *sorted(set(text) - {unk_token}))


def word_tokens(text: str, eos_token: str = WORD_EOS) -> list[str]:
  """Splits text into words, appending ``eos_token`` at every line end.

  The AWD-LSTM / PyTorch word-language-model rule: each line (split on
  ``"\\n"``; a final newline does not start an extra line) becomes its
  whitespace-separated words followed by ``eos_token``. Empty lines
  therefore contribute a lone ``eos_token``.

  Example:
      >>> word_tokens("a b\\n\\nc\\n")
      ['a', 'b', '<eos>', '<eos>', 'c', '<eos>']
  """
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  tokens: list[str] = []
  for line in lines:
    tokens.extend(line.split())
    tokens.append(eos_token)
  return tokens


def build_word_vocab(
  tokens: Sequence[str],
  max_vocab: int | None = None,
  *,
  unk_token: str = WORD_UNK,
  eos_token: str = WORD_EOS,
) -> tuple[str, ...]:
  """Word vocabulary: ``unk_token``, ``eos_token``, then by frequency.

  Args:
      tokens: training tokens.
      max_vocab: if given, the vocabulary size, ``unk_token`` and
          ``eos_token`` included: the ``max_vocab - 2`` most frequent other
          words are kept. ``None`` keeps every training word.
      unk_token: reserved at id 0 (the corpus's own ``<unk>`` tokens, if
          any, get this id too).
      eos_token: reserved at id 1.

  Returns:
      ``(unk_token, eos_token, w_1, w_2, ...)`` with the ``w_i`` ordered by
      decreasing training count, ties broken by code-point order of the
      word (so the order is deterministic).

  Raises:
      ValueError: if ``max_vocab < 2``.

  Example:
      >>> build_word_vocab(["b", "a", "b", "<eos>", "c"], max_vocab=3)
      ('<unk>', '<eos>', 'b')
  """
  if max_vocab is not None and max_vocab < 2:
    raise ValueError(
      f"max_vocab must be >= 2 (<unk> and <eos>), got {max_vocab}"
    )
  counts = collections.Counter(tokens)
  counts.pop(unk_token, None)
  counts.pop(eos_token, None)
  words = sorted(counts, key=lambda w: (-counts[w], w))
  if max_vocab is not None:
    words = words[: max_vocab - 2]
  return (unk_token, eos_token, *words)


def corpus_from_texts(
  texts: Mapping[str, str],
  *,
  level: str,
  name: str,
  provenance: str = "",
  max_vocab: int | None = None,
) -> TextCorpus:
  """Tokenises three plain-text splits into a :class:`TextCorpus`.

  Args:
      texts: ``{"train": str, "validation": str, "test": str}``.
      level: ``"char"``: one token per character, vocabulary from
          :func:`build_char_vocab` on the training text. ``"word"``:
          :func:`word_tokens` (``<eos>`` at each line end), vocabulary from
          :func:`build_word_vocab` on the training tokens.
      name: stored in the corpus.
      provenance: stored in the corpus.
      max_vocab: word level only; see :func:`build_word_vocab`.

  Returns:
      The corpus; symbols absent from the training vocabulary get id 0.

  Raises:
      ValueError: on an unknown level, missing split keys, an empty
          training text, or ``max_vocab`` with ``level="char"``.
  """
  if level not in _LEVELS:
    raise ValueError(f"level must be one of {_LEVELS}, got {level!r}")
  missing = [s for s in SPLITS if s not in texts]
  if missing:
    raise ValueError(f"texts lacks splits {missing}; expected keys {SPLITS}")
  if not texts["train"]:
    raise ValueError("the training text is empty")
  if level == "char":
    if max_vocab is not None:
      raise ValueError("max_vocab applies to level='word' only")
    vocab = build_char_vocab(texts["train"])
    seqs = {s: texts[s] for s in SPLITS}
    unk = CHAR_UNK
  else:
    seqs = {s: word_tokens(texts[s]) for s in SPLITS}
    vocab = build_word_vocab(seqs["train"], max_vocab)
    unk = WORD_UNK
  index = {tok: i for i, tok in enumerate(vocab)}
  ids = {
    s: np.fromiter((index.get(t, 0) for t in seqs[s]), dtype=np.int32)
    for s in SPLITS
  }
  return TextCorpus(
    train=ids["train"],
    validation=ids["validation"],
    test=ids["test"],
    vocab=vocab,
    level=level,
    name=name,
    provenance=provenance,
    unk_token=unk,
  )
