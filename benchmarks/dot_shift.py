"""NIR-DOT away from the training distribution: the shipped network against Tikhonov on cases it was not made for.

    python benchmarks/dot_shift.py [--n 40] [--work dot_shift] [--workers 2]   # prints the README's shift table
    python benchmarks/dot_shift.py --quick                                     # 2 phantoms per set (smoke run)

The shipped network (``workbench/tasks/dot/weights/dot_net.pt``) was trained on phantoms of simulation seed 1 with
1-3 inclusions of 5-15 mm, 1% amplitude and 0.5 deg phase noise and 50-100% of the pairs. Every condition here is
scored on phantoms of seeds it never saw, each against Tikhonov (Rytov, lambda by GCV) on the same noisy data:

- ``in distribution``: the training recipe, simulation seed 3 (disjoint from training seed 1 and test seed 2);
- ``2x noise``: the same phantoms, 2% amplitude and 1 deg phase noise;
- ``half the pairs``: the same phantoms, a random half of the source-detector pairs measured (per-case mask);
- ``4 inclusions``: four inclusions per phantom (training: 1-3);
- ``seed-002 tumours``: one or two large tumours (16-20 mm across, larger than any training inclusion) with the
  contrast of seed 002 in both channels at once (mu_a 0.01 -> 0.02, mu_s' 1.0 -> 0.8 per mm).

The phantoms are drawn by :func:`workbench.tasks.dot.phantoms.sample_phantom_params` (then edited for the last
two conditions) and simulated by the same finite-volume forward model; noise is drawn per case from a fixed seed,
the same for both methods. Simulation is cached in ``--work``.
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.tasks.dot import workflow  # noqa: E402
from workbench.tasks.dot.data import add_noise  # noqa: E402
from workbench.tasks.dot.metrics import evaluate_dot, summarize  # noqa: E402
from workbench.tasks.dot.phantoms import _depth, render_phantom, sample_phantom_params  # noqa: E402
from workbench.tasks.dot.physics import default_geometry, simulate_measurements  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402

PHANTOM_SETS = {"standard": 3, "4 inclusions": 4, "seed-002 tumours": 5}   # name -> simulation seed
CONDITIONS = (  # label, phantom set, noise (amplitude, phase deg), fraction of pairs measured
    ("in distribution", "standard", (0.01, 0.5), 1.0),
    ("2x noise", "standard", (0.02, 1.0), 1.0),
    ("half the pairs", "standard", (0.01, 0.5), 0.5),
    ("4 inclusions", "4 inclusions", (0.01, 0.5), 1.0),
    ("seed-002 tumours", "seed-002 tumours", (0.01, 0.5), 1.0),
)
KEYS = ("rmse_mua", "rmse_mus", "contrast_mua", "contrast_mus", "loc_error_mua", "loc_error_mus")


def tumour_params(rng: np.random.Generator, geometry) -> dict:
    """Seed 002's tumours: 1-2 spheres of 16-20 mm, mu_a x2 and mu_s' x0.8 together, on the usual background."""
    params = sample_phantom_params(rng, geometry, n_inclusions=0)
    coords = geometry.coordinates().reshape(3, -1).T[geometry.body_mask.ravel()]
    want, inclusions = int(rng.integers(1, 3)), []
    for _ in range(500):
        if len(inclusions) == want:
            break
        radius, centre = rng.uniform(16.0, 20.0) / 2, coords[rng.integers(len(coords))]
        if _depth(geometry, centre) < radius + 2.0 or any(
                np.linalg.norm(centre - np.asarray(o["centre_mm"])) < radius + o["radius_mm"] + 2.0 for o in inclusions):
            continue
        inclusions.append({"centre_mm": centre.tolist(), "radius_mm": float(radius), "kind": "both",
                           "mua_factor": 2.0, "mus_factor": 0.8})
    return {**params, "inclusions": inclusions}


def _simulate_one(job):
    kind, seed, grid = job
    g = default_geometry(grid)
    rng = np.random.default_rng(seed)
    if kind == "seed-002 tumours":
        params = tumour_params(rng, g)
    else:
        params = sample_phantom_params(rng, g, n_inclusions=4 if kind == "4 inclusions" else None)
    mu, labels = render_phantom(params, g)
    return mu.astype(np.float32), labels.astype(np.int16), simulate_measurements(g, mu)


def phantom_set(work: Path, kind: str, n: int, grid: int, workers: int) -> dict:
    """``n`` phantoms of one kind (cached as one ``.npz``; seeds ``sim_seed * 1_000_003 + i``)."""
    path = work / f"{kind.replace(' ', '_')}_g{grid}_n{n}.npz"
    if not path.is_file():
        jobs = [(kind, PHANTOM_SETS[kind] * 1_000_003 + i, grid) for i in range(n)]
        if workers > 1:
            with get_context("spawn").Pool(workers) as pool:
                cases = pool.map(_simulate_one, jobs)
        else:
            cases = [_simulate_one(job) for job in jobs]
        work.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".partial.npz")
        np.savez_compressed(tmp, mu=np.stack([c[0] for c in cases]), labels=np.stack([c[1] for c in cases]),
                            data=np.stack([c[2] for c in cases]))
        tmp.replace(path)
    z = np.load(path)
    return {"mu": z["mu"], "labels": z["labels"], "data": z["data"]}


def score_condition(cases: dict, noise, fraction: float, geometry, predictor) -> dict[str, dict]:
    """Mean ± std over cases of the network and Tikhonov on the same noisy (and masked) data."""
    out = {"Tikhonov": [], "network": []}
    for i in range(len(cases["mu"])):
        rng = np.random.default_rng(2_000_000 + i)
        data = add_noise(cases["data"][i], rng, *noise)
        mask = None
        if fraction < 1.0:
            mask = np.zeros(data.shape[1:], bool)
            mask.ravel()[rng.permutation(mask.size)[:int(round(fraction * mask.size))]] = True
        kw = dict(inclusions=cases["labels"][i].astype(int), background=geometry.background,
                  voxel_mm=geometry.voxel_mm)
        for name, method in (("Tikhonov", "tikhonov"), ("network", "network")):
            mu = workflow.reconstruct(method, data, geometry, mask, predictor=predictor)[0]
            out[name].append(evaluate_dot(mu, cases["mu"][i], geometry.body_mask, **kw))
    return {name: summarize(scores) for name, scores in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="phantoms per set")
    ap.add_argument("--work", type=Path, default=Path("dot_shift"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path, help="default: the shipped network")
    ap.add_argument("--quick", action="store_true", help="2 phantoms per set (a smoke run)")
    args = ap.parse_args(argv)
    grid, n = 32, (2 if args.quick else args.n)   # the shipped network's grid
    g = default_geometry(grid)
    predictor = workflow.DotPredictor.from_checkpoint(args.checkpoint)
    print(f"CPU: {cpu_model_name()}; grid {grid}; {n} phantoms per set; checkpoint "
          f"{args.checkpoint or 'shipped'}")
    sets = {kind: phantom_set(args.work, kind, n, grid, args.workers) for kind in PHANTOM_SETS}
    print("\n| condition | method | RMSE mu_a | RMSE mu_s' | contrast mu_a | contrast mu_s' | loc mu_a (mm) "
          "| loc mu_s' (mm) | RMSE below Tikhonov (mu_a / mu_s') |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for label, kind, noise, fraction in CONDITIONS:
        res = score_condition(sets[kind], noise, fraction, g, predictor)
        rows[label] = res
        for name in ("Tikhonov", "network"):
            r = res[name]
            cells = [f"{r[k][0]:.3g}" if np.isfinite(r[k][0]) else "n/a" for k in KEYS]
            gain = "" if name == "Tikhonov" else " / ".join(
                f"{100 * (1 - r[f'rmse_{c}'][0] / res['Tikhonov'][f'rmse_{c}'][0]):+.0f}%" for c in ("mua", "mus"))
            print(f"| {label} | {name} | " + " | ".join(cells) + f" | {gain} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
