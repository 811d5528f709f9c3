"""Folders duolib writes: where a relative one lies (:func:`resolve_folder`, the one rule), recognise a duolib
folder (its ``.duolib`` marker alone), clear one safely and lock it (one writer, :func:`claim`; readers
share, :func:`reading`).  The checks of what the files hold are :mod:`duolib.manifests`.

* :func:`claim` takes an exclusive ``fcntl.flock`` on ``FOLDER/.lock`` (opened without following links)
  for the life of a writer; a second writer or a reader gets :class:`RunFolderError` naming the holder's
  pid.  The lock file stays (removing it would let a third process lock a new file meanwhile).
* :func:`clear` deletes the contents of a marked duolib folder only; :func:`migrate` marks an old one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Iterator

from .fileio import atomic_write_text
from .moves import moved

#: Names that moved out of this module in this release (an import of one names its new module).
__getattr__ = moved(__name__, {"digest": "duolib.manifests.digest", "mismatch": "duolib.manifests.mismatch",
    "write_manifest": "duolib.manifests.write_manifest", "confined": "duolib.manifests.confined",
    "verify_manifest": "duolib.manifests.verify_manifest",
    "verify_model_folder": "duolib.manifests.verify_model_folder", "write_checked": "duolib.manifests.write_checked",
    "read_checked": "duolib.manifests.read_checked", "MANIFEST": "duolib.manifests.MANIFEST",
    "FULL_HASH_BYTES": "duolib.manifests.FULL_HASH_BYTES"})


LOCK_FILE = ".lock"
MARKER = ".duolib"
BOOKKEEPING = (LOCK_FILE, MARKER)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (busy, foreign, a file, unwritable, corrupted)."""


# ----------------------------------------------------------------------------- recognition

def json_hash(obj) -> str:
    """sha256 of ``obj`` as canonical JSON (:func:`duolib.utils.json_hash`, without importing torch)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_json(path: Path):
    """The JSON value in ``path``, or None when it is missing or not JSON (recognition never raises)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def folder_kind(path: str | os.PathLike) -> str | None:
    """The duolib writer a folder belongs to ("duo train", "duo oracle", "duo route", "duo book"), from its
    ``.duolib`` marker alone; None otherwise.  What a folder's JSON files hold is never taken as proof:
    a user's own ``summary.json`` may well have a "results" key.  A folder of the previous release gets
    its marker from :func:`duolib.migrate.migrate` (``duo migrate DIR``)."""
    path = Path(path)
    if not path.is_dir() or (path / MARKER).is_symlink():
        return None
    marker = read_json(path / MARKER)
    if isinstance(marker, dict) and marker.get("written_by") == "duolib" and isinstance(marker.get("kind"), str):
        return marker["kind"]
    return None


def legacy_kind(path: str | os.PathLike) -> str | None:
    """The writer of a folder written by the previous release (no marker), from a strict signature; None
    when it does not match.  A ``duo train`` folder's config.json must hold exactly its identity, the
    sha256 of that identity and its config; a ``duo oracle`` folder's summary.json exactly the keys that
    release wrote, marked complete; a ``duo route`` folder a router/ (json + weights); the book a .pipeline/."""
    path = Path(path)
    if not path.is_dir():
        return None
    config, summary = read_json(path / "config.json"), read_json(path / "summary.json")
    if (isinstance(config, dict) and set(config) - {"extended"} == {"identity", "identity_hash", "config"}
            and config["identity_hash"] == json_hash(config["identity"])):
        return "duo train"
    oracle_keys = {"model", "corpus", "n_sequences", "seq_len", "choices", "seed", "results", "complete"}
    if isinstance(summary, dict) and set(summary) == oracle_keys and summary["complete"] is True:
        return "duo oracle"
    if (path / "router" / "router.json").is_file() and (path / "router" / "router.safetensors").is_file():
        return "duo route"
    return "duo book" if (path / ".pipeline").is_dir() else None  # the book pipeline's own state folder


def is_duolib_folder(path: str | os.PathLike) -> bool:
    return folder_kind(path) is not None  # a folder duolib wrote


def _foreign_entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)


