"""Perceptual loss from a feature network the user supplies (nothing is downloaded).

Johnson, Alahi & Fei-Fei 2016, "Perceptual Losses for Real-Time Style Transfer and
Super-Resolution": the distance between deep features of prediction and target. For 3D CT
there is no standard pretrained network, and this project downloads nothing at run time,
so the feature extractor is a TorchScript file the user points to
(``options.perceptual_weights``): a module mapping (B, 1, X, Y, Z) to a feature tensor or a
list/tuple of them (e.g. a MedicalNet encoder, or a 2D VGG wrapped to run slice-wise),
saved with ``torch.jit.save(torch.jit.script(net), path)``. Without one the ``perceptual``
term is unavailable and the front ends say so.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from workbench.io_utils import InputError

UNAVAILABLE = ("needs a feature network you supply (a TorchScript file, options.perceptual_weights in the "
               "config); nothing is downloaded, so without one the term is off")


class PerceptualLoss:
    """L1 distance between the features of prediction and target, averaged over the feature maps.

    The feature network is frozen (no gradients to its weights) and kept in float32; the mask,
    when given, multiplies both volumes before the network sees them.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"perceptual feature network {path} not found: give a TorchScript file "
                             "(torch.jit.save) or remove options.perceptual_weights")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # noqa: BLE001 - any load failure is the same user problem
            raise InputError(f"cannot load {path} as a TorchScript feature network ({type(exc).__name__}): "
                             "save it with torch.jit.save(torch.jit.script(net), path)") from exc
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.path = str(path)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, mask=None) -> torch.Tensor:
        if mask is not None:
            pred, target = pred * mask, target * mask
        self.net.to(pred.device)
        with torch.autocast(pred.device.type, enabled=False):
            fp, ft = self.net(pred.float()), self.net(target.float())
        fp = fp if isinstance(fp, (list, tuple)) else [fp]
        ft = ft if isinstance(ft, (list, tuple)) else [ft]
        return torch.stack([(a - b.detach()).abs().mean() for a, b in zip(fp, ft)]).mean()


def perceptual_unavailable(pred, target, mask=None):
    """The registry's ``perceptual`` entry when no feature network was given: a clear error."""
    raise InputError(f"the perceptual loss term {UNAVAILABLE}")
