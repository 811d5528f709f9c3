"""The synthetic labelled language of the C9 ground-truth check (corpus spec ``synthetic``).

Every character carries a label (:data:`LABEL_NAMES`): *easy* (fixed by the grammar), *compute*
(predictable, but only by computing it: a value recalled from a few statements earlier, or a fact of
a fixed table learned in the weights) and *noise* (drawn at random: unpredictable for any model).

[ours] Why these rules: the Duo paths share attention and differ only in FFN width, so a *compute*
token must need what a big FFN holds and a small one does not.  ``map K V`` asks for ``V = T[K]``
from a fixed random table of :attr:`SyntheticConfig.n_facts` pairs (more entries than the model's
width, so no linear map of the embeddings can hold it: FFN memory); ``get K ? V`` recalls a binding
at most ``max_gap`` statements back, so it lies inside the window the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from .document import Document

#: Token label codes of the synthetic corpus (uint8 in the caches); eos tokens are labelled 0.
LABEL_OTHER, LABEL_EASY, LABEL_COMPUTE, LABEL_NOISE = 0, 1, 2, 3
LABEL_NAMES = ("other", "easy", "compute", "noise")
LEXICON_SEED = 20241014


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic labelled language (seeded, deterministic)."""

    n_docs: int = 2000
    seed: int = 0
    min_statements: int = 20
    max_statements: int = 60
    n_keys: int = 64
    n_values: int = 64
    n_noise_words: int = 256
    n_facts: int = 256
    min_gap: int = 2
    max_gap: int = 8


_PHRASES = (
    "the quick brown fox jumps over the lazy dog", "all that glitters is not gold",
    "a stitch in time saves nine", "early birds catch the worm", "every cloud has a silver lining",
    "actions speak louder than words", "practice makes perfect", "knowledge is power",
)
# statement kinds and their probabilities: bind a key, recall a key, look up a fact, fixed phrase, noise.
_KINDS = ("let", "get", "map", "say", "hum")
_KIND_P = (0.2, 0.25, 0.35, 0.1, 0.1)


def synthetic_config(cfg=None) -> SyntheticConfig:
    """A :class:`SyntheticConfig` from None, a dict of fields or an instance (ValueError on bad gaps)."""
    if cfg is None:
        cfg = SyntheticConfig()
    elif not isinstance(cfg, SyntheticConfig):
        cfg = SyntheticConfig(**cfg)
    if not 1 <= cfg.min_gap <= cfg.max_gap:
        raise ValueError(f"synthetic min_gap={cfg.min_gap}, max_gap={cfg.max_gap}: need 1 <= min_gap <= max_gap")
    return cfg


@cache
def _lexicon(n_keys: int, n_values: int, n_noise: int, n_facts: int) -> tuple[list[str], ...]:
    """Disjoint pseudo-word lists (keys, values, noise words, fact keys, fact values), fixed whatever
    the corpus seed."""
    syl = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    pool = np.random.default_rng(LEXICON_SEED).permutation([a + b for a in syl for b in syl]).tolist()
    sizes = (n_keys, n_values, n_noise, n_facts, n_facts)
    if sum(sizes) > len(pool):
        raise ValueError(f"synthetic lexicon too large: at most {len(pool)} words in all, asked {sum(sizes)}")
    ends = np.cumsum((0,) + sizes)
    return tuple(pool[a:b] for a, b in zip(ends[:-1], ends[1:]))


def fact_table(cfg: SyntheticConfig | dict | None = None) -> dict[str, str]:
    """The fixed ``map`` table: fact key -> fact value (a seeded permutation, the same for every corpus seed)."""
    cfg = synthetic_config(cfg)
    *_, fact_keys, fact_values = _lexicon(cfg.n_keys, cfg.n_values, cfg.n_noise_words, cfg.n_facts)
    order = np.random.default_rng(LEXICON_SEED + 1).permutation(len(fact_values))
    return {k: fact_values[j] for k, j in zip(fact_keys, order)}


