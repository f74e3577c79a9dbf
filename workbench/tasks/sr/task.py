"""The `sr` task: 3D CT super-resolution (seed 003 stage 2), x2 / x4, on the task layer.

The workflow functions live in :mod:`workbench.tasks.sr.workflow`; this module is the
task's registry face (default config, viewer layout, baselines) and its command line::

    workbench sr simulate OUT_DIR [--kind soil|chest] [--scale 2|4] [--n N] [--size S] [--seed K]
    workbench sr degrade HR.nii.gz -o LR.nii.gz --scale 4 [--seed K]
    workbench sr train DATA_DIR ... --out RUN_DIR [--scale 4] [--config cfg.yaml] [--resume]
    workbench sr predict LR.nii.gz -o SR.nii.gz [--scale 4] [--checkpoint CKPT]
    workbench sr baseline nearest|trilinear|tricubic LR.nii.gz -o OUT.nii.gz --scale 4
    workbench sr evaluate SR.nii.gz --reference HR.nii.gz [--json]
    workbench sr demo [--out DIR]
"""

from __future__ import annotations

import json
from typing import Literal, Optional

from pydantic import Field

from workbench.tasks.base import LayerSpec, Task, TaskOptions, TrainInput, ViewSpec

SCALES = (2, 4, 8)
BASELINES = ("nearest", "trilinear", "tricubic")


class SrOptions(TaskOptions):
    """Settings of the super-resolution task (``Config.options``)."""

    scale: Literal[2, 4, 8] = Field(4, description="upscaling factor per axis")
    inplane: bool = Field(False, description="upscale x and y only; the slice axis keeps its spacing")
    lr_patch: int = Field(16, ge=4, le=128, description="LR training patch edge (HR patch = lr_patch * scale)")
    kind: Literal["ct", "soil"] = Field("ct", description="metrics: 'soil' adds porosity and two-point correlation")
    photometric: bool = Field(False, description="seed 004's train-only augmentation: LR noise (30% of patches), "
                              "LR blur (20%), intensity gain/offset of the pair (30%)")
    perceptual_weights: Optional[str] = Field(
        None, description="TorchScript feature network for the 'perceptual' loss term (yours: nothing is "
        "downloaded); without it the term is off")


