"""Optimizer, learning-rate schedule and mixed-precision settings built from a TrainConfig."""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from workbench.config import TrainConfig

PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2  # validations without improvement before the lr is halved

_HORIZON_KEYS = ("total_steps", "_schedule_phases", "T_max")


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW (Loshchilov & Hutter 2019) with ``cfg.lr``, ``cfg.betas`` and ``cfg.weight_decay``."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The schedule named by ``cfg.schedule``.

    Returns
    -------
    torch.optim.lr_scheduler.LRScheduler or ReduceLROnPlateau or None
        ``onecycle``: OneCycleLR(max_lr=lr, total_steps=steps, pct_start=warmup_fraction)
        (Smith & Topin 2019), stepped per
        optimizer step. ``cosine``: CosineAnnealingLR(T_max=steps), per step.
        ``plateau``: ReduceLROnPlateau on the validation loss, stepped at each
        validation. ``none``: None (constant lr).
    """
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=cfg.warmup_fraction)
    if cfg.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=cfg.steps)
    if cfg.schedule == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="min", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE)
    return None


def steps_per_iteration(scheduler) -> bool:
    """True for schedules stepped after every optimizer step (not plateau, not none)."""
    return scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def load_scheduler_state(scheduler, state: Optional[dict]) -> None:
    """Restore a schedule, keeping the horizon (``train.steps``) of the current config.

    When a resumed run is given more steps, OneCycleLR and CosineAnnealingLR
    continue from the saved position on the curve of the new length.
    """
    if scheduler is None or not state:
        return
    if steps_per_iteration(scheduler):
        state = {k: v for k, v in state.items() if k not in _HORIZON_KEYS}
    scheduler.load_state_dict(state)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); there autocast pays off.

    Without it PyTorch emulates bfloat16 and a mixed-precision step is *slower* than float32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_model_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (benchmarks and shipped checkpoints record it)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """Whether autocast is on, its dtype, and whether a GradScaler is needed.

    ``amp="auto"`` turns mixed precision on for CUDA and for CPUs with native
    bfloat16, and off where it would only be emulated. CPU: bfloat16, no scaler.
    CUDA: ``amp_dtype`` auto -> bfloat16 where the GPU supports it, else float16;
    float16 needs the scaler.
    """
    if cfg.amp == "auto":
        enabled = device.type == "cuda" or cpu_has_native_bf16()
    else:
        enabled = bool(cfg.amp)
    if device.type != "cuda":
        return enabled, torch.bfloat16, False
    if cfg.amp_dtype == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = getattr(torch, cfg.amp_dtype)
    return enabled, dtype, bool(enabled and dtype == torch.float16)
