"""Stage 3: trained routers (policy, training, evaluation)."""
