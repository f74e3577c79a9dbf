"""The `xray2ct` task: a CT volume from two orthogonal X-rays (seed 003), in two stages, on the task layer.

::

    workbench xray2ct simulate OUT_DIR [--n N] [--size 64] [--seed K] [--geometry parallel|cone]
    workbench xray2ct project CT.nii.gz -o CASE_DIR [--geometry parallel|cone]
    workbench xray2ct train DATA_DIR --out RUN_DIR [--stage 1|2|linear|fusion] [--config cfg.yaml] [--resume]
    workbench xray2ct predict --ap AP --lateral LAT -o CT.nii.gz [--checkpoint CKPT] [--refine CKPT2]
                              [--fusion CKPT3 | --no-fusion]
    workbench xray2ct baseline backprojection|atlas|ridge --ap AP --lateral LAT -o CT.nii.gz
    workbench xray2ct evaluate CT.nii.gz --reference REF.nii.gz [--json]
"""

from __future__ import annotations

import json
import math
import os
from typing import Literal, Optional

from pydantic import Field

from workbench.tasks.base import LayerSpec, Task, TaskOptions, ViewSpec

BASELINES = ("backprojection", "atlas", "ridge")


class XrayOptions(TaskOptions):
    """Settings of the biplanar X-ray -> CT task (``Config.options``)."""

    size: Literal[32, 64, 128] = Field(64, description="voxels per axis of the stage-1 volume (the data decide)")
    geometry: Literal["parallel", "cone"] = Field("parallel", description="X-ray beam geometry (the data decide)")
    real_ct_volumes: int = Field(24, ge=0, le=1000, description="augmented crops of the real chest CT's training part "
                                 "added to the training volumes (its top 25% is never used)")
    photon_range: float = Field(10.0, ge=1.0, le=1000.0, description="training photon counts are drawn log-uniformly "
                                "over this factor around the geometry's (dose robustness)")
    perceptual_weights: Optional[str] = Field(
        None, description="TorchScript 3D feature network for the 'perceptual' term (yours: nothing is downloaded)")


