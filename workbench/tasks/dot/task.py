"""The `dot` task: near-infrared diffuse optical tomography (seed 002), stage 1, on the task layer.

Boundary measurements of intensity-modulated light (CW and 140 MHz amplitude and
phase, 16 sources x 16 detectors on a cylinder) -> 3D maps of absorption (mu_a) and
reduced scattering (mu_s') in 1/mm::

    workbench dot simulate OUT_DIR [--n N] [--grid 32] [--seed K] [--workers W]
    workbench dot train DATA_DIR --out RUN_DIR [--config cfg.yaml] [--steps N] [--resume]
    workbench dot predict MEASUREMENTS -o MU.nii.gz [--checkpoint CKPT]
    workbench dot baseline tikhonov|gauss-newton MEASUREMENTS -o MU.nii.gz [--iterations 3]
    workbench dot evaluate MU.nii.gz --reference REF.nii.gz [--labels LABELS.nii.gz] [--json]
"""

from __future__ import annotations

import json
import math

from pydantic import Field

from workbench.tasks.base import LayerSpec, Task, TaskOptions, ViewSpec

BASELINES = ("tikhonov", "gauss-newton")


class DotOptions(TaskOptions):
    """Settings of the DOT task (``Config.options``)."""

    grid: int = Field(32, description="voxels per axis of the built-in geometry (16, 24, 32 or 48; 64 mm field); "
                      "training takes the grid of its data")
    noise_amplitude: float = Field(0.01, ge=0, le=1, description="relative amplitude noise drawn at load time "
                                   "(sigma of the log-amplitude)")
    noise_phase_deg: float = Field(0.5, ge=0, le=45, description="phase noise drawn at load time (degrees)")
    subsample_prob: float = Field(0.5, ge=0, le=1, description="share of training cases that lose a random part of "
                                  "their source-detector pairs (seed 002's measurement subsampling)")
    subsample_min: float = Field(0.5, gt=0, le=1, description="least share of pairs such a case keeps")
    tikhonov_lambdas: tuple[float, ...] = Field((3e-5, 3e-4, 3e-3), description="relative regularisation weights (x the largest "
                                                "squared singular value) of linear Tikhonov reconstructions the "
                                                "network reads beside its lifted tokens; () for none")
    channel_weights: tuple[float, float] = Field((3.0, 1.0), description="loss weight of mu_a and mu_s' "
                                                 "(seed 002 favours absorption, the harder channel, 2 : 1; 3 : 1 "
                                                 "keeps mu_a's error where it was once mu_s' weighs its inclusions)")
    inclusion_weight: tuple[float, float] = Field((0.0, 40.0), description="extra loss weight of inclusion voxels "
                                                  "per channel (mu_a, mu_s'): a voxel inside a true inclusion counts "
                                                  "1 + w times a background voxel; 0 = every body voxel alike. Inclusions are under 1% of the "
                                                  "body: without the weight an RMSE loss shrinks the uncertain "
                                                  "scattering inclusions toward the background (README)")


