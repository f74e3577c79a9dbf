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
    assert bench.main(["--quick", "--json", str(out_json), "--figure", str(tmp_path / "fig.png")]) == 0
    text = capsys.readouterr().out
    for method in ("bicubic", "regression", "sr3_sample", "sr3_mean"):
        assert f"| {method} |" in text
    assert "corr(std, |error of the mean|)" in text and "| 5 |" in text
    data = json.loads(out_json.read_text())
    assert set(data["metrics"]) == {"bicubic", "regression", "sr3_sample", "sr3_mean"}
    assert (tmp_path / "fig.png").stat().st_size > 10_000
