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
    rot90: int = 0  # quarter turns in the plane of spatial axes 0 and 1


def sample_augment(generator: torch.Generator, flip: bool = True, intensity_range: float = 0.1,
                   rotate: bool = True) -> AugmentParams:
    """Draw flip axes (each with p = 0.5), an intensity factor in [1 - r, 1 + r] and 0-3 quarter turns."""
    draws = torch.rand(5, generator=generator)
    axes = tuple(i for i in range(3) if flip and draws[i] < 0.5)
    factor = 1.0 + intensity_range * (2.0 * float(draws[3]) - 1.0)
    turns = int(draws[4] * 4) % 4 if rotate else 0
    return AugmentParams(axes, factor, turns)


def flip_spatial(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Mirror the last three (spatial) dimensions listed in ``axes``."""
    if not axes:
        return x
    return torch.flip(x, dims=[x.ndim - 3 + a for a in axes])


def rot90_spatial(x: torch.Tensor, turns: int) -> torch.Tensor:
    """Rotate by ``turns`` quarter turns in the plane of the first two spatial axes (equal sizes needed
    for odd turns)."""
    if turns % 4 == 0:
        return x
    return torch.rot90(x, turns, dims=(x.ndim - 3, x.ndim - 2))


def apply_augment(params: AugmentParams, image: torch.Tensor, target: torch.Tensor,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Apply the same flips to all three; scale intensities of image and target only."""
    turns = params.rot90 if image.shape[-3] == image.shape[-2] else 2 * (params.rot90 // 2)
    image = rot90_spatial(flip_spatial(image, params.flip_axes), turns) * params.intensity
    target = rot90_spatial(flip_spatial(target, params.flip_axes), turns) * params.intensity
    if mask is not None:
        mask = rot90_spatial(flip_spatial(mask, params.flip_axes), turns)
    return image, target, mask
