"""Verified files: what a folder or a cache file holds, checked before it is used.

* :func:`write_manifest` / :func:`verify_manifest`: size and sha256 of every file of a folder (``final/``,
  routers, oracle results), refused when a file is missing, changed, added, or a name leaves the folder;
* :func:`write_checked` / :func:`read_checked`: one cache file with a ``.sha256`` sidecar, rebuilt by its
  caller when the check fails;
* :func:`digest` / :func:`mismatch`: one file's size and sha256 (token caches, logs).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from .fileio import atomic_write, atomic_write_text
from .folders import BOOKKEEPING, RunFolderError, folder_kind, json_hash, read_json

MANIFEST = "manifest.json"
#: Files hashed in full up to this size; larger ones by size plus 64 evenly spread 1 MiB blocks
#: (hashing a 300B-token cache on every load would take longer than the work it feeds).
FULL_HASH_BYTES = 1 << 30
_BLOCK = 1 << 20


def digest(path: str | os.PathLike) -> dict:
    """``{"size": bytes, "sha256": hex}`` of a file (sampled beyond :data:`FULL_HASH_BYTES`)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(_BLOCK), b""):
                h.update(block)
        else:
            for i in range(64):
                f.seek((size - _BLOCK) * i // 63)
                h.update(f.read(_BLOCK))
    return {"size": size, "sha256": h.hexdigest(), **({"sampled": True} if size > FULL_HASH_BYTES else {})}


def mismatch(path: str | os.PathLike, expected: dict) -> str | None:
    """Why ``path`` does not match ``expected`` (a :func:`digest`), or None when it does."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != expected.get("size"):
        return f"{path} has {size} bytes, expected {expected.get('size')} (truncated or replaced)"
    if digest(path)["sha256"] != expected.get("sha256"):
        return f"{path} does not match its recorded sha256 (corrupted)"
    return None


def write_manifest(folder: str | os.PathLike) -> dict:
    """Record :func:`digest` of every file under ``folder`` in ``folder/manifest.json`` (written last).
    A run folder's own lock and marker stay unlisted: they change while the results do not."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): digest(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p != folder / MANIFEST and p.relative_to(folder).parts[0] not in BOOKKEEPING}
    atomic_write_text(folder / MANIFEST, json.dumps(dict(files=files, checksum=json_hash(files)), indent=1,
                                                    sort_keys=True))
    return files


def confined(folder: str | os.PathLike, name: str, what: str = "manifest") -> Path:
    """``folder / name`` for a relative file name recorded in a ``what`` of ``folder``; RunFolderError when
    the name is absolute, climbs out with ``..``, or leads through a symlink (recorded names are written
    by duolib, so anything else means the record was edited: nothing outside the folder is read)."""
    folder = Path(folder)
    parts = Path(name).parts if isinstance(name, str) and name else ("",)
    if (not isinstance(name, str) or not name or Path(name).is_absolute() or "\\" in name
            or any(p in ("..", ".", "") for p in parts)):
        raise RunFolderError(f"{folder}: the {what} names {name!r}, which is not a file inside the folder; "
                             f"the {what} was edited: restore the folder from a copy or recreate it")
    path = folder
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise RunFolderError(f"{path} is a symbolic link; duolib writes none, so it was replaced: restore "
                                 f"the folder from a copy or recreate it")
    return path


def verify_manifest(folder: str | os.PathLike, advice: str, required: bool = True) -> None:
    """RunFolderError naming the first file of ``folder`` that does not match its manifest: changed,
    truncated, missing, a symlink, outside the folder, or present but not listed (an extra weights file
    would be loaded).  A folder without a manifest is refused too (deleting the manifest must not switch
    the check off), unless ``required=False``: a model folder duolib did not write (a plain Hugging Face
    save) has none to check."""
    folder = Path(folder)
    if not required and not os.path.lexists(folder / MANIFEST):
        return
    if not (folder / MANIFEST).is_file() or (folder / MANIFEST).is_symlink():
        raise RunFolderError(f"{folder / MANIFEST} is missing, so the files of {folder} cannot be checked; {advice}")
    info = read_json(folder / MANIFEST)
    if (not isinstance(info, dict) or not isinstance(info.get("files"), dict)
            or info.get("checksum", json_hash(info["files"])) != json_hash(info["files"])):  # none: older manifests
        raise RunFolderError(f"{folder / MANIFEST} is unreadable or does not match its checksum (corrupted); {advice}")
    try:
        for name, expected in info["files"].items():
            why = mismatch(confined(folder, name), expected if isinstance(expected, dict) else {})
            if why:
                raise RunFolderError(f"{why}; {advice}")
    except RunFolderError as err:
        raise RunFolderError(str(err) if advice in str(err) else f"{err}; {advice}") from None
    listed = set(info["files"]) | {MANIFEST}
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() not in listed
                   and p.relative_to(folder).parts[0] not in BOOKKEEPING)
    if extra:
        raise RunFolderError(f"{folder / extra[0]} is not listed in {folder / MANIFEST} (a file added after the "
                             f"folder was written; it could replace what was checked); remove it. {advice}")


def verify_model_folder(path) -> None:
    """The check of ``from_pretrained`` on a local folder: a folder with a manifest (duolib wrote it) is
    verified against it, and a run's ``final/`` must have one; other folders and hub names pass."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return
    path = Path(path)
    in_run = path.name == "final" and folder_kind(path.parent) == "duo train"
    verify_manifest(path, f"the model in {path} is damaged: restore it from a copy or retrain it "
                          f"(duo train --overwrite)", required=in_run)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_checked(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """``atomic_write(path, write)``, then its digest into ``path.sha256`` (the cache counts once both exist)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sidecar(path).unlink(missing_ok=True)
    atomic_write(path, write)
    atomic_write_text(_sidecar(path), json.dumps(digest(path)))


def read_checked(path: str | os.PathLike, read: Callable[[Path], object]):
    """``read(path)`` if ``path`` matches its ``.sha256`` sidecar and reads cleanly; else None after a
    warning (the caller recomputes and rewrites it).  A missing file or sidecar is None without a warning."""
    import warnings

    path = Path(path)
    if not path.exists() or not _sidecar(path).exists():  # absent, or written before sidecars: recomputed
        return None
    expected = read_json(_sidecar(path))
    why = mismatch(path, expected) if isinstance(expected, dict) else f"{path} has no valid {_sidecar(path).name}"
    if why is None:
        try:
            return read(path)
        except Exception as err:  # noqa: BLE001 - any unreadable cache entry is recomputed
            why = f"{path} is unreadable ({type(err).__name__}: {err})"
    warnings.warn(f"cache entry rebuilt: {why}", stacklevel=2)
    return None
