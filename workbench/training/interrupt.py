"""Ctrl-C during training: the first one stops the loop at the next step and keeps a checkpoint.

A ``KeyboardInterrupt`` raised wherever Python happens to be (inside ``backward()``, half
way through ``optimizer.step()``) leaves no consistent state to save, so a run killed that
way loses everything since its last periodic checkpoint. :func:`graceful_interrupt`
replaces the SIGINT handler while the loop runs: the first Ctrl-C (or a Jupyter
"interrupt kernel") asks the trainer to stop, which it honours at the next step or
micro-batch boundary and then writes ``last.pt`` (``--resume`` continues from it); a second
Ctrl-C raises ``KeyboardInterrupt`` at once, as before. Only the main thread can own a
signal handler, so loops run from a worker thread (napari) are untouched: they stop
through :meth:`Trainer.request_stop`.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["graceful_interrupt"]


@contextmanager
def graceful_interrupt(request_stop: Callable[[], None], stopping: Callable[[], bool],
                       message: str = "stopping after this step and saving last.pt (Ctrl-C again to abort now)"
                       ) -> Iterator[None]:
    """While inside, SIGINT calls ``request_stop()``; a SIGINT while ``stopping()`` raises ``KeyboardInterrupt``.

    A no-op outside the main thread or where SIGINT is not Python's default handler
    (someone else owns it: leave theirs alone). The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return

    def handler(signum, frame):
        if stopping():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        request_stop()
        print(message, file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
