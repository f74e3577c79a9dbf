"""The contract of a task, and what front ends learn from it.

A task is an object (one instance per task, registered in :data:`workbench.tasks.TASKS`)
whose methods the CLI, the napari plugin and the notebooks call by name; none of
them names a task. A new task subclasses :class:`Task`, fills in the members that
differ and adds one line to :data:`workbench.tasks.TASK_MODULES`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict

PathLike = str | os.PathLike
ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class Cancelled(Exception):
    """A long job was cancelled by the user (Ctrl-C, a Stop button); nothing was written."""


def check_cancel(should_stop: Optional[StopFn]) -> None:
    """Raise :class:`Cancelled` when ``should_stop()`` says so (polled between units of work)."""
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled")


class TaskOptions(BaseModel):
    """A task's own config section (``Config.options``); tasks subclass it. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class LayerSpec:
    """One array a viewer shows for a case: ``role`` names it (``"lr"``, ``"sr"``, ``"hr"``)."""

    role: str
    label: str
    kind: str = "image"  # image | labels | points
    colormap: str = "gray"
    #: a layer on the output grid can be compared voxel by voxel with the reference
    on_output_grid: bool = True


@dataclass(frozen=True)
class ViewSpec:
    """What the viewers show for a task: its layers, which is the reference, which are compared.

    ``channel_axis_label`` names a leading channel axis (``"diffusion volume"``), or None.
    """

    layers: tuple[LayerSpec, ...]
    input_role: str
    output_role: str
    reference_role: str
    channel_axis_label: Optional[str] = None
    metric_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainInput:
    """One input a front end asks for to train a task (a napari layer, a notebook array).

    ``ndim`` is the array's dimensionality in the core's order ((X, Y, Z) or (X, Y, Z, N));
    ``kind`` is ``"image"`` or ``"labels"`` (a mask); ``roles`` are layer-metadata roles to
    preselect (e.g. a sample's ``"lr"`` layer).
    """

    role: str
    label: str
    ndim: int = 3
    kind: str = "image"
    optional: bool = False
    none_text: str = "(none)"
    roles: tuple[str, ...] = ()
    hint: str = ""


@dataclass
class InputArray:
    """An array handed to a task by a front end: data in the core's axis order, its affine, metadata."""

    data: Any
    affine: Any
    metadata: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass
class ExtraOutput:
    """A further result of :meth:`Task.predict_array`, beside the main one and on its grid.

    ``kind`` says how a viewer shows it: ``"overlay"`` (a map such as an uncertainty map,
    fading over the result) or ``"stack"`` (several results, (K, X, Y, Z), on a slider).
    """

    data: Any
    label: str
    kind: str = "overlay"
    role: str = ""


