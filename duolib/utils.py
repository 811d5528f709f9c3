"""Small helpers shared by every stage: content hashes, thread count, train/eval and freeze scopes, batches, progress."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .profiles import get_profile


# ----------------------------------------------------------------------------- hashes (cache keys and manifests)


def json_hash(obj) -> str:
    """sha256 hex digest of ``obj`` as canonical JSON (sorted keys; non-JSON values by ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The leaves in which two nested dicts differ, each as ``key.path: a (existing) vs b (requested)``."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} (existing) vs {vb!r} (requested)")
    return out


def parts_hash(*parts) -> str:
    """16-hex-digit sha256 of several parts: bytes as they are, anything else as canonical JSON."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def tensor_hash(t: torch.Tensor) -> str:
    """16-hex-digit sha256 of a tensor's bytes (on CPU, contiguous)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- token arrays


def token_array(stream) -> np.ndarray:
    """The tokens of a stream (anything with ``.tokens``), tensor or array, as a numpy array."""
    t = getattr(stream, "tokens", stream)
    return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


# ----------------------------------------------------------------------------- threads
#
# ``threads="auto"`` times 1 and more threads and keeps the faster.  On an idle 2-core machine two OpenMP
# threads run the default model's products faster than one; when other processes hold the cores, two
# threads can be several times slower than one (both measured, ``benchmarks/bench_levers.py``), so a
# short probe is timed at each candidate count, alternating so they see the same load, and more threads
# are kept only when clearly faster.  Forward passes (the oracle, evaluation) give bit-identical results
# at any thread count; training's backward reductions may round differently.


def set_threads(profile: str, section: str = "train") -> int:
    """Use the profile's torch thread count, ``<section>.threads`` (a count or ``"auto"``), else
    ``train.threads``; unchanged if neither is set; returns the count."""
    knobs = get_profile(profile)
    return apply_threads(knobs[section].get("threads") or knobs["train"].get("threads"))


