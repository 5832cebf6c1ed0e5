# kdbench: `make demo` (smoke reproduction of SimKD Table 1, CPU, offline) and `make test`.
# Both create the virtualenv and install kdbench first; nothing else needs to be set up.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RESULTS ?= results
# Extras installed with kdbench; .ci/run adds ffcv when its system libraries are present.
EXTRAS ?= test

# One marker per set of extras: a virtualenv installed with other extras (say `make demo`, then
# `.ci/run` with ffcv) is brought up to date instead of silently reused.
comma := ,
MARKER := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install demo lint test test-fast clean-venv

install: $(MARKER)

$(MARKER): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(BIN)/kdbench reproduce simkd-table1 --profile smoke --results $(RESULTS) --cpu-jobs 2
	$(BIN)/kdbench compare $(RESULTS) --recipe simkd-table1

# Before any test: lint and format (ruff), types (mypy) and the import layering (import-linter);
# their settings are in pyproject.toml ([tool.ruff], [tool.mypy], [tool.importlinter]).
lint: install
	$(BIN)/ruff check kdbench tests scripts
	$(BIN)/ruff format --check kdbench tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

# Everything but the end-to-end runs (marked e2e) and the SLURM cluster tests: a few minutes.
test-fast: lint
	$(BIN)/python -m pytest -q -m "not e2e and not slurm"

clean-venv:
	rm -rf $(VENV)
