"""The document record shared by the corpus loaders (:mod:`duolib.data.corpus`) and the synthetic
language (:mod:`duolib.data.synthetic`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Document:
    """One document: a stable id (``source/name``), its text, its source and optional char labels."""

    doc_id: str
    text: str
    source: str
    char_labels: np.ndarray | None = field(default=None, compare=False, repr=False)
