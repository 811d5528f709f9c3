"""Run folders and verified files: recognise a duolib folder (its ``.duolib`` marker alone), clear one
safely, lock it (one writer, :func:`claim`; readers share, :func:`reading`) and check file contents.

* :func:`claim` takes an exclusive ``fcntl.flock`` on ``FOLDER/.lock`` (opened without following links)
  for the life of a writer; a second writer or a reader gets :class:`RunFolderError` naming the holder's
  pid.  The lock file stays (removing it would let a third process lock a new file meanwhile).
* :func:`clear` deletes the contents of a marked duolib folder only; :func:`migrate` marks an old one.
* :func:`write_manifest` / :func:`verify_manifest`: size and sha256 of every file of a folder
  (``final/``, routers, oracle results); :func:`write_checked` / :func:`read_checked`: one cache file
  with a ``.sha256`` sidecar, rebuilt by its caller when the check fails.
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
from typing import Callable, Iterator

from .fileio import atomic_write, atomic_write_text

LOCK_FILE = ".lock"
MARKER = ".duolib"
MANIFEST = "manifest.json"
BOOKKEEPING = (LOCK_FILE, MARKER)
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
