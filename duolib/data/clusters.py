"""Which work or file each holdout window was cut from: the clusters of the cluster bootstrap
(:func:`duolib.stats.resample_weights` with ``clusters``).

A holdout stream is ``eos d1 eos d2 ... eos`` over its documents (:func:`duolib.data.tokenizer.build_stream`),
each a block of one work or file (:func:`duolib.data.split.split_documents`, ids ``work#block``).  The
stream keeps no document ids, so they are re-derived from the split its metadata records (corpus,
documents per source, holdout fraction, synthetic settings) and checked against its document count
and its separators: a stream and a split that disagree are refused, never silently mismatched.
"""

from __future__ import annotations

import numpy as np

from .batches import window_starts
from .corpus import Prepared, load_documents
from .split import split_documents, work_id


def window_documents(tokens, eos_id: int, starts, seq_len: int) -> np.ndarray:
    """For each window ``tokens[start : start + seq_len]``, the index (0-based, stream order) of the
    document holding most of its tokens (separators count with the document they open; a tie goes
    to the earlier document).  ValueError when the stream does not start with a separator."""
    tokens = np.asarray(tokens)
    if len(tokens) == 0 or tokens[0] != eos_id:
        raise ValueError(f"a holdout stream starts with the separator {eos_id}; this one starts with "
                         f"{tokens[:1].tolist()}: was it built by duolib.data.tokenizer.build_stream?")
    doc = np.cumsum(tokens == eos_id) - 1  # document of every token; the final separator closes the last one
    out = np.empty(len(starts), dtype=np.int64)
    for i, s in enumerate(np.asarray(starts, dtype=np.int64)):
        out[i] = np.bincount(doc[s:s + seq_len]).argmax()
    return out


def holdout_documents(data: Prepared, name: str) -> list[str]:
    """The document ids of holdout ``name`` of ``data`` in stream order, from the split its stream's
    metadata records; ValueError if they do not match the stream (document count, separators)."""
    stream = data.holdout[name]
    meta = stream.meta
    try:
        corpus, max_docs, syn, fraction = meta["corpus"], meta["max_docs"], meta["synthetic"], meta["holdout_fraction"]
    except KeyError as missing:
        raise ValueError(f"holdout {name!r}'s stream metadata lacks {missing}: rebuild its token cache "
                         f"(delete the cache folder) so that its documents can be named") from None
    _, holdout = split_documents(load_documents(corpus, max_docs=max_docs, synthetic=syn), fraction)
    docs = [d.doc_id for d in holdout.get(name, [])]
    n_sep = int(np.sum(np.asarray(stream.tokens) == data.eos_token_id))
    if len(docs) != meta.get("n_docs") or n_sep != len(docs) + 1:
        raise ValueError(f"holdout {name!r}: the split of corpus {corpus!r} gives {len(docs)} documents but the "
                         f"stream records {meta.get('n_docs')} and holds {n_sep} separators; its corpus files changed "
                         f"since the cache was built: rebuild the token cache")
    return docs


def holdout_window_works(data: Prepared, n_sequences: int, seq_len: int, seed: int = 0) -> dict[str, list[str]]:
    """Per holdout, the work or file (``english/hamlet_gut``, ``python/...``) of each of the windows that
    :func:`duolib.data.batches.holdout_sequences` draws with the same arguments, in the same order: the
    cluster labels of a cluster bootstrap over those windows."""
    out = {}
    for name, stream in data.holdout.items():
        docs = holdout_documents(data, name)
        starts = window_starts(len(stream.tokens), n_sequences, seq_len, seed)
        out[name] = [work_id(docs[i]) for i in window_documents(stream.tokens, data.eos_token_id, starts, seq_len)]
    return out
