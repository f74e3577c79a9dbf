"""Whole-volume super-resolution with a trained (or the shipped default) network.

The LR volume is normalised from its own robust percentiles (as in training,
:class:`workbench.tasks.sr.data.Intensity`), super-resolved window by window
(:func:`workbench.tiling.sliding_window`, memory bounded by the window size) and
mapped back to the input's units on the HR grid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from workbench.io_utils import InputError
from workbench.tasks.sr.data import Intensity

PathLike = str | os.PathLike
WEIGHTS_DIR = Path(__file__).with_name("weights")


def scale_tuple(scale: int | Sequence[int], inplane: bool = False) -> tuple[int, int, int]:
    """``4`` -> ``(4, 4, 4)``; with ``inplane`` -> ``(4, 4, 1)`` (the slice axis keeps its spacing)."""
    if not isinstance(scale, int) and not isinstance(scale, np.integer):
        s = tuple(int(v) for v in scale)
        if len(s) != 3:
            raise InputError(f"scale {scale} must be one number or three")
        return s  # type: ignore[return-value]
    s = int(scale)
    if s < 1 or s & (s - 1):
        raise InputError(f"scale {s} is not supported: use 2, 4 or 8")
    return (s, s, 1) if inplane else (s, s, s)


def default_checkpoint(scale: int, inplane: Optional[bool] = False) -> Path:
    """The shipped checkpoint for ``scale``: ``weights/sr_x{scale}.pt`` (3D) or, with ``inplane``,
    ``sr_x{scale}_inplane.pt`` (x and y only)."""
    name = f"sr_x{int(scale)}_inplane.pt" if inplane else f"sr_x{int(scale)}.pt"
    path = WEIGHTS_DIR / name
    if path.is_file():
        return path
    shipped = sorted(p.stem.split("_x")[-1].replace("_", " ") for p in WEIGHTS_DIR.glob("sr_x*.pt"))
    other = WEIGHTS_DIR / (f"sr_x{int(scale)}.pt" if inplane else f"sr_x{int(scale)}_inplane.pt")
    hint = (f"; the shipped x{scale} network is {'3D: drop' if inplane else 'in-plane: add'} --inplane"
            if other.is_file() else "")
    raise InputError(f"no default {'in-plane' if inplane else '3D'} checkpoint for scale {scale} (shipped: "
                     f"x{', x'.join(shipped) or 'none'}){hint}: pass --scale with a shipped factor or --checkpoint "
                     "with your own")


def load_sr_network(ckpt: dict, source: str) -> tuple[torch.nn.Module, object, tuple[int, int, int]]:
    """``(model, config, scale)`` of a loaded ``sr`` checkpoint, with its averaged (EMA) weights when it has them.

    Refuses (one line) a checkpoint of another task or one that does not match its own model.
    """
    from workbench.config import Config
    from workbench.models import build_model
    from workbench.training.ema import model_weights

    task = ckpt.get("task_meta") or {}
    if task.get("task") != "sr":
        raise InputError(f"checkpoint {source} is for task '{task.get('task', 'dwi')}', not super-resolution: "
                         "pick a checkpoint written by `workbench sr train`")
    config = Config.model_validate(ckpt["config"])
    meta = ckpt["model_meta"]
    scale = tuple(int(s) for s in np.atleast_1d(task.get("scale", meta.get("scale"))))
    scale = scale * 3 if len(scale) == 1 else scale
    spec = {k: meta[k] for k in ("in_channels", "out_channels", "spatial_dims") if k in meta}
    model = build_model(config.model, **spec, scale=scale)
    try:  # float16 shipped weights are copied into the float32 parameters
        model.load_state_dict(model_weights(ckpt))
    except RuntimeError as exc:
        raise InputError(f"checkpoint {source} does not match model '{config.model.name}': "
                         f"{str(exc).splitlines()[0]}") from exc
    return model, config, scale  # type: ignore[return-value]


class SRPredictor:
    """A super-resolution network bound to a device, with its scale and tiling settings.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (B, 1, X, Y, Z) to (B, 1, sX, sY, sZ).
    scale : tuple of int
        Upscaling per axis.
    tile, overlap : int
        Window edge and overlap in LR voxels (peak memory grows with ``(tile * scale)^3``).
    """

    def __init__(self, model: torch.nn.Module, scale: Sequence[int], *, tile: int = 24, overlap: int = 4,
                 device: str = "auto", amp: Optional[bool] = None, source: str = "", config=None):
        from workbench.training.distributed import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.scale = tuple(int(s) for s in scale)
        self.inplane = self.scale[2] == 1 and self.scale[0] > 1
        self.tile, self.overlap = int(tile), int(overlap)
        self.source = source
        self.config = config
        if amp is None and config is not None:
            from workbench.training.schedules import amp_settings

            amp, self.amp_dtype, _ = amp_settings(config.train, self.device)
        else:
            self.amp_dtype = torch.bfloat16
        self.amp = bool(amp)

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: str = "auto", amp: Optional[bool] = None) -> "SRPredictor":
        """Load a ``best.pt``/``last.pt`` of an ``sr`` run (or a shipped default)."""
        from workbench.training.checkpoint import load_checkpoint

        return cls.from_loaded(load_checkpoint(path), str(path), device=device, amp=amp)

    @classmethod
    def from_loaded(cls, ckpt: dict, source: str, device: str = "auto", amp: Optional[bool] = None
                    ) -> "SRPredictor":
        """The same from a checkpoint already loaded (``source``: its path, for messages)."""
        model, config, scale = load_sr_network(ckpt, source)
        return cls(model, scale, tile=config.inference.tile, overlap=config.inference.overlap, device=device,
                   amp=amp, source=source, config=config)

    @classmethod
    def default(cls, scale: int = 4, device: str = "auto", amp: Optional[bool] = None,
                inplane: bool = False) -> "SRPredictor":
        """The shipped checkpoint for ``scale`` (3D x2 and x4 on soil and chest CT; x8 in-plane on soil)."""
        return cls.from_checkpoint(default_checkpoint(scale, inplane), device=device, amp=amp)

    def check_input(self, lr: np.ndarray) -> None:
        if lr.ndim != 3:
            raise InputError(f"super-resolution needs one 3D volume, got shape {lr.shape}")
        if min(lr.shape) < 2:
            raise InputError(f"LR volume {lr.shape} is too small: it needs at least 2 voxels per axis")

    def predict(self, lr: np.ndarray, *, progress: Optional[Callable[[int, int], None]] = None,
                should_stop: Optional[Callable[[], bool]] = None) -> np.ndarray:
        """Super-resolve an (X, Y, Z) volume in its own units; returns (sX, sY, sZ) float32."""
        from workbench.tiling import sliding_window

        self.check_input(lr)
        norm = Intensity.of(lr)
        x = torch.from_numpy(norm.forward(lr))[None, None]

        def net(window: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                return self.model(window.to(self.device)).float().cpu()

        out = sliding_window(net, x, self.tile, overlap=self.overlap, progress=progress, should_stop=should_stop)
        return norm.inverse(out[0, 0].numpy())

    def attention(self, lr: np.ndarray) -> Optional[np.ndarray]:
        """The network's spatial attention on the LR grid, (X, Y, Z) in [0, 1]; None when it has none."""
        self.check_input(lr)
        x = torch.from_numpy(Intensity.of(lr).forward(lr))[None, None].to(self.device)
        attention_map = getattr(self.model, "attention_map", None)
        out = attention_map(x) if attention_map is not None else None
        return None if out is None else out[0, 0].cpu().numpy().astype(np.float32)
