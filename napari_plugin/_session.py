"""Which training run each viewer has, so the Denoise and Attention panels can use its model.

napari hands every plugin widget its own proxy of the viewer, so runs are keyed
by the viewer object behind the proxy. No Qt here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from napari_plugin._layers import unwrap


@dataclass
class RunInfo:
    trainer: Any = None
    run_dir: Optional[str] = None
    last_checkpoint: Optional[str] = None
    best_checkpoint: Optional[str] = None
    layer_name: Optional[str] = None
    running: bool = False


_RUNS: dict[int, RunInfo] = {}


def run_for(viewer) -> Optional[RunInfo]:
    return _RUNS.get(id(unwrap(viewer)))


def set_run(viewer, info: Optional[RunInfo]) -> None:
    key = id(unwrap(viewer))
    if info is None:
        _RUNS.pop(key, None)
    else:
        _RUNS[key] = info


def denoiser_factory(viewer, checkpoint: Optional[str] = None) -> Callable[[], Any]:
    """A function (run it in a worker) building a ``Denoiser`` from ``checkpoint`` or the viewer's run.

    The run's live model is copied with ``workbench.api.snapshot_denoiser`` (training goes on);
    a finished run whose trainer is gone falls back to its best, then last, checkpoint.
    """
    if checkpoint:
        path = str(checkpoint)

        def from_file():
            from workbench.inference import Denoiser

            return Denoiser.from_checkpoint(path)

        return from_file
    info = run_for(viewer)
    if info is None or (info.trainer is None and not (info.best_checkpoint or info.last_checkpoint)):
        raise ValueError("No model yet: start training in the Train panel, or choose a checkpoint file")
    trainer, ckpt = info.trainer, info.best_checkpoint or info.last_checkpoint
    if trainer is not None:
        def from_trainer():
            from workbench.api import snapshot_denoiser

            return snapshot_denoiser(trainer)

        return from_trainer
    return denoiser_factory(viewer, ckpt)
