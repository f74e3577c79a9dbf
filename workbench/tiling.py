"""Memory-bounded whole-volume inference by overlapping windows, with progress and cancel.

A thin layer over MONAI's :func:`monai.inferers.sliding_window_inference` (Gaussian
blending; it infers the output grid from the first window, so a super-resolution
network whose output is ``scale`` times finer than its input works unchanged). What
it adds is what every front end needs: a ``progress(done, total)`` callback per
window and a ``should_stop()`` poll that raises :class:`workbench.tasks.base.Cancelled`
between windows, so a CLI Ctrl-C, a napari Stop or a notebook button answers within
one window and nothing is written.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

Tensor = torch.Tensor
ProgressFn = Callable[[int, int], None]


def window_count(size: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of windows MONAI's scan visits (for progress reporting)."""
    n = 1
    for s, r in zip(size, roi):
        if r >= s:
            continue
        interval = max(int(r * (1 - overlap)), 1)
        n *= math.ceil((s - r) / interval) + 1
    return n


@torch.no_grad()
def sliding_window(fn: Callable[[Tensor], Tensor], x: Tensor, roi: int | Sequence[int], *, overlap: int = 8,
                   progress: Optional[ProgressFn] = None, should_stop: Optional[Callable[[], bool]] = None,
                   mode: str = "gaussian") -> Tensor:
    """Apply ``fn`` to overlapping windows of ``x`` (B, C, *spatial) and blend the outputs.

    Parameters
    ----------
    fn : callable
        Maps a window (B, C, *roi) to its output (B, C_out, *(roi * scale)).
    x : Tensor
        The whole input, on the CPU (windows are moved by ``fn`` if it wants another device).
    roi : int or sequence of int
        Window edge in input voxels; clipped to the input size.
    overlap : int
        Overlap between neighbouring windows in input voxels (at most half a window).
    progress, should_stop : callable, optional
        Called once per window; ``should_stop()`` returning True raises ``Cancelled``.
    mode : str
        MONAI blend mode (``"gaussian"`` or ``"constant"``).
    """
    from monai.inferers import sliding_window_inference

    from workbench.tasks.base import check_cancel

    spatial = tuple(int(s) for s in x.shape[2:])
    roi = (int(roi),) * len(spatial) if isinstance(roi, int) else tuple(int(r) for r in roi)
    roi = tuple(min(r, s) for r, s in zip(roi, spatial))
    frac = min(0.5, overlap / max(1, min(roi)))
    total = window_count(spatial, roi, frac) * x.shape[0]
    done = 0

    def run(window: Tensor) -> Tensor:
        nonlocal done
        check_cancel(should_stop)
        out = fn(window).float()
        done += window.shape[0]
        if progress is not None:
            progress(min(done, total), total)
        return out

    return sliding_window_inference(x, roi, 1, run, overlap=frac, mode=mode, padding_mode="replicate")
