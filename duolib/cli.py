"""The ``duo`` command line.

Every subcommand is one function ``cmd_NAME(args) -> int`` registered by a single
``@subcommand(...)`` line, which also declares its arguments::

    @subcommand("train", "train a Duo model", PROFILE, OUT, ...)
    def cmd_train(args):
        return entry_point("train")(args)   # the stage's code is imported only now

Registered subcommands appear in ``duo --help`` automatically, in registration
order. ``ENTRY_POINTS`` is the one table from a command to the function in its stage's
subpackage. Keep module-level imports light (stdlib only) so that ``duo --help`` is fast.
The same option means the same thing in every subcommand: ``--profile`` (default
``default``), ``--out`` (the folder a command writes), ``--no-progress``, ``--budget``.
A relative ``--out`` and every default folder (``runs/<profile>/...``) are taken from the project root, the
duolib checkout you are in, else from the current folder (:func:`duolib.folders.resolve_folder`; the
book's notebooks follow the same rule for ``run_dir``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .bookhtml import BookBuildError, build_book
from .cliargs import deprecated_alias, seed_value, threads_value

PRESETS = ("tiny", "default", "paper")

# command -> "module:function" taking the parsed arguments and returning an exit status
ENTRY_POINTS = {
    "train": "duolib.train.command:run_from_args",
    "oracle": "duolib.oracle.runs:cli_main",
    "route": "duolib.router.command:cli_main",
}

class CLIError(RuntimeError):
    """An error reported to the user as ``duo: error: ...`` with exit status 1."""


# --------------------------------------------------------------------------- registry


@dataclass
class _Command:
    name: str
    help: str
    func: Callable[[argparse.Namespace], int | None]
    arguments: Sequence[tuple[tuple[str, ...], dict[str, Any]]] = field(default_factory=tuple)


_COMMANDS: list[_Command] = []


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One argument of a subcommand, as given to ``ArgumentParser.add_argument``."""
    return flags, kwargs


def subcommand(name: str, help: str, *arguments: tuple[tuple[str, ...], dict[str, Any]]):
    """Register the decorated ``func(args) -> int`` as ``duo NAME``."""

    def register(func):
        if any(c.name == name for c in _COMMANDS):
            raise ValueError(f"duo subcommand {name!r} registered twice")
        _COMMANDS.append(_Command(name, help, func, arguments))
        return func

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duo",
        description="duolib: an open implementation of Duo-LLM (adaptive computation in LLMs).",
        epilog="A relative --out, and every default folder (runs/<profile>/...), is taken from the project root "
               "(the duolib checkout you are in), else from the current folder.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for cmd in _COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for flags, kwargs in cmd.arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(_func=cmd.func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):  # --no-progress: transformers' and the hub's bars too ("Loading weights")
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        rc = args._func(args)
    except (CLIError, BookBuildError, ValueError) as exc:  # duolib raises ValueError for bad input, naming what is allowed
        print(f"duo: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ImportError) as exc:  # a missing path, a full disk, an optional dependency
        print(f"duo: error: {os_error_message(exc)}", file=sys.stderr)
        return 1
    return int(rc or 0)


_OS_ADVICE = {
    errno.ENOSPC: "free some disk space and rerun (a training run resumes from its last checkpoint)",
    errno.EDQUOT: "free some disk space and rerun (a training run resumes from its last checkpoint)",
    errno.EACCES: "check the permissions of that path, or choose another folder",
    errno.EROFS: "that file system is read-only: choose another folder",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "that path is a folder: give a file",
}


def os_error_message(exc: BaseException) -> str:
    """One line naming the path and the cause of an OSError / ImportError, and what to do."""
    if isinstance(exc, ImportError):
        return str(exc).splitlines()[0]
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p)
    cause = exc.strerror or str(exc)
    advice = _OS_ADVICE.get(exc.errno, "")
    return f"{where + ': ' if where else ''}{cause}" + (f"; {advice}" if advice else "")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("duolib")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


def entry_point(command: str) -> Callable[[argparse.Namespace], int]:
    """The function behind ``duo COMMAND`` (imported now: its stage's heavy imports come with it)."""
    module, _, func = ENTRY_POINTS[command].partition(":")
    return getattr(importlib.import_module(module), func)


