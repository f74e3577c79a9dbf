"""The process pool of the tasks' simulated datasets (workbench.tasks.case_pool): progress counts the cases already
there, every item runs once in this process or in spawned ones, and a stop request ends it with Cancelled."""

from __future__ import annotations

import os

import pytest

from workbench.tasks.base import Cancelled
from workbench.tasks.case_pool import run_cases


@pytest.mark.parametrize("workers", [1, 2])
def test_every_case_once_with_progress_from_the_resumed_count(tmp_path, workers):
    items = [str(tmp_path / f"case_{i}") for i in range(5)]
    seen = []
    run_cases(os.mkdir, items, total=8, workers=workers, progress=lambda d, t: seen.append((d, t)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"case_{i}" for i in range(5)]   # mkdir fails on a rerun
    assert seen == [(d, 8) for d in range(3, 9)]


def test_nothing_to_do_reports_complete(tmp_path):
    seen = []
    run_cases(os.mkdir, [], total=4, workers=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(4, 4)] and not list(tmp_path.iterdir())


def test_stop_in_this_process_keeps_the_finished_cases(tmp_path):
    items = [str(tmp_path / f"case_{i}") for i in range(4)]
    with pytest.raises(Cancelled):
        run_cases(os.mkdir, items, total=4, workers=1, should_stop=lambda: len(list(tmp_path.iterdir())) >= 2)
    assert len(list(tmp_path.iterdir())) == 2


def test_stop_in_the_pool_drops_the_queued_cases(tmp_path):
    items = [str(tmp_path / f"case_{i}") for i in range(200)]
    with pytest.raises(Cancelled):
        run_cases(os.mkdir, items, total=200, workers=2, should_stop=lambda: True)
    assert 1 <= len(list(tmp_path.iterdir())) < 200


def test_a_failing_case_is_raised(tmp_path):
    (tmp_path / "case_1").mkdir()
    items = [str(tmp_path / f"case_{i}") for i in range(3)]
    with pytest.raises(FileExistsError):
        run_cases(os.mkdir, items, total=3, workers=2)
