"""Progress off a terminal: periodic plain log lines, never carriage returns, silence for quick steps."""

from __future__ import annotations

import logging

from brats_seg.progress import LogProgress, progress


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "brats_seg.progress"]


def test_off_a_terminal_progress_is_log_lines(caplog):
    caplog.set_level(logging.INFO, logger="brats_seg.progress")
    bar = progress(total=3, desc="evaluate test", unit="case", interval_s=0.0, disable=False)  # conftest: TQDM_DISABLE
    assert isinstance(bar, LogProgress)  # pytest captures stderr: not a terminal
    for _ in range(3):
        bar.update()
    bar.close()
    lines = _lines(caplog)
    assert [line.split(",")[0] for line in lines] == [
        "evaluate test: 1/3 case (33%)", "evaluate test: 2/3 case (67%)", "evaluate test: 3/3 case (100%)"]
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_a_quick_step_says_nothing_and_one_that_stops_early_says_where(caplog):
    caplog.set_level(logging.INFO, logger="brats_seg.progress")
    with progress(total=50, desc="train epoch 1/2", unit="batch", disable=False) as bar:
        for _ in range(50):
            bar.update()
    assert _lines(caplog) == []  # done well within 15 s: the caller's own result line is enough
    stopped = progress(total=10, desc="slice cases", unit="case", disable=False)
    stopped.update(4)
    stopped.close()
    assert [line.split(",")[0] for line in _lines(caplog)] == ["slice cases: 4/10 case (40%)"]
