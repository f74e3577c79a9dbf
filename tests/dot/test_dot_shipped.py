"""The shipped DOT checkpoint (small, documented, loads, beats Tikhonov on held-out phantoms) and the benchmark's smoke run."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from workbench.tasks.dot import workflow
from workbench.tasks.dot.metrics import evaluate_dot
from workbench.tasks.dot.physics import default_geometry
from workbench.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_checkpoint_is_small_and_says_how_it_was_made():
    path = workflow.DEFAULT_CHECKPOINT
    assert path.is_file() and path.stat().st_size < 5 * 2 ** 20
    ckpt = load_checkpoint(path)
    meta = ckpt["task_meta"]
    assert meta["task"] == "dot" and meta["trained_by"] == "python scripts/train_dot_weights.py"
    assert meta["geometry"] == default_geometry(32).to_dict() and "optimizer_state" not in ckpt
    pred = workflow.DotPredictor.from_checkpoint()
    assert pred.geometry == default_geometry(32) and len(pred.scales) == 3


def test_shipped_network_beats_tikhonov_on_held_out_phantoms():
    """Two phantoms from seeds no training set uses (900_000_001+), 1% / 0.5 deg noise: RMSE of mu_a and mu_s'."""
    pred = workflow.DotPredictor.from_checkpoint()
    g = pred.geometry
    better = {"mua": 0, "mus": 0}
    for seed in (900_000_001, 900_000_002):
        case = workflow.sample_case(seed=seed)
        net = pred.predict(case["data"])
        tik, _ = workflow.reconstruct("tikhonov", case["data"], g)
        assert net.shape == (2, 32, 32, 32) and net.dtype == np.float32
        assert 0.003 < net[0][g.body_mask].mean() < 0.03 and 0.5 < net[1][g.body_mask].mean() < 1.5   # 1/mm
        amap = pred.attention()
        assert amap is not None and amap.shape == (32, 32, 32) and 0 <= amap.min() and amap.max() <= 1
        kw = dict(inclusions=case["labels"], background=g.background, voxel_mm=g.voxel_mm)
        m_net = evaluate_dot(net, case["mu"], g.body_mask, **kw)
        m_tik = evaluate_dot(tik, case["mu"], g.body_mask, **kw)
        for ch in better:
            better[ch] += m_net[f"rmse_{ch}"] < m_tik[f"rmse_{ch}"]
    assert better == {"mua": 2, "mus": 2}


def test_dot_benchmark_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_dot", ROOT / "benchmarks" / "dot.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dot.json"
    argv = ["--quick", "--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--runs",
            str(tmp_path / "runs"), "--json", str(out), "--figure", str(tmp_path / "fig.png"), "--workers", "1"]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    for row in ("Tikhonov (Rytov, GCV)", "Gauss-Newton (3 it., 2 cases)", "network (attention), 1 seeds",
                "network (no attention), 1 seeds"):
        assert row in text
    assert "| rmse_mua |" in text and "lower than Tikhonov" in text
    data = json.loads(out.read_text())
    assert data["n_test"] == 6 and (tmp_path / "fig.png").stat().st_size > 10_000


def _shift_bench():
    spec = importlib.util.spec_from_file_location("bench_dot_shift", ROOT / "benchmarks" / "dot_shift.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_shift_benchmark_tumours_are_outside_the_training_range():
    from workbench.tasks.dot.phantoms import DIAMETER_MM, _depth, render_phantom

    bench, g = _shift_bench(), default_geometry(32)
    for seed in range(5):
        params = bench.tumour_params(np.random.default_rng(seed), g)
        assert 1 <= len(params["inclusions"]) <= 2
        for inc in params["inclusions"]:
            assert 2 * inc["radius_mm"] > DIAMETER_MM[1] and inc["kind"] == "both"
            assert (inc["mua_factor"], inc["mus_factor"]) == (2.0, 0.8)
            assert _depth(g, np.asarray(inc["centre_mm"])) >= inc["radius_mm"] + 2.0
        mu, labels = render_phantom(params, g)
        inside = labels > 0
        assert inside.any() and mu[0][inside].max() > 1.9 * g.background[0]


def test_shift_benchmark_quick_prints_every_condition(tmp_path, capsys):
    bench = _shift_bench()
    assert bench.main(["--quick", "--work", str(tmp_path), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    for label, *_ in bench.CONDITIONS:
        assert f"| {label} | Tikhonov |" in text and f"| {label} | network |" in text
    assert len(list(tmp_path.glob("*.npz"))) == len(bench.PHANTOM_SETS)