def _statement(kind: str, rng, cfg: SyntheticConfig, state: dict) -> list[tuple[str, int]]:
    """Words of one statement as (word, label) pairs; updates the bindings in ``state``."""
    keys, values, noise, fact_keys, _ = _lexicon(cfg.n_keys, cfg.n_values, cfg.n_noise_words, cfg.n_facts)
    if kind == "let":
        key = state["free"].pop()
        value = values[rng.integers(len(values))]
        state["bound"][key] = (value, state["i"])
        return [("let", LABEL_OTHER), (key, LABEL_NOISE), ("=", LABEL_EASY), (value, LABEL_NOISE), (".", LABEL_EASY)]
    if kind == "get":
        key = state["ready"][rng.integers(len(state["ready"]))]
        return [("get", LABEL_OTHER), (key, LABEL_OTHER), ("?", LABEL_EASY),
                (state["bound"][key][0], LABEL_COMPUTE), (".", LABEL_EASY)]
    if kind == "map":
        key = fact_keys[rng.integers(len(fact_keys))]
        return [("map", LABEL_OTHER), (key, LABEL_NOISE), (fact_table(cfg)[key], LABEL_COMPUTE), (".", LABEL_EASY)]
    if kind == "say":
        words = _PHRASES[rng.integers(len(_PHRASES))].split()
        rest = [(w, LABEL_EASY) for w in words[1:]] + [(".", LABEL_EASY)]
        return [("say", LABEL_OTHER), (words[0], LABEL_OTHER)] + rest
    picks = rng.integers(len(noise), size=4)
    return [("hum", LABEL_OTHER)] + [(noise[j], LABEL_NOISE) for j in picks] + [(".", LABEL_EASY)]


def synthetic_document(index: int, cfg: SyntheticConfig | dict | None = None) -> Document:
    """Synthetic document ``index``: statements, one a line, words separated by single spaces.

    ``let K = V .`` binds a key (K, V noise); ``get K ? V .`` recalls the value bound to K between
    ``min_gap`` and ``max_gap`` statements earlier (V compute); ``map K V .`` gives the fact
    ``V = fact_table()[K]`` (K noise, V compute); ``say`` + a fixed phrase (first word other, the
    rest easy); ``hum`` + 4 random words (noise).  Keywords and recalled keys are ``other``; ``=``,
    ``?``, ``.``, spaces and newlines easy.
    """
    cfg = synthetic_config(cfg)
    rng = np.random.default_rng([cfg.seed, index])
    keys = _lexicon(cfg.n_keys, cfg.n_values, cfg.n_noise_words, cfg.n_facts)[0]
    state = {"free": [keys[j] for j in rng.permutation(len(keys))], "bound": {}, "i": 0}
    pieces: list[tuple[str, int]] = []
    for i in range(int(rng.integers(cfg.min_statements, cfg.max_statements + 1))):
        state["i"] = i
        state["ready"] = [k for k, (_, at) in state["bound"].items() if cfg.min_gap <= i - at <= cfg.max_gap]
        kind = _KINDS[rng.choice(len(_KINDS), p=_KIND_P)]
        if kind == "get" and not state["ready"]:
            kind = "let"
        if kind == "let" and not state["free"]:
            kind = "hum"
        for j, (word, label) in enumerate(_statement(kind, rng, cfg, state)):
            pieces += [(" " if j else "", LABEL_EASY), (word, label)]
        pieces.append(("\n", LABEL_EASY))
    text = "".join(p for p, _ in pieces)
    labels = np.repeat(np.array([lab for _, lab in pieces], dtype=np.uint8), [len(p) for p, _ in pieces])
    return Document(f"synthetic/{index:06d}", text, "synthetic", labels)


def synthetic_documents(cfg: SyntheticConfig | dict | None = None) -> list[Document]:
    """The ``cfg.n_docs`` documents of the synthetic corpus."""
    cfg = synthetic_config(cfg)
    if cfg.n_docs < 2:
        raise ValueError(f"synthetic n_docs={cfg.n_docs}: need at least 2 (train and holdout)")
    return [synthetic_document(i, cfg) for i in range(cfg.n_docs)]
