"""Checkpoints of Stage-1 training: ``checkpoint/step-NNNNNNNN`` folders written atomically, found,
verified against their manifest and loaded back (model, optimiser, scheduler, trainer state and RNG
states, with no pickle that can run code).  Their layout is described in :mod:`duolib.train.run_folder`, whose :class:`~duolib.train.run_folder.RunFolder`
writes and reads them."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_dir, write_json
from ..folders import RunFolderError, writing
from ..manifests import confined
from ..utils import config_differences, file_sha256, json_hash
from .model_files import save_model, unwrap_model


CKPT_DIR = "checkpoint"
STATE_FILE, RNG_FILE, LEGACY_STATE_FILE = "trainer_state.json", "rng.safetensors", "trainer_state.pt"
CHECKPOINT_NAME = re.compile(r"step-\d{8}")


def _save_trainer_state(folder: Path, step: int, extra: dict) -> None:
    """Step, counters and RNG states as JSON + safetensors (bitwise: integers and exact float reprs)."""
    from safetensors.torch import save_file

    algorithm, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64)),
               "python": torch.tensor(py_state, dtype=torch.int64)}
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    tensors.update({f"cuda.{i}": s for i, s in enumerate(cuda)})
    save_file(tensors, str(folder / RNG_FILE))
    write_json(folder / STATE_FILE, dict(step=step, **extra, cuda_devices=len(cuda),
                                         numpy=dict(algorithm=algorithm, pos=int(pos), has_gauss=int(has_gauss),
                                                    cached_gaussian=float(cached)),
                                         python=dict(version=version, gauss_next=gauss_next)))


def _load_trainer_state(folder: Path) -> dict:
    """The trainer state of a checkpoint with its RNG states restored; never unpickles code."""
    from safetensors.torch import load_file

    if not (folder / STATE_FILE).is_file():
        raise ValueError(f"checkpoint {folder} holds {LEGACY_STATE_FILE}, the trainer state of an earlier release (a "
                         f"pickle, never read on resume); convert it with `duo migrate {folder.parent.parent}` first, "
                         f"or restart the run (--no-resume)")
    state = json.loads((folder / STATE_FILE).read_text())
    t = load_file(str(folder / RNG_FILE))
    torch.set_rng_state(t["torch"])
    n = state["numpy"]
    np.random.set_state((n["algorithm"], t["numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in t["python"].tolist()), py["gauss_next"]))
    if state.get("cuda_devices") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t[f"cuda.{i}"] for i in range(state["cuda_devices"])])
    return state


def convert_legacy_checkpoint(folder: Path) -> bool:
    """Rewrite a checkpoint of an earlier release, whose trainer state is a pickle (``trainer_state.pt``), in
    today's format (``trainer_state.json`` + ``rng.safetensors``) with its manifest; False if there is nothing
    to convert.  Only ``duo migrate`` calls this, never a resume: the pickle is read with
    ``weights_only=True`` (tensors, numpy arrays and plain containers), so a payload that would run code is
    refused, naming the file.  The process's own RNG states are left as they were."""
    folder = Path(folder)
    legacy = folder / LEGACY_STATE_FILE
    try:  # finish a conversion a kill interrupted: the manifest says which state is the checkpoint's
        listed = json.loads((folder / "manifest.json").read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        listed = {}
    if isinstance(listed, dict) and legacy.is_file():
        if LEGACY_STATE_FILE in listed:
            for name in (STATE_FILE, RNG_FILE):
                if name not in listed:
                    (folder / name).unlink(missing_ok=True)
        elif STATE_FILE in listed:
            legacy.unlink()
    manifest = verify_checkpoint(folder)
    if not legacy.is_file():
        return False
    from numpy._core.multiarray import _reconstruct  # numpy arrays in the pickle, as numpy itself saves them

    try:
        with torch.serialization.safe_globals([_reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]):
            state = torch.load(legacy, weights_only=True)
        rng = state.pop("rng")
        step = int(state.pop("step"))
    except Exception as err:  # noqa: BLE001 - anything unpicklable under weights_only is refused
        raise ValueError(f"{legacy} is not a plain trainer state (refused without unpickling: "
                         f"{str(err).splitlines()[-1][:200]}); nothing was converted: delete that checkpoint "
                         f"folder, or restart the run (--no-resume)") from None
    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        _save_trainer_state(folder, step, state)  # the RNG states just set, as a resume restores them
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])
    files = {k: v for k, v in manifest["files"].items() if k != LEGACY_STATE_FILE}
    files.update({p.name: dict(size=p.stat().st_size, sha256=file_sha256(p)) for p in (folder / STATE_FILE,
                                                                                        folder / RNG_FILE)})
    write_json(folder / "manifest.json", dict(step=step, files=files, checksum=json_hash(files)))
    legacy.unlink()  # listed no more: the new state files are the checkpoint's
    return True


