"""Stage 2: the exhaustive oracle (trie engine, reductions over loss matrices, beam search, `duo oracle` runs)."""
