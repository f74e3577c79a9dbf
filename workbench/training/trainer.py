"""The task-agnostic training loop: one plain loop in the style of nanoGPT.

A task hands over a model ``model(x, cond)``, a :class:`~workbench.training.sampling.PatchSampler`
and a :class:`~workbench.config.Config`; the trainer owns the optimizer, schedule,
mixed precision, gradient accumulation, validation, checkpoints, metric files and
events. ``resume=True`` continues from ``out_dir/last.pt`` so that the final weights
equal those of an uninterrupted run.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch

from workbench.config import Config, save_config
from workbench.io_utils import InputError
from workbench.loss_weights import CompositeLoss, LossWeights
from workbench.training import distributed as wdist
from workbench.training import run_state
from workbench.training.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from workbench.training.ema import ema_model
from workbench.training.events import Callback, Failed, Finished, StepEnd, Validation, WeightsChanged
from workbench.training.interrupt import graceful_interrupt
from workbench.training.run_log import RunLog
from workbench.training.sampling import Batch, PatchSampler
from workbench.training.steps import StepContext, resolve_step
from workbench.training.schedules import amp_settings, build_optimizer, build_scheduler, steps_per_iteration

class NonFiniteLossError(InputError):
    """The training loss became NaN or infinite (the fix is a smaller lr or clipping)."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did. ``history`` lists the validations: ``{step, loss, terms}``."""

    steps_done: int
    best_loss: float
    reason: str
    last_checkpoint: Optional[str]
    best_checkpoint: Optional[str]
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Train ``model`` on batches from ``sampler`` as ``config.train`` and ``config.loss`` say.

    Parameters
    ----------
    model : torch.nn.Module
        ``model(x, cond) -> prediction``; seed torch before building it.
    sampler : PatchSampler
        Training batches (drawn with the trainer's generator) and validation batches.
    config : workbench.config.Config
        The whole run configuration (stored in every checkpoint).
    out_dir : path, optional
        Run folder for ``last.pt``, ``best.pt``, ``config.yaml``, ``metrics.csv`` and
        ``tb/``; None writes no files at all.
    callbacks : iterable of callables
        Receive the :mod:`~workbench.training.events` (on rank 0 only).
    loss_weights : LossWeights, optional
        Shared with a GUI that may change them while training runs; built from
        ``config.loss.weights`` when None.
    model_meta : dict, optional
        ``name, in_channels, out_channels, num_conditions, residual_channel``; checked on resume.
    task_meta : dict, optional
        Task-defined data stored in checkpoints (e.g. normalisation scale).
    step : callable, optional
        The objective ``step(model, batch, ctx) -> StepOutput``
        (:mod:`workbench.training.steps`); default: the model's ``objective``, else
        :func:`~workbench.training.steps.supervised_step`.
    loss_terms : dict, optional
        Stateful loss terms by name, in place of the registry's (``CompositeLoss(terms=...)``).
    """

    def __init__(self, model: torch.nn.Module, sampler: PatchSampler, config: Config, *,
                 out_dir=None, callbacks: Iterable[Callback] = (), loss_weights: Optional[LossWeights] = None,
                 model_meta: Optional[dict] = None, task_meta: Optional[dict] = None, step=None, loss_terms=None):
        tc = config.train
        self.config = config
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.dist = wdist.init_distributed(tc.device)
        self.device = self.dist.device
        self.raw_model = model.to(self.device)
        self.model = self._eval_model = torch.compile(self.raw_model) if tc.compile else self.raw_model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.sampler = sampler
        self.run_dir = None if out_dir is None else Path(out_dir)
        self.writes = self.run_dir is not None and self.dist.is_main
        self.callbacks = list(callbacks)
        # weights handed in by a front end are the user's: resume keeps them (moved while stopped)
        self._caller_weights = loss_weights is not None
        self.loss_weights = loss_weights if loss_weights is not None else LossWeights(config.loss.weights)
        # the loss reads a private copy, refreshed at step boundaries: a change takes effect at an exact step
        self._active_weights = LossWeights(self.loss_weights.get())
        self.criterion = CompositeLoss(self._active_weights, charbonnier_eps=config.loss.charbonnier_eps,
                                       terms=loss_terms)
        self.step_fn = resolve_step(self.raw_model, step)
        self.model_meta = dict(model_meta) if model_meta is not None else {
            "name": config.model.name if type(model) is _registered(config.model.name) else type(model).__name__,
            **{k: getattr(model, k) for k in ("in_channels", "out_channels", "num_conditions", "residual_channel")
               if hasattr(model, k)}}
        self.task_meta = dict(task_meta or {})
        self.ema = ema_model(self.raw_model, tc.ema_decay)
        self.optimizer = build_optimizer(self.raw_model.parameters(), tc)
        self.scheduler = build_scheduler(self.optimizer, tc)
        self.amp, self.amp_dtype, use_scaler = amp_settings(tc, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.generator = torch.Generator().manual_seed(tc.seed + self.dist.rank)
        self.step = 0
        self.best_loss = math.inf
        self.bad_validations = 0
        self.val_history: list[dict] = []
        self.weights_history: list[dict] = []
        self._weights_version = self.loss_weights.version
        self._stop = threading.Event()
        self._log: Optional[RunLog] = None
        self._saved_step = -1

    # ------------------------------------------------------------------ public
    def add_callback(self, callback: Callback) -> None:
        """Receive events from now on (for front ends that need the trainer before they can subscribe)."""
        self.callbacks.append(callback)

    def request_stop(self) -> None:
        """Ask the loop to stop (thread-safe); honoured within one step, then ``last.pt`` is written."""
        self._stop.set()

    def fit(self, resume: bool = False) -> TrainResult:
        """Run the loop until ``train.steps``, early stopping or a stop request.

        In the main thread the first Ctrl-C is a stop request (reason ``"stopped"``,
        ``last.pt`` written at that step); a second one raises ``KeyboardInterrupt``
        (:func:`workbench.training.interrupt.graceful_interrupt`).

        Parameters
        ----------
        resume : bool
            Continue from ``out_dir/last.pt`` (same config except ``train.steps``).

        Returns
        -------
        TrainResult

        Raises
        ------
        workbench.io_utils.InputError
            Nothing to resume, a config mismatch, or a NaN loss (:class:`NonFiniteLossError`).
            Any exception is first sent to the callbacks as a :class:`Failed` event.
        """
        try:
            with graceful_interrupt(self.request_stop, self._stop.is_set):  # Ctrl-C: stop at a step, keep last.pt
                return self._fit(resume)
        except Exception as e:
            self._emit(Failed(self.step, str(e), traceback.format_exc()), swallow=True)
            raise
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    # ------------------------------------------------------------------ loop
    def _fit(self, resume: bool) -> TrainResult:
        tc = self.config.train
        if resume:
            self._resume()
        if self.writes:
            save_config(self.config, self.run_dir / "config.yaml")
            self._log = RunLog(self.run_dir, sorted(self.loss_weights.get()), self.step if resume else None)
        val_batches = list(self.sampler.validation_batches())[: tc.val_batches]
        self.model.train()
        reason, t0, start = "completed", time.perf_counter(), self.step
        while self.step < tc.steps:
            if self._sync_stop():
                reason = "stopped"
                break
            self._check_weights()
            snapshot = (self.generator.get_state(), capture_rng_state())
            out = self._train_step()
            if out is None:  # stop requested between micro-batches: drop the partial step
                self.generator.set_state(snapshot[0])
                restore_rng_state(snapshot[1])
                reason = "stopped"
                break
            loss, terms, lr, grad_norm = out
            self.step += 1
            elapsed = time.perf_counter() - t0
            eta = elapsed / (self.step - start) * (tc.steps - self.step)
            self._emit(StepEnd(self.step, tc.steps, loss, terms, lr, grad_norm, self._active_weights.get(),
                               elapsed, eta))
            val = None
            if val_batches and (self.step % tc.val_every == 0 or self.step == tc.steps):
                val = self._validate(val_batches)
            if self._log is not None:
                self._log.step(self.step, loss, terms, lr, grad_norm, *(val or (None, None)))
            if val is not None and tc.early_stopping_patience and self.bad_validations >= tc.early_stopping_patience:
                reason = "early_stopping"
                break
            if self.step % tc.checkpoint_every == 0:
                self._save("last.pt")
        last = self._save("last.pt") if self._saved_step != self.step else self._path("last.pt")
        best = self._path("best.pt") if math.isfinite(self.best_loss) else None  # never a stale file
        wdist.barrier()  # files are complete before any rank returns (e.g. to resume from them)
        self._stop.clear()  # honoured: a later fit() call runs again
        self._emit(Finished(self.step, self.best_loss, reason, last, best))
        return TrainResult(self.step, self.best_loss, reason, last, best, list(self.val_history))

    def _train_step(self):
        """One optimizer step over ``accumulation_steps`` micro-batches; None when a stop cut it short."""
        tc = self.config.train
        accum = tc.accumulation_steps
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, term_sums = 0.0, {}
        for micro in range(accum):
            last = micro == accum - 1
            batch = self.sampler.sample(self.config.data.batch_size, self.generator).to(self.device)
            sync = self.model.no_sync() if self.dist.distributed and not last else nullcontext()
            ctx = StepContext(self.criterion, self.generator, True, self.step)
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    out = self.step_fn(self.model, batch, ctx)
                loss, terms = out.loss.float(), out.terms
                self.scaler.scale(loss / accum).backward()
            value, stop = self._reduce_loss(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss became {'NaN' if math.isnan(value) else 'inf'} at step "
                                         f"{self.step + 1}: lower train.lr or enable grad_clip")
            loss_sum += value
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + v
            if stop:
                if not last:
                    return None
                self._stop.set()  # every rank saw it: stop after this step
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), tc.grad_clip or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.raw_model)
        lr = float(self.optimizer.param_groups[0]["lr"])
        if steps_per_iteration(self.scheduler):
            self.scheduler.step()
        return loss_sum / accum, {k: v / accum for k, v in term_sums.items()}, lr, float(grad_norm)

    @torch.no_grad()
    def _validate(self, batches: list[Batch]) -> tuple[float, dict]:
        """Loss on this rank's share of the validation batches, averaged over all ranks."""
        tc = self.config.train
        model = self.ema.module if self.ema is not None else self._eval_model  # the weights best.pt is chosen by
        model.eval()
        sums: dict[str, float] = {}
        count, images = 0, {}
        for i in range(self.dist.rank, len(batches), self.dist.world_size):
            b = batches[i].to(self.device)
            # a fixed generator per batch: a stochastic objective (diffusion) gives a deterministic val loss
            ctx = StepContext(self.criterion, torch.Generator().manual_seed(tc.seed + 1000 + i), False, self.step)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                out = self.step_fn(model, b, ctx)
            for k, v in {"loss": float(out.loss), **out.terms}.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if i == 0:
                images = dict(out.images)
        self.model.train()
        total: dict[str, float] = {}
        n = 0
        for part_sums, part_count in wdist.all_gather_objects((sums, count)):
            n += part_count
            for k, v in part_sums.items():
                total[k] = total.get(k, 0.0) + v
        terms = {k: v / n for k, v in total.items()}
        loss = terms.pop("loss")
        is_best = loss < self.best_loss
        if is_best:
            self.best_loss, self.bad_validations = loss, 0
        else:
            self.bad_validations += 1
        if self.scheduler is not None and not steps_per_iteration(self.scheduler):
            self.scheduler.step(loss)
        self.val_history.append({"step": self.step, "loss": loss, "terms": dict(terms)})
        if is_best:
            self._save("best.pt")
        self._emit(Validation(self.step, loss, terms, self.best_loss, is_best, images))
        return loss, terms

    # ------------------------------------------------------------------ helpers
    def _emit(self, event, swallow: bool = False) -> None:
        if not self.dist.is_main:
            return
        for cb in self.callbacks:
            try:
                cb(event)
            except Exception:
                if not swallow:
                    raise

    def _sync_stop(self) -> bool:
        if not self.dist.distributed:
            return self._stop.is_set()
        return bool(wdist.all_reduce_sum(torch.tensor([float(self._stop.is_set())]))[0] > 0)

    def _reduce_loss(self, loss: torch.Tensor) -> tuple[float, bool]:
        """Mean loss over ranks and whether any rank was asked to stop (one collective per micro-batch)."""
        if not self.dist.distributed:
            return float(loss), self._stop.is_set()
        t = wdist.all_reduce_sum(torch.stack([loss.float().cpu(), torch.tensor(float(self._stop.is_set()))]))
        return float(t[0]) / self.dist.world_size, bool(t[1] > 0)

    def _check_weights(self) -> None:
        """Apply changes of the shared weights from the coming step on; emit WeightsChanged for each.

        Under DDP rank 0's weights (the GUI's) are broadcast, so every rank uses the same loss.
        """
        if self.dist.distributed:
            new = wdist.broadcast_object(self.loss_weights.get() if self.dist.is_main else None)
        else:
            version = self.loss_weights.version
            if version == self._weights_version:
                return
            new, self._weights_version = self.loss_weights.get(), version
        old = self._active_weights.get()
        for name in sorted(set(new) | set(old)):
            o, n = float(old.get(name, 0.0)), float(new.get(name, 0.0))
            if o != n:
                self._active_weights.set(name, n, step=self.step + 1)
                self.weights_history.append({"step": self.step + 1, "name": name, "old": o, "new": n})
                self._emit(WeightsChanged(self.step + 1, name, o, n))

    def _path(self, name: str) -> Optional[str]:
        return str(self.run_dir / name) if self.writes else None

    def _save(self, name: str) -> Optional[str]:
        """Write a full checkpoint (collective under DDP: every rank's RNG states go into it)."""
        if self.run_dir is None:
            return None
        per_rank = wdist.all_gather_objects({"generator": self.generator.get_state(), "torch": torch.get_rng_state()})
        if name == "last.pt":
            self._saved_step = self.step
        if not self.writes:
            return None
        state = run_state.trainer_state(self, per_rank)
        path = save_checkpoint(self.run_dir / name, state)
        if self._log is not None:
            self._log.flush()
        return str(path)

    def _resume(self) -> None:
        """Restore everything from ``out_dir/last.pt``."""
        run_state.restore_trainer(self)


def _registered(name: str):
    from workbench.models import MODELS

    return MODELS.get(name)
