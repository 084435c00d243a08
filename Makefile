# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Modules held to `mypy --strict` (the rest of the package is not yet).
MYPY_STRICT := src/gilfree/pool src/gilfree/errors.py src/gilfree/_api.py src/gilfree/_session.py src/gilfree/_executor.py src/gilfree/_calls.py src/gilfree/_lifetime.py src/gilfree/_engine.py src/gilfree/_probe_child.py src/gilfree/_probe_fork.py src/gilfree/_probe_inline.py src/gilfree/_probe_pool.py src/gilfree/_stacks.py

.PHONY: demo test test-pythons lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plot]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gilfree bench --quick

# compileall: under PYTHONDONTWRITEBYTECODE (set on CI's machines) every process
# the tests start compiled the package again (~60 ms each); the CLI tests took
# 108 s so and 95 s with it compiled once.
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks mkdocs_hooks.py
	$(VENV)/bin/ruff format --check src tests benchmarks mkdocs_hooks.py
	$(VENV)/bin/mypy --strict $(MYPY_STRICT)
	$(VENV)/bin/mypy src/gilfree
	$(VENV)/bin/lint-imports
	$(PY) -m compileall -q src
	$(PY) -m pytest -q

# The whole suite on CPython 3.12, 3.13, 3.14, 3.15 and free-threaded 3.13t, each in a fresh
# venv (needs root and ../shared/pythons; see ci/test-pythons). Fails, saying
# which, when an interpreter cannot be set up.
test-pythons:
	ci/test-pythons

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks mkdocs_hooks.py

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

# The documentation site (mkdocs.yml, docs/) into site/ (git-ignored), warnings as errors.
.PHONY: docs
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist src/*.egg-info