# --------------------------------------------------------------------------- helpers


def repo_root(start: Path | None = None) -> Path:
    """The repository root (``duolib.book.pipeline.find_root``: from ``start`` or the current folder
    upwards, then from the package's location)."""
    from duolib.book.pipeline import find_root

    try:
        return find_root(start)
    except ValueError as exc:
        raise CLIError(f"cannot find the book sources: {exc}") from None


# --------------------------------------------------------------------------- commands

PROFILE = arg("--profile", choices=PRESETS, default="default",
              help="experiment profile: model preset and every size / budget knob (default: %(default)s)")
NO_PROGRESS = arg("--no-progress", dest="quiet", action="store_true", help="no progress bar")
SEED = arg("--seed", type=seed_value, default=None, help="random seed (default: the profile's, else 0)")
MODEL = arg("--model", default=None, help="trained model folder, or a `duo train` run folder (uses final/)")
BOOK_RUN_DIR = arg("--out", type=Path, default=None,
                   help="the book's run folder, where the notebooks read and write their artefacts "
                        "(default: runs/<profile> under the repository root)")
MODEL_PROFILE = arg("--profile", choices=PRESETS, default=None,
                    help="experiment profile (default: the one a `duo train` --model was trained with, else default)")
RANDOM_INIT = arg("--random-init", action="store_true",
                  help="a randomly initialised model of --profile (smoke test)")


@subcommand(
    "book",
    "execute the experiment notebooks (papermill, dependency order, cached) and build the book",
    PROFILE,
    BOOK_RUN_DIR,
    arg("--only", nargs="*", default=None, metavar="STEP", help="execute only these notebooks"),
    arg("--force", action="store_true", help="re-execute notebooks even when unchanged"),
    arg("--jobs", type=lambda v: v if v == "auto" else int(v), default=1,
        help="notebooks run at the same time when independent, or 'auto' (idle cores) (default: %(default)s)"),
    arg("--skip-notebooks", action="store_true", help="build from the notebooks already in book/experiments"),
    arg("--skip-build", action="store_true", help="execute the notebooks but do not build the HTML"),
    arg("--html-dir", dest="output", type=Path, default=None,
        help="folder that receives _build/html (default: book/)"),
    arg("--compare", type=Path, default=None, metavar="OTHER",
        help="compare the values glued by this book's executed notebooks (book/) with those of another "
             "book or run folder OTHER (e.g. a fresh clone's book/); prints changed verdicts on their own, "
             "then values that differ beyond --tolerance, then those within it (timings ignored); exits 1 "
             "if a verdict changed or a value differs beyond the tolerance; nothing is executed or built"),
    arg("--tolerance", type=float, default=None, metavar="REL",
        help="relative tolerance for glued numbers with --compare (default: 0.02; 0: every difference "
             "counts); a number also agrees within one unit of its last printed digit"),
    NO_PROGRESS,
)
def cmd_book(args: argparse.Namespace) -> int:
    import time

    from duolib.book.compare import compare_report
    from duolib.book.pipeline import run_pipeline

    root = repo_root()
    if args.compare is not None:
        lines, failed = compare_report(root / "book", args.compare, args.tolerance)
        print("\n".join(f"duo book: {line}" for line in lines))
        return 1 if failed else 0
    start = time.perf_counter()
    if not args.skip_notebooks:
        results = run_pipeline(args.profile, root=root, run_dir=args.out, only=args.only, force=args.force,
                               jobs=args.jobs, progress=not args.quiet)
        for r in results:
            print(f"duo book: {r.name:<18} {r.status:<7} {r.seconds:8.1f} s")
        if any(r.name == "scorecard" for r in results):  # the verdicts are final: the models' cards get them
            from duolib.book.card import publish
            from duolib.folders import resolve_folder

            for card in publish(resolve_folder(args.out, Path("runs") / args.profile, root), args.profile):
                print(f"duo book: the book's numbers are in the model card {card}")
    if not args.skip_build:
        html = build_book(root, args.output)
        print(f"duo book: built {html / 'index.html'}")
    print(f"duo book: total {time.perf_counter() - start:.0f} s (profile {args.profile})")
    return 0


