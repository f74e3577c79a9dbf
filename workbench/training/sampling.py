"""The contract between a task's data and the task-agnostic trainer.

A task supplies (input, target, condition) samples through a :class:`PatchSampler`:
the trainer draws random training batches with a ``torch.Generator`` it owns (so
its state is checkpointed and a resumed run draws the same batches), and asks
for a fixed list of validation batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


@dataclass
class Batch:
    """``input`` (B, C_in, D, H, W), ``target`` (B, C_out, D, H, W), ``cond`` (B,) long,
    ``mask`` (B, 1, D, H, W) float in [0, 1] or None (loss over every voxel); a task's step may pass
    per-channel weights, (B, C_out, D, H, W) (the ``dot`` task's inclusion weights)."""

    input: torch.Tensor
    target: torch.Tensor
    cond: torch.Tensor
    mask: Optional[torch.Tensor] = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.input.to(device, non_blocking=True),
            self.target.to(device, non_blocking=True),
            self.cond.to(device, non_blocking=True),
            None if self.mask is None else self.mask.to(device, non_blocking=True),
        )


class PatchSampler(Protocol):
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A random training batch; all randomness must come from ``generator``."""
        ...

    def validation_batches(self) -> list[Batch]:
        """Fixed validation batches, identical on every call."""
        ...
