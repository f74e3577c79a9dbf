"""napari ``thread_worker`` generators: every long step runs here, never on the GUI thread.

Each generator yields the core's typed events (:mod:`workbench.training.events`)
or the small messages below and returns its result; widgets only connect
``yielded``/``returned``/``errored``/``finished``. Blocking core calls that
report through a callback (``Trainer.fit``, ``Denoiser.denoise``) run on an
inner thread whose callback feeds a queue the generator drains, so events reach
the GUI as they happen.

Exceptions are re-raised to the worker (napari then shows them in its
notifications and the widget in its status line). A ``RuntimeError`` is wrapped
in :class:`WorkerError`: superqt treats a ``RuntimeError`` from a generator as
"worker deleted" and would swallow it silently.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
from napari.qt.threading import thread_worker

_END = object()


class WorkerError(Exception):
    """A failure inside a worker, with the original exception as ``__cause__``."""


class Cancelled(Exception):
    """The user (or closing napari) cancelled the work."""


@dataclass(frozen=True)
class Status:
    """A line for the widget's status label."""

    text: str


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    what: str = ""


@dataclass(frozen=True)
class TrainerReady:
    """The trainer is built (data prepared, model on its device); training starts next."""

    trainer: Any
    device: str
    amp: bool
    run_dir: str
    resume: bool


