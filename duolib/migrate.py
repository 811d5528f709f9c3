"""``duo migrate DIR``: a folder written by an earlier duolib release, before folders carried the ``.duolib``
marker, gets its marker once its strict signature (:func:`duolib.folders.legacy_kind`) matches.  Marking is
done only on request, never on the fly: :func:`duolib.folders.folder_kind` trusts the marker alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .fileio import atomic_write_text
from .folders import MARKER, RunFolderError, folder_kind, legacy_kind


def migrate(path: str | os.PathLike) -> str:
    """Give a folder written by the previous release its ``.duolib`` marker (``duo migrate DIR``), after
    checking its signature (:func:`legacy_kind`); returns its kind.  RunFolderError for any other folder."""
    path = Path(path)
    kind = folder_kind(path)
    if kind is not None:
        return kind
    kind = legacy_kind(path)
    if kind is None:
        raise RunFolderError(f"{path} does not look like a run folder of an earlier duolib release (no "
                             f"config.json with a matching identity_hash, no complete oracle summary.json, no "
                             f"router/); nothing was changed")
    atomic_write_text(path / MARKER, json.dumps(dict(written_by="duolib", kind=kind)) + "\n")
    return kind