#: Instruction-set flags (``/proc/cpuinfo``) that change which kernels torch runs, strongest first.
CPU_FEATURES = (("amx_bf16", "AMX-BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """The first ``model name`` and ``flags`` of ``cpuinfo``; ``("", frozenset())`` where it cannot be read
    (not Linux)."""
    name, flags = "", frozenset()
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return name, flags


#: Environment variables that cap the instruction sets of torch's kernels: ATen's own (``avx2``, ``avx512``),
#: oneDNN's (``AVX2``, ``AVX512_CORE``, ``AVX512_CORE_AMX``, ...) and MKL's (``AVX2``, ``AVX512``, ...).  Set
#: together, they make a newer CPU run (and round like) the kernels an older one would run.
KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def kernel_limits(environ=None) -> dict[str, str]:
    """The :data:`KERNEL_LIMITS` set (non-empty) in ``environ`` (default ``os.environ``), in that order."""
    env = os.environ if environ is None else environ
    return {key: env[key] for key in KERNEL_LIMITS if env.get(key)}


def amx_usable(cpuinfo: str | os.PathLike = "/proc/cpuinfo", environ=None) -> bool:
    """Whether bf16 matrix products run on AMX here: the CPU has AMX-BF16 and ``ONEDNN_MAX_CPU_ISA``
    (oneDNN runs torch's CPU bf16 products) is unset, ``ALL`` or an AMX level."""
    isa = kernel_limits(environ).get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return "amx_bf16" in cpu_info(cpuinfo)[1] and (isa in ("ALL", "DEFAULT") or "AMX" in isa)


def cpu_description(cpuinfo: str | os.PathLike = "/proc/cpuinfo", environ=None) -> str:
    """The CPU a result was computed on, e.g. ``"Intel(R) Xeon(R) Processor (x86_64; AMX-BF16, AVX-512,
    AVX2), 2 cores"``: its model name and the vector units that decide torch's kernels (and so the
    rounding of a training run), from ``cpuinfo`` where Linux has it, else ``platform``'s names; any
    :func:`kernel_limits` of ``environ`` follow (``"..., 2 cores, kernels limited by ATEN_CPU_CAPABILITY=avx2"``)."""
    import platform

    name, flags = cpu_info(cpuinfo)
    units = [label for flag, label in CPU_FEATURES if flag in flags]
    inside = "; ".join([platform.machine() or "unknown architecture"] + ([", ".join(units)] if units else []))
    limits = ", ".join(f"{k}={v}" for k, v in kernel_limits(environ).items())
    return (f"{name or platform.processor() or 'CPU'} ({inside}), {os.cpu_count()} cores"
            + (f", kernels limited by {limits}" if limits else ""))


#: More threads must beat one thread's time by this factor to be chosen (else the machine is busy).
MIN_GAIN = 1.1


def candidate_counts() -> tuple[int, ...]:
    """1 and the CPUs this process may use (at most 2 counts: 1 and all)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return (1,) if cpus <= 1 else (1, cpus)


def probe(hidden: int = 128, rows: int = 4096) -> Callable[[], None]:
    """A forward-and-backward of one SwiGLU FFN of the default model's shape: the products that
    dominate training and the oracle."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=g)
    w1, w2 = (torch.randn(4 * hidden, hidden, generator=g, requires_grad=True) for _ in range(2))
    w3 = torch.randn(hidden, 4 * hidden, generator=g, requires_grad=True)

    def run() -> None:
        y = torch.nn.functional.linear(torch.nn.functional.silu(x @ w1.T) * (x @ w2.T), w3)
        y.square().mean().backward()

    return run


def calibrate_threads(fn: Callable[[], None] | None = None, candidates: tuple[int, ...] | None = None,
                      rounds: int = 3) -> dict:
    """Time ``fn`` (default :func:`probe`) at each thread count of ``candidates`` (default
    :func:`candidate_counts`), ``rounds`` times in alternation; returns ``{"threads": chosen, "seconds":
    {count: median wall seconds}}``.  The thread count in force before the call is restored."""
    fn = fn or probe()
    candidates = tuple(candidates or candidate_counts())
    if not candidates or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in candidates):
        raise ValueError(f"candidates={candidates!r} must be positive thread counts")
    before = torch.get_num_threads()
    times: dict[int, list[float]] = {c: [] for c in candidates}
    try:
        for r in range(rounds + 1):  # the first round warms up
            for c in candidates:
                torch.set_num_threads(c)
                t0 = time.perf_counter()
                fn()
                if r:
                    times[c].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    medians = {c: statistics.median(ts) for c, ts in times.items()}
    base = min(candidates)
    best = min(medians, key=medians.get)
    chosen = best if best == base or medians[base] >= MIN_GAIN * medians[best] else base
    return {"threads": chosen, "seconds": medians}


def check_threads(value, what: str = "threads"):
    """``value`` if it is None, ``"auto"`` or a positive int, else ValueError."""
    if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"{what}={value!r}: give a positive number of threads or 'auto' (measured)")


def apply_threads(value) -> int:
    """Set torch's thread count from a setting (None: unchanged; an int; ``"auto"``: calibrated); returns it."""
    value = check_threads(value)
    if value == "auto":
        value = calibrate_threads()["threads"]
    if value:
        cores = os.cpu_count() or 1
        if int(value) > cores:
            import warnings

            warnings.warn(f"threads={value} but this machine has {cores} CPU core(s): extra threads only "
                          f"compete for them (slower); use threads={cores} or 'auto'", stacklevel=2)
        torch.set_num_threads(int(value))
    return torch.get_num_threads()


# ----------------------------------------------------------------------------- model scopes


@contextlib.contextmanager
def eval_mode(model):
    """Evaluation mode for the duration (the previous mode restored even on errors)."""
    with frozen(model, freeze=False, evaluate=True):
        yield


@contextlib.contextmanager
def frozen(model, freeze: bool = True, evaluate: bool | None = None):
    """With ``freeze``, every parameter of ``model`` stops requiring grad for the duration; with ``evaluate``
    (default: ``freeze``) the model is in eval mode.  Flags and mode are restored even on errors."""
    evaluate = freeze if evaluate is None else evaluate
    flags = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        if evaluate:
            model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


# ----------------------------------------------------------------------------- batches and progress


def batch_source(batches) -> Callable[[int], torch.Tensor]:
    """``batches``: a function step -> LongTensor [B, T], a tensor [N, B, T] / [B, T], or an iterable."""
    if callable(batches) and not torch.is_tensor(batches):
        return batches
    if torch.is_tensor(batches):
        if batches.dim() == 2:
            return lambda step: batches
        if batches.dim() == 3:
            return lambda step: batches[step % batches.shape[0]]
        raise ValueError(f"a tensor of batches must be [B, T] or [N, B, T]; got {tuple(batches.shape)}")
    iterator = iter(batches)

    def next_batch(step):
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            iterator = iter(batches)
            return next(iterator)

    return next_batch


def progress(iterable, show: bool, desc: str):
    """``iterable`` wrapped in a tqdm bar when ``show``."""
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)
