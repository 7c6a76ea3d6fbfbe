"""Where the shipped templates and static files are: inside the wheel, or the source tree."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent.parent / name):  # wheel, then checkout
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"keybroker cannot find its {name}/ directory")
