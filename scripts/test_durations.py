"""Record how long each test file takes, for the order ``make test`` runs them in (tests/durations.json).

    make test-durations                  # the whole suite once with --durations=0, then this script on its output
    python scripts/test_durations.py LOG # or on the output of any `pytest --durations=0` run

``tests/conftest.py`` starts the longest files first, so that two workers finish together instead of one running the
README's test alone at the end. Only the order depends on these numbers, never a result.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "tests" / "durations.json"
LINE = re.compile(r"^([0-9.]+)s (?:call|setup|teardown)\s+([^:\s]+)::", re.M)


def file_seconds(pytest_output: str) -> dict[str, int]:
    """``{test file: whole seconds}`` summed over its tests' setup, call and teardown, longest first."""
    seconds: Counter[str] = Counter()
    for duration, path in LINE.findall(pytest_output):
        seconds[path] += float(duration)
    return {path: round(s) for path, s in seconds.most_common()}


def main(argv: list[str]) -> int:
    text = Path(argv[0]).read_text() if argv else sys.stdin.read()
    found = file_seconds(text)
    if not found:
        sys.stderr.write("no durations in the output: run pytest with --durations=0\n")
        return 1
    DURATIONS.write_text(json.dumps(found, indent=1) + "\n")
    sys.stdout.write(f"wrote {DURATIONS.relative_to(ROOT)}: {len(found)} files, {sum(found.values())} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
