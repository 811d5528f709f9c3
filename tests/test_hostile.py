"""A hostile user's damage to a finished run (issue 23): every file of a finished tiny run gets a flipped
byte, a truncation, a deletion and a replacement by a symlink (to an identical copy outside the run);
each consumer then reads the damaged copy.  Every case must end in an error that names the damaged file,
or in a result identical to the undamaged run's: never a silently different number.

Consumers: ``duo train`` on the finished run (found finished, or resumed), resume from the newest
checkpoint (loading it into a fresh model and optimiser), :func:`run_data`, transformers'
``AutoModelForCausalLM.from_pretrained`` of ``final/``, ``duo oracle`` and ``duo route``.  The cheap
consumer sees the damages of every file it opens (:data:`SCOPE`, :func:`cases`)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from duolib.cli import main
from duolib.folders import LOCK_FILE
from tiny_runs import tiny

DAMAGES = ("flip", "truncate", "delete", "symlink")
#: What a finished run's consumers read: everything but the log and the checkpoints.
LOADED = ("config.json", "summary.json", ".duolib", "final/", "tokenizer/")


def cfg(cache_dir):
    return tiny(cache_dir, steps=10, eval_every=10, checkpoint_every=5)


def files_of(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE)


def damage(path: Path, how: str, outside: Path) -> None:
    if how == "flip":
        data = bytearray(path.read_bytes() or b"\0")
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "delete":
        path.unlink()
    else:  # the same bytes, through a link out of the run
        target = outside / path.name
        shutil.copy(path, target)
        path.unlink()
        path.symlink_to(target)


def digest_tensors(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode() + t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- consumers: result or exception


def c_train(run, cache_dir, capsys):
    from duolib.train.loop import train

    return json.dumps(train(cfg(cache_dir), run).summary["final_eval"], sort_keys=True)


IDENTITY = {}


def c_resume(run, cache_dir, capsys):
    from duolib.train.build import build_model, make_optimizer, make_scheduler, trainable_parameters
    from duolib.train.checkpoint import latest_checkpoint, load_checkpoint
    from duolib.train.inputs import load_data
    from duolib.data.run_data import data_fingerprint
    from duolib.train.run_folder import identity

    c = cfg(cache_dir)
    if str(cache_dir) not in IDENTITY:
        IDENTITY[str(cache_dir)] = identity(c, data_fingerprint(load_data(c, None, 0)))
    model = build_model(c)
    optimizer = make_optimizer(trainable_parameters(model, c), c)
    state = load_checkpoint(latest_checkpoint(run), model, optimizer, make_scheduler(optimizer, c),
                            IDENTITY[str(cache_dir)])
    moments = [(f"{i}.{k}", v) for i, s in optimizer.state_dict()["state"].items() for k, v in sorted(s.items())]
    return f"{state['step']} {digest_tensors(model.state_dict().items())} {digest_tensors(moments)}"


def c_run_data(run, cache_dir, capsys):
    from duolib.data.run_data import data_fingerprint, run_data

    prep = run_data(run)
    return f"{data_fingerprint(prep)} {hashlib.sha256(bytes(memoryview(prep.train.tokens))).hexdigest()}"


def c_from_pretrained(run, cache_dir, capsys):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    config = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    return f"{digest_tensors(model.state_dict().items())} {json.dumps(config, sort_keys=True, default=str)}"


def cli(args, out_file):
    def consumer(run, cache_dir, capsys):
        out = run.parent / "out"
        shutil.rmtree(out, ignore_errors=True)
        capsys.readouterr()
        if main([args[0], "--model", str(run), "--out", str(out), *args[1:]]) != 0:
            raise ValueError(capsys.readouterr().err)
        return (out / out_file).read_text()
    return consumer


CONSUMERS = {
    "train": c_train, "resume": c_resume, "run_data": c_run_data, "from_pretrained": c_from_pretrained,
    "oracle": cli(["oracle", "--profile", "tiny", "--n-sequences", "2", "--seq-len", "16", "--no-progress"],
                  "synthetic/shared/per_k.csv"),
    "route": cli(["route", "--profile", "tiny", "--steps", "1", "--batch-size", "2", "--seq-len", "16",
                  "--eval-sequences", "2", "--no-progress"], "eval.csv"),
}


#: The files each consumer opens (the others cannot change what it computes): a finished run is found
#: finished without its checkpoints; resuming reads the newest checkpoint; transformers reads final/.
SCOPE = {"train": LOADED + ("metrics.jsonl",), "resume": ("checkpoint/latest", "checkpoint/step-00000010/"),
         "run_data": LOADED + ("metrics.jsonl",), "from_pretrained": ("final/",), "oracle": LOADED, "route": LOADED}


def cases(files: list[str], consumer: str) -> list[tuple[str, str]]:
    """Every damage of every file in the consumer's scope; ``duo oracle`` / ``duo route`` (a second each)
    load through :func:`run_data`'s checks, so they see each file once, the four damages taking turns."""
    files = [f for f in files if f.startswith(SCOPE[consumer])]
    if consumer in ("oracle", "route"):
        return [(f, DAMAGES[i % len(DAMAGES)]) for i, f in enumerate(files)]
    return [(f, how) for f in files for how in DAMAGES]


@pytest.mark.parametrize("consumer", list(CONSUMERS))
def test_every_damaged_file_is_named_or_changes_nothing(finished_run, cache_dir, tmp_path, capsys, consumer):
    use = CONSUMERS[consumer]
    reference = use(shutil.copytree(finished_run, tmp_path / "ref" / "run",
                                    ignore=shutil.ignore_patterns(LOCK_FILE)), cache_dir, capsys)
    files = files_of(finished_run)
    assert len(files) > 20 and "final/model.safetensors" in files and "tokenizer/tokenizer.json" in files
    silent, outcomes = [], {"named": 0, "identical": 0}
    # one copy, damaged and restored case by case; `duo train` may write into the run, so it gets a fresh copy
    shared = shutil.copytree(finished_run, tmp_path / "shared" / "run", ignore=shutil.ignore_patterns(LOCK_FILE))
    for i, (name, how) in enumerate(cases(files, consumer)):
        root = tmp_path / f"case{i}"
        (root / "outside").mkdir(parents=True)
        if consumer == "train":
            run = shutil.copytree(finished_run, root / "run", ignore=shutil.ignore_patterns(LOCK_FILE))
        else:
            run, original = shared, (shared / name).read_bytes()
        damage(run / name, how, root / "outside")
        try:
            got = use(run, cache_dir, capsys)
        except (ValueError, OSError) as err:  # RunFolderError is a ValueError
            message = str(err)
            named = Path(name).name in message or (name == ".duolib" and "marker" in message)
            outcomes["named"] += named
            if not named:
                silent.append(f"{how} {name}: error without the file's name: {message[-300:]}")
        else:
            outcomes["identical"] += got == reference
            if got != reference:
                silent.append(f"{how} {name}: a different result, no error")
        if run == shared:
            (run / name).unlink(missing_ok=True)
            (run / name).write_bytes(original)
        shutil.rmtree(root, ignore_errors=True)
    print(f"{consumer}: {sum(outcomes.values())} cases, {outcomes}")
    assert not silent, "\n".join(silent)
