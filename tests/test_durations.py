"""The order `make test` runs test files in: longest first, from tests/durations.json (scripts/test_durations.py)."""

from __future__ import annotations

import json

from scripts.test_durations import DURATIONS, file_seconds
from tests.conftest import SHARED, SHARED_FIXTURES, run_order
from tests.support.cohorts import PROJECT_ROOT

OUTPUT = """
============================= slowest durations ==============================
12.50s call     tests/test_b.py::test_one[x]
0.40s setup    tests/test_b.py::test_one[x]
30.00s call     tests/data/test_a.py::test_two
0.20s teardown tests/test_b.py::test_two
(3 durations < 0.005s hidden.  Use -vv to show these durations.)
======================= 3 passed in 44.10s =======================
"""


def test_seconds_are_summed_per_file_over_setup_call_and_teardown_longest_first():
    assert list(file_seconds(OUTPUT).items()) == [("tests/data/test_a.py", 30), ("tests/test_b.py", 13)]
    assert file_seconds("3 passed in 1.0s") == {}


def test_groups_start_longest_first_unlisted_files_first_of_all_and_each_keeps_its_order():
    seconds = {"a.py": 10, "b.py": 50, "t1.py": 30, "t2.py": 30}
    keys = [("a.py", "a.py"), ("t1.py", "team"), ("b.py", "b.py"), ("a.py", "a.py"), ("new.py", "new.py"),
            ("t2.py", "team"), ("t1.py", "team")]
    assert [keys[i] for i in run_order(keys, seconds)] == [
        ("new.py", "new.py"),                                           # not measured yet: first of all
        ("t1.py", "team"), ("t2.py", "team"), ("t1.py", "team"),        # 60 s together, kept together
        ("b.py", "b.py"), ("a.py", "a.py"), ("a.py", "a.py")]


def test_every_test_file_that_uses_a_shared_session_fixture_is_in_its_group():
    """The team servers and their pipeline run, and Prefect's test harness (session fixtures), are built once per
    worker that needs them: a new file using them must join their group (``SHARED`` in conftest), or a second
    worker builds them again."""
    import ast

    missing = []
    for path in sorted((PROJECT_ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        used = {a.arg for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) for a in node.args.args}
        for group, fixtures in SHARED_FIXTURES.items():
            if used & fixtures and SHARED.get(path.relative_to(PROJECT_ROOT).as_posix()) != group:
                missing.append(f"{path.name} (group {group!r})")
    assert SHARED_FIXTURES["team"] >= {"team_project"} and SHARED_FIXTURES["prefect-harness"] == {"prefect_server"}
    assert not missing, f"these use a shared session fixture but are not in conftest's SHARED group: {missing}"


def test_the_durations_name_only_test_files_that_exist():
    stale = [path for path in json.loads(DURATIONS.read_text()) if not (PROJECT_ROOT / path).is_file()]
    assert not stale, f"tests/durations.json names files that are gone: {stale}; run make test-durations"
