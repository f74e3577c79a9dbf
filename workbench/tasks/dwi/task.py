"""The `dwi` task object: self-supervised denoising of 4D diffusion-weighted MRI.

The DWI workflow itself lives in :mod:`workbench.api` (simulate, train, denoise,
evaluate, baseline), :mod:`workbench.inference` (the J-invariant ``Denoiser`` and its
SURE-weighted post-processing) and :mod:`workbench.data` (phantoms, q-space priors);
this module is the task-layer face of it.
"""

from __future__ import annotations

from workbench.io_utils import InputError
from workbench.tasks.base import LayerSpec, Task, TaskOptions, TrainInput, ViewSpec


class DwiOptions(TaskOptions):
    """The DWI task keeps its settings in the ``data`` and ``inference`` sections (as before the
    task layer, so old configs and checkpoints load unchanged); it has no extra options."""


class DwiTask(Task):
    name = "dwi"
    label = "DWI denoising"
    summary = "self-supervised (J-invariant) denoising of 4D diffusion MRI, ahead of MP-PCA"
    options_model = DwiOptions
    baselines = ("mppca", "patch2self", "nlmeans")
    #: 2000 steps on denoised volume inputs, in 7-10 minutes per 64x64x32 scan on 2 cores (README, issue 15);
    #: 400 left the network level with its own prior
    default_steps = 2000
    #: onecycle's peak. With the split prior's ridge at 1e-4 (stop 43), 2e-3 puts the network +0.56 dB and
    #: 7% FA error above its own prior at multishell SNR 10 (+2.70 dB on DTI) and keeps every benchmark run
    #: ahead of every DIPY variant; 1e-3 gained +0.41 there and, with the old ridge, 2e-3 let one multishell
    #: SNR 20 run's FA fall behind MP-PCA's (README, "Learning rate, and the split prior's ridge")
    default_lr = 2e-3
    view = ViewSpec(
        layers=(LayerSpec("noisy", "noisy DWI"), LayerSpec("denoised", "denoised"),
                LayerSpec("clean", "clean reference"), LayerSpec("mask", "brain mask", kind="labels")),
        input_role="noisy", output_role="denoised", reference_role="clean",
        channel_axis_label="diffusion volume",
    )

    models = ("multiscale", "denoiser", "progressive", "frequency")
    train_inputs = (
        TrainInput("series", "Image layer", ndim=4, roles=("noisy input",),
                   hint="The 4D diffusion series to train on (volumes, x, y, z), with its b-values"),
        TrainInput("mask", "Brain mask", kind="labels", optional=True, none_text="(automatic brain mask)"),
    )

    def trainer_from_arrays(self, inputs, out_dir, config, *, loss_weights=None, callbacks=()):
        from workbench import api
        from workbench.data.nifti import DWISeries

        series = inputs["series"]
        meta = dict(series.metadata)
        if meta.get("bvals") is None or meta.get("bvecs") is None:
            raise InputError(f"layer '{series.name}' has no b-values/b-vectors: open it from a .nii.gz with "
                             "NAME.bval and NAME.bvec beside it")
        dwi = DWISeries(series.data, series.affine, header=meta.get("header"), bvals=meta["bvals"],
                        bvecs=meta["bvecs"])
        mask = inputs.get("mask")
        if mask is not None and tuple(mask.data.shape) != dwi.spatial_shape:
            raise InputError(f"mask '{mask.name}' has shape {tuple(mask.data.shape)}, the series has "
                             f"{dwi.spatial_shape}")
        return api.make_trainer([dwi], out_dir, config, masks=[None if mask is None else mask.data > 0],
                                callbacks=callbacks, loss_weights=loss_weights)

    def add_commands(self, sub, legacy: bool = False):
        from workbench.tasks.dwi import cli

        return cli.add_commands(sub, legacy=legacy)

    def run_command(self, args, progress) -> int:
        from workbench.tasks.dwi import cli

        return cli.run_command(args, progress)

    def simulate(self, out_dir, **kw):
        from workbench import api

        return api.simulate(out_dir, **kw)

    def make_trainer(self, data, out_dir, config, *, callbacks=(), loss_weights=None):
        from workbench import api

        return api.make_trainer(data, out_dir, config, callbacks=callbacks, loss_weights=loss_weights)

    def evaluate_arrays(self, result, reference, *, bvals=None, bvecs=None, mask=None):
        from workbench.metrics import evaluate_dwi

        return evaluate_dwi(result, reference, bvals, bvecs, mask)


TASK = DwiTask()
