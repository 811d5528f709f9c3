"""The book: the notebook pipeline, notebook helpers, analysis, experiments, plots, the scorecard, benchmarks."""
