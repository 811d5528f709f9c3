"""The train / holdout split and the training mixture of :mod:`duolib.data.corpus`'s documents.

Split (:func:`split_documents`): every document is cut into blocks of about :data:`BLOCK_CHARS`
characters (whole lines); a block is held out when a seeded hash of its id falls below the holdout
fraction, so each holdout samples every work and file; the training pieces are the runs of kept
blocks.  Mixture (:func:`mix_train`): every English training piece plus Python pieces in hash order
until code makes up a given fraction of the training characters.
"""

from __future__ import annotations

import hashlib

from .document import Document

DEFAULT_HOLDOUT_FRACTION = 0.05
DEFAULT_CODE_FRACTION = 0.5
#: [ours] The split holds out blocks of about this many characters (whole lines; ~1,000 tokens,
#: several evaluation windows) from every document, so the holdout samples all works and files.
BLOCK_CHARS = 4096
SPLIT_SEED = 0


def doc_unit(doc_id: str) -> float:
    """Deterministic number in [0, 1) from ``sha256(doc_id)`` (split and ordering key)."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:16], 16) / 2**64


def work_id(doc_id: str) -> str:
    """The document a split piece came from (``english/hamlet_gut#3`` -> ``english/hamlet_gut``)."""
    return doc_id.split("#", 1)[0]


def block_bounds(text: str, block_chars: int = BLOCK_CHARS) -> list[int]:
    """Start offsets of the blocks of ``text`` plus ``len(text)``: a block ends at the first line end
    at or after each multiple of ``block_chars`` (so blocks hold whole lines)."""
    if block_chars < 1:
        raise ValueError(f"block_chars={block_chars} must be positive")
    bounds = [0]
    for m in range(block_chars, len(text), block_chars):
        cut = text.find("\n", m - 1) + 1  # just after the line end at or after offset m - 1
        if cut == 0 or cut >= len(text):
            break
        if cut > bounds[-1]:  # a line longer than a block spans several multiples
            bounds.append(cut)
    return bounds + [len(text)]


def _piece(doc: Document, lo: int, hi: int, name: str) -> Document:
    labels = None if doc.char_labels is None else doc.char_labels[lo:hi]
    return Document(f"{doc.doc_id}#{name}", doc.text[lo:hi], doc.source, labels)


def _held_blocks(group: list[Document], bounds: dict, fraction: float, seed: int) -> set[tuple[str, int]]:
    """The (doc_id, block) pairs of one source held out: seeded hash below ``fraction``; at least one
    block held and one kept (the smallest / largest hash decides)."""
    units = {(d.doc_id, b): doc_unit(f"{seed}:{d.doc_id}#{b}") for d in group for b in range(len(bounds[d.doc_id]) - 1)}
    if len(units) < 2:
        raise ValueError(f"source {group[0].source!r} has {len(units)} block(s): need 2 to split train/holdout")
    held = {key for key, u in units.items() if u < fraction}
    ranked = sorted(units, key=units.get)
    if not held:
        held = {ranked[0]}
    if len(held) == len(units):
        held.discard(ranked[-1])
    return held


def split_documents(docs: list[Document], holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION, *,
                    block_chars: int = BLOCK_CHARS, seed: int = SPLIT_SEED
                    ) -> tuple[list[Document], dict[str, list[Document]]]:
    """Split into (train pieces, {source: holdout blocks}) by blocks spread over every document.

    Every document is cut into blocks of about ``block_chars`` characters (:func:`block_bounds`);
    a block is held out when ``sha256(f"{seed}:{doc_id}#{block}")`` read as a number in [0, 1)
    falls below ``holdout_fraction``, so the holdout samples every work and file in proportion to
    its length.  Holdout pieces are single blocks (id ``doc_id#b``); the train pieces are the runs
    of consecutive kept blocks (id ``doc_id#a-b``), so no text is in both.  Both lists are in hash
    order.  Every source keeps a non-empty holdout and train split (ValueError if it has one block).
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction={holdout_fraction} must be in (0, 1)")
    train, holdout = [], {}
    for source in dict.fromkeys(d.source for d in docs):
        group = sorted((d for d in docs if d.source == source), key=lambda d: d.doc_id)
        bounds = {d.doc_id: block_bounds(d.text, block_chars) for d in group}
        held = _held_blocks(group, bounds, holdout_fraction, seed)
        pieces = []
        for d in group:
            b, n = bounds[d.doc_id], len(bounds[d.doc_id]) - 1
            i = 0
            while i < n:
                if (d.doc_id, i) in held:
                    pieces.append((True, _piece(d, b[i], b[i + 1], str(i))))
                    i += 1
                    continue
                j = i
                while j < n and (d.doc_id, j) not in held:
                    j += 1
                pieces.append((False, _piece(d, b[i], b[j], f"{i}-{j - 1}")))
                i = j
        holdout[source] = sorted((p for h, p in pieces if h), key=lambda p: doc_unit(p.doc_id))
        train += [p for h, p in pieces if not h]
    return sorted(train, key=lambda d: doc_unit(d.doc_id)), holdout


def mix_train(train: list[Document], code_fraction: float = DEFAULT_CODE_FRACTION) -> list[Document]:
    """Keep all English training docs and Python ones (hash order) until code is ``code_fraction`` of chars."""
    english = [d for d in train if d.source != "python"]
    target = sum(len(d.text) for d in english) * code_fraction / (1.0 - code_fraction)
    kept, total = [], 0
    for d in (d for d in train if d.source == "python"):
        if total >= target:
            break
        kept.append(d)
        total += len(d.text)
    return sorted(english + kept, key=lambda d: doc_unit(d.doc_id))
