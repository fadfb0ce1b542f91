"""Nothing cites a file the repository lacks: every .md file named in the code, the tests and the docs exists, and
every relative link of the Markdown files resolves."""

from __future__ import annotations

import re
import subprocess

from tests.support.cohorts import PROJECT_ROOT

_CITED_MD = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if (PROJECT_ROOT / line).is_file()]


def test_every_cited_markdown_file_exists():
    missing = []
    for name in _tracked("src", "tests", "stages", "flows", "benchmarks", "*.md", "Makefile", "dvc.yaml"):
        if not name.endswith((".py", ".md", ".yaml", ".txt", "Makefile", ".toml")):
            continue
        for lineno, line in enumerate((PROJECT_ROOT / name).read_text().splitlines(), start=1):
            for cited in _CITED_MD.findall(line):
                here = (PROJECT_ROOT / name).parent / cited
                if not (PROJECT_ROOT / cited).is_file() and not here.is_file():
                    missing.append(f"{name}:{lineno}: {cited}")
    assert missing == []
    assert (PROJECT_ROOT / "docs/design.md").is_file()


def test_every_relative_link_of_the_markdown_files_resolves():
    broken = []
    for name in _tracked("*.md"):
        for target in _LINK.findall((PROJECT_ROOT / name).read_text()):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            if not ((PROJECT_ROOT / name).parent / target).exists():
                broken.append(f"{name}: {target}")
    assert broken == []
