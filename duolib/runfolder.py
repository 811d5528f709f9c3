"""Run folders and verified files: recognise a duolib folder, clear one safely, lock one for a
single writer, and check file contents against recorded sizes and sha256 digests.

* :func:`claim` takes an exclusive ``fcntl.flock`` on ``FOLDER/.lock`` for the life of a writer
  (``duo train``, ``duo oracle``, ``duo route``, the book pipeline); a second writer gets
  :class:`RunFolderError` naming the holder's pid.  The lock file stays (removing it would let a
  third process lock a new file while the second still holds the old one).
* :func:`clear` deletes the contents of a folder only when it is recognisably a duolib folder
  (:func:`is_duolib_folder`); it never deletes files duolib did not write.
* :func:`write_manifest` / :func:`verify_manifest`: size and sha256 of every file of a folder
  (``final/``, checkpoints); :func:`write_checked` / :func:`read_checked`: one cache file with a
  ``.sha256`` sidecar, rebuilt by its caller when the check fails.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from .fileio import atomic_write, atomic_write_text

LOCK_FILE = ".lock"
MARKER = ".duolib"
MANIFEST = "manifest.json"
#: Files hashed in full up to this size; larger ones by size plus 64 evenly spread 1 MiB blocks
#: (hashing a 300B-token cache on every load would take longer than the work it feeds).
FULL_HASH_BYTES = 1 << 30
_BLOCK = 1 << 20

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (busy, foreign, a file, unwritable, corrupted)."""


# ----------------------------------------------------------------------------- recognition

def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def folder_kind(path: str | os.PathLike) -> str | None:
    """The duolib writer a folder belongs to ("duo train", "duo oracle", "duo route", "duo book"), from its
    ``.duolib`` marker or, for folders written before the marker, from what they hold; None otherwise."""
    path = Path(path)
    if not path.is_dir():
        return None
    marker = _json(path / MARKER)
    if isinstance(marker, dict) and marker.get("kind"):
        return marker["kind"]
    config, summary = _json(path / "config.json"), _json(path / "summary.json")
    trained = isinstance(summary, dict) and "identity_hash" in summary
    if trained or (isinstance(config, dict) and "identity" in config):
        return "duo train"
    if isinstance(summary, dict) and "results" in summary:
        return "duo oracle"
    if (path / "router" / "router.json").is_file():
        return "duo route"
    return "duo book" if (path / ".pipeline").is_dir() else None


def is_duolib_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder duolib wrote (:func:`folder_kind` knows it)."""
    return folder_kind(path) is not None


def _foreign_entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)


def check_usable(path: str | os.PathLike) -> Path:
    """RunFolderError unless ``path`` is absent, an empty folder or a duolib folder (nothing written)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} is a file, not a folder; give a folder path (new or a duolib run folder)")
    if path.is_dir() and not is_duolib_folder(path):
        names = _foreign_entries(path)
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise RunFolderError(f"{path} holds files that duolib did not write ({shown}); it is not a duolib "
                                 f"run folder, so nothing there is deleted or overwritten: use a new or empty folder")
    return path


def clear(path: str | os.PathLike) -> None:
    """Delete what a duolib folder holds (its lock and marker stay); RunFolderError for any other folder."""
    path = check_usable(path)
    if not path.is_dir():
        return
    for p in path.iterdir():
        if p.name not in (LOCK_FILE, MARKER):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# ----------------------------------------------------------------------------- the lock

def _holder(lock: Path) -> str:
    info = _json(lock) or {}
    if info.get("pid"):
        return f"pid {info['pid']} ({info.get('what', 'a duolib writer')}, since {info.get('since', '?')})"
    return "another process"


# What a user mixing the book's layout (runs/<profile>: data caches, stage1/ the Stage-1 run, results/) with
# the command line most likely meant, by (the folder's writer, the command refused).
_LAYOUT_HINTS = {
    ("duo book", "duo train"): "; the book's Stage-1 run is {path}/stage1 (`duo train --profile P` with no --out "
                               "writes runs/P/stage1)",
    ("duo book", "duo oracle"): "; e.g. --out {path}/oracle-cli (the book's Stage-1 model: --model {path}/stage1)",
    ("duo book", "duo route"): "; e.g. --out {path}/router-cli (the book's Stage-1 model: --model {path}/stage1)",
    ("duo train", "duo book"): "; the book keeps its Stage-1 run in a subfolder, stage1/: give the book (duo data, "
                               "duo book, run_dir) the folder above it, e.g. move {path} to runs/<profile>/stage1",
}


@contextlib.contextmanager
def claim(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the exclusive lock of folder ``path`` (created if needed) for the ``with`` block.

    ``what`` (e.g. "duo train") is recorded with the pid for the error a second writer gets.  The
    folder must be new, empty or a duolib folder (:func:`check_usable`); it gets the ``.duolib`` marker."""
    path = check_usable(path)
    kind = folder_kind(path)
    if kind is not None and kind != what:
        raise RunFolderError(f"{path} is a `{kind}` folder; give `{what}` a folder of its own (new or empty)"
                             + _LAYOUT_HINTS.get((kind, what), "").format(path=path))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create run folder {path}: {err.strerror}; choose a writable location") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunFolderError(f"run folder {path} is not writable; fix its permissions or choose another folder")
    lock = path / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise RunFolderError(f"run folder {path} is in use by {_holder(lock)}; wait for it to finish, "
                                     f"or use another folder") from None
        info = json.dumps(dict(pid=os.getpid(), what=what, since=time.strftime("%Y-%m-%d %H:%M:%S")))
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        if not (path / MARKER).is_file():
            atomic_write_text(path / MARKER, json.dumps(dict(written_by="duolib", kind=what)) + "\n")
        yield path
    finally:
        os.close(fd)  # closing releases the flock


# ----------------------------------------------------------------------------- content checks

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
    """Record :func:`digest` of every file under ``folder`` in ``folder/manifest.json`` (written last)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): digest(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    atomic_write_text(folder / MANIFEST, json.dumps(dict(files=files), indent=1, sort_keys=True))
    return files


def verify_manifest(folder: str | os.PathLike, advice: str) -> None:
    """RunFolderError naming the first file of ``folder`` that does not match its manifest.

    A folder without a manifest (written before manifests existed) is accepted unchecked."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        return
    info = _json(folder / MANIFEST)
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise RunFolderError(f"{folder / MANIFEST} is unreadable (corrupted); {advice}")
    for name, expected in info["files"].items():
        why = mismatch(folder / name, expected)
        if why:
            raise RunFolderError(f"{why}; {advice}")


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
    expected = _json(_sidecar(path))
    why = mismatch(path, expected) if isinstance(expected, dict) else f"{path} has no valid {_sidecar(path).name}"
    if why is None:
        try:
            return read(path)
        except Exception as err:  # noqa: BLE001 - any unreadable cache entry is recomputed
            why = f"{path} is unreadable ({type(err).__name__}: {err})"
    warnings.warn(f"cache entry rebuilt: {why}", stacklevel=2)
    return None
