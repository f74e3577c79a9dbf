"""A training run's state on disk: what a checkpoint holds beyond the weights, and how a run resumes from it.

:func:`trainer_state` is the dictionary :class:`~workbench.training.trainer.Trainer` writes to ``last.pt`` and
``best.pt`` (weights, EMA, optimizer, scheduler, grad scaler, every RNG stream, early-stopping counters, the live
loss weights and their history); :func:`restore_trainer` puts all of it back so that a resumed run's final weights
equal an uninterrupted run's (tested in tests/test_trainer.py).
"""

from __future__ import annotations

import torch

from workbench.io_utils import InputError
from workbench.training.checkpoint import (
    capture_rng_state, check_compatible, config_differences, load_checkpoint, restore_rng_state)
from workbench.training.schedules import load_scheduler_state

RESUME_KEYS = ("optimizer_state", "scheduler_state", "scaler_state", "rng", "sampler_generator_state",
               "best_loss", "bad_validations", "loss_weights", "loss_weights_history", "val_history")


RUNTIME_ONLY_KEYS = ("train.steps", "train.device", "train.threads", "train.compile", "train.checkpoint_every",
                     "inference")
"""Config keys a resumed run may change: they do not alter what the next step computes on one device."""


def trainer_state(trainer, per_rank: list) -> dict:
    """The checkpoint dictionary of ``trainer`` now; ``per_rank``: every DDP rank's RNG states, gathered."""
    return {
        "step": trainer.step, "config": trainer.config.model_dump(mode="json"),
        "model_state": trainer.raw_model.state_dict(), "optimizer_state": trainer.optimizer.state_dict(),
        "ema_state": trainer.ema.state_dict() if trainer.ema is not None else {},
        "scheduler_state": trainer.scheduler.state_dict() if trainer.scheduler is not None else {},
        "scaler_state": trainer.scaler.state_dict(), "rng": capture_rng_state(),
        "sampler_generator_state": trainer.generator.get_state(), "rank_rng": per_rank,
        "best_loss": float(trainer.best_loss), "bad_validations": trainer.bad_validations,
        "loss_weights": trainer._active_weights.get(),
        "loss_weights_history": [dict(h) for h in trainer.weights_history],
        "val_history": [dict(h) for h in trainer.val_history],
        "model_meta": dict(trainer.model_meta), "task_meta": dict(trainer.task_meta),
    }


def restore_trainer(trainer) -> None:
    """Restore ``trainer`` from its ``run_dir/last.pt``; a clear InputError when it cannot be resumed."""
    if trainer.run_dir is None:
        raise InputError("resume needs a run folder: pass out_dir (the folder holding last.pt)")
    path = trainer.run_dir / "last.pt"
    if not path.is_file():
        raise InputError(f"no last.pt in {trainer.run_dir}: start without --resume")
    ckpt = load_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise InputError(f"{path} cannot be resumed (missing {', '.join(missing)}): start a new run")
    diffs = config_differences(ckpt["config"], trainer.config.model_dump(mode="json"), ignore=RUNTIME_ONLY_KEYS)
    if diffs:
        raise InputError(f"{path} was trained with a different config ({', '.join(diffs)} differ): "
                         "resume with the run's config.yaml (only steps, device, threads, compile and "
                         "checkpoint_every may change) or start a new run")
    check_compatible(ckpt, trainer.model_meta)
    trainer.raw_model.load_state_dict(ckpt["model_state"])
    trainer.optimizer.load_state_dict(ckpt["optimizer_state"])
    if trainer.ema is not None:
        if not ckpt.get("ema_state"):
            raise InputError(f"{path} has no averaged (EMA) weights to resume: start a new run")
        trainer.ema.load_state_dict(ckpt["ema_state"])
    load_scheduler_state(trainer.scheduler, ckpt["scheduler_state"])
    if ckpt["scaler_state"] and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(ckpt["scaler_state"])
    trainer.step, trainer.best_loss = int(ckpt["step"]), float(ckpt["best_loss"])
    trainer.bad_validations = int(ckpt["bad_validations"])
    trainer.val_history = [dict(h) for h in ckpt["val_history"]]
    trainer.weights_history = [dict(h) for h in ckpt["loss_weights_history"]]
    # the loss continues with the checkpoint's weights; a front end's weights that differ (moved while
    # stopped) then take effect at the next step as recorded WeightsChanged events, not silently reset
    live = (trainer._active_weights,) if trainer._caller_weights else (trainer.loss_weights, trainer._active_weights)
    for weights in live:
        current, saved = weights.get(), ckpt["loss_weights"]
        for name in sorted(set(current) | set(saved)):
            if float(current.get(name, 0.0)) != float(saved.get(name, 0.0)):
                weights.set(name, float(saved.get(name, 0.0)), step=trainer.step)
    trainer._weights_version = -1 if trainer._caller_weights else trainer.loss_weights.version
    restore_rng_state(ckpt["rng"])
    trainer.generator.set_state(ckpt["sampler_generator_state"])
    per_rank = ckpt.get("rank_rng") or []
    if trainer.dist.rank < len(per_rank) and trainer.dist.rank > 0:
        trainer.generator.set_state(per_rank[trainer.dist.rank]["generator"])
        torch.set_rng_state(per_rank[trainer.dist.rank]["torch"])
    elif trainer.dist.rank > 0:  # world grew: fresh, distinct streams for the new ranks
        trainer.generator.manual_seed(trainer.config.train.seed + trainer.dist.rank + 7919 * trainer.step)
    trainer._saved_step = trainer.step
