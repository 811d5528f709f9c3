"""Stage 2: the exhaustive oracle (trie engine, reductions over loss matrices, beam search, `duo oracle` runs).

Import from the submodules: ``engine.loss_matrix`` (``entropy=True`` adds the prediction entropies),
``reductions.LossMatrix`` (``oracle``, ``fixed``, ``best_of_random``, ``label_free``, schedules),
``controls`` (``placebo_losses``, ``matched_candidates``, ``split_half_difficulty``: selection vs compute).
"""
