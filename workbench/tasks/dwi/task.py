"""The `dwi` task object: self-supervised denoising of 4D diffusion-weighted MRI.

The DWI workflow itself lives in :mod:`workbench.api` (simulate, train, denoise,
evaluate, baseline), :mod:`workbench.inference` (the J-invariant ``Denoiser`` and its
SURE-weighted post-processing) and :mod:`workbench.data` (phantoms, q-space priors);
this module is the task-layer face of it.
"""

from __future__ import annotations

from workbench.tasks.base import LayerSpec, Task, TaskOptions, ViewSpec


class DwiOptions(TaskOptions):
    """The DWI task keeps its settings in the ``data`` and ``inference`` sections (as before the
    task layer, so old configs and checkpoints load unchanged); it has no extra options."""


class DwiTask(Task):
    name = "dwi"
    label = "DWI denoising"
    summary = "self-supervised (J-invariant) denoising of 4D diffusion MRI, ahead of MP-PCA"
    options_model = DwiOptions
    baselines = ("mppca", "patch2self", "nlmeans")
    view = ViewSpec(
        layers=(LayerSpec("noisy", "noisy DWI"), LayerSpec("denoised", "denoised"),
                LayerSpec("clean", "clean reference"), LayerSpec("mask", "brain mask", kind="labels")),
        input_role="noisy", output_role="denoised", reference_role="clean",
        channel_axis_label="diffusion volume",
    )

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
