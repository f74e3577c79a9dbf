"""benchmarks/sr3.py runs end to end on the shipped checkpoints (its --quick setting) and prints its tables."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sr3_benchmark_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_sr3", ROOT / "benchmarks" / "sr3.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json = tmp_path / "sr3.json"
    assert bench.main(["--quick", "--json", str(out_json), "--figure", str(tmp_path / "fig.png"),
                       "--back-project"]) == 0
    text = capsys.readouterr().out
    for method in ("bicubic", "regression", "sr3_sample", "sr3_mean", "sr3_sample_bp", "sr3_mean_bp"):
        assert f"| {method} |" in text
    assert "corr(std, |error of the mean|)" in text and "| 5 |" in text
    data = json.loads(out_json.read_text())
    assert set(data["metrics"]) == {"bicubic", "regression", "sr3_sample", "sr3_mean", "sr3_sample_bp", "sr3_mean_bp"}
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_back_projection_makes_an_estimate_consistent_with_its_lr_input():
    """Irani & Peleg's iteration: the degraded estimate approaches the LR data (noise-free, nominal PSF)."""
    import numpy as np

    spec = importlib.util.spec_from_file_location("bench_sr3_bp", ROOT / "benchmarks" / "sr3.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from workbench.tasks.sr.degrade import degrade

    rng = np.random.default_rng(0)
    from scipy import ndimage

    hr = ndimage.gaussian_filter(rng.random((64, 64, 3)), (3, 3, 0)).astype(np.float32)
    lr = degrade(hr, bench.NOMINAL_DEGRADATION)
    guess = np.full_like(hr, hr.mean())
    misfit = [float(np.abs(degrade(x, bench.NOMINAL_DEGRADATION) - lr).mean())
              for x in (guess, bench.back_project(guess, lr, 1), bench.back_project(guess, lr, 3))]
    assert misfit[1] < 0.5 * misfit[0] and misfit[2] < misfit[1]
    assert np.mean((bench.back_project(guess, lr) - hr) ** 2) < np.mean((guess - hr) ** 2)