@subcommand(
    "presets",
    "print the parameter breakdown of each model preset",
    arg("names", nargs="*", metavar="PRESET",
        help=f"presets to show (default: all of {', '.join(PRESETS)})"),
)
def cmd_presets(args: argparse.Namespace) -> int:
    import torch

    from duolib.config import DuoConfig
    from duolib.model import DuoForCausalLM
    from duolib.presets import preset_table

    names = args.names or list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise CLIError(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    blocks = []
    for name in names:
        cfg = DuoConfig.preset(name)
        with torch.device("meta"):  # shapes only: no memory, no init cost
            model = DuoForCausalLM(cfg)
        blocks.append(preset_table(name, model.parameter_breakdown(), cfg))
    print("\n\n".join(blocks))
    return 0


@subcommand(
    "data",
    "prepare a profile's corpus (tokenizer, token caches) in the run folder the book's notebooks read",
    PROFILE,
    BOOK_RUN_DIR,
    NO_PROGRESS,
)
def cmd_data(args: argparse.Namespace) -> int:
    from duolib.book.kit import book_data
    from duolib.data.corpus import describe
    from duolib.folders import claim, resolve_folder

    run_dir = resolve_folder(args.out, Path("runs") / args.profile, repo_root())
    with claim(run_dir, "duo book"):  # the book's run folder: `duo book` and the notebooks continue in it
        data = book_data(args.profile, run_dir, progress=not args.quiet)
    print(describe(data).to_string(index=False))
    print(f"duo data: {args.profile} corpus ready in {run_dir / 'cache'}")
    return 0


@subcommand(
    "train",
    "Stage 1: train a Duo model with random routing (or a dense baseline); resumable, torchrun-ready",
    PROFILE,
    arg("--out", type=Path, default=None,
        help="run folder (default: runs/<profile>/stage1, the book's Stage-1 run, caches in runs/<profile>/cache)"),
    arg("--corpus", default=None, help="corpus spec (default: the profile's; see duolib.data.corpus)"),
    arg("--steps", type=int, default=None, help="optimizer steps"),
    arg("--batch-size", type=int, default=None, help="global batch size (sequences)"),
    arg("--seq-len", type=int, default=None, help="tokens per training sequence"),
    arg("--lr", type=float, default=None, help="peak learning rate"),
    arg("--warmup-steps", type=int, default=None, help="linear warmup steps"), SEED,
    arg("--p-big", type=float, default=None, help="probability of the big FFN per token and layer (0.5)"),
    arg("--p-skip", type=float, default=None, help="probability of skipping the FFN (0)"),
    arg("--arch", choices=("duo", "dense"), default=None, help="duo, or a dense Llama baseline"),
    arg("--dense-p-big", type=float, default=None, help="dense baseline FLOP-matched to p(big)"),
    arg("--stage", choices=("joint", "big", "small"), default=None, help="freeze ablation stage (joint)"),
    arg("--init-from", default=None, help="stage small: the stage-big run folder"),
    arg("--eval-every", type=int, default=None, help="steps between holdout evaluations"),
    arg("--checkpoint-every", type=int, default=None, help="steps between checkpoints"),
    arg("--log-every", type=int, default=None, help="steps between metrics lines"),
    arg("--threads", type=threads_value, default=None,
        help="torch CPU threads, or 'auto' (1 or all cores, timed at start)"),
    arg("--set", action="append", metavar="KEY=VALUE", help="any TrainConfig field (JSON value)"),
    arg("--no-resume", action="store_true", help="start afresh (clears the run folder: only a duolib run folder)"),
    arg("--overwrite", action="store_true", help="clear the run folder first (only a duolib run folder)"),
    NO_PROGRESS,
)
def cmd_train(args: argparse.Namespace) -> int:
    return entry_point("train")(args)


@subcommand(
    "oracle",
    "Stage 2: exhaustive routing oracles (loss matrix, reductions, token difficulty) into a run folder",
    MODEL, RANDOM_INIT, MODEL_PROFILE,
    arg("--out", type=Path, required=True, help="run folder receiving <holdout>/<semantics>/ tables"),
    arg("--corpus", default=None,
        help="holdout corpus (duolib.data.corpus spec) or 'random' (default with --random-init)"),
    arg("--n-sequences", type=int, default=None, help="holdout sequences per slice (default: the profile's)"),
    arg("--n-seqs", dest="n_sequences", type=int, action=deprecated_alias("--n-seqs", "--n-sequences"),
        help=argparse.SUPPRESS),
    arg("--seq-len", type=int, default=None, help="tokens per sequence (default: the profile's)"),
    arg("--choices", default=None, help="routes to enumerate, e.g. small,big (default) or skip,big"),
    arg("--semantics", choices=("shared", "fixed-context", "both"), default=None,
        help="how a route changes later tokens' context (default: the profile's)"),
    arg("--budget", type=float, default=None,
        help="big layers per token, a whole number here: the budget of the difficulty table (default: the profile's)"),
    arg("--seed", type=seed_value, default=0, help="random seed (default: %(default)s)"),
    arg("--save-matrix", action="store_true", help="also write losses.npy"),
    NO_PROGRESS,
)
def cmd_oracle(args: argparse.Namespace) -> int:
    from duolib.data.run_data import profile_for_model

    args.profile = profile_for_model(args.model, args.profile, PRESETS, "duo oracle")
    return entry_point("oracle")(args)


@subcommand(
    "route",
    "Stage 3: train a router (soft mixture, annealed temperature, budget penalty), evaluate and save it",
    MODEL, RANDOM_INIT, MODEL_PROFILE,
    arg("--out", type=Path, required=True, help="folder receiving router/, history.csv and eval.csv"),
    arg("--overwrite", action="store_true", help="replace the router already saved in --out"),
    arg("--corpus", default=None, help="corpus spec (duolib.data.corpus) or 'random' (default with --random-init)"),
    arg("--budget", type=float, default=None, help="average big layers per token (default: profile's first)"),
    arg("--setting", default=None, help="skip setting instead: small70_big30, big50_skip50, big50_small30_skip20"),
    arg("--choices", default=None, help="router choices with --budget, e.g. small,big (default) or skip,small,big"),
    arg("--options", dest="choices", action=deprecated_alias("--options", "--choices"), help=argparse.SUPPRESS),
    arg("--steps", type=int, default=None, help="router training steps (default: the profile's)"),
    arg("--batch-size", type=int, default=None, help="sequences per step (default: the profile's)"),
    arg("--seq-len", type=int, default=None, help="tokens per sequence (default: the profile's)"),
    arg("--lr", type=float, default=None, help="router learning rate (default: the profile's)"),
    arg("--alpha", type=float, default=None, help="budget-penalty weight"),
    arg("--eval-sequences", type=int, default=None, help="holdout sequences for the evaluation"),
    arg("--seed", type=seed_value, default=0, help="random seed (default: %(default)s)"),
    NO_PROGRESS,
)
def cmd_route(args: argparse.Namespace) -> int:
    from duolib.data.run_data import profile_for_model

    args.profile = profile_for_model(args.model, args.profile, PRESETS, "duo route")
    return entry_point("route")(args)


@subcommand(
    "migrate",
    "bring a run folder written by an earlier duolib release up to date: its .duolib marker (after a strict "
    "check) and, for a training run, checkpoints whose trainer state is a pickle rewritten as JSON + safetensors",
    arg("folder", type=Path, help="the run folder (duo train / oracle / route) of an earlier release"),
)
def cmd_migrate(args: argparse.Namespace) -> int:
    from duolib.migrate import migrate

    kind = migrate(args.folder)
    print(f"duo migrate: {args.folder} is a `{kind}` folder (.duolib marker)")
    if kind == "duo train":
        from duolib.train.checkpoint import CHECKPOINT_NAME, convert_legacy_checkpoint
        from duolib.train.checkpoint import CKPT_DIR

        root = args.folder / CKPT_DIR
        steps = sorted(p for p in root.iterdir() if CHECKPOINT_NAME.fullmatch(p.name)) if root.is_dir() else []
        done = [p.name for p in steps if convert_legacy_checkpoint(p)]
        names = f": {', '.join(done)}" if done else ""
        print(f"duo migrate: {len(done)} checkpoint(s) rewritten without a pickle{names}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