class Task:
    """Base class of every task. Subclasses set the class attributes and override methods.

    Attributes
    ----------
    name, label, summary : str
        Registry key, human name, one line for ``workbench tasks``.
    options_model : type[TaskOptions]
        The task's config section (validated into ``Config.options``).
    view : ViewSpec
        What the front ends show.
    baselines : tuple of str
        Names accepted by :meth:`baseline`.
    """

    name: str = ""
    label: str = ""
    summary: str = ""
    options_model: type[TaskOptions] = TaskOptions
    view: ViewSpec
    baselines: tuple[str, ...] = ()
    #: ``train.steps`` when a config leaves it unset
    default_steps: int = 400
    #: ``train.lr`` when a config leaves it unset
    default_lr: float = 1e-3

    # -- configuration --------------------------------------------------------------
    def default_config(self, **options: Any):
        """The task's default :class:`~workbench.config.Config` (its model, losses, options)."""
        from workbench.config import Config

        return Config(task=self.name, options=options)

    def config_for_model(self, name: str):
        """The defaults for training model ``name`` (a task whose models need other settings overrides this)."""
        cfg = self.default_config()
        cfg.model.name = name
        return cfg

    def options(self, config) -> TaskOptions:
        """``config.options`` as the task's typed options."""
        return self.options_model.model_validate(config.options)

    # -- command line ---------------------------------------------------------------
    def add_commands(self, sub: "argparse._SubParsersAction") -> None:  # pragma: no cover - abstract
        """Add this task's verbs (``simulate``, ``train``, ``predict`` ...) to ``workbench <task>``."""
        raise NotImplementedError

    def run_command(self, args: argparse.Namespace, progress) -> int:  # pragma: no cover - abstract
        """Run the verb ``args.verb``; ``progress`` is the CLI's progress reporter."""
        raise NotImplementedError

    # -- the workflow (every front end calls these) ---------------------------------
    def simulate(self, out_dir: PathLike, **kw: Any) -> dict[str, Path]:  # pragma: no cover - abstract
        """Write simulated cases with ground truth to ``out_dir``."""
        raise NotImplementedError

    def make_trainer(self, data: Any, out_dir: Optional[PathLike], config, *, callbacks: Sequence = (),
                     loss_weights=None):  # pragma: no cover - abstract
        """A ready :class:`~workbench.training.trainer.Trainer` for ``data`` (what :meth:`load_training_data` gives)."""
        raise NotImplementedError

    def evaluate_arrays(self, result, reference, **kw: Any) -> dict[str, float]:  # pragma: no cover - abstract
        """Metrics of ``result`` against ``reference`` (arrays on the same grid)."""
        raise NotImplementedError

    # -- training from arrays (napari's Train panel, notebooks) -------------------------
    #: what a front end asks for to train this task
    train_inputs: tuple[TrainInput, ...] = ()
    #: models a front end offers for this task (keys of MODELS)
    models: tuple[str, ...] = ()

    def trainer_from_arrays(self, inputs: Mapping[str, Optional[InputArray]], out_dir: Optional[PathLike], config,
                            *, loss_weights=None, callbacks: Sequence = ()):  # pragma: no cover - abstract
        """A ready trainer for the arrays of :attr:`train_inputs` (``None`` for an optional one left out)."""
        raise NotImplementedError

    def unavailable_terms(self, config) -> dict[str, str]:
        """Loss terms this configuration cannot use, with the reason a front end shows."""
        from workbench.perceptual import UNAVAILABLE

        return {"perceptual": UNAVAILABLE,
                "diffusion": "only a diffusion model (the sr task's sr3) has a denoising term",
                "projection": "only the xray2ct task re-projects its output through X-ray geometry"}

    def patch_size(self, config) -> int:
        """The training patch edge a front end shows (``data.patch_size`` unless the task keeps its own)."""
        return int(config.data.patch_size)

    def set_patch_size(self, config, size: int) -> None:
        config.data.patch_size = int(size)

    # -- what the viewers call (arrays in, arrays out; no files) -----------------------
    #: sample cases :meth:`sample_case` can make (napari's File > Open Sample, notebooks)
    samples: tuple[str, ...] = ()
    #: choices a front end offers for :meth:`predict_array` (``{"scale": (4, 2)}``; None reads "default")
    predict_choices: Mapping[str, tuple] = {}
    #: choices that only apply with another choice set: ``{"samples": ("model", "sr3")}``
    predict_choice_requires: Mapping[str, tuple[str, Any]] = {}

    def sample_case(self, kind: str, **kw: Any) -> dict[str, tuple[Any, Any]]:  # pragma: no cover - abstract
        """A simulated case with ground truth: ``{role: (array, affine)}`` for the roles in :attr:`view`."""
        raise NotImplementedError

    def predict_array(self, image, affine, *, checkpoint: Optional[PathLike] = None,
                      progress: Optional[ProgressFn] = None, should_stop: Optional[StopFn] = None,
                      **choices: Any):  # pragma: no cover - abstract
        """Apply a checkpoint (default: the shipped one) to ``image``.

        Returns ``(result, result_affine)``, or ``(result, result_affine, extras)`` with
        ``extras`` a dict of :class:`ExtraOutput` (e.g. an uncertainty map and the samples).
        """
        raise NotImplementedError

    def attention_array(self, image, affine, *, checkpoint: Optional[PathLike] = None,
                        **choices: Any):  # pragma: no cover - abstract
        """The network's attention map for ``image``: ``(map in [0, 1], its affine)``, or None without one."""
        raise NotImplementedError

    def describe(self) -> str:
        return (f"{self.name:<6s} {self.label}: {self.summary} ({self.default_steps} training steps at "
                f"learning rate {self.default_lr:g} by default)")
