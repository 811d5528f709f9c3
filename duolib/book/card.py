"""The book's key numbers in the model cards of the models it judged.

After a book run, :func:`publish` gives each training seed's Stage-1 model (``<seed folder>/stage1/final``) a
section of its ``README.md`` with every claim's verdict and key number, the same table the scorecard shows
(seeds and windows combined), so a model folder shared on its own carries what the book found with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..train.model_card import BOOK_HEADING
from ..train.run_folder import update_card
from .config import BookConfig
from .kit import STAGE1_DIR
from .chapters import ONCE
from .scorecard import seeded_scorecard
from .seeds import load_seed_results, seed_dir, seed_list


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def book_section(card, profile: str, n_seeds: int, seed: int) -> str:
    """Markdown: ``card`` (:func:`duolib.book.scorecard.scorecard`) as the model card's book section of
    training seed ``seed``'s model."""
    seeds = (f"{n_seeds} training seeds of this model's configuration (this one is seed {seed}); each verdict "
             f"and key number combines them with the evaluation windows" if n_seeds > 1 else
             "this model alone (one training seed)")
    lines = [BOOK_HEADING, "",
             f"The Duo-LLM book (profile `{profile}`) judged the paper's claims on {seeds}. Key numbers with their "
             f"95% intervals; the rules and every measured number are on the book's scorecard page.", "",
             "| claim | finding | verdict | key number |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.claim} | {_cell(r.finding)} | {_cell(r.verdict)} | {_cell(r.key) or '-'} |"
              for r in card.itertuples()]
    return "\n".join(lines) + "\n"


def publish(run_dir: str | os.PathLike, profile: str) -> list[Path]:
    """Write the book section into every seed's Stage-1 model card under ``run_dir`` (the book's run folder);
    returns the cards written.  The scorecard's results must all be there (ValueError naming the missing
    seed otherwise); each ``final/`` is checked against its manifest before its card changes."""
    n_seeds = BookConfig.from_profile(profile).seeds
    card, _ = seeded_scorecard(load_seed_results(run_dir, n_seeds), ONCE)
    return [update_card(seed_dir(run_dir, s) / STAGE1_DIR, book_section(card, profile, n_seeds, s))
            for s in seed_list(n_seeds)]
