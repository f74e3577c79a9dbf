"""Seeded augmentations: a sampler draws parameters from a ``torch.Generator``,
a pure function applies them (the torchio pattern), so seeded runs are exact and
input, target and mask always receive the same transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentParams:
    flip_axes: tuple[int, ...]  # spatial axes (0, 1, 2) to mirror
    intensity: float  # multiplicative factor


def sample_augment(generator: torch.Generator, flip: bool = True, intensity_range: float = 0.1) -> AugmentParams:
    """Draw flip axes (each with p = 0.5) and an intensity factor in [1 - r, 1 + r]."""
    draws = torch.rand(4, generator=generator)
    axes = tuple(i for i in range(3) if flip and draws[i] < 0.5)
    factor = 1.0 + intensity_range * (2.0 * float(draws[3]) - 1.0)
    return AugmentParams(axes, factor)


def flip_spatial(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Mirror the last three (spatial) dimensions listed in ``axes``."""
    if not axes:
        return x
    return torch.flip(x, dims=[x.ndim - 3 + a for a in axes])


def apply_augment(params: AugmentParams, image: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Apply the same flips to all three; scale intensities of image and target only."""
    image = flip_spatial(image, params.flip_axes) * params.intensity
    target = flip_spatial(target, params.flip_axes) * params.intensity
    if mask is not None:
        mask = flip_spatial(mask, params.flip_axes)
    return image, target, mask
