"""Shared fixtures: small real DWI phantoms written as real NIfTI files."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)
# the DOT network's geometry buffers (workbench.tasks.dot.geometry_cache): a cache of this session, not the user's
os.environ["WORKBENCH_CACHE_DIR"] = _CACHE = tempfile.mkdtemp(prefix="workbench-test-cache-")
atexit.register(shutil.rmtree, _CACHE, True)


@pytest.fixture(scope="session")
def small_phantom():
    from workbench.data.phantoms import simulate_dwi

    return simulate_dwi(shape=(20, 22, 12), scheme="dti", snr=15.0, seed=3)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory, small_phantom):
    from workbench.data.phantoms import write_phantom

    out = tmp_path_factory.mktemp("phantom")
    return write_phantom(small_phantom, out)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