def checkout_root(start: str | os.PathLike | None = None) -> Path | None:
    """The duolib checkout holding ``start`` (default: the current folder): the nearest folder at or above it
    with ``_config.yml``, ``book/_toc.yml`` and ``notebooks/``; None outside any checkout."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file() and (folder / "book" / "_toc.yml").is_file() \
                and (folder / "notebooks").is_dir():
            return folder
    return None


def resolve_folder(path: str | os.PathLike | None, default: str | os.PathLike,
                   root: str | os.PathLike | None = None) -> Path:
    """Where a run folder lies, by the one rule every command (``--out``) and the book (``duo book --out``, a
    notebook's ``run_dir``) follow: an absolute path as given; a relative one, and ``default`` when ``path``
    is None, taken from the project root: ``root`` when given (a notebook's checkout), else the duolib
    checkout holding the current folder (:func:`checkout_root`), else the current folder.  Absolute."""
    p = Path(default if path is None else path).expanduser()
    if p.is_absolute():
        return p
    base = Path(root) if root is not None else (checkout_root() or Path.cwd())
    return (base / p).resolve()


def check_usable(path: str | os.PathLike) -> Path:
    """RunFolderError unless ``path`` is absent, an empty folder or a duolib folder (nothing written)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} is a file, not a folder; give a folder path (new or a duolib run folder)")
    if path.is_dir() and not is_duolib_folder(path):
        names = _foreign_entries(path)
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            hint = (f"; it looks like a run folder of an earlier duolib release: mark it with `duo migrate {path}` "
                    f"first" if legacy_kind(path) else "")
            raise RunFolderError(f"{path} holds files that duolib did not write ({shown}); it is not a duolib "
                                 f"run folder (no valid {MARKER} marker), so nothing there is deleted or "
                                 f"overwritten: use a new or empty folder{hint}")
    return path


def clear(path: str | os.PathLike, keep: tuple[str, ...] = ()) -> None:
    """Delete what a duolib folder holds (its lock and marker stay, and the entries named in ``keep``: e.g. a
    run's log, which the new run replaces in one rename when it writes its own); RunFolderError for any
    other folder."""
    path = check_usable(path)
    if not path.is_dir():
        return
    # the summary goes first (a folder being cleared no longer claims to be finished), the log last (a kill
    # midway never leaves checkpoints to resume from without their log)
    for p in sorted(path.iterdir(), key=lambda p: (p.name != "summary.json", p.name == "metrics.jsonl")):
        if p.name not in (LOCK_FILE, MARKER) + tuple(keep):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# ----------------------------------------------------------------------------- the lock

def _holder(lock: Path) -> str:
    info = read_json(lock) or {}
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
    fd = open_lock(lock, write=True)
    try:
        _flock(fd, path, lock, shared=False)
        info = json.dumps(dict(pid=os.getpid(), what=what, since=time.strftime("%Y-%m-%d %H:%M:%S")))
        os.ftruncate(fd, 0)  # our own regular, single-link file (open_lock checked): truncating it is safe
        os.pwrite(fd, info.encode(), 0)
        if not (path / MARKER).is_file():
            atomic_write_text(path / MARKER, json.dumps(dict(written_by="duolib", kind=what)) + "\n")
        yield path
    finally:
        os.close(fd)  # closing releases the flock


def open_lock(lock: Path, write: bool) -> int | None:
    """A file descriptor of lock file ``lock``, opened without following a symlink (a received run folder
    whose ``.lock`` points at another file must not get that file truncated) and refused unless it is a
    regular file with one link.  ``write=False`` (a reader) opens it read-only and returns None when it
    does not exist and cannot be created (a read-only run nobody is writing)."""
    flags = (os.O_RDWR | os.O_CREAT) if write else os.O_RDONLY
    try:
        fd = os.open(lock, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileNotFoundError:
        if write:
            raise
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            return open_lock(lock, write)  # created meanwhile by a writer
        except OSError:
            return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunFolderError(f"{lock} is a symbolic link, not a lock file; remove it (rm {lock}) and retry: "
                                 f"duolib never follows it, so the file it points to stays untouched") from None
        raise RunFolderError(f"cannot open the lock file {lock}: {err.strerror}; fix its permissions or use "
                             f"another folder") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise RunFolderError(f"{lock} is not a plain lock file (a hard link or a special file); remove it "
                             f"(rm {lock}) and retry")
    return fd


def _flock(fd: int, path: Path, lock: Path, shared: bool) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise RunFolderError(f"run folder {path} is in use by {_holder(lock)}; wait for it to finish, "
                             f"or use another folder") from None


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the shared lock of run folder ``path`` while the ``with`` block reads it: no writer (:func:`claim`)
    starts meanwhile; a folder being written is refused naming the writer.  Readers share it."""
    path = Path(path)
    fd = open_lock(path / LOCK_FILE, write=False) if path.is_dir() else None
    try:
        if fd is not None:
            _flock(fd, path, path / LOCK_FILE, shared=True)
        yield path
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def writing(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a failed write inside the block (a full disk, a quota, an I/O error; torch and safetensors
    report them as RuntimeError / SafetensorError without a path) into one RunFolderError that names
    ``what`` and ``target``, the free space there, and what to do.  Nothing half-written is left: the
    writers inside write to temporary names."""
    try:
        yield
    except RunFolderError:
        raise
    except (OSError, RuntimeError) as err:
        text = f"{type(err).__name__} {err}".lower()
        if isinstance(err, RuntimeError) and not any(k in text for k in ("safetensorerror", "iostream", "no space",
                                                                          "storagefull", "ioerror", "write")):
            raise
        target = Path(target)
        free = shutil.disk_usage(next(p for p in [target, *target.parents] if p.exists())).free / 1e6
        cause = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
        raise RunFolderError(f"could not write {what} {target} ({cause}; {free:,.0f} MB free): free some disk "
                             f"space (or fix the folder's permissions) and rerun; a training run resumes from its "
                             f"last complete checkpoint") from None
