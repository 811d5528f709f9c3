"""Byte-level BPE tokenizer of duolib (training, saving, loading, hashing, labelled encoding) and
the on-disk cache of token streams.

The tokenizer is a byte-level BPE (GPT-2 style pre-tokenisation, no prefix space) trained with the
``tokenizers`` library, wrapped as a :class:`transformers.PreTrainedTokenizerFast` and saved with
``save_pretrained``, so both :func:`load_tokenizer` and ``PreTrainedTokenizerFast.from_pretrained``
(or ``AutoTokenizer``) load it.  Special tokens:

* ``<|endoftext|>`` (id 0): document separator; also the tokenizer's ``eos`` and ``bos``.
* ``<|pad|>`` (id 1): padding only; never appears in token streams.

Every byte is in the initial alphabet, so any text round-trips: ``decode(encode(text)) == text``.

Token streams (:class:`TokenStream`) are cached as ``<key>.tokens.npy`` (uint16 ids when the
vocabulary has fewer than 65536 entries, else int32), ``<key>.labels.npy`` (uint8 label codes, only
for labelled corpora) and a ``<key>.json`` sidecar (with the size and sha256 of the arrays, checked on
every load), all written to a temporary file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_write, remove_stale_temps, umask_modes
from ..manifests import digest, mismatch

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
#: Smallest vocabulary: the 256 byte symbols plus the special tokens.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
DEFAULT_VOCAB_SIZE = 4096
#: Default cap on the characters the BPE trainer sees (keeps CPU training to seconds).
DEFAULT_TRAIN_CHARS = 3_000_000
_FILE = "tokenizer.json"


def check_vocab_size(vocab_size: int) -> None:
    """Raise ValueError unless ``vocab_size`` is an int of at least :data:`MIN_VOCAB_SIZE`."""
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: a byte-level BPE needs at least "
            f"{MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )


def _capped(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    """Yield ``texts`` until ``max_chars`` characters were yielded (the last one truncated)."""
    left = max_chars
    for text in texts:
        if left is not None:
            if left <= 0:
                return
            text = text[:left]
            left -= len(text)
        if text:
            yield text


def _wrap(backend) -> "PreTrainedTokenizerFast":  # noqa: F821
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer with our special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    max_chars: int | None = DEFAULT_TRAIN_CHARS,
    out_dir: str | os.PathLike | None = None,
    show_progress: bool = False,
):
    """Train a byte-level BPE of ``vocab_size`` entries on ``texts`` (at most ``max_chars`` characters).

    Returns a ``PreTrainedTokenizerFast``; if ``out_dir`` is given it is also saved there (written to
    a temporary folder first, then renamed, so the folder is never half-written).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_vocab_size(vocab_size)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
    )
    backend.train_from_iterator(_capped(texts, max_chars), trainer=trainer)
    tok = _wrap(backend)
    if out_dir is not None:
        save_tokenizer(tok, out_dir)
    return tok


def save_tokenizer(tok, out_dir: str | os.PathLike) -> Path:
    """Save ``tok`` with ``save_pretrained`` into ``out_dir`` atomically (temp folder + rename)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=f".{os.getpid()}.tmp", dir=out.parent))
    try:
        tok.save_pretrained(str(tmp))
        umask_modes(tmp)
        if out.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer saved by :func:`train_tokenizer` (a folder holding ``tokenizer.json``)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not (path / _FILE).is_file():
        raise FileNotFoundError(f"no {_FILE} in {path}: train one with duolib.data.tokenizer.train_tokenizer")
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def tokenizer_hash(tok_or_path) -> str:
    """SHA-256 (hex) of the tokenizer's ``tokenizer.json`` content.

    Accepts a folder, a ``tokenizer.json`` path, or a loaded tokenizer (hashed via its saved file
    when it was loaded from a folder, else via its serialised backend).
    """
    if isinstance(tok_or_path, (str, os.PathLike)):
        path = Path(tok_or_path)
        path = path / _FILE if path.is_dir() else path
        return hashlib.sha256(path.read_bytes()).hexdigest()
    where = Path(str(getattr(tok_or_path, "name_or_path", "") or "")) / _FILE
    if where.is_file():
        return hashlib.sha256(where.read_bytes()).hexdigest()
    canonical = json.dumps(json.loads(tok_or_path.backend_tokenizer.to_str()), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """Storage dtype of token ids: uint16 when the vocabulary fits (< 65536), else int32."""
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.int32)


def token_labels(offsets: np.ndarray, char_labels: np.ndarray, text: str) -> np.ndarray:
    """Label of each token from per-character labels.

    A token takes the label of its first non-whitespace character (so ``"Ġ42"`` takes the label of
    ``4`` not of the separating space); a token made only of whitespace takes the label of its first
    character.  ``offsets`` is the tokenizer's ``[n, 2]`` (start, end) character offset mapping.
    """
    if len(offsets) == 0:
        return np.zeros(0, dtype=np.uint8)
    n = len(text)
    is_space = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    is_space = np.isin(is_space, [ord(c) for c in " \t\n\r\x0b\x0c"])
    # next_solid[i]: index of the first non-whitespace character at or after i (n if none).
    idx = np.where(~is_space, np.arange(n), n)
    next_solid = np.minimum.accumulate(idx[::-1])[::-1]
    starts, ends = offsets[:, 0], offsets[:, 1]
    first = next_solid[np.minimum(starts, n - 1)]
    pos = np.where(first < ends, first, starts)
    return char_labels[np.minimum(pos, n - 1)].astype(np.uint8)


def encode_texts(
    tok,
    texts: Sequence[str],
    char_labels: Sequence[np.ndarray] | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "tokenizing",
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Encode ``texts`` without special tokens; returns (ids per text, labels per text or None).

    ``char_labels`` (one uint8 array per text, one entry per character) turns on label mapping
    through the tokenizer's offsets (:func:`token_labels`).
    """
    from tqdm.auto import tqdm

    backend = tok.backend_tokenizer
    ids_out: list[np.ndarray] = []
    labels_out: list[np.ndarray] | None = [] if char_labels is not None else None
    bar = tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress)
    for lo in range(0, len(texts), batch_size):
        chunk = list(texts[lo:lo + batch_size])
        for j, enc in enumerate(backend.encode_batch(chunk, add_special_tokens=False)):
            ids_out.append(np.asarray(enc.ids, dtype=np.int64))
            if labels_out is not None:
                offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
                labels_out.append(token_labels(offsets, char_labels[lo + j], chunk[j]))
        bar.update(len(chunk))
    bar.close()
    return ids_out, labels_out


