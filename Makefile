# The two commands a newcomer needs: `make run` and `make test` (README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NPM_CI := npm ci --no-audit --no-fund --loglevel=error

.PHONY: run test install sdk bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

js-sdk/node_modules/.package-lock.json: js-sdk/package-lock.json
	cd js-sdk && $(NPM_CI)

examples/demo-app/node_modules/.package-lock.json: examples/demo-app/package-lock.json
	cd examples/demo-app && $(NPM_CI)

install: $(STAMP)

## sdk: build the JS SDK (static/sdk) and the demo app's bundle
sdk: js-sdk/node_modules/.package-lock.json examples/demo-app/node_modules/.package-lock.json
	cd js-sdk && npm run --silent build
	cd examples/demo-app && npm run --silent build

## run: the broker on http://localhost:8000 and the demo app on http://127.0.0.1:8001
run: install sdk
	$(VENV)/bin/keybroker serve --with-demo

## test: lint, types, the JS SDK's tests and the whole Python suite (what CI runs)
test: install sdk
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/test

## bench: the proxy benchmark (writes docs/benchmarks.md)
bench: install
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .keybroker .pytest_cache .mypy_cache .ruff_cache static/sdk \
	  js-sdk/node_modules examples/demo-app/node_modules examples/demo-app/dist
