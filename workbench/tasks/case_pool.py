"""Simulated datasets, one case per job: the process pool that the tasks' ``simulate_dataset`` share.

A case is written by a worker into its own folder (atomically: a hidden folder renamed when complete), so a
dataset is resumable and a cancelled run keeps every finished case. The pool uses ``spawn`` (no forked torch or
BLAS threads) and one process per worker; with one worker the cases run in this process.
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Optional, Sequence

from workbench.tasks.base import Cancelled


def run_cases(worker: Callable, items: Sequence, *, total: int, workers: int,
              progress: Optional[Callable[[int, int], None]] = None,
              should_stop: Optional[Callable[[], bool]] = None) -> None:
    """Call ``worker(item)`` for every item; ``progress(done, total)`` first with the cases already there
    (``total - len(items)``), then after each case; :class:`~workbench.tasks.base.Cancelled` when ``should_stop()``
    turns true (checked before each case in this process, after each finished case in the pool, whose running
    cases then finish and queued ones are dropped).

    ``worker`` must be a module-level function (it is pickled for the spawned processes).
    """
    done = total - len(items)
    if progress:
        progress(done, total)
    workers = max(1, min(int(workers), len(items) or 1))
    if not items:
        return
    if workers == 1:
        for item in items:
            if should_stop and should_stop():
                raise Cancelled("cancelled")
            worker(item)
            done += 1
            if progress:
                progress(done, total)
        return
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(worker, item) for item in items]
        try:
            for fut in as_completed(futures):
                fut.result()
                done += 1
                if progress:
                    progress(done, total)
                if should_stop and should_stop():
                    raise Cancelled("cancelled")
        except BaseException:
            for f in futures:
                f.cancel()
            raise
