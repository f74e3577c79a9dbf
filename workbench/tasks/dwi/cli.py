"""The DWI task's command-line verbs (``workbench dwi ...``, and the top-level aliases).

``simulate, train, denoise (= predict), evaluate, baseline, demo`` keep exactly the
arguments and messages they had before the task layer, so scripts written for the
DWI workbench keep working as ``workbench denoise ...`` or ``workbench dwi denoise ...``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

VERBS = ("simulate", "train", "denoise", "predict", "evaluate", "baseline", "demo")


def _add_gradients(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bval", help="b-values file (default: DWI.bval beside the image)")
    p.add_argument("--bvec", help="b-vectors file (default: DWI.bvec beside the image)")


def add_commands(sub: "argparse._SubParsersAction", legacy: bool = False) -> dict[str, argparse.ArgumentParser]:
    """Add the DWI verbs to a subparsers object: the task's, or (``legacy``) the top level's,
    where they keep their pre-task-layer names and help (no ``predict``). Returns the parsers."""
    tag = "(= workbench dwi ...) " if legacy else ""
    before = set(sub.choices)
    p = sub.add_parser("simulate", help="write a DWI phantom with ground truth")
    p.add_argument("out_dir")
    p.add_argument("--snr", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheme", choices=["multishell", "dti"], default="multishell")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32], metavar=("X", "Y", "Z"))

    p = sub.add_parser("train", help="train a J-invariant denoiser on DWI series")
    p.add_argument("dwi", nargs="+")
    p.add_argument("--out", required=True, help="run folder: config.yaml, last.pt, best.pt, metrics.csv, tb/")
    p.add_argument("--config", help="YAML config (see `workbench config`)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--mask", nargs="*", help="one mask per DWI (default: DIPY median_otsu)")
    p.add_argument("--nan-to-zero", action="store_true")

    for verb, text in (("denoise", "denoise a 4D DWI (self-supervised, or with --checkpoint)"),
                       ("predict", "the same as denoise"))[: 1 if legacy else 2]:
        p = sub.add_parser(verb, help=text)
        _denoise_arguments(p)

    p = sub.add_parser("evaluate", help="compare a result with a clean reference")
    p.add_argument("result")
    p.add_argument("--reference", required=True)
    p.add_argument("--mask")
    _add_gradients(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("baseline", help="DIPY MP-PCA, Patch2Self or NLMeans through the same I/O")
    p.add_argument("method", choices=["mppca", "patch2self", "nlmeans"])
    p.add_argument("dwi")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--mask")
    _add_gradients(p)
    p.add_argument("--nan-to-zero", action="store_true")

    p = sub.add_parser("demo", help="simulate, denoise, compare with MP-PCA; write a figure and a table")
    p.add_argument("--out", default="workbench_demo")
    p.add_argument("--snr", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="YAML config for our denoiser")
    added = {v: p for v, p in sub.choices.items() if v not in before}
    for action in sub._choices_actions:  # the help line says what the alias stands for
        if action.dest in added and tag:
            action.help = tag + (action.help or "")
    return added


def _denoise_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dwi")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--checkpoint", help="apply this trained model instead of training on the data")
    p.add_argument("--config", help="YAML config for training on the data")
    p.add_argument("--mask")
    _add_gradients(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--no-amp", action="store_true", help="float32 instead of mixed precision")
    amp.add_argument("--amp", action="store_true",
                     help="force mixed precision (default: on for CUDA and CPUs with native bfloat16)")
    p.add_argument("--nan-to-zero", action="store_true")
    p.add_argument("--run-dir", help="keep the training run (checkpoints, metrics) in this folder")


def run_command(args: argparse.Namespace, bar) -> int:
    """Run one DWI verb; ``bar`` is the CLI's progress reporter."""
    from workbench import api

    if args.command == "simulate":
        paths = api.simulate(args.out_dir, snr=args.snr, seed=args.seed, scheme=args.scheme,
                             shape=tuple(args.shape))
        for p in paths.values():
            print(p)
    elif args.command == "train":
        if args.mask and len(args.mask) != len(args.dwi):
            from workbench.io_utils import InputError

            raise InputError(f"{len(args.dwi)} DWI files but {len(args.mask)} masks: give one mask per file")
        result = api.train(args.dwi, args.out, args.config, resume=args.resume, callbacks=[bar.on_event],
                           mask_paths=args.mask, nan_to_zero=args.nan_to_zero,
                           progress=bar.stage_fn("q-space priors (MP-PCA planes per fold)", "plane"))
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
            print(f"{result.reason} after {result.steps_done} steps; best held-out loss {result.best_loss:.5g}; "
                  f"checkpoints in {args.out}")
    elif args.command in ("denoise", "predict"):
        report = api.denoise(
            args.dwi, args.output, checkpoint=args.checkpoint, config=args.config, mask=args.mask,
            bval=args.bval, bvec=args.bvec, device=args.device, amp=False if args.no_amp else (True if args.amp else None),
            nan_to_zero=args.nan_to_zero, run_dir=args.run_dir, callbacks=[bar.on_event],
            progress=bar.stage_fn("denoising (volumes, then MP-PCA planes)", "step"),
            prepare_progress=bar.stage_fn("q-space priors (MP-PCA planes per fold)", "plane"),
        )
        msg = (f"wrote {report.output} ({report.n_volumes} volumes; training {report.train_seconds:.0f} s, "
               f"inference {report.inference_seconds:.0f} s on {report.device}, amp={report.amp})\n"
               f"held-out MSE {report.heldout_mse:.4g}: RMS noise of the magnitude data in the mask "
               f"<= {report.sigma_upper:.4g}")
        if report.sigma is not None:
            source = {"mppca": "MP-PCA"}.get(report.extra.get("sigma_source"), report.extra.get("sigma_source"))
            msg += (f"; Gaussian noise sigma {report.sigma:.4g} ({source}, used)")
            if report.sigma > report.sigma_upper:  # not a contradiction: Rician statistics
                msg += (" - above that RMS because magnitude noise is Rician: its spread falls below sigma "
                        "where the signal is dim (high b)")
            msg += f" -> estimated RMSE to clean {report.est_rmse_vs_clean:.4g}"
            if report.est_rmse_per_shell:
                from workbench.error_estimate import describe

                msg += f" (per shell: {describe(report.est_rmse_per_shell)})"
            if report.est_warning:
                msg += f"\n{report.est_warning}"
        print(msg)
    elif args.command == "evaluate":
        metrics = api.evaluate(args.result, args.reference, mask=args.mask, bval=args.bval, bvec=args.bvec)
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            for k, v in metrics.items():
                print(f"{k:>22s}  {v:.4f}")
    elif args.command == "baseline":
        info = api.baseline(args.method, args.dwi, args.output, mask=args.mask, bval=args.bval,
                            bvec=args.bvec, nan_to_zero=args.nan_to_zero)
        print(f"wrote {info['output']} ({info['method']}, {info['seconds']:.1f} s)")
    elif args.command == "demo":
        from workbench.demo import run_demo

        summary = run_demo(Path(args.out), snr=args.snr, seed=args.seed, config=args.config, callbacks=[bar.on_event],
                           progress=bar.stage("denoising (volumes, then MP-PCA planes)", "step").inference)
        print(summary)
    return 0
