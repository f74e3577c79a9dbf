"""Checkpoint files: atomic save, weights_only round trip, clear errors, compatibility, RNG state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from _ddp_worker import BlobSampler, build, make_config
from workbench.config import Config
from workbench.io_utils import InputError
from workbench.training.checkpoint import (
    FORMAT_VERSION, KIND, capture_rng_state, check_compatible, config_differences, load_checkpoint,
    restore_rng_state, save_checkpoint)
from workbench.training.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = make_config(steps=4, val_every=2, checkpoint_every=2, schedule="onecycle", amp=True)
    trainer = Trainer(build(config), BlobSampler(), config, out_dir=out,
                      model_meta={"name": "denoiser", "in_channels": 2, "out_channels": 1,
                                  "num_conditions": 3, "residual_channel": None},
                      task_meta={"task": "toy", "bvals": [0.0, 1000.0]})
    trainer.fit()
    return trainer, out


def test_trainer_checkpoint_round_trip_weights_only(trained):
    trainer, out = trained
    raw = torch.load(out / "last.pt", weights_only=True, map_location="cpu")  # plain data only
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.keys() == raw.keys()
    assert ckpt["kind"] == KIND and ckpt["format_version"] == FORMAT_VERSION == 1
    assert ckpt["step"] == 4 and isinstance(ckpt["step"], int)
    assert Config.model_validate(ckpt["config"]) == trainer.config
    for k, v in trainer.raw_model.state_dict().items():
        assert torch.equal(ckpt["model_state"][k], v)
    for key in ("optimizer_state", "scheduler_state", "scaler_state", "sampler_generator_state", "best_loss",
                "bad_validations", "loss_weights", "loss_weights_history", "val_history", "task_meta"):
        assert key in ckpt, key
    assert ckpt["scheduler_state"]["total_steps"] == 4
    assert ckpt["model_meta"]["name"] == "denoiser" and ckpt["task_meta"]["bvals"] == [0.0, 1000.0]
    rng = ckpt["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["cuda"], list)
    assert isinstance(rng["numpy"][1], list) and isinstance(rng["python"][1], list)
    assert isinstance(ckpt["sampler_generator_state"], torch.Tensor)
    assert [h["step"] for h in ckpt["val_history"]] == [2, 4]
    best = load_checkpoint(out / "best.pt")
    assert best["best_loss"] == min(h["loss"] for h in best["val_history"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "config": {}, "model_state": {}, "model_meta": {}})
    assert load_checkpoint(path)["step"] == 1

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"step": 2, "bad": Unsaveable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_checkpoint(trained, tmp_path):
    _, out = trained
    data = (out / "last.pt").read_bytes()
    bad = tmp_path / "last.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as info:
        load_checkpoint(bad)
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and "use last.pt/best.pt" in msg


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(InputError, match="truncated or not a workbench checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a workbench-checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"kind": KIND, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(InputError, match="format version 99.*upgrade"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"kind": KIND, "format_version": 1, "step": 3}, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="missing config, model_state, model_meta"):
        load_checkpoint(tmp_path / "partial.pt")
    torch.save({"kind": KIND, "format_version": 1, "obj": np.random.default_rng(0)}, tmp_path / "unsafe.pt")
    with pytest.raises(InputError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "unsafe.pt")
    torch.save({"kind": "workbench-export", "format_version": 1}, tmp_path / "export.pt")
    assert load_checkpoint(tmp_path / "export.pt", expected_kind="workbench-export")["kind"] == "workbench-export"


def test_check_compatible_messages():
    meta = {"name": "denoiser", "in_channels": 24, "out_channels": 1, "num_conditions": 22, "residual_channel": 0}
    check_compatible({"model_meta": meta}, dict(meta))
    with pytest.raises(InputError) as info:
        check_compatible({"model_meta": meta}, dict(meta, num_conditions=65))
    assert str(info.value) == ("checkpoint was trained for model 'denoiser' with 22 volumes; this data has "
                               "65 volumes: train a new model or pick the matching checkpoint")
    with pytest.raises(InputError, match="2 input channels.*this run asks for model 'unet'"):
        check_compatible(meta, dict(meta, in_channels=2, name="unet"))


def test_rng_state_round_trip():
    state = capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_config_differences():
    a = make_config(steps=4).model_dump(mode="json")
    b = make_config(steps=8, lr=0.5, weights={"mse": 1.0, "l1": 1.0}).model_dump(mode="json")
    assert config_differences(a, b, ignore=("train.steps",)) == ["loss.weights.l1", "train.lr"]


def test_checkpoints_from_before_volume_input_read_noisy_volumes(tmp_path):
    """A DWI checkpoint saved before ``data.volume_input`` existed was trained on the noisy volumes: it loads
    with 'noisy', not with today's default (denoised), so its network gets the inputs it learned from."""
    cfg = Config().model_dump(mode="json")
    assert Config.model_validate(cfg).data.denoised_volume_input  # today's default
    del cfg["data"]["volume_input"]
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"step": 1, "config": cfg, "model_state": {}, "model_meta": {}})
    loaded = Config.model_validate(load_checkpoint(path)["config"])
    assert loaded.data.volume_input == "noisy" and not loaded.data.denoised_volume_input
    cfg["data"]["volume_input"] = "auto"
    save_checkpoint(path, {"step": 1, "config": cfg, "model_state": {}, "model_meta": {}})
    assert Config.model_validate(load_checkpoint(path)["config"]).data.denoised_volume_input


def test_checkpoints_from_before_prior_ridge_rebuild_the_prior_they_were_trained_on(tmp_path):
    """Before ``data.prior_ridge`` the split prior's ridge was a fixed 1e-3: an old checkpoint loads with it
    (its network corrects that prior), a new config keeps its own value."""
    cfg = Config().model_dump(mode="json")
    assert cfg["data"]["prior_ridge"] == 1e-4
    del cfg["data"]["prior_ridge"]
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"step": 1, "config": cfg, "model_state": {}, "model_meta": {}})
    assert Config.model_validate(load_checkpoint(path)["config"]).data.prior_ridge == 1e-3
    cfg["data"]["prior_ridge"] = 0.0
    save_checkpoint(path, {"step": 1, "config": cfg, "model_state": {}, "model_meta": {}})
    assert Config.model_validate(load_checkpoint(path)["config"]).data.prior_ridge == 0.0
