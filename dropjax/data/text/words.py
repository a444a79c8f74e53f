"""Word-level corpora (PTB, WikiText-2 style) from local files."""

from __future__ import annotations

import os
import pathlib


from dropjax.data.text.corpus import SPLITS, TextCorpus, corpus_from_texts

# ---------------------------------------------------------------------------
# Word-level corpora from local files (PTB, WikiText-2).
# ---------------------------------------------------------------------------

#: Accepted file names per split, tried in this order.
WORD_FILES = {
  "train": ("train.txt", "ptb.train.txt", "wiki.train.tokens"),
  "validation": ("valid.txt", "ptb.valid.txt", "wiki.valid.tokens"),
  "test": ("test.txt", "ptb.test.txt", "wiki.test.tokens"),
}


def _find_split_file(root: pathlib.Path, split: str) -> pathlib.Path:
  for fname in WORD_FILES[split]:
    path = root / fname
    if path.is_file():
      return path
  layout = "; ".join(f"{s}: {' or '.join(n)}" for s, n in WORD_FILES.items())
  raise FileNotFoundError(
    f"no {split} file in {str(root)!r}: expected one of "
    f"{', '.join(WORD_FILES[split])}. A word corpus directory holds three "
    f"plain-text files, one per split ({layout})."
  )


def load_word_corpus(
  directory: str | os.PathLike,
  *,
  level: str = "word",
  max_vocab: int | None = None,
  name: str | None = None,
) -> TextCorpus:
  """A PTB / WikiText-2 style corpus from a directory of three text files.

  File names (first found wins): see :data:`WORD_FILES` -- ``train.txt`` /
  ``valid.txt`` / ``test.txt``, PTB's ``ptb.train.txt`` ..., or
  WikiText's ``wiki.train.tokens`` .... Files are read as UTF-8.

  At word level each line becomes its whitespace-separated tokens plus
  ``<eos>`` (:func:`word_tokens`; empty lines give a lone ``<eos>``, as in
  AWD-LSTM). The vocabulary comes from the training file; words absent
  from it map to ``<unk>`` (id 0), which is also the id of the corpus's own
  ``<unk>`` tokens (PTB and WikiText already contain them).

  Args:
      directory: the corpus folder.
      level: ``"word"`` (default) or ``"char"`` (characters of the raw
          files, newlines included).
      max_vocab: word level only: keep ``<unk>``, ``<eos>`` and the
          ``max_vocab - 2`` most frequent training words.
      name: stored in the corpus; default the directory's name.

  Returns:
      A :class:`TextCorpus`.

  Raises:
      FileNotFoundError: if the directory or a split file is missing (the
          message names the split and the accepted file names).
      ValueError: see :func:`corpus_from_texts`.
  """
  root = pathlib.Path(directory)
  if not root.is_dir():
    raise FileNotFoundError(
      f"word corpus directory {str(root)!r} does not exist; expected a "
      "folder with train.txt, valid.txt and test.txt (or PTB's "
      "ptb.{train,valid,test}.txt, or WikiText's wiki.{train,valid,test}.tokens)"
    )
  paths = {split: _find_split_file(root, split) for split in SPLITS}
  texts = {split: p.read_text(encoding="utf-8") for split, p in paths.items()}
  provenance = (
    f"local files {', '.join(str(p) for p in paths.values())}; "
    f"{level} level"
    + (", <eos> per line, vocabulary from train" if level == "word" else "")
    + (f" (max_vocab={max_vocab})" if max_vocab is not None else "")
    + "."
  )
  return corpus_from_texts(
    texts,
    level=level,
    name=name if name is not None else root.name,
    provenance=provenance,
    max_vocab=max_vocab,
  )
