"""Train and package the shipped xray2ct defaults: stage 1, stage 2, the linear (atlas + ridge) model, the fusion.

    python scripts/train_xray2ct_weights.py --work bench_xray2ct    # simulate + train what is missing, package
    python scripts/train_xray2ct_weights.py --work W --package-only  # only strip finished runs into the package
    python scripts/train_xray2ct_weights.py --work W --fusion-only   # only the fusion, behind the shipped stage 1

Everything is generated here, nothing downloaded: 600 torso phantoms of ``workbench xray2ct
simulate`` with seed 1 (the benchmark's test phantoms use seeds 101-103) plus 24 augmented
crops of the real chest CT's training part (its top 25% is never used); the task's default
configs (stage 1: ``workbench config --task xray2ct``; stage 2: the sr task's x2 network
trained on stage-1 outputs with L1 + edge). These are the runs ``benchmarks/xray2ct.py
--work W`` scores (it calls the same preparation), so the README table describes the
shipped networks. The files keep float16 weights, config and metadata, not the optimizer
state.

The fusion of stage 1 with ridge (``train --stage fusion``) is trained last, behind the
*packaged* stage 1 and linear model (the checkpoint records their SHA-256), on 240 fresh
phantoms of seed 2 that neither was fitted on (64^3, no fine reference): ~4 min to
simulate, ~2 min for the two estimates of every case, ~15 min of training on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from workbench.tasks.xray2ct import workflow  # noqa: E402
from workbench.tasks.xray2ct.fusion import file_sha256  # noqa: E402
from workbench.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402

DROP = ("optimizer_state", "scheduler_state", "scaler_state", "rng", "sampler_generator_state", "ema_state")


def package(best: Path, out: Path, extra: dict) -> dict:
    ckpt = load_checkpoint(best)
    keep = {k: v for k, v in ckpt.items() if k not in DROP}
    keep["model_state"] = {k: (v.half() if v.is_floating_point() else v) for k, v in keep["model_state"].items()
                           if not k.startswith("lift")}       # geometry buffers: rebuilt at load
    meta = keep.get("task_meta", {})
    keep["task_meta"] = {**meta, "train_cases": len(meta.get("train_cases", [])),
                         "val_cases": len(meta.get("val_cases", [])), **extra}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, keep)
    return {"checkpoint": str(out), "size_mb": round(out.stat().st_size / 2 ** 20, 2)}


def main(argv=None) -> int:
    import xray2ct as bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("bench_xray2ct"))
    ap.add_argument("--package-only", action="store_true")
    ap.add_argument("--fusion-only", action="store_true", help="train and package only the fusion")
    ap.add_argument("--n-fusion", type=int, default=240, help="seed-2 phantoms the fusion learns from")
    args = ap.parse_args(argv)
    extra = {"trained_by": "python scripts/train_xray2ct_weights.py", "cpu": cpu_model_name(),
             "data": "600 simulated torso phantoms (seed 1) + 24 real-CT crops (training part), 64^3"}
    out = []
    if not args.fusion_only:
        if not args.package_only:
            bench.prepare(args.work, _defaults())
        out += [package(args.work / "stage1" / "best.pt", workflow.DEFAULT_STAGE1, extra),
                package(args.work / "stage2" / "best.pt", workflow.DEFAULT_STAGE2,
                        {**extra, "stage": 2, "inputs": "stage-1 outputs of the shipped stage 1"})]
        shutil.copyfile(args.work / "linear" / "linear.npz", workflow.DEFAULT_LINEAR)
        out.append({"linear": str(workflow.DEFAULT_LINEAR),
                    "size_mb": round(workflow.DEFAULT_LINEAR.stat().st_size / 2 ** 20, 2)})
    out.append(fusion(args.work, args.n_fusion, train=not args.package_only))
    print(json.dumps(out, indent=1))
    return 0


def fusion(work: Path, n: int, *, train: bool) -> dict:
    """Simulate the seed-2 phantoms, train the fusion behind the shipped stage 1 and linear model, package it."""
    run = work / "fusion"
    shipped = {"stage1": file_sha256(workflow.DEFAULT_STAGE1), "linear": file_sha256(workflow.DEFAULT_LINEAR)}
    if (run / "best.pt").is_file():
        meta = load_checkpoint(run / "best.pt")["task_meta"]
        if {k: meta[k]["sha256"] for k in shipped} != shipped:
            raise SystemExit(f"{run} was trained behind other stage-1 / linear files than the shipped ones: "
                             "delete it to retrain")
    elif train:
        import xray2ct as bench

        if not (work / "fuse" / "dataset.json").is_file():
            bench.cli("xray2ct", "simulate", work / "fuse", "--n", n, "--size", 64, "--hr-size", 0, "--seed", 2,
                      log=work / "simulate_fuse.log")
        bench.cli("xray2ct", "train", work / "fuse", "--stage", "fusion", "--out", run, log=work / "train_fusion.log")
    extra = {"trained_by": "python scripts/train_xray2ct_weights.py --fusion-only", "cpu": cpu_model_name(),
             "data": f"{n} simulated torso phantoms (seed 2; neither stage 1 nor ridge saw them), 64^3"}
    return package(run / "best.pt", workflow.DEFAULT_FUSION, extra)


def _defaults() -> argparse.Namespace:
    """The benchmark's default arguments (600 training phantoms, the task's default configs)."""
    return argparse.Namespace(n_train=600, n_test=12, size=64, steps=None, sr_steps=None, config=None, sr_config=None,
                              workers=None)


if __name__ == "__main__":
    sys.exit(main())