# ----------------------------------------------------------------------------- token stream cache

@dataclass
class TokenStream:
    """A token stream (1-D memmap of ids), its uint8 labels (synthetic corpus only) and metadata."""

    tokens: np.ndarray
    labels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$DUOLIB_CACHE``, else ``~/.cache/duolib``."""
    return Path(cache_dir or os.environ.get("DUOLIB_CACHE") or Path.home() / ".cache" / "duolib").expanduser()


def _save_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an ``.npy`` file through a memmap, atomically."""
    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
        out[:] = array
        out.flush()
        del out
    atomic_write(path, write)


def _part(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def load_stream(base: str | os.PathLike) -> TokenStream | None:
    """The stream cached at ``base`` (``.json`` + ``.tokens.npy`` [+ ``.labels.npy``]) as memmaps, or None.

    The arrays are checked against the size and sha256 the sidecar recorded; a damaged, truncated or
    unchecked entry gives None after a warning naming it (the caller rebuilds it)."""
    base = Path(base)
    if not _part(base, ".json").is_file():
        return None
    why = None
    try:
        meta = json.loads(_part(base, ".json").read_bytes().decode("utf-8"))
        files = meta.pop("files", None)
        if files is None:  # written before content checks: rebuilt once, quietly (nothing is wrong with it)
            return None
        if not isinstance(files, dict):
            why = f"{_part(base, '.json')} holds no valid content check"
        for suffix, expected in (files or {}).items():
            why = why or mismatch(_part(base, suffix), expected)
        if why is None:
            tokens = np.load(_part(base, ".tokens.npy"), mmap_mode="r")
            labels = np.load(_part(base, ".labels.npy"), mmap_mode="r") if meta["has_labels"] else None
            return TokenStream(tokens, labels, meta)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        why = f"{base} is unreadable ({type(err).__name__}: {err})"
    warnings.warn(f"token cache rebuilt: {why}", stacklevel=2)
    return None


def build_stream(texts: Sequence[str], tok, base: str | os.PathLike, meta: dict, *,
                 char_labels: Sequence[np.ndarray] | None = None, progress: bool = False) -> TokenStream:
    """Tokenise ``texts`` into one stream ``eos t1 eos t2 ... eos``, cache it at ``base``, load it back.

    Token ids are stored as :func:`token_dtype`; with ``char_labels`` the token labels are cached
    alongside (uint8, eos tokens labelled 0).  The JSON sidecar (``meta`` plus n_tokens, n_docs,
    n_chars, vocab_size, dtype, has_labels) is written last: a stream counts as cached once complete.
    """
    if not texts:
        raise ValueError(f"no documents to tokenise for split {meta.get('split')!r} of corpus {meta.get('corpus')!r}")
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(base.parent)
    _part(base, ".json").unlink(missing_ok=True)  # the sidecar marks a complete entry: gone while rebuilding
    ids, labs = encode_texts(tok, texts, char_labels, progress=progress, desc=f"tokenizing {meta.get('split', '')}")
    dtype = token_dtype(len(tok))
    sep = np.array([tok.convert_tokens_to_ids(EOS_TOKEN)])
    _save_array(_part(base, ".tokens.npy"), np.concatenate([x for a in ids for x in (sep, a)] + [sep]).astype(dtype))
    if labs is not None:
        zero = np.zeros(1, np.uint8)
        _save_array(_part(base, ".labels.npy"), np.concatenate([x for a in labs for x in (zero, a)] + [zero]))
    meta = {**meta, "n_tokens": sum(len(a) + 1 for a in ids) + 1, "n_docs": len(texts),
            "n_chars": sum(len(t) for t in texts), "vocab_size": len(tok), "dtype": str(dtype),
            "has_labels": labs is not None,
            "files": {sfx: digest(_part(base, sfx)) for sfx in (".tokens.npy", ".labels.npy")[:1 + (labs is not None)]}}
    atomic_write(_part(base, ".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    return load_stream(base)
