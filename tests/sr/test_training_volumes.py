"""scripts/train_sr3_weights.py's training volumes: chunks drawn by seed, the same with any number of processes."""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_chunked_volumes_do_not_depend_on_the_number_of_processes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # the spawned workers import the script by name
    sys.modules.pop("train_sr3_weights", None)
    import train_sr3_weights as script

    serial = script.simulate_training_volumes(tmp_path / "a", 3, 32, chunk=2, jobs=1, grain_radius=(2.0, 16.0))
    pooled = script.simulate_training_volumes(tmp_path / "b", 3, 32, chunk=2, jobs=2, grain_radius=(2.0, 16.0))
    assert [p.name for p in serial] == [p.name for p in pooled] == ["soil_000", "soil_001"]
    assert sorted(f.name for f in serial[1].glob("hr_*")) == ["hr_000.nii.gz"]  # 3 volumes: 2 + 1
    for a, b in zip(serial, pooled):
        for f in a.glob("*.nii.gz"):
            assert np.array_equal(np.asarray(nib.load(f).dataobj), np.asarray(nib.load(b / f.name).dataobj))
    first = np.asarray(nib.load(serial[0] / "hr_000.nii.gz").dataobj)
    other = np.asarray(nib.load(serial[1] / "hr_000.nii.gz").dataobj)
    assert not np.array_equal(first, other)  # chunk k is drawn with seed k
