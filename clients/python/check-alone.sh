#!/usr/bin/env bash
# CI for keybroker-client on its own: install it into a fresh venv (no broker, none of its
# dependencies), check that nothing of the broker came along, and run its tests there.
set -euo pipefail
cd "$(dirname "$0")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check ".[test]"
"$work/venv/bin/python" - <<'PY'
import importlib.util, sys
present = [m for m in ("keybroker", "starlette", "authlib", "sqlalchemy", "cryptography", "uvicorn")
           if importlib.util.find_spec(m) is not None]
sys.exit(f"the broker's packages came along: {present}" if present else 0)
PY
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests
