"""The order `make test` runs test files in: longest first, from tests/durations.json (scripts/test_durations.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from scripts.test_durations import DURATIONS, file_seconds
from tests.conftest import pytest_collection_modifyitems
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


def test_the_longest_files_go_first_unlisted_files_before_them_and_each_file_keeps_its_order():
    listed = json.loads(DURATIONS.read_text())
    short, long = sorted(listed, key=listed.get)[0], sorted(listed, key=listed.get)[-1]
    items = [SimpleNamespace(nodeid=f"{short}::a"), SimpleNamespace(nodeid=f"{long}::b"),
             SimpleNamespace(nodeid="tests/test_new.py::c"), SimpleNamespace(nodeid=f"{long}::a")]
    pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == ["tests/test_new.py::c", f"{long}::b", f"{long}::a", f"{short}::a"]


def test_the_durations_name_only_test_files_that_exist():
    stale = [path for path in json.loads(DURATIONS.read_text()) if not (PROJECT_ROOT / path).is_file()]
    assert not stale, f"tests/durations.json names files that are gone: {stale}; run make test-durations"
