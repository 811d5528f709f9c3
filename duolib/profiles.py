"""Experiment profiles: every size and budget knob of the project, in one place.

``tiny`` runs in seconds (tests, nbval, Binder), ``default`` is the CPU book (12 layers like the
paper, so its oracle spaces are the paper's 2^12 / 3^12), ``paper`` is the paper's 1.4B model for
GPU users.  Each profile is plain data in five sections: ``model`` (the :class:`~duolib.DuoConfig` fields),
``train``, ``oracle``, ``router`` and ``book``, which the typed stage configs read
(:class:`~duolib.train.config.TrainConfig`, :class:`~duolib.oracle.config.OracleConfig`,
:class:`~duolib.router.config.RouterConfig`, :class:`~duolib.book.config.BookConfig`:
``XConfig.from_profile(name, **overrides)``).  The paper gives the model sizes; every other value is ours.
"""

from __future__ import annotations

import copy

_MODEL_AND_TRAIN: dict[str, dict[str, dict]] = {
    "tiny": {
        "model": dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            big_ffn_size=256,
            small_ffn_size=16,
            max_position_embeddings=128,
        ),
        # [ours] a few seconds; threads=1 (cosmetic): on a shared small CPU one OpenMP thread avoids
        # contention between processes.
        "train": dict(steps=40, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=4, hold_fraction=0.2, eval_every=20,
                      eval_sequences=8, log_every=5, threads=1,
                      # a corpus slice (16 files a source, tokenizer trained on 200k characters): seconds
                      data=dict(max_docs=16, tokenizer_chars=200_000)),
    },
    "default": {
        "model": dict(
            vocab_size=4096,
            hidden_size=128,
            num_hidden_layers=12,
            num_attention_heads=4,
            big_ffn_size=512,
            small_ffn_size=32,
            max_position_embeddings=256,
        ),
        # [ours] 400 x 16 x 128 = 0.8M tokens: sized so that `make book` with its three training seeds (six
        # Stage-1 models: the book's largest cost) fits 120 minutes on a 2-core CPU (the README gives the
        # measured times).  hold_fraction: the last 20% of the
        # steps at the final learning rate, where the plateau rule of duolib.book.capacity reads the loss (a
        # cosine still falling there lowers the loss by itself, and a plateau could not be told from it);
        # eval_every 20: the 20 evaluations that rule reads.  The book measures whether this is enough
        # (preconditions) and says so when it is not.
        "train": dict(steps=400, batch_size=16, seq_len=128, lr=2e-3, warmup_steps=20, hold_fraction=0.2,
                      eval_every=20, eval_sequences=16, log_every=10, threads=1),
    },
    "paper": {
        # d 2560, 12 layers, big 4d, small big/16, 32k vocabulary, tied embeddings: 1.399B parameters.
        "model": dict(
            vocab_size=32000,
            hidden_size=2560,
            num_hidden_layers=12,
            num_attention_heads=20,
            big_ffn_size=10240,
            small_ffn_size=640,
            max_position_embeddings=2048,
        ),
        # [ours] 143k x 1024 x 2048 = 300B tokens (the paper's budget); 16 micro-batches per rank step.
        "train": dict(steps=143_000, batch_size=1024, seq_len=2048, lr=3e-4, warmup_steps=2000, hold_fraction=0.2,
                      eval_every=1000,
                      eval_sequences=1024, eval_batch_size=32, grad_accum=16, checkpoint_every=1000,
                      amp=True),
    },
}


# Stage-2 oracle knobs [ours] (duolib.oracle, `duo oracle`): holdout slice, enumerated choices,
# default semantics, the budget of the difficulty table, N of best-of-N, beam widths; threads of the oracle
# notebooks ("auto": 1 or all cores, timed at start, duolib.utils.set_threads; forward passes give the
# same bits at any count).
_ORACLE_SECTIONS = {
    "tiny": dict(n_sequences=2, seq_len=16, choices="small,big", semantics="shared", difficulty_k=2,
                 n_random=100, beam_widths=(1, 2, 4), placebo_windows=2, skip_beam_widths=(1, 2, 4),
                 three_way_positions=8, three_way_widths=(1, 4, 16)),
    # default: 4 random windows x 128 tokens per holdout and training seed (~500 scored tokens under all 2^12
    # patterns; the book's intervals pool the three seeds' windows); the fixed-context reading and the beam
    # table, one forward pass per token and pattern, score the first window (seed 0 only); the placebo oracle
    # (duolib.oracle.controls: 924 = C(12, 6) all-big forwards, one per candidate, no prefix to share) the first 2;
    # the skip frontier's exhaustive {skip, small, big} search (3^12 leaves per token) the first window's first 16 tokens.
    # Sized for the 120-minute CPU book with seeds.  No threads key: the train section's one thread, as the book
    # runs two notebooks at a time and a second thread per notebook only contends with the other.
    "default": dict(n_sequences=4, seq_len=128, choices="small,big", semantics="shared", difficulty_k=6,
                    n_random=100, beam_widths=(1, 2, 4, 8, 16, 24), fixed_context_sequences=1, placebo_windows=2,
                    skip_beam_widths=(4, 8, 16, 24, 32), three_way_positions=16, three_way_widths=(16, 64, 256, 1024)),
    "paper": dict(n_sequences=1024, seq_len=512, choices="small,big", semantics="shared", difficulty_k=6,
                  n_random=100, beam_widths=(4, 8, 16, 32), placebo_windows=64,
                  skip_beam_widths=(8, 16, 32, 64), three_way_positions=32, three_way_widths=(64, 256, 1024)),
}