class Control:
    """Stop flag shared by a widget and its worker (thread-safe).

    ``cancelled()`` is also true once napari aborts the worker (``worker.quit()``,
    e.g. when the window closes), so the generator can stop the core cleanly.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.done = threading.Event()  # set once the core has returned (checkpoint written)
        self.fitting = False  # the core's fit() has been started
        self.worker = None

    def stop(self) -> None:
        self._stop.set()

    def aborted(self) -> bool:
        w = self.worker
        try:
            return bool(w is not None and w.abort_requested)
        except RuntimeError:  # the Qt object is gone: treat as aborted
            return True

    def cancelled(self) -> bool:
        return self._stop.is_set() or self.aborted()


def _as_worker_error(exc: BaseException) -> BaseException:
    if isinstance(exc, RuntimeError) or not isinstance(exc, Exception):
        err = WorkerError(f"{type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err
    return exc


NICE_INCREMENT = 5


def _yield_cpu_to_gui() -> None:
    """Lower this thread's scheduling priority (Linux: threads have their own nice value).

    When cores are scarce the GUI thread then wins the CPU over the computation, so
    napari stays responsive; with idle cores nothing changes. No-op elsewhere.
    """
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICE_INCREMENT))
    except (AttributeError, OSError):
        pass


def _pump(fn: Callable[[Callable[[Any], None]], Any], control: Optional[Control] = None,
          on_cancel: Optional[Callable[[], None]] = None) -> Iterator[Any]:
    """Run ``fn(emit)`` on an inner thread; yield what it emits; return its result or raise its error.

    When ``control`` is cancelled, ``on_cancel`` is called once (e.g. ``trainer.request_stop``) and
    the remaining items are drained without yielding if the worker was aborted.
    """
    items: "queue.Queue[Any]" = queue.Queue()
    box: dict = {}

    def run() -> None:
        _yield_cpu_to_gui()
        try:
            box["result"] = fn(items.put)
        except BaseException as exc:  # noqa: BLE001 - handed to the worker below
            box["error"] = exc
        finally:
            items.put(_END)

    inner = threading.Thread(target=run, name="workbench-worker", daemon=False)
    inner.start()
    cancel_sent = False
    try:
        while True:
            if control is not None and not cancel_sent and control.cancelled():
                cancel_sent = True
                if on_cancel is not None:
                    on_cancel()
            try:
                item = items.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _END:
                break
            if control is not None and control.aborted():
                continue  # yielding now would end the worker before the core has stopped
            yield item
    finally:
        if inner.is_alive():  # generator closed early: stop the core and wait for it
            if on_cancel is not None:
                on_cancel()
            inner.join()
    if "error" in box:
        raise _as_worker_error(box["error"])
    return box.get("result")


def _pump_stoppable(fn: Callable[[Callable[[Any], None]], Any], control: Control) -> Iterator[Any]:
    """:func:`_pump` for work the core stops (it raises :class:`workbench.tasks.base.Cancelled` when
    ``control.cancelled()``): returns None then; ``control.done`` is set however it ends."""
    from workbench.tasks.base import Cancelled as CoreCancelled

    try:
        return (yield from _pump(fn, control))
    except CoreCancelled:
        return None
    finally:
        control.done.set()


@thread_worker(ignore_errors=True)
def train_worker(task_name: str, inputs: Callable[[], dict], config, run_dir: str, *, resume: bool = False,
                 loss_weights=None, control: Optional[Control] = None, data_dir: Optional[str] = None):
    """Prepare the data, build the task's trainer, run ``fit`` and yield its events; returns a ``TrainResult``.

    ``inputs()`` gives ``{role: InputArray or None}`` for the task's ``train_inputs`` (called here, off
    the GUI thread); :meth:`Task.trainer_from_arrays` builds the trainer. A task that trains from a
    folder of simulated cases instead (no ``train_inputs``, e.g. dot) gets ``data_dir``:
    ``Task.load_training_data`` then ``Task.make_trainer``. Yields :class:`Status`, then
    :class:`TrainerReady`, then the trainer's ``StepEnd``, ``Validation``, ``WeightsChanged``,
    ``Finished`` (or ``Failed``) events.
    """
    from workbench.tasks import get_task

    control = control or Control()
    try:
        task = get_task(task_name)
        yield Status(f"Preparing the data for {task.label}…")
        try:
            if data_dir is not None:
                trainer = task.make_trainer(task.load_training_data(data_dir, config), run_dir, config,
                                            loss_weights=loss_weights)
            else:
                trainer = task.trainer_from_arrays(inputs(), run_dir, config, loss_weights=loss_weights)
        except Exception as exc:
            raise _as_worker_error(exc) from exc
        yield TrainerReady(trainer, str(trainer.device), bool(trainer.amp), str(run_dir), resume)
        if control.cancelled():
            return None

        def fit(emit):
            trainer.callbacks.append(emit)
            try:
                return trainer.fit(resume=resume)
            finally:
                trainer.callbacks.remove(emit)

        control.fitting = True
        return (yield from _pump(fit, control, trainer.request_stop))
    finally:
        control.done.set()


@thread_worker(ignore_errors=True)
def denoise_worker(make_denoiser: Callable[[], Any], inputs: Callable[[], tuple],
                   control: Optional[Control] = None):
    """Denoise a series; yields :class:`Progress`; returns ``DenoiseOutput`` ((X, Y, Z, N) result).

    ``inputs()`` gives ``(DWISeries, mask or None)``.
    """
    from workbench.api import noise_sigma

    control = control or Control()
    yield Status("Loading the model…")
    try:
        den = make_denoiser()
        series, mask = inputs()
    except Exception as exc:
        raise _as_worker_error(exc) from exc
    yield Status(f"Denoising on {den.device}…")

    def run(emit):
        def progress(done, total):
            if control.cancelled():
                raise Cancelled("denoising cancelled")
            emit(Progress(done, total, "volumes"))

        # the same noise sigma as `workbench denoise`, so the panel gives the CLI's result (MP-PCA blend,
        # Rician inversion), not the bare J-invariant prediction
        sigma, _ = noise_sigma(series, mask, den.config)
        return den.denoise(series.data, series.bvals, series.bvecs, mask, progress=progress, sigma=sigma)

    try:
        return (yield from _pump(run, control))
    except Cancelled:
        return None


@thread_worker(ignore_errors=True)
def baseline_worker(name: str, inputs: Callable[[], tuple]):
    """Run a DIPY baseline (``workbench.baselines.run_baseline``); returns the (X, Y, Z, N) result.

    ``inputs()`` gives ``(DWISeries, mask or None)``.
    """
    from workbench.baselines import run_baseline

    yield Status(f"Running {name} (no progress reported; may take a while)…")
    try:
        series, mask = inputs()
        return run_baseline(name, series.data, series.bvals, mask=mask)
    except Exception as exc:
        raise _as_worker_error(exc) from exc


@thread_worker(ignore_errors=True)
def edge_worker(volumes: dict):
    """3D Sobel magnitude (``workbench.inference.edge_map``) of each named (X, Y, Z) volume."""
    from workbench.inference import edge_map

    out = {}
    for i, (name, vol) in enumerate(volumes.items()):
        yield Progress(i, len(volumes), name)
        out[name] = edge_map(np.asarray(vol, dtype=np.float32))
    yield Progress(len(volumes), len(volumes), "")
    return out


@thread_worker(ignore_errors=True)
def attention_worker(make_denoiser: Callable[[], Any], inputs: Callable[[], tuple], volume: int,
                     cache: Optional[dict] = None, key: Any = None):
    """CBAM spatial attention maps ``{block: (X, Y, Z)}`` of volume ``volume`` (``Denoiser.attention_maps``).

    ``inputs()`` gives ``(DWISeries, mask or None)``; ``cache`` (a dict owned by the widget)
    keeps the prepared subject between calls while ``key`` stays the same.
    """
    cache = cache if cache is not None else {}
    yield Status("Loading the model…")
    try:
        den = make_denoiser()
        subject = cache.get("subject")
        if subject is None or cache.get("key") != key:
            yield Status("Preparing the series (q-space predictions)…")
            series, mask = inputs()
            subject = den.prepare(series.data, series.bvals, series.bvecs, mask)
            cache.update(subject=subject, key=key)
        yield Status(f"Computing attention for volume {volume}…")
        maps = den.attention_maps(subject, int(volume))
    except Exception as exc:
        raise _as_worker_error(exc) from exc
    return maps


@thread_worker(ignore_errors=True)
def metrics_worker(rows: dict, reference: np.ndarray, mask: Optional[np.ndarray], data_range: float,
                   volume: int):
    """PSNR and SSIM (``workbench.metrics``) of each named (X, Y, Z) volume against ``reference``."""
    from workbench.metrics import psnr, ssim3d

    yield Status(f"Computing metrics for volume {volume}…")
    out = {}
    try:
        for name, vol in rows.items():
            out[name] = (psnr(vol, reference, mask, data_range=data_range),
                         ssim3d(vol, reference, mask, data_range=data_range))
    except Exception as exc:
        raise _as_worker_error(exc) from exc
    return volume, out


@thread_worker(ignore_errors=True)
def predict_worker(task_name: str, image: np.ndarray, affine: np.ndarray, choices: dict,
                   checkpoint: Optional[str] = None, control: Optional[Control] = None, attention: bool = False):
    """``Task.predict_array`` of any task; yields :class:`Progress` per tile or sampling step; returns
    ``(array, affine, attention, extras)`` where ``attention`` is ``Task.attention_array``'s
    ``(map, affine)`` when asked for, else None, and ``extras`` the task's further outputs
    (:class:`~workbench.tasks.base.ExtraOutput` by name; empty for most tasks).

    Stop answers within one tile or step (the core polls ``control.cancelled``) and returns None.
    """
    from workbench.tasks import get_task
    control = control or Control()
    task = get_task(task_name)
    yield Status(f"Loading the {task.label} network…")

    def run(emit):
        out, out_affine, *extras = task.predict_array(image, affine, checkpoint=checkpoint or None,
                                                      should_stop=control.cancelled,
                                                      progress=lambda d, t: emit(Progress(d, t, "steps")), **choices)
        att = task.attention_array(image, affine, checkpoint=checkpoint or None, **choices) if attention else None
        return out, out_affine, att, (extras[0] if extras else {})

    return (yield from _pump_stoppable(run, control))
