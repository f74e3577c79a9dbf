"""The on-disk cache of a DOT network's geometry buffers (workbench.tasks.dot.geometry_cache): what it returns equals
what is computed, it is read back, damaged entries are replaced, its key follows every input, and it can be off."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.tasks.dot import geometry_cache as C
from workbench.tasks.dot.physics import default_geometry

G = default_geometry(16)
SCALES = [0.05, 0.07, 0.02]
INVERSE = {"lambdas": [1e-4, 1e-2], "sigma_amp": 0.01, "sigma_phase_deg": 0.5}
LIFT = 8


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(C.CACHE_ENV, str(folder))
    return folder


def entries(folder):
    return sorted(folder.glob("dot_buffers_*.npz")) if folder.is_dir() else []


def test_stored_then_read_back(cache):
    lift, op = C.geometry_buffers(G, LIFT, SCALES, INVERSE)
    assert lift.shape == (G.n_pairs, LIFT, LIFT, LIFT) and lift.dtype == np.float32
    assert op.shape == (3, G.n_pairs, 4, LIFT, LIFT, LIFT) and op.dtype == np.float32
    np.testing.assert_allclose(lift.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    (entry,) = entries(cache)
    # what is returned the second time comes from the file: change the file, see the change
    with np.load(entry) as z:
        stored_lift, stored_op = z["lift"], z["op"]
    np.testing.assert_array_equal(stored_lift, lift)
    np.testing.assert_array_equal(stored_op, op)
    np.savez(entry, lift=stored_lift * 2, op=stored_op)
    again, op2 = C.geometry_buffers(G, LIFT, SCALES, INVERSE)
    np.testing.assert_array_equal(again, lift * 2)
    np.testing.assert_array_equal(op2, op)


def test_equal_to_computing_without_a_cache(cache, monkeypatch):
    cached = C.geometry_buffers(G, LIFT, SCALES, INVERSE)
    read = C.geometry_buffers(G, LIFT, SCALES, INVERSE)
    monkeypatch.setenv(C.CACHE_ENV, "off")
    assert C.cache_dir() is None
    fresh = C.geometry_buffers(G, LIFT, SCALES, INVERSE)
    for a, b, c in zip(cached, read, fresh):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    assert len(entries(cache)) == 1   # "off" wrote nothing


def test_damaged_entry_is_computed_again_and_replaced(cache):
    lift, op = C.geometry_buffers(G, LIFT, SCALES, INVERSE)
    (entry,) = entries(cache)
    entry.write_bytes(entry.read_bytes()[:1000])   # an interrupted copy
    lift2, op2 = C.geometry_buffers(G, LIFT, SCALES, INVERSE)
    np.testing.assert_array_equal(lift2, lift)
    np.testing.assert_array_equal(op2, op)
    with np.load(entry) as z:
        np.testing.assert_array_equal(z["op"], op)


def test_key_follows_every_input(cache):
    base = C.buffers_key(G, LIFT, SCALES, INVERSE)
    assert C.buffers_key(G, LIFT, list(SCALES), dict(INVERSE)) == base
    others = {C.buffers_key(default_geometry(24), LIFT, SCALES, INVERSE),
              C.buffers_key(G, LIFT // 2, SCALES, INVERSE),
              C.buffers_key(G, LIFT, [0.05, 0.07, 0.021], INVERSE),
              C.buffers_key(G, LIFT, SCALES, {**INVERSE, "lambdas": [1e-4]}),
              C.buffers_key(G, LIFT, SCALES, {**INVERSE, "sigma_amp": 0.02}),
              C.buffers_key(G, LIFT, SCALES, None)}
    assert base not in others and len(others) == 6


def test_no_tikhonov_map_without_lambdas(cache):
    lift, op = C.geometry_buffers(G, LIFT, SCALES, None)
    assert op is None and lift.shape[0] == G.n_pairs
    lift2, op2 = C.geometry_buffers(G, LIFT, SCALES, None)
    assert op2 is None
    np.testing.assert_array_equal(lift2, lift)


def test_unwritable_folder_still_gives_the_buffers(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(C.CACHE_ENV, str(blocker / "cache"))
    lift, op = C.geometry_buffers(G, LIFT, SCALES, INVERSE)
    assert lift.shape[0] == G.n_pairs and op is not None
    assert blocker.read_text() == "not a folder"


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(C.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert C.cache_dir() == tmp_path / "recon-workbench"


def test_reference_data_kept_on_disk(cache, monkeypatch):
    from workbench.tasks.dot.physics import homogeneous, simulate_measurements
    from workbench.tasks.dot.training import reference_data

    reference_data.cache_clear()
    first = reference_data(G)
    (entry,) = sorted(cache.glob("dot_reference_*.npz"))
    np.testing.assert_array_equal(first, simulate_measurements(G, homogeneous(G)))
    with np.load(entry) as z:
        np.savez(entry, data=z["data"] * 2)
    reference_data.cache_clear()
    np.testing.assert_array_equal(reference_data(G), first * 2)   # read from the entry
    reference_data.cache_clear()
    monkeypatch.setenv(C.CACHE_ENV, "off")
    np.testing.assert_array_equal(reference_data(G), first)
    reference_data.cache_clear()


def test_least_recently_used_entries_go_first(tmp_path):
    import os

    folder = tmp_path / "cache"
    folder.mkdir()
    paths = []
    for i in range(4):
        path = folder / f"dot_buffers_{i}.npz"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
        paths.append(path)
    (folder / "other.npz").write_bytes(b"y" * 1000)   # not ours: never counted or removed
    os.utime(paths[0], (2000, 2000))                   # read most recently
    removed = C.evict(folder, 250, keep=paths[1])
    assert removed == [paths[2], paths[3]]             # 400 -> 300 -> 200 bytes, the kept one skipped
    assert paths[0].is_file() and paths[1].is_file() and (folder / "other.npz").is_file()


def test_reading_an_entry_marks_it_used(cache):
    import os

    C.geometry_buffers(G, LIFT, SCALES, None)
    (entry,) = entries(cache)
    os.utime(entry, (1000, 1000))
    C.geometry_buffers(G, LIFT, SCALES, None)
    assert entry.stat().st_mtime > 1000