# Stage-3 router knobs [ours] (duolib.router, `duo route`): budgets in big layers of L (the paper's
# 4 / 6 / 8 of 12), skip settings (duolib.router.budgets.SETTINGS), training and evaluation sizes; alpha is
# the budget-penalty weight, tau0 -> tau_min the exponential temperature schedule.
_ROUTER_SECTIONS = {
    "tiny": dict(budgets=(2,), settings=("small70_big30", "big50_skip50", "big50_small30_skip20"), steps=30,
                 batch_size=8, seq_len=64, lr=1e-2, alpha=10.0, tau0=1.0, tau_min=0.1, eval_sequences=16,
                 distill_steps=40, distill_windows=8),
    # default: 10 routers (3 budgets and 3 skip settings on the Stage-1 model, the 3 skip settings again on
    # the skip-trained model, 1 distilled) of 100 steps of 4 x 128 tokens each, once per training seed: the size
    # that keeps 07 within the seeded CPU book's budget; 07 reports whether the loss and the budget penalty
    # flattened (duolib.router.evaluate.history_flatness).
    # distill_windows: training windows (of the oracle's seq_len) whose per-token oracle labels the
    # distilled router imitates; the default matches the oracle slice's 4 windows.
    "default": dict(budgets=(4, 6, 8), settings=("small70_big30", "big50_skip50", "big50_small30_skip20"),
                    steps=100, batch_size=4, seq_len=128, lr=1e-2, alpha=10.0, tau0=1.0, tau_min=0.1,
                    eval_sequences=64, distill_steps=200, distill_windows=4),
    "paper": dict(budgets=(4, 6, 8), settings=("small70_big30", "big50_skip50", "big50_small30_skip20"),
                  steps=10_000, batch_size=64, seq_len=2048, lr=1e-3, alpha=10.0, tau0=1.0, tau_min=0.1,
                  eval_sequences=1024, distill_steps=10_000, distill_windows=64),
}

# Book knobs [ours] (notebooks/, `duo book`): sizes of the experiments that the oracle / router /
# train sections do not cover; with its seeds the CPU book must finish within 120 minutes on 2 cores.
# skip_p: p(skip) of the second Stage-1 model, trained for the skip studies (notebook 02b); the rest of its
# random routing is split evenly between big and small ((1 - skip_p) / 2 each).  The paper trains with
# big / small only and does not give skip probabilities [ours].
# synthetic_layers / synthetic_lr: the synthetic-corpus model of notebook 06 (None: the profile's model and
# lr). [ours] default: 4 layers of the same width at a higher lr learn the synthetic rule faster per CPU
# second than the 12-layer model; 400 steps, once per training seed.
# seeds: training seeds of every chapter that reads a trained model (duolib.book.seeds): the claims are judged on
# intervals that combine seeds and windows, so that a verdict does not rest on one model's rounding.  tiny: one
# seed (Binder and the tests' books stay fast; tests/test_pipeline.py runs replicas under two).
# compare_model: DuoConfig overrides of the dense comparison's models (08_dense), compare_steps their
# training steps (every model the same); retrofit_steps: 09_retrofit's step unit.
_BOOK_SECTIONS = {
    "tiny": dict(compare_steps=20, compare_model={}, retrofit_steps=20, synthetic_steps=30, synthetic_layers=None,
                 synthetic_lr=None, heatmap_bins=8, bench_repeats=2, skip_p=0.2, seeds=1),
    # default: the comparison's seven trainings (Duo, five dense, the two-stage ablation) at the Stage-1
    # width but 4 layers instead of 12 (the LM head over the 4,096-token vocabulary is a fixed share of each
    # step), 150 steps each; 08 trains its own models and runs once (not per training seed: C10 compares
    # recipes, not the Stage-1 model), beside the seeds' chapters.
    "default": dict(compare_steps=150, compare_model=dict(num_hidden_layers=4), retrofit_steps=100,
                    synthetic_steps=400, synthetic_layers=4, synthetic_lr=3e-3, heatmap_bins=16,
                    bench_repeats=5, skip_p=0.2, seeds=3),
    "paper": dict(compare_steps=20_000, compare_model={}, retrofit_steps=20_000, synthetic_steps=20_000,
                  synthetic_layers=None, synthetic_lr=None,
                  heatmap_bins=32, bench_repeats=20, skip_p=0.2, seeds=3),
}
#: Every profile: its model, train, oracle, router and book sections (plain data; the typed configs of
#: :mod:`duolib.stage_config` read them).
PROFILES: dict[str, dict[str, dict]] = {
    name: {**sections, "oracle": _ORACLE_SECTIONS[name], "router": _ROUTER_SECTIONS[name],
           "book": _BOOK_SECTIONS[name]}
    for name, sections in _MODEL_AND_TRAIN.items()
}


def get_profile(name: str) -> dict[str, dict]:
    """A deep copy of profile ``name`` (``tiny``, ``default`` or ``paper``)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[name])
