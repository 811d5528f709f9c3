"""Stage 1: random-routing training (loop, configuration, run folders, evaluation, dense and freeze baselines)."""
