# The two commands a newcomer needs: `make run` and `make test` (README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test check install sdk bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: the broker on http://localhost:8000 (SQLite, no configuration)
run: install
	$(VENV)/bin/keybroker serve

## test: lint, types and the whole test suite (what CI runs)
test: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/test

clean:
	rm -rf $(VENV) .keybroker .pytest_cache .mypy_cache .ruff_cache
