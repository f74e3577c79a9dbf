"""Whole-volume SR3 super-resolution: slice by slice in-plane, K samples -> mean and uncertainty.

A volume (X, Y, Z) is normalised from its own LR percentiles (as in training), each
axial slice is super-resolved in-plane by DDIM sampling (the slice axis keeps its
spacing; the model sees the slice's LR neighbours when it was trained with context slices), and the K samples per slice give the mean image and the per-voxel standard
deviation (:func:`workbench.tasks.sr.diffusion.sample_slices`). Slices go through in
batches; slice ``z`` always starts from the noise of seed ``seed * 1_000_003 + z``,
so a result does not depend on the batch size or on which slices were asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from workbench.io_utils import InputError
from workbench.tasks.sr.data import Intensity

PathLike = str | os.PathLike
WEIGHTS_DIR = Path(__file__).with_name("weights")
DEFAULT_STEPS, DEFAULT_SAMPLES = 20, 4


def default_sr3_checkpoint() -> Path:
    """The shipped SR3 checkpoint (soil micro-CT, x8 in-plane): ``weights/sr3_x8.pt``."""
    return WEIGHTS_DIR / "sr3_x8.pt"


@dataclass
class SR3Result:
    """``mean`` and ``std`` (sX, sY, Z) in the input's units; ``samples`` (K, sX, sY, Z) when kept."""

    mean: np.ndarray
    std: np.ndarray
    samples: Optional[np.ndarray] = None


def interval_factor(samples: int, level: float = 0.95) -> float:
    """``c`` such that ``mean +- c * std`` of ``samples`` draws is a ``level`` prediction interval for the truth.

    If the model's posterior is right, the truth is one more draw from the distribution the
    K samples come from, so ``(truth - mean) / (std * sqrt(1 + 1/K))`` follows Student's t with
    K - 1 degrees of freedom (``std`` with ddof 1; Gaussian per voxel): the classical prediction
    interval for a new observation (Geisser 1993, "Predictive Inference", ch. 2). K = 4: c = 3.56;
    so ``mean +- 2 std`` covers only about 83% of a calibrated model's voxels, not 95%.
    """
    from scipy.stats import t

    if samples < 2:
        raise InputError(f"an interval needs at least 2 samples, got {samples}")
    return float(t.ppf(0.5 + level / 2, samples - 1) * np.sqrt(1.0 + 1.0 / samples))


def slice_seed(seed: int, z: int) -> int:
    return int(seed) * 1_000_003 + int(z)