class DotTask(Task):
    name = "dot"
    label = "NIR diffuse optical tomography"
    summary = ("boundary NIR data (CW + 140 MHz) -> mu_a and mu_s' maps; network vs Tikhonov (Rytov, GCV) and "
               "Gauss-Newton")
    options_model = DotOptions
    baselines = BASELINES
    models = ("dot_net",)
    view = ViewSpec(
        layers=(LayerSpec("measurements", "sources and detectors (with the measurements)", kind="points",
                          on_output_grid=False),
                LayerSpec("mu", "reconstruction (mu_a, mu_s')", colormap="magma"),
                LayerSpec("reference", "phantom (mu_a, mu_s')", colormap="magma")),
        input_role="measurements", output_role="mu", reference_role="reference",
        channel_axis_label="channel (mu_a, mu_s')",
        metric_labels={"rmse_mua": "RMSE mu_a (1/mm)", "rmse_mus": "RMSE mu_s' (1/mm)", "ssim_mua": "SSIM mu_a",
                       "ssim_mus": "SSIM mu_s'", "contrast_mua": "contrast recovery mu_a",
                       "loc_error_mua": "localisation error mu_a (mm)"},
    )

    def default_config(self, model: str = "dot_net", **options):
        """Seed 002's settings: AdamW (0.9, 0.95), OneCycleLR to 3e-3 with 20% warm-up, RMSE 0.7 + SSIM 0.3
        per channel weighted mu_a 3 : mu_s' 1 with the true inclusions up-weighted in mu_s' (README), early
        stopping; spatial attention in the deepest levels."""
        from workbench.config import Config

        if model != "dot_net":
            raise ValueError(f"unknown dot model {model!r}; known: {', '.join(self.models)}")
        opts = DotOptions(**options)
        return Config.model_validate({
            "task": "dot", "options": opts.model_dump(),
            "data": {"batch_size": 8, "augment": True},
            "model": {"name": "dot_net", "base_filters": 16, "options": {"token_dim": 32, "spatial_attention": True}},
            "loss": {"weights": {"rmse": 0.7, "ssim": 0.3}},
            "train": {"steps": 800, "lr": 3e-3, "optimizer": "adamw", "betas": (0.9, 0.95), "weight_decay": 1e-4,
                      "schedule": "onecycle", "warmup_fraction": 0.2, "val_every": 50, "checkpoint_every": 50,
                      "early_stopping_patience": 6, "grad_clip": 1.0},
        })

    def config_for_model(self, name: str):
        return self.default_config(model=name)

    def unavailable_terms(self, config) -> dict[str, str]:
        out = super().unavailable_terms(config)
        out["perceptual"] = "not used for optical-property maps"
        return out

    # -- workflow -------------------------------------------------------------------
    def simulate(self, out_dir, **kw):
        from workbench.tasks.dot import workflow

        return workflow.simulate(out_dir, **kw)

    def load_training_data(self, data_dir, config):
        from workbench.tasks.dot.data import load_dataset

        return load_dataset(data_dir)

    def make_trainer(self, data, out_dir, config, *, callbacks=(), loss_weights=None):
        from workbench.tasks.dot import workflow

        return workflow.make_trainer(data, out_dir, config, callbacks=callbacks, loss_weights=loss_weights)

    def evaluate_arrays(self, result, reference, *, inclusions=None, grid=None):
        from workbench.tasks.dot.metrics import evaluate_dot
        from workbench.tasks.dot.physics import default_geometry

        g = default_geometry(grid or result.shape[-1])
        return evaluate_dot(result, reference, g.body_mask, inclusions=inclusions, background=g.background,
                            voxel_mm=g.voxel_mm)

    samples = ("phantom",)

    def sample_case(self, kind: str = "phantom", *, seed: int = 900_000_001, grid: int = 32):
        from workbench.tasks.dot import workflow

        return workflow.sample_case(seed=seed, grid=grid)

    # -- command line ---------------------------------------------------------------
    def add_commands(self, sub):
        p = sub.add_parser("simulate", help="phantoms with ground truth and their noise-free boundary data")
        p.add_argument("out_dir")
        p.add_argument("--n", type=int, default=8, help="number of cases")
        p.add_argument("--grid", type=int, default=32, help="voxels per axis (16, 24, 32, 48)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--workers", type=int, help="processes (default: one per CPU)")

        p = sub.add_parser("train", help="train the network on a folder of simulated cases")
        p.add_argument("data_dir")
        p.add_argument("--out", required=True, help="run folder: config.yaml, last.pt, best.pt, metrics.csv")
        p.add_argument("--config", help="YAML config (see `workbench config --task dot`)")
        p.add_argument("--steps", type=int, help="overrides train.steps")
        p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")

        p = sub.add_parser("predict", help="reconstruct mu_a and mu_s' with the network")
        p.add_argument("measurements")
        p.add_argument("-o", "--output", required=True, help="a .nii.gz: (X, Y, Z, 2) mu_a, mu_s' in 1/mm")
        p.add_argument("--checkpoint", help="a best.pt of `workbench dot train` (default: the shipped one)")

        p = sub.add_parser("baseline", help="model-based reconstruction: Tikhonov (Rytov, GCV) or Gauss-Newton")
        p.add_argument("method", choices=BASELINES)
        p.add_argument("measurements")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--iterations", type=int, default=3, help="gauss-newton iterations")

        p = sub.add_parser("evaluate", help="RMSE, SSIM, PSNR, contrast, localisation, Dice, crosstalk per channel")
        p.add_argument("result")
        p.add_argument("--reference", required=True, help="the case's mu.nii.gz")
        p.add_argument("--labels", help="inclusion labels (default: labels.nii.gz beside the reference)")
        p.add_argument("--json", action="store_true", help="print JSON")

    def run_command(self, args, progress) -> int:
        from workbench.tasks.dot import workflow

        verb = args.command
        if verb == "simulate":
            dirs = workflow.simulate(args.out_dir, n=args.n, grid=args.grid, seed=args.seed, workers=args.workers,
                                     progress=progress.stage("simulating", "case").inference)
            print(f"{len(dirs)} cases in {args.out_dir} (case_000 ... , dataset.npz)")
        elif verb == "train":
            config = workflow.resolve_config(args.config)
            if args.steps is not None:
                config.train.steps = int(args.steps)
            result = workflow.train(args.data_dir, args.out, config, resume=args.resume,
                                    callbacks=[progress.on_event])
            print(f"{result.steps_done} steps ({result.reason}); best held-out loss {result.best_loss:.5g}; "
                  f"checkpoints in {args.out}")
        elif verb == "predict":
            info = workflow.predict(args.measurements, args.output, checkpoint=args.checkpoint)
            print(f"wrote {info['output']} (mu_a, mu_s'; {info['pairs_used']} pairs, {info['seconds'] * 1e3:.0f} ms, "
                  f"{info['checkpoint']})")
        elif verb == "baseline":
            info = workflow.baseline(args.method, args.measurements, args.output, iterations=args.iterations)
            print(f"wrote {info['output']} ({args.method})")
        elif verb == "evaluate":
            metrics = workflow.evaluate(args.result, args.reference, labels=args.labels)
            if args.json:
                print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                  for k, v in metrics.items()}))
            else:
                for k, v in metrics.items():
                    print(f"{k:>22s}  {v:.4g}")
        else:  # pragma: no cover - argparse restricts the verbs
            raise ValueError(verb)
        return 0


TASK = DotTask()