class Xray2CtTask(Task):
    name = "xray2ct"
    label = "CT from biplanar X-rays"
    summary = ("AP + lateral X-rays -> 64^3 CT (2D encoders lifted along the rays, 3D decoder), then the sr "
               "network to 128^3; vs back-projection, atlas, ridge")
    options_model = XrayOptions
    baselines = BASELINES
    models = ("biplanar_lift", "estimate_fusion")
    view = ViewSpec(
        layers=(LayerSpec("xray_ap", "AP X-ray", on_output_grid=False),
                LayerSpec("xray_lat", "lateral X-ray", on_output_grid=False),
                LayerSpec("ct", "reconstruction (HU)"), LayerSpec("reference", "reference CT (HU)")),
        input_role="xray_ap", output_role="ct", reference_role="reference",
        metric_labels={"psnr": "PSNR (dB)", "ssim": "SSIM", "dice_lung": "Dice lungs", "dice_bone": "Dice bone",
                       "reprojection_error": "re-projection error", "mae_hu": "MAE (HU)"},
    )
    samples = ("phantom",)

    def default_config(self, model: str = "biplanar_lift", **options):
        """Seed 003's stage 1: L1 1 + SSIM 0.5 + edge 0.1 + multi-scale 0.3 (+ perceptual 0.1 with your feature
        network), plus projection consistency 0.1; batch 4 (``data.batch_size``, ``train.accumulation_steps``)."""
        from workbench.config import Config

        if model == "estimate_fusion":
            from workbench.tasks.xray2ct.fusion import fusion_config

            return fusion_config()
        if model != "biplanar_lift":
            raise ValueError(f"unknown xray2ct model {model!r}; known: {', '.join(self.models)}")
        opts = XrayOptions(**options)
        return Config.model_validate({
            "task": "xray2ct", "options": opts.model_dump(),
            "data": {"batch_size": 4, "augment": True},
            "model": {"name": "biplanar_lift", "base_filters": 12, "options": {"view_channels": 8}},
            "loss": {"weights": {"l1": 1.0, "ssim": 0.5, "edge": 0.1, "multiscale": 0.3, "projection": 0.1}},
            "train": {"steps": 1200, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 1e-4, "schedule": "onecycle",
                      "val_every": 100, "checkpoint_every": 100, "early_stopping_patience": 6, "grad_clip": 1.0},
        })

    def config_for_model(self, name: str):
        return self.default_config(model=name)

    def unavailable_terms(self, config) -> dict[str, str]:
        out = super().unavailable_terms(config)
        out.pop("projection", None)
        if self.options(config).perceptual_weights:
            out.pop("perceptual", None)
        return out

    # -- workflow -------------------------------------------------------------------
    def simulate(self, out_dir, **kw):
        from workbench.tasks.xray2ct import workflow

        return workflow.simulate(out_dir, **kw)

    def load_training_data(self, data_dir, config):
        from workbench.tasks.xray2ct.data import load_dataset

        return load_dataset(data_dir)

    def make_trainer(self, data, out_dir, config, *, callbacks=(), loss_weights=None):
        from workbench.tasks.xray2ct import workflow

        return workflow.make_trainer(data, out_dir, config, callbacks=callbacks, loss_weights=loss_weights)

    def evaluate_arrays(self, result, reference, **kw):
        from workbench.tasks.xray2ct.metrics import evaluate_ct

        return evaluate_ct(result, reference, **kw)

    def sample_case(self, kind: str = "phantom", *, seed: int = 900_000_001, size: int = 64):
        from workbench.tasks.xray2ct import workflow

        return workflow.sample_case(seed=seed, size=size)

    # -- command line ---------------------------------------------------------------
    def add_commands(self, sub):
        p = sub.add_parser("simulate", help="torso phantoms (64^3 and 128^3 HU) with their AP and lateral X-rays")
        p.add_argument("out_dir")
        p.add_argument("--n", type=int, default=8, help="number of cases")
        p.add_argument("--size", type=int, default=64, help="voxels per axis of ct.nii.gz (64)")
        p.add_argument("--hr-size", type=int, help="reference for stage 2 (default 2 x size; 0: none)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--geometry", choices=("parallel", "cone"), default="parallel")
        p.add_argument("--workers", type=int, help="processes (default: one per CPU)")

        p = sub.add_parser("project", help="the two X-rays of any CT volume (HU) -> a case folder")
        p.add_argument("ct")
        p.add_argument("-o", "--output", required=True, help="case folder: ct.nii.gz, xray_ap/lat.nii.gz, geometry")
        p.add_argument("--geometry", choices=("parallel", "cone"), default="parallel")
        p.add_argument("--png", action="store_true", help="also write 16-bit PNGs of the two views")
        p.add_argument("--seed", type=int, default=0, help="photon noise seed")

        p = sub.add_parser("train", help="stage 1 (X-rays -> 64^3), stage 2 (64^3 -> 128^3), the linear baselines, "
                           "or the fusion of stage 1 with ridge")
        p.add_argument("data_dir")
        p.add_argument("--out", required=True, help="run folder (stage 1/2: config.yaml, last.pt, best.pt; "
                       "linear: linear.npz)")
        p.add_argument("--stage", choices=("1", "2", "linear", "fusion"), default="1",
                       help="fusion: on phantoms neither stage 1 nor the linear model was fitted on (another --seed)")
        p.add_argument("--config", help="YAML config (see `workbench config --task xray2ct`)")
        p.add_argument("--steps", type=int, help="overrides train.steps")
        p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
        p.add_argument("--stage1", help="stage 2 / fusion: the stage-1 checkpoint whose outputs it learns from "
                       "(default: the shipped one)")
        p.add_argument("--linear", help="fusion: the linear model (linear.npz) it fuses with (default: the shipped one)")
        p.add_argument("--from-truth", action="store_true", help="stage 2: train on the downsampled reference "
                       "instead of stage-1 outputs")

        p = sub.add_parser("predict", help="reconstruct a CT from an AP and a lateral X-ray")
        p.add_argument("--ap", help="AP X-ray (.nii.gz, .png, .tif)")
        p.add_argument("--lateral", help="lateral X-ray")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--checkpoint", help="stage-1 best.pt (default: the shipped one)")
        p.add_argument("--refine", nargs="?", const="", default=None, metavar="CKPT2",
                       help="stage 2 to 128^3 (a stage-2 best.pt; without a value: the shipped one)")
        fuse = p.add_mutually_exclusive_group()
        fuse.add_argument("--fusion", help="fuse stage 1 with ridge by this best.pt of `train --stage fusion` "
                          "(default: the shipped fusion, with the shipped stage 1 only)")
        fuse.add_argument("--no-fusion", action="store_true", help="the stage-1 network's own volume")
        p.add_argument("--linear", help="with --fusion: the linear model it was trained with (default: shipped)")

        p = sub.add_parser("baseline", help="back-projection smear, mean atlas, or ridge regression")
        p.add_argument("method", choices=BASELINES)
        p.add_argument("--ap")
        p.add_argument("--lateral")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--model", help="atlas/ridge: a linear.npz of `train --stage linear` (default: the shipped one)")

        p = sub.add_parser("evaluate", help="PSNR, SSIM (HU window [-1000, 1000]), Dice of lungs and bone, "
                           "re-projection error")
        p.add_argument("result")
        p.add_argument("--reference", required=True, help="the case's ct.nii.gz (or ct_hr.nii.gz for 128^3)")
        p.add_argument("--json", action="store_true")

    def run_command(self, args, progress) -> int:
        from workbench.tasks.xray2ct import stages, workflow

        verb = args.command
        if verb == "simulate":
            dirs = workflow.simulate(args.out_dir, n=args.n, size=args.size, seed=args.seed, geometry=args.geometry,
                                     hr_size=args.hr_size, workers=args.workers,
                                     progress=progress.stage("simulating", "case").inference)
            print(f"{len(dirs)} cases in {args.out_dir} (case_000 ...)")
        elif verb == "project":
            case = workflow.project_file(args.ct, args.output, geometry=args.geometry, seed=args.seed)
            if args.png:
                stages.write_pngs(case)
            print(f"wrote {case} (ct.nii.gz, xray_ap.nii.gz, xray_lat.nii.gz, geometry.json)")
        elif verb == "train":
            result = stages.train_stage(args, progress)
            if os.environ.get("RANK", "0") == "0":      # under torchrun only rank 0 reports
                print(result)
        elif verb == "predict":
            info = workflow.predict(args.ap, args.lateral, args.output, checkpoint=args.checkpoint,
                                    refine_checkpoint=args.refine or None, refine_default=args.refine == "",
                                    fusion=False if args.no_fusion else args.fusion, linear=args.linear)
            applied = info["fusion_applied"]
            fused = f" fused with ridge by {info['fusion']}" if applied["fused"] else ""
            print(f"wrote {info['output']} ({'x'.join(map(str, info['shape']))} HU, {info['checkpoint']}{fused})")
            if info["fusion"] and not applied["fused"]:
                print(f"not fused with ridge: the ridge model re-projects {applied['ridge_reprojection_error']:.3f} "
                      f"from these X-rays, above {applied['limit']:.3f} (1.5x its worst on the fusion's training "
                      "cases): the network's own volume")
        elif verb == "baseline":
            info = workflow.baseline(args.method, args.ap, args.lateral, args.output, model=args.model)
            print(f"wrote {info['output']} ({args.method})")
        elif verb == "evaluate":
            metrics = workflow.evaluate(args.result, args.reference)
            if args.json:
                print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                  for k, v in metrics.items()}))
            else:
                for k, v in metrics.items():
                    print(f"{k:>20s}  {v:.4g}")
        else:  # pragma: no cover - argparse restricts the verbs
            raise ValueError(verb)
        return 0


TASK = Xray2CtTask()