class SR3Predictor:
    """An SR3 network bound to a device, with its in-plane scale.

    Parameters
    ----------
    model : SR3UNet
    amp : bool
        bfloat16 autocast (on CPUs with native bf16 and on CUDA; as in training).
    batch : int
        Slices sampled together (times K samples per forward pass).
    """

    def __init__(self, model: torch.nn.Module, *, device: str = "auto", amp: Optional[bool] = None,
                 source: str = "", config=None, batch: int = 4):
        from workbench.training.distributed import resolve_device
        from workbench.training.schedules import amp_settings

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        s = tuple(int(v) for v in model.scale)
        self.scale = (s[0], s[1], 1)
        self.inplane = True
        self.source, self.config, self.batch = source, config, int(batch)
        self.amp_dtype = torch.bfloat16
        if amp is None and config is not None:
            amp, self.amp_dtype, _ = amp_settings(config.train, self.device)
        self.amp = bool(amp)

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: str = "auto", amp: Optional[bool] = None) -> "SR3Predictor":
        from workbench.training.checkpoint import load_checkpoint

        return cls.from_loaded(load_checkpoint(path), str(path), device=device, amp=amp)

    @classmethod
    def from_loaded(cls, ckpt: dict, source: str, device: str = "auto", amp: Optional[bool] = None
                    ) -> "SR3Predictor":
        """An SR3 checkpoint already loaded (``source``: its path, for messages)."""
        from workbench.tasks.sr.predictor import load_sr_network

        name = ckpt.get("config", {}).get("model", {}).get("name")
        if name != "sr3":
            raise InputError(f"checkpoint {source} holds model '{name}', not SR3: pick one written by "
                             "`workbench sr train --model sr3`")
        model, config, _ = load_sr_network(ckpt, source)
        return cls(model, device=device, amp=amp, source=source, config=config)

    @classmethod
    def default(cls, device: str = "auto", amp: Optional[bool] = None) -> "SR3Predictor":
        path = default_sr3_checkpoint()
        if not path.is_file():
            raise InputError(f"the shipped SR3 checkpoint {path} is missing: reinstall, or make it with "
                             "`python scripts/train_sr3_weights.py`, or pass --checkpoint")
        return cls.from_checkpoint(path, device=device, amp=amp)

    def check_input(self, lr: np.ndarray) -> None:
        if lr.ndim != 3:
            raise InputError(f"super-resolution needs one 3D volume (a 2D image as X x Y x 1), got shape {lr.shape}")
        if min(lr.shape[:2]) < 2:
            raise InputError(f"LR volume {lr.shape} is too small: it needs at least 2 voxels along x and y")

    def predict(self, lr: np.ndarray, *, steps: int = DEFAULT_STEPS, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                keep_samples: bool = False, slices: Optional[list[int]] = None,
                progress: Optional[Callable[[int, int], None]] = None,
                should_stop: Optional[Callable[[], bool]] = None) -> SR3Result:
        """Super-resolve (X, Y, Z) in-plane; ``slices`` restricts the work to those z indices.

        Returns the mean and the standard deviation of ``samples`` DDIM samples (std 0 for
        one sample) in the input's units, on the HR grid (sX, sY, len(slices) or Z).
        """
        from workbench.models.sr3 import pad_to_multiple
        from workbench.tasks.sr.diffusion import sample_slices

        self.check_input(lr)
        if samples < 1 or steps < 1:
            raise InputError(f"--samples and --steps must be at least 1, got {samples} and {steps}")
        norm = Intensity.of(lr)
        x = torch.from_numpy(norm.forward(lr))
        zs = list(range(lr.shape[2])) if slices is None else [int(z) for z in slices]
        s = self.scale[0]
        multiple = max(1, -(-self.model.size_multiple // s))  # LR padding so that s * edge fits the UNet
        batches = [zs[i:i + self.batch] for i in range(0, len(zs), self.batch)]
        total, done = len(batches) * int(steps), 0
        out = np.empty((samples, lr.shape[0] * s, lr.shape[1] * s, len(zs)), np.float32)

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        k = 0
        n = int(getattr(self.model, "context_slices", 0))
        for zb in batches:
            # (b, 2n+1, X, Y): each slice with its n LR neighbours per side (replicated at the volume's ends)
            idx = np.clip(np.asarray(zb)[:, None] + np.arange(-n, n + 1)[None], 0, lr.shape[2] - 1)
            block = x[:, :, torch.from_numpy(idx.ravel())].reshape(lr.shape[0], lr.shape[1], len(zb), 2 * n + 1)
            block = block.permute(2, 3, 0, 1)
            block, (h, w) = pad_to_multiple(block, multiple)
            hr = sample_slices(self.model, block.to(self.device), steps=steps, samples=samples,
                               seeds=[slice_seed(seed, z) for z in zb], amp=self.amp, amp_dtype=self.amp_dtype,
                               progress=tick, should_stop=should_stop)
            hr = hr[:, :, 0, : h * s, : w * s].cpu().numpy()  # (K, b, sX, sY)
            out[:, :, :, k:k + len(zb)] = np.moveaxis(hr, 1, -1)
            k += len(zb)
        values = norm.inverse(out)
        mean = values.mean(axis=0).astype(np.float32)
        std = (values.std(axis=0, ddof=1) if samples > 1 else np.zeros_like(mean)).astype(np.float32)
        return SR3Result(mean, std, values if keep_samples else None)
