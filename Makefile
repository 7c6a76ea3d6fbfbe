# The two commands a newcomer needs: `make run` and `make test` (README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
UV_VERSION := 0.13.9
NPM_CI := npm ci --no-audit --no-fund --loglevel=error

.PHONY: run test install lock lock-upgrade sdk demo release-check bench bench-history clean

# The pinned set from the lock file (hash-checked), then keybroker and keybroker-client
# (clients/python) without dependencies; check_lock.py stops here if either pyproject.toml
# asks for something the lock lacks.
$(STAMP): pyproject.toml $(LOCK) clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e . -e clients/python
	$(PY) scripts/check_lock.py
	touch $(STAMP)

js-sdk/node_modules/.package-lock.json: js-sdk/package-lock.json
	cd js-sdk && $(NPM_CI)

examples/demo-app/node_modules/.package-lock.json: examples/demo-app/package-lock.json
	cd examples/demo-app && $(NPM_CI)

install: $(STAMP)

## lock: regenerate requirements.lock after changing dependencies in pyproject.toml; pins
## already in the lock stay, new ones resolve to the newest allowed version. One lock for
## every supported Python (3.11+) and platform; commit it with the pyproject change.
## UV_FLAGS passes more, e.g. `make lock UV_FLAGS='--upgrade-package starlette'`.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	  --generate-hashes --custom-compile-command 'make lock' --quiet -o $(LOCK) $(UV_FLAGS)

## lock-upgrade: move every pin to the newest version pyproject.toml allows
lock-upgrade:
	$(MAKE) lock UV_FLAGS=--upgrade

## sdk: rebuild the JS SDK into static/sdk from js-sdk/src (static/sdk is committed so that
## the package carries it: commit it with the source change), and the demo app's bundle
sdk: js-sdk/node_modules/.package-lock.json demo
	cd js-sdk && npm run --silent build

## demo: the example third-party app's bundle (examples/demo-app/dist)
demo: examples/demo-app/node_modules/.package-lock.json
	cd examples/demo-app && npm run --silent build

## run: the broker on http://localhost:8000 and the demo app on http://127.0.0.1:8001
run: install sdk
	$(VENV)/bin/keybroker serve --with-demo

## test: lint, types, the JS SDK's tests and the whole Python suite on each supported Python
## (what CI runs); it checks static/sdk against js-sdk/src rather than rebuilding it first
test: install demo js-sdk/node_modules/.package-lock.json
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/test

## release-check: build the wheel and the sdist, install each into a fresh venv without
## Node.js and fetch the SDK from it (CI runs it inside make test)
release-check: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/release-check

## bench: the proxy benchmark (writes docs/benchmarks.md)
bench: install
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) -m bench

## bench-history: /settings, /api/grant and first requests over a long usage history (1M rows on
## SQLite, 10M on PostgreSQL at 127.0.0.1:5432, built once and kept; docs/benchmarks-history.md)
bench-history: install
	$(PY) -m bench.history $(BENCH_HISTORY_ARGS)

clean:
	rm -rf $(VENV) .venv-3.* .keybroker .bench-history .pytest_cache .mypy_cache .ruff_cache \
	  js-sdk/node_modules examples/demo-app/node_modules examples/demo-app/dist
