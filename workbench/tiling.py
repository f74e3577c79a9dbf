"""Memory-bounded whole-volume inference by overlapping windows, with progress and cancel.

Two tilers. The DWI denoiser's (:func:`workbench.inference.predict_tiled`) lays its tiles out
with :func:`tile_layout` (edges evened out, a bound on each tile's voxels, the least work) and
blends them with linear ramps (:func:`ramp_weights`); it builds each tile's input on demand,
which MONAI's inferer, taking one input tensor, cannot. The other tasks use
:func:`sliding_window`, a thin layer over MONAI's :func:`monai.inferers.sliding_window_inference` (Gaussian
blending; it infers the output grid from the first window, so a super-resolution
network whose output is ``scale`` times finer than its input works unchanged). What
it adds is what every front end needs: a ``progress(done, total)`` callback per
window and a ``should_stop()`` poll that raises :class:`workbench.tasks.base.Cancelled`
between windows, so a CLI Ctrl-C, a napari Stop or a notebook button answers within
one window and nothing is written.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Optional, Sequence

import torch

Tensor = torch.Tensor
ProgressFn = Callable[[int, int], None]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` that cover ``[0, size)`` with at least ``overlap``."""
    if tile >= size:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def even_tiles(size: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """The fewest tiles of at most ``tile`` voxels that cover ``[0, size)`` overlapping by ``overlap``,
    shortened to one common length so the overlap is not larger than needed.

    Returns ``(length, starts)``. A 128-voxel axis with ``tile=64, overlap=16`` gets 3 tiles of 54
    (162 voxels computed) instead of 3 of 64 (192); 80 voxels get 2 of 48 instead of 2 of 64.
    """
    if tile >= size:
        return size, [0]
    overlap = min(overlap, tile // 2)
    count = -(-(size - overlap) // (tile - overlap))
    length = min(tile, -(-(size + (count - 1) * overlap) // count))
    return length, tile_starts(size, length, overlap)


def ramp_weights(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Blend weights of one tile along one axis: 1 inside, a linear ramp over the ``overlap`` voxels
    shared with a neighbour (none at the volume's edges)."""
    w = torch.ones(length)
    ramp = torch.linspace(0.0, 1.0, overlap + 2)[1:-1] if overlap > 0 else torch.ones(0)
    if overlap > 0 and not at_start:
        w[:overlap] = ramp
    if overlap > 0 and not at_end:
        w[-overlap:] = ramp.flip(0)
    return w

def tile_layout(size: Sequence[int], tile: int, overlap: int,
                max_voxels: Optional[int] = None) -> list[tuple[int, list[int]]]:
    """Per axis ``(length, starts)`` of the tiles of a volume: the least computed voxels with every
    tile edge at most ``tile`` and, when given, every tile at most ``max_voxels`` voxels.

    Each axis starts from :func:`even_tiles` and may take up to 8 more, shorter tiles; among the
    layouts whose tiles fit ``max_voxels``, the one computing the fewest voxels (overlaps counted
    twice) wins, then the one with the fewest tiles. A tile's working memory grows with its voxels,
    so ``max_voxels`` bounds the peak memory of whole-volume prediction whatever the volume's
    shape: 128 x 128 x 80 with ``tile=96, overlap=16`` gets 2 x 2 x 1 tiles of 72 x 72 x 80 (414,720
    voxels); with ``max_voxels=327_680`` 2 x 3 x 1 of 72 x 54 x 80 (12% more voxels computed). When no
    layout fits, the one with the smallest tiles.
    """
    options = []
    for s in size:
        length, starts = even_tiles(s, tile, overlap)
        axis = {len(starts): (length, starts)}
        step = min(overlap, tile // 2)
        for count in range(len(starts) + 1, min(len(starts) + 8, s) + 1):
            length = -(-(s + (count - 1) * step) // count)
            if length - step >= 1:
                starts = tile_starts(s, length, step)
                axis.setdefault(len(starts), (length, starts))
        options.append(list(axis.values()))
    best, best_key = None, None
    for layout in itertools.product(*options):
        voxels = math.prod(length for length, _ in layout)
        work = math.prod(length * len(starts) for length, starts in layout)
        tiles = math.prod(len(starts) for _, starts in layout)
        fits = max_voxels is None or voxels <= max_voxels
        key = (0, work, tiles) if fits else (1, voxels, work)
        if best_key is None or key < best_key:
            best, best_key = list(layout), key
    return best


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
