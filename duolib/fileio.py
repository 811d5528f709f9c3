"""Atomic file writes: write to a temporary name (or folder) beside the target, then rename it into place.

A reader (or a run killed at any moment) never sees a half-written file.  Temporary names carry the
writer's pid (``.NAME.PID.tmp``), so :func:`remove_stale_temps` can tell the leftovers of a killed
writer from the files of one still running."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path`` (the folder must exist)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON (indented, keys sorted) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yield a temporary folder next to ``target``; on success it replaces ``target`` (else it is removed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        umask_modes(tmp)  # mkdtemp's 0700 (and safetensors' 0600) would make the folder private
        if target.exists():
            old = target.with_name(f".old-{target.name}-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders (``.NAME.PID.tmp``) of writers no longer running in
    ``folder``; returns what was removed.  A live writer's temporaries are left alone."""
    folder = Path(folder)
    removed = []
    for p in folder.iterdir() if folder.is_dir() else []:
        m = _TEMP.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def umask_modes(path: str | os.PathLike) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes a plain ``open`` / ``mkdir`` would under
    the process umask.  ``tempfile.mkdtemp`` makes 0700 folders and safetensors writes 0600 files; renamed
    into place they would leave saved models readable only by their owner (not by a container, a web server
    or a colleague) whatever the umask says."""
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    path = Path(path)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
