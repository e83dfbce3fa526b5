"""Fail if a chatkit module grows past the size docs/CONTRIBUTING.md allows.

The rule: a module stays under 600 lines; one that grows past it is split.
Run by .ci/run with the other quick gates: python .ci/check_module_sizes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 600

# Current offenders, each with the size it may not grow past and why it is
# not split yet. Shrink or remove an entry when the module is split.
ALLOWED: dict[str, int] = {}


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    failures = []
    for path in sorted((root / "chatkit").rglob("*.py")):
        name = path.relative_to(root).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        limit = ALLOWED.get(name, LIMIT)
        if lines > limit:
            failures.append(f"{name}: {lines} lines, over the limit of {limit}")
    for name in ALLOWED:
        if not (root / name).exists():
            failures.append(f"{name}: listed in ALLOWED but gone; remove the entry")
    for failure in failures:
        print(f"module size: {failure} (split it; see docs/CONTRIBUTING.md)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