def load_plain(path: Path):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.  A file that needs
    anything else (a pickle that could run code) is refused with a ValueError naming it; torch's own
    message would suggest ``weights_only=False``, which would run that code."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever weights_only refuses is refused here, named
        raise ValueError(f"{path} is not a plain tensor file (refused without running it: "
                         f"{type(err).__name__}); it was replaced or damaged: delete that checkpoint folder to "
                         f"resume from an older one, or restart the run (--overwrite)") from None


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, ident: dict, extra: dict,
                    keep: int = 2) -> Path:
    """Write ``checkpoint/step-NNNNNNNN`` atomically, point ``checkpoint/latest`` at it, prune old ones."""
    root = Path(run_dir) / CKPT_DIR
    name = f"step-{step:08d}"
    with writing(root / name, "the checkpoint"), atomic_dir(root / name) as tmp:
        save_model(model, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        _save_trainer_state(tmp, step, extra)
        write_json(tmp / "train_config.json", ident)
        manifest = {p.name: dict(size=p.stat().st_size, sha256=file_sha256(p)) for p in sorted(tmp.iterdir())}
        write_json(tmp / "manifest.json", dict(step=step, files=manifest, checksum=json_hash(manifest)))
    tmp_latest = root / f".latest.{os.getpid()}.tmp"
    tmp_latest.write_text(name)
    os.replace(tmp_latest, root / "latest")
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder of a run (``checkpoint/latest``, else the highest step), or None."""
    root = Path(run_dir) / CKPT_DIR
    latest = root / "latest"
    if latest.is_file():
        try:
            name = latest.read_text().strip()
        except (OSError, UnicodeDecodeError):
            name = None
        if name and CHECKPOINT_NAME.fullmatch(name) and (root / name).is_dir() and not (root / name).is_symlink():
            return root / name
        # a name outside the run (``../other``, an absolute path, a link) is never followed
        warnings.warn(f"{latest} is unreadable or names no checkpoint folder of this run ({name!r}); using the "
                      f"newest step-* folder", stacklevel=2)
    steps = sorted(p for p in root.glob("step-*") if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()
                   and not p.is_symlink()) if root.is_dir() else []
    return steps[-1] if steps else None


def verify_checkpoint(path: Path) -> dict:
    """Check every file of a checkpoint against its manifest; ValueError naming what is wrong."""
    advice = ("delete the checkpoint folder to resume from an older one, or restart the run "
              "(resume=False / --no-resume, or overwrite=True / --overwrite)")
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path} is incomplete or corrupted (unreadable manifest.json: {err}); {advice}") from None
    if not isinstance(files, dict) or manifest.get("checksum", json_hash(files)) != json_hash(files):
        raise ValueError(f"checkpoint {path} is corrupted (manifest.json does not match its checksum); {advice}")
    for name, info in files.items():
        try:
            p = confined(path, name)
        except RunFolderError as err:
            raise ValueError(f"checkpoint {path} is corrupted: {err}; {advice}") from None
        if not isinstance(info, dict) or not p.is_file():
            raise ValueError(f"checkpoint {path} is incomplete: {name} is missing; {advice}")
        if p.stat().st_size != info["size"]:
            raise ValueError(f"checkpoint {path} is truncated: {name} has {p.stat().st_size} bytes, "
                             f"expected {info['size']}; {advice}")
        if file_sha256(p) != info["sha256"]:
            raise ValueError(f"checkpoint {path} is corrupted: {name} does not match its sha256; {advice}")
    extra = sorted(p.name for p in path.iterdir() if p.name not in files and p.name != "manifest.json")
    if extra:  # an added weights file would be loaded over the checked ones
        raise ValueError(f"checkpoint {path} holds {extra[0]}, which its manifest.json does not list (added after "
                         f"the checkpoint was written); remove it, or {advice}")
    return manifest


def load_checkpoint(path: Path, model, optimizer, scheduler, ident: dict, other_steps: bool = False) -> dict:
    """Verify and load a checkpoint into model / optimizer / scheduler; returns the trainer state.

    ``other_steps``: the checkpoint may come from a shorter run (a finished run being extended)."""
    from safetensors.torch import load_file

    files = verify_checkpoint(path)["files"]
    saved = json.loads((path / "train_config.json").read_text())
    diff = [d for d in config_differences(saved, ident) if not (other_steps and d.startswith("train.steps:"))]
    if diff:
        raise ValueError(f"checkpoint {path} was written by a run with a different config:\n  " + "\n  ".join(diff)
                         + "\nuse another run folder, or overwrite=True / --overwrite to start this one afresh")
    weights = sorted(path / n for n in files if n.endswith(".safetensors") and n != RNG_FILE)
    state = {}
    for w in weights:
        state.update(load_file(w))
    target = unwrap_model(model)
    missing, unexpected = target.load_state_dict(state, strict=False)
    tied = set(getattr(target, "_tied_weights_keys", None) or {}) if target.config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied and k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing}, unexpected {unexpected}")
    optimizer.load_state_dict(load_plain(path / "optimizer.pt"))
    scheduler.load_state_dict(load_plain(path / "scheduler.pt"))
    return _load_trainer_state(path)
