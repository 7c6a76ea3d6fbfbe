"""Check that the environment installed from requirements.lock satisfies pyproject.toml.

`make install` installs the pinned set from the lock file, then keybroker itself without its
dependencies; this walks keybroker's requirements (with the extras the lock covers, and the
extras those ask of their own dependencies) and names every one that the installed set does
not meet, so that a dependency added to pyproject.toml without `make lock` stops the install
with a clear message instead of an ImportError somewhere in the suite.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCKED_EXTRAS = ("dev", "postgres", "redis")  # the extras `make lock` resolves


def unmet(name: str, extras: tuple[str, ...], seen: set[tuple[str, str]]) -> list[str]:
    problems: list[str] = []
    for line in distribution(name).requires or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras)
        ):
            continue  # for another platform, Python or extra
        key = canonicalize_name(requirement.name)
        try:
            installed = distribution(requirement.name).version
        except PackageNotFoundError:
            problems.append(f"{requirement} (needed by {name}) is not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement} (needed by {name}) but {installed} is installed")
        for extra in sorted(requirement.extras):
            if (key, extra) not in seen:
                seen.add((key, extra))
                problems += unmet(requirement.name, (extra,), seen)
    return problems


def main() -> int:
    # keybroker-client (clients/python) is installed beside it for the browser tests.
    problems = unmet("keybroker", LOCKED_EXTRAS, set()) + unmet("keybroker-client", (), set())
    if problems:
        print("requirements.lock does not satisfy pyproject.toml:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        print("Regenerate the lock file with 'make lock' and commit it.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