class SrTask(Task):
    name = "sr"
    label = "CT super-resolution"
    summary = "3D RRDB + PixelShuffle network, x2/x4 on the HR grid, ahead of tricubic (soil micro-CT, chest CT)"
    options_model = SrOptions
    baselines = BASELINES
    models = ("rrdb_sr", "sr3")
    train_inputs = (
        TrainInput("lr", "LR volume", roles=("lr",), hint="The low-resolution volume (3D)"),
        TrainInput("hr", "HR reference", roles=("hr",),
                   hint="Its high-resolution reference: the scale times as many voxels per axis, aligned affines"),
    )

    def trainer_from_arrays(self, inputs, out_dir, config, *, loss_weights=None, callbacks=()):
        """Train on one LR/HR pair (validation patches come from the same pair: there is no other)."""
        from workbench.tasks.sr import degrade as dg
        from workbench.tasks.sr import workflow
        from workbench.tasks.sr.data import SRPair
        from workbench.tasks.sr.predictor import scale_tuple

        opts = self.options(config)
        scale = scale_tuple(opts.scale, opts.inplane)
        lr, hr = inputs["lr"], inputs["hr"]
        dg.check_grids(lr.data.shape, lr.affine, hr.data.shape, hr.affine, scale)
        hr_data = hr.data[tuple(slice(0, d * f) for d, f in zip(lr.data.shape, scale))]
        pair = SRPair.from_arrays(lr.data, hr_data, scale, hr.name or "hr")
        return workflow.make_trainer([pair], out_dir, config, callbacks=callbacks, loss_weights=loss_weights)

    def unavailable_terms(self, config) -> dict[str, str]:
        out = super().unavailable_terms(config)
        if self.options(config).perceptual_weights:
            out.pop("perceptual", None)
        if config.model.name == "sr3":
            out.pop("diffusion", None)
        return out

    def patch_size(self, config) -> int:
        return int(self.options(config).lr_patch)

    def set_patch_size(self, config, size: int) -> None:
        config.options = {**config.options, "lr_patch": int(size)}
    view = ViewSpec(
        layers=(LayerSpec("lr", "LR input", on_output_grid=False), LayerSpec("tricubic", "tricubic"),
                LayerSpec("sr", "super-resolved"), LayerSpec("hr", "HR reference")),
        input_role="lr", output_role="sr", reference_role="hr",
        metric_labels={"psnr": "PSNR (dB)", "ssim": "SSIM", "porosity_error": "porosity error",
                       "tpc_error": "two-point corr. error"},
    )

    def default_config(self, model: str = "rrdb_sr", **options):
        """The defaults of ``model``: the 3D regression network (``rrdb_sr``) or SR3 diffusion (``sr3``)."""
        from workbench.config import Config

        if model == "sr3":
            return self._sr3_config(**options)
        if model != "rrdb_sr":
            raise ValueError(f"unknown sr model {model!r}; known: {', '.join(self.models)}")
        if "lr_patch" not in options:  # HR training patches of 32^3 (x2) and 48^3 (x4, x8: 64^3)
            options = {**options, "lr_patch": {2: 16, 4: 12, 8: 8}[int(options.get("scale", 4))]}
        opts = SrOptions(**options)
        steps = 1200
        return Config.model_validate({
            "task": "sr",
            "options": opts.model_dump(),
            "data": {"batch_size": 4, "augment": True},
            "model": {"name": "rrdb_sr", "base_filters": 24, "use_cbam": True,
                      "options": {"growth": 12, "num_blocks": 2}},
            # seed 003 stage 2 starts from L1 1.0 + edge 0.1 (+ perceptual 0.1 with user weights);
            # SSIM and multi-scale terms as in its stage 1, smaller so PSNR is not traded away
            "loss": {"weights": {"l1": 1.0, "edge": 0.1, "ssim": 0.05, "multiscale": 0.1}},
            "train": {"steps": steps, "lr": 5e-4, "schedule": "onecycle", "val_every": 250,
                      "checkpoint_every": 250, "grad_clip": 1.0},
            "inference": {"tile": 24, "overlap": 4},
        })

    def _sr3_config(self, **options):
        """Seed 004 on CPU: 8x in-plane on 2D slices (HR training crops of 64^2, whole slices at prediction),
        each conditioned on its LR slice and 2 LR neighbours per side (``context_slices``)."""
        from workbench.config import Config

        opts = SrOptions(**{"scale": 8, "inplane": True, "lr_patch": 8, "kind": "soil", "photometric": True,
                            **options})
        return Config.model_validate({
            "task": "sr",
            "options": opts.model_dump(),
            "data": {"batch_size": 8, "augment": True},
            "model": {"name": "sr3", "options": {
                "channels": [32, 48, 64, 96], "attention_levels": [False, False, True, True],
                "cross_attention": True, "context_slices": 2, "prediction": "v_prediction"}},
            # seed 004: L1 (here the denoising term, MSE: see diffusion.py) + 0.05 SSIM + 0.01 multi-scale
            # (+ 0.01 perceptual with user weights), on the clean image the network implies
            "loss": {"weights": {"diffusion": 1.0, "ssim": 0.05, "multiscale": 0.01}},
            # seed 004: cosine annealing, its state in every checkpoint; EMA weights as in SR3
            "train": {"steps": 4000, "lr": 3e-4, "schedule": "cosine", "ema_decay": 0.998, "val_every": 250,
                      "checkpoint_every": 250, "grad_clip": 1.0},
        })

    def config_for_model(self, name: str):
        return self.default_config(model=name)

    # -- workflow -------------------------------------------------------------------
    def simulate(self, out_dir, **kw):
        from workbench.tasks.sr import workflow

        return workflow.simulate(out_dir, **kw)

    def load_training_data(self, data_dirs, config):
        from workbench.tasks.sr import workflow
        from workbench.tasks.sr.predictor import scale_tuple

        opts = self.options(config)
        return workflow.load_training_pairs(data_dirs, scale_tuple(opts.scale, opts.inplane), config.train.seed,
                                            config.data.nan_to_zero)

    def make_trainer(self, data, out_dir, config, *, callbacks=(), loss_weights=None):
        from workbench.tasks.sr import workflow

        return workflow.make_trainer(data, out_dir, config, callbacks=callbacks, loss_weights=loss_weights)

    samples = ("soil", "chest")
    predict_choices = {"model": ("rrdb_sr", "sr3"), "scale": (None, 4, 2, 8), "samples": (4, 1, 2, 8),
                       "steps": (20, 10, 25, 50)}
    predict_choice_requires = {"samples": ("model", "sr3"), "steps": ("model", "sr3")}

    def sample_case(self, kind: str = "soil", *, scale: int = 4, size: int = 64, seed: int = 7,
                    inplane: bool = False, depth=None, grain_radius=None):
        """A held-out case: ``{"lr", "tricubic", "hr": (array, affine)}`` (soil seed 10000+, chest top slab)."""
        from workbench.tasks.sr import workflow

        return workflow.sample_case(kind, scale=scale, size=size, seed=seed, inplane=inplane, depth=depth,
                                    grain_radius=grain_radius)

    @staticmethod
    def _predictor(checkpoint, model, scale):
        """A checkpoint (its own model decides), or the shipped network: SR3, or the regression one for the
        scale (x2, x4: 3D; x8: in-plane, the only x8 shipped)."""
        from workbench.tasks.sr import workflow

        if checkpoint:
            return workflow.open_predictor(checkpoint, scale=scale)
        inplane = None if model == "sr3" else int(scale or 4) == 8
        return workflow.open_predictor(model=model, scale=scale, inplane=inplane)

    def predict_array(self, image, affine, *, checkpoint=None, progress=None, should_stop=None, scale=None,
                      model="rrdb_sr", samples=4, steps=20, seed=0):
        """The regression network (tiles) or SR3 (slices; K > 1 adds the std map and the K samples)."""
        from workbench.tasks.base import ExtraOutput
        from workbench.tasks.sr import degrade as dg
        from workbench.tasks.sr.sr3_predictor import SR3Predictor

        predictor = self._predictor(checkpoint, model, scale)
        if not isinstance(predictor, SR3Predictor):
            out = predictor.predict(image, progress=progress, should_stop=should_stop)
            return out, dg.hr_affine(affine, predictor.scale)
        samples = int(samples)
        res = predictor.predict(image, steps=int(steps), samples=samples, seed=int(seed), keep_samples=samples > 1,
                                progress=progress, should_stop=should_stop)
        extras = {}
        if samples > 1:
            extras = {"std": ExtraOutput(res.std, f"uncertainty (std of {samples} samples)", "overlay", "uncertainty"),
                      "samples": ExtraOutput(res.samples, f"{samples} SR3 samples", "stack", "samples")}
        return res.mean, dg.hr_affine(affine, predictor.scale), extras

    def attention_array(self, image, affine, *, checkpoint=None, scale=None, model="rrdb_sr", **_):
        """The CBAM spatial attention of the regression network's trunk, on the LR grid (SR3: none)."""
        predictor = self._predictor(checkpoint, model, scale)
        attention = getattr(predictor, "attention", None)
        return (attention(image) if attention is not None else None), affine

    def evaluate_arrays(self, result, reference, *, kind: str = "ct"):
        from workbench.tasks.sr.metrics import evaluate_sr

        return evaluate_sr(result, reference, kind=kind)

    # -- command line ---------------------------------------------------------------
    def add_commands(self, sub):
        p = sub.add_parser("simulate", help="write HR/LR pairs with ground truth (soil micro-CT or the chest CT)")
        p.add_argument("out_dir")
        p.add_argument("--kind", choices=["soil", "chest"], default="soil")
        p.add_argument("--scale", type=int, choices=SCALES, default=4)
        p.add_argument("--n", type=int, default=4, help="number of pairs")
        p.add_argument("--size", type=int, default=64, help="HR edge in voxels")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--inplane", action="store_true", help="downsample x and y only (2D slices, e.g. for sr3)")
        p.add_argument("--heldout", action="store_true",
                       help="chest: crop the held-out top 25%% of axial slices (evaluation only)")
        p.add_argument("--grain-radius", type=float, nargs=2, metavar=("LO", "HI"),
                       help="soil: each volume's median grain radius drawn log-uniformly in [LO, HI] voxels "
                            "(default: uniform in 2-6)")

        p = sub.add_parser("degrade", help="make an LR volume from any HR volume (PSF blur, area downsampling, noise)")
        p.add_argument("hr")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--scale", type=int, choices=SCALES, default=4)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--inplane", action="store_true", help="downsample x and y only")

        p = sub.add_parser("train", help="train the SR network on folders of hr_*/lr_* NIfTI pairs")
        p.add_argument("data_dirs", nargs="+", metavar="DATA_DIR")
        p.add_argument("--out", required=True, help="run folder: config.yaml, last.pt, best.pt, metrics.csv")
        p.add_argument("--scale", type=int, choices=SCALES, help="overrides the config's scale")
        p.add_argument("--model", choices=self.models, help="rrdb_sr (3D regression, default) or sr3 (2D diffusion, "
                       "x8 in-plane); the defaults of `workbench config --task sr --model M`")
        p.add_argument("--config", help="YAML config (see `workbench config --task sr`)")
        p.add_argument("--steps", type=int, help="overrides train.steps")
        p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
        p.add_argument("--nan-to-zero", action="store_true")

        p = sub.add_parser("predict", help="super-resolve an LR volume onto the HR grid")
        p.add_argument("lr")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--scale", type=int, choices=SCALES, help="default: the checkpoint's (shipped: x4)")
        p.add_argument("--inplane", action="store_true", default=None,
                       help="the LR was downsampled in x and y only (shipped regression network: x8 in-plane)")
        p.add_argument("--checkpoint", help="a best.pt/last.pt of `workbench sr train` (default: the shipped one)")
        p.add_argument("--model", choices=self.models, help="sr3: the diffusion model (default checkpoint: the "
                       "shipped soil x8 in-plane one); default: the checkpoint's model, else rrdb_sr")
        p.add_argument("--samples", type=int, help="sr3: K samples per slice; K > 1 also writes OUT_std.nii.gz "
                       "(per-voxel standard deviation: the uncertainty map). Default 4")
        p.add_argument("--steps", type=int, help="sr3: DDIM sampling steps (default 20)")
        p.add_argument("--seed", type=int, default=0, help="sr3: seed of the starting noise")
        p.add_argument("--device", default="auto")
        p.add_argument("--nan-to-zero", action="store_true")

        p = sub.add_parser("baseline", help="nearest, trilinear or tricubic interpolation onto the HR grid")
        p.add_argument("method", choices=BASELINES)
        p.add_argument("lr")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--scale", type=int, choices=SCALES, default=4)
        p.add_argument("--inplane", action="store_true")

        p = sub.add_parser("evaluate", help="PSNR and SSIM (and soil structure errors) against an HR reference")
        p.add_argument("result")
        p.add_argument("--reference", required=True)
        p.add_argument("--kind", choices=["ct", "soil"], default="ct")
        p.add_argument("--json", action="store_true", help="print JSON")

        p = sub.add_parser("demo", help="simulate a held-out soil pair, super-resolve it with the shipped x4 "
                                        "network and compare with tricubic")
        p.add_argument("--out", default="sr_demo")
        p.add_argument("--scale", type=int, choices=(2, 4), default=4)
        p.add_argument("--size", type=int, default=64)
        p.add_argument("--seed", type=int, default=2026)

    def run_command(self, args, progress) -> int:
        from workbench.tasks.sr import workflow
        from workbench.tasks.sr.sr3_predictor import interval_factor

        verb = args.command
        if verb == "simulate":
            written = workflow.simulate(args.out_dir, kind=args.kind, scale=args.scale, n=args.n, size=args.size,
                                        seed=args.seed, heldout=args.heldout, inplane=args.inplane,
                                        progress=progress.stage("simulating", "pair").inference,
                                        grain_radius=args.grain_radius)
            print(f"wrote {len(written) - 1} files and pairs.json to {args.out_dir}")
        elif verb == "degrade":
            info = workflow.degrade_file(args.hr, args.output, scale=args.scale, seed=args.seed, inplane=args.inplane)
            print(f"wrote {info['output']} (scale {tuple(info['scale'])})")
        elif verb == "train":
            config = workflow.resolve_config(args.config, args.scale, args.model)
            if args.steps is not None:
                config.train.steps = int(args.steps)
            if args.nan_to_zero:
                config.data.nan_to_zero = True
            result = workflow.train(args.data_dirs, args.out, config, resume=args.resume,
                                    callbacks=[progress.on_event])
            print(f"{result.steps_done} steps ({result.reason}); best held-out loss {result.best_loss:.5g}; "
                  f"checkpoints in {args.out}")
        elif verb == "predict":
            unit = "step" if args.model == "sr3" else "tile"
            info = workflow.predict(args.lr, args.output, checkpoint=args.checkpoint, scale=args.scale,
                                    model=args.model, samples=args.samples, steps=args.steps, seed=args.seed,
                                    device=args.device, progress=progress.stage("super-resolving", unit).inference,
                                    nan_to_zero=args.nan_to_zero, inplane=args.inplane)
            print(f"wrote {info['output']} {tuple(info['shape'])} (x{info['scale'][0]}, {info['checkpoint']})")
            if info.get("std"):
                c = interval_factor(info["samples"])
                print(f"wrote {info['std']} (standard deviation of {info['samples']} samples: the uncertainty map; "
                      f"if the model is calibrated, the truth is within mean +- {c:.2f} std in 95% of voxels)")
        elif verb == "baseline":
            info = workflow.baseline(args.method, args.lr, args.output, scale=args.scale, inplane=args.inplane)
            print(f"wrote {info['output']} ({args.method}, x{info['scale'][0]})")
        elif verb == "evaluate":
            metrics = workflow.evaluate(args.result, args.reference, kind=args.kind)
            if args.json:
                print(json.dumps(metrics))
            else:
                for k, v in metrics.items():
                    print(f"{k:>16s}  {v:.4f}")
        elif verb == "demo":
            from workbench.tasks.sr.demo import run_demo

            run_demo(args.out, scale=args.scale, size=args.size, seed=args.seed,
                     progress=progress.stage("super-resolving", "tile").inference)
        else:  # pragma: no cover - argparse restricts the verbs
            raise ValueError(verb)
        return 0


TASK = SrTask()
