"""Rewrite each dvc.yaml stage's code deps (its ``.py`` lines) to the import closure of its stage module.

    python scripts/update_dvc_deps.py          # after adding a stage, or moving or importing a module

tests/test_dvc_deps.py fails on any difference and names this command. The edit is textual: comments, the data
deps, params and outs stay as written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from brats_seg.orchestration.provenance import import_closure  # noqa: E402


def updated(text: str, root: Path = ROOT) -> str:
    """``text`` (a dvc.yaml) with each stage's ``.py`` deps replaced by its ``stages.<name>`` import closure."""
    lines, out, stage, i = text.splitlines(keepends=True), [], None, 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^  (\w+):\s*$", line):
            stage = m[1]
        out.append(line)
        i += 1
        if stage and re.match(r"^    deps:\s*$", line):
            other = []
            while i < len(lines) and re.match(r"^      - ", lines[i]):
                if not lines[i].strip().removeprefix("- ").endswith(".py"):
                    other.append(lines[i])
                i += 1
            closure = sorted(p.relative_to(root).as_posix() for p in import_closure(f"stages.{stage}"))
            out += [f"      - {p}\n" for p in closure] + other
    return "".join(out)


def main() -> None:
    path = ROOT / "dvc.yaml"
    before = path.read_text()
    after = updated(before)
    path.write_text(after)
    print("dvc.yaml: code deps updated" if after != before else "dvc.yaml: code deps already match")  # noqa: T201


if __name__ == "__main__":
    main()
