# The two commands of the quick start: `make demo` and `make test`.
# Each one creates .venv (standard venv module) when it is missing and installs the
# project, editable, with its development tools; nothing else is needed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml setup.py src/unix_socketpair/_speedups.c src/unix_socketpair/_exec_helper.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/unix-socketpair demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

# The whole suite twice: with the C accelerator of the framing loops (when it was
# built), then with the pure-Python code it replaces, which must behave the same.
unit: $(STAMP)
	$(BIN)/python -m pytest
	UNIX_SOCKETPAIR_PURE=1 $(BIN)/python -m pytest

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/unix-socketpair bench

# The documentation site, with warnings as errors (its tools are the `docs` extra), and
# the sdist and the wheel (built without isolation: setuptools comes with the dev tools).
.PHONY: docs dist
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf docs/_build/html
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .

clean:
	rm -rf $(VENV) build dist docs/_build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -f src/unix_socketpair/*.so src/unix_socketpair/_exec_helper
