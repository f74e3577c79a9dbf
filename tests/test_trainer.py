"""The training loop on a tiny real model: learning, AMP, accumulation, resume, stop, events, files, DDP."""

from __future__ import annotations

import csv
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from _ddp_worker import BlobSampler, TinyNet, build, make_config, run_torchrun
from workbench.io_utils import InputError
from workbench.training.checkpoint import load_checkpoint
from workbench.training.events import Failed, Finished, StepEnd, Validation, WeightsChanged
from workbench.training.trainer import NonFiniteLossError, Trainer, TrainResult

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def of(self, cls):
        return [e for e in self.events if isinstance(e, cls)]


def run(config, out_dir=None, resume=False, callbacks=(), sampler=None, **kw):
    rec = Recorder()
    trainer = Trainer(build(config), sampler or BlobSampler(), config, out_dir=out_dir,
                      callbacks=[rec, *callbacks], **kw)
    result = trainer.fit(resume=resume)
    return trainer, result, rec


def stop_at(step, holder):
    def cb(event):
        if isinstance(event, StepEnd) and event.step == step:
            holder[0].request_stop()
    return cb


def assert_same_weights(a, b, atol=0.0):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if atol == 0.0:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=atol, msg=k)


# --------------------------------------------------------------------------- learning, AMP
def test_loss_decreases():
    _, result, rec = run(make_config(steps=40, lr=1e-2, val_every=20, checkpoint_every=40))
    losses = [e.loss for e in rec.of(StepEnd)]
    assert len(losses) == 40 and [e.step for e in rec.of(StepEnd)] == list(range(1, 41))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert result.reason == "completed" and result.steps_done == 40
    vals = rec.of(Validation)
    assert [v.step for v in vals] == [20, 40] and vals[1].loss < vals[0].loss
    assert rec.of(Finished)[0].reason == "completed"


@pytest.mark.parametrize("amp", [True, False])
def test_amp_on_and_off_both_train(amp):
    config = make_config(steps=25, lr=1e-2, amp=amp, val_every=25)
    seen = []
    model = build(config)
    model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    rec = Recorder()
    Trainer(model, BlobSampler(), config, callbacks=[rec]).fit()
    losses = [e.loss for e in rec.of(StepEnd)]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert set(seen) == {torch.bfloat16 if amp else torch.float32}


def test_accumulation_equals_larger_batch():
    common = dict(steps=3, lr=1e-3, val_every=100, checkpoint_every=100)
    acc, _, _ = run(make_config(batch_size=2, accumulation_steps=2, **common))
    big, _, _ = run(make_config(batch_size=4, accumulation_steps=1, **common))
    assert_same_weights(acc.raw_model, big.raw_model, atol=1e-6)
    moved = build(make_config())
    assert not torch.allclose(moved.conv1.weight, acc.raw_model.conv1.weight)


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("train", [
    dict(schedule="onecycle", amp=True),
    dict(schedule="plateau", amp=False, val_every=2),
    dict(schedule="cosine", amp=True, accumulation_steps=2, grad_clip=0.5),
])
def test_resume_equals_uninterrupted(tmp_path, train):
    config = make_config(steps=10, checkpoint_every=3, **{"val_every": 4, **train})
    straight, r_straight, _ = run(config, tmp_path / "a")
    holder = [None]
    rec = Recorder()
    first = Trainer(build(config), BlobSampler(), config, out_dir=tmp_path / "b",
                    callbacks=[rec, stop_at(6, holder)])
    holder[0] = first
    r1 = first.fit()
    assert (r1.reason, r1.steps_done) == ("stopped", 6)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 6
    resumed, r2, rec2 = run(config, tmp_path / "b", resume=True)
    assert rec2.of(StepEnd)[0].step == 7 and r2.steps_done == 10
    assert_same_weights(straight.raw_model, resumed.raw_model)
    assert r2.best_loss == r_straight.best_loss
    assert [h["step"] for h in r2.history] == [h["step"] for h in r_straight.history]
    rows = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))


class StopInsideSampler(BlobSampler):
    """Asks the trainer to stop while drawing the n-th micro-batch (mid optimizer step)."""

    def __init__(self, n, **kw):
        self.n, self.calls, self.trainer = n, -10**6, None  # validation batches are drawn in __init__
        super().__init__(**kw)
        self.calls = 0

    def sample(self, batch_size, generator):
        self.calls += 1
        if self.calls == self.n:
            self.trainer.request_stop()
        return super().sample(batch_size, generator)


def test_stop_between_micro_batches_drops_partial_step_and_resumes_exactly(tmp_path):
    config = make_config(steps=6, accumulation_steps=3, val_every=3, checkpoint_every=100, schedule="onecycle")
    straight, _, _ = run(config, tmp_path / "a")
    sampler = StopInsideSampler(n=3 * 3 + 2)  # second micro-batch of step 4
    t = Trainer(build(config), sampler, config, out_dir=tmp_path / "b")
    sampler.trainer = t
    r = t.fit()
    assert (r.reason, r.steps_done) == ("stopped", 3)
    resumed, r2, _ = run(config, tmp_path / "b", resume=True)
    assert r2.steps_done == 6
    assert_same_weights(straight.raw_model, resumed.raw_model)


def test_resume_errors(tmp_path):
    config = make_config(steps=4, checkpoint_every=2)
    with pytest.raises(InputError, match="no last.pt in .*start without --resume"):
        run(config, tmp_path / "empty", resume=True)
    run(config, tmp_path / "r")
    other = make_config(steps=4, checkpoint_every=2, lr=5e-3, val_every=2)
    with pytest.raises(InputError, match=r"train\.lr, train\.val_every differ"):
        run(other, tmp_path / "r", resume=True)
    longer = make_config(steps=6, checkpoint_every=2)  # only train.steps changed: fine
    _, result, rec = run(longer, tmp_path / "r", resume=True)
    assert result.steps_done == 6 and [e.step for e in rec.of(StepEnd)] == [5, 6]


def test_resume_with_longer_onecycle_keeps_going(tmp_path):
    run(make_config(steps=4, schedule="onecycle"), tmp_path)
    _, result, rec = run(make_config(steps=8, schedule="onecycle"), tmp_path, resume=True)
    assert result.steps_done == 8 and all(np.isfinite(e.lr) for e in rec.of(StepEnd))


# --------------------------------------------------------------------------- stop, weights, early stopping
def test_stop_request_from_another_thread(tmp_path):
    holder = [None]

    def cb(event):
        if isinstance(event, StepEnd) and event.step == 3:
            th = threading.Thread(target=holder[0].request_stop)
            th.start()
            th.join()

    config = make_config(steps=20)
    rec = Recorder()
    t = Trainer(build(config), BlobSampler(), config, out_dir=tmp_path, callbacks=[rec, cb])
    holder[0] = t
    (tmp_path / "best.pt").write_bytes(b"from an older run")
    result = t.fit()
    assert result.reason == "stopped" and result.steps_done in (3, 4)
    assert result.best_checkpoint is None  # no validation ran: the stale best.pt is not reported
    assert result.last_checkpoint == str(tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["step"] == result.steps_done
    fin = rec.of(Finished)
    assert len(fin) == 1 and fin[0].reason == "stopped" and fin[0].last_checkpoint == result.last_checkpoint


def test_weight_change_during_training(tmp_path):
    holder = [None]

    def cb(event):
        if isinstance(event, StepEnd) and event.step == 2:
            holder[0].loss_weights.set("l1", 0.5)

    config = make_config(steps=5)
    rec = Recorder()
    t = Trainer(build(config), BlobSampler(), config, out_dir=tmp_path, callbacks=[rec, cb])
    holder[0] = t
    t.fit()
    changed = rec.of(WeightsChanged)
    assert changed == [WeightsChanged(step=3, name="l1", old=0.0, new=0.5)]
    steps = rec.of(StepEnd)
    assert "l1" not in steps[1].terms and "l1" in steps[2].terms and steps[2].weights["l1"] == 0.5
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["loss_weights"] == {"mse": 1.0, "l1": 0.5}
    assert ckpt["loss_weights_history"] == [{"step": 3, "name": "l1", "old": 0.0, "new": 0.5}]


def test_early_stopping():
    config = make_config(steps=50, lr=1e-12, val_every=1, early_stopping_patience=1)
    _, result, rec = run(config)
    assert result.reason == "early_stopping" and result.steps_done == 2
    vals = rec.of(Validation)
    assert [v.is_best for v in vals] == [True, False]
    assert rec.of(Finished)[0].reason == "early_stopping"


# --------------------------------------------------------------------------- clipping, schedules
def test_clipping_logs_norm_and_clips():
    clip = 1e-3
    t, _, rec = run(make_config(steps=2, grad_clip=clip, val_every=100))
    norms = [e.grad_norm for e in rec.of(StepEnd)]
    assert all(n > clip for n in norms)
    clipped = torch.sqrt(sum(p.grad.pow(2).sum() for p in t.raw_model.parameters()))
    assert float(clipped) <= clip * (1 + 1e-4)
    _, _, rec = run(make_config(steps=2, grad_clip=None, val_every=100))
    assert all(np.isfinite(e.grad_norm) and e.grad_norm > 0 for e in rec.of(StepEnd))


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "plateau", "none"])
def test_every_schedule_runs(schedule):
    _, result, rec = run(make_config(steps=8, schedule=schedule, val_every=1, lr=1e-2))
    lrs = [e.lr for e in rec.of(StepEnd)]
    assert result.steps_done == 8 and all(np.isfinite(lrs))
    if schedule == "none":
        assert lrs == [1e-2] * 8
    elif schedule == "cosine":
        assert lrs[0] == pytest.approx(1e-2) and all(a > b for a, b in zip(lrs, lrs[1:]))
    elif schedule == "onecycle":
        assert max(lrs) <= 1e-2 * (1 + 1e-6) and lrs[0] < max(lrs) and lrs[-1] < max(lrs)
    else:
        assert all(b <= a for a, b in zip(lrs, lrs[1:]))


# --------------------------------------------------------------------------- events, files, errors
def test_validation_event_and_files(tmp_path):
    config = make_config(steps=6, val_every=3, checkpoint_every=4)
    _, result, rec = run(config, tmp_path, task_meta={"task": "toy", "scale": 2.0})
    vals = rec.of(Validation)
    assert [v.step for v in vals] == [3, 6]
    assert "heldout_mse" not in vals[0].terms  # a DWI term: the generic loop adds none of its own
    assert vals[0].terms["mse"] == pytest.approx(vals[0].loss, rel=1e-5)  # weights = {mse: 1}
    assert set(vals[0].images) == {"input", "prediction", "target"}
    assert all(a.dtype == np.float32 and a.shape == (8, 8) for a in vals[0].images.values())
    assert {p.name for p in tmp_path.iterdir()} >= {"last.pt", "best.pt", "config.yaml", "metrics.csv", "tb"}
    assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "tb").iterdir())
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert set(rows[0]) == {"step", "loss", "mse", "lr", "grad_norm", "val_loss"}
    assert [r["val_loss"] != "" for r in rows] == [False, False, True, False, False, True]
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["task_meta"] == {"task": "toy", "scale": 2.0}
    # a model outside the registry is named by its class, not by config.model.name
    assert ckpt["model_meta"] == {"name": "TinyNet", "in_channels": 2, "out_channels": 1,
                                  "num_conditions": 3, "residual_channel": None}
    assert isinstance(result, TrainResult) and result.best_checkpoint == str(tmp_path / "best.pt")
    assert [h["step"] for h in result.history] == [3, 6]


def test_no_out_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, result, _ = run(make_config(steps=3, val_every=1, checkpoint_every=1))
    assert list(tmp_path.iterdir()) == []
    assert result.last_checkpoint is None and result.best_checkpoint is None


class BrokenSampler(BlobSampler):
    def __init__(self, fail_at, **kw):
        self.fail_at, self.calls = fail_at, -10**6  # validation batches are drawn in __init__
        super().__init__(**kw)
        self.calls = 0

    def sample(self, batch_size, generator):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("patch 7 is out of the volume")
        return super().sample(batch_size, generator)


def test_failed_event_when_sampler_raises():
    rec = Recorder()
    config = make_config(steps=5)
    with pytest.raises(RuntimeError, match="patch 7"):
        Trainer(build(config), BrokenSampler(3), config, callbacks=[rec]).fit()
    failed = rec.of(Failed)
    assert len(failed) == 1 and failed[0].step == 2 and "patch 7" in failed[0].error
    assert "Traceback" in failed[0].traceback and "BrokenSampler" not in failed[0].error
    assert not rec.of(Finished)


class NaNSampler(BlobSampler):
    def sample(self, batch_size, generator):
        b = super().sample(batch_size, generator)
        b.target[:] = float("nan")
        return b


def test_nan_loss_is_a_clear_error():
    rec = Recorder()
    config = make_config(steps=3)
    with pytest.raises(NonFiniteLossError, match="loss became NaN at step 1: lower train.lr or enable grad_clip"):
        Trainer(build(config), NaNSampler(), config, callbacks=[rec]).fit()
    assert rec.of(Failed)[0].error.startswith("loss became NaN")


def test_loss_weights_object_is_shared():
    from workbench.losses import LossWeights

    lw = LossWeights({"mse": 1.0, "edge": 0.1})
    config = make_config(steps=2, weights={"mse": 1.0, "edge": 0.1})
    t, _, rec = run(config, loss_weights=lw)
    assert t.loss_weights is lw and set(rec.of(StepEnd)[0].terms) == {"mse", "edge"}


def test_compile_keeps_raw_state_dict(tmp_path, monkeypatch):
    calls = []
    real = torch.compile

    def compile_eager(model, **kw):  # the inductor backend takes ~30 s on 2 cores: same wrapper, eager backend
        calls.append(model)
        return real(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", compile_eager)
    config = make_config(steps=3, compile=True, val_every=3)
    t, result, rec = run(config, tmp_path)
    assert len(calls) == 1 and calls[0] is t.raw_model and t.model is not t.raw_model
    keys = set(load_checkpoint(tmp_path / "last.pt")["model_state"])
    assert keys == set(TinyNet().state_dict()) and result.steps_done == 3
    plain = TinyNet()
    plain.load_state_dict(load_checkpoint(tmp_path / "last.pt")["model_state"])  # interchangeable


# --------------------------------------------------------------------------- DDP
def test_ddp_two_ranks_agree_and_only_rank0_writes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(ROOT / "tests" / "_ddp_worker.py"), str(tmp_path)]
    proc = run_torchrun(cmd, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["straight"] == r1["straight"]  # DDP keeps the replicas identical
    assert r0["resumed"] == r1["resumed"] == r0["straight"]  # stop on rank 0 + resume == straight
    assert r0["reasons"] == r1["reasons"] == ["completed", "stopped", "completed"]
    assert r0["steps"] == r1["steps"] == [4, 2, 4]
    assert (r0["writes"], r1["writes"]) == (True, False)
    assert r0["weights"] == r1["weights"] == [{"mse": 1.0, "l1": 0.5}] * 3
    assert (tmp_path / "straight_rank0" / "last.pt").is_file()
    assert not (tmp_path / "straight_rank1").exists()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 4 and len(ckpt["rank_rng"]) == 2
    assert ckpt["loss_weights_history"] == [{"step": 2, "name": "l1", "old": 0.0, "new": 0.5}]


# --------------------------------------------------------------------------- objectives (step functions)
def test_custom_step_function_decides_the_loss(tmp_path):
    """The loop back-propagates what the step returns: a step that scales the target trains to it."""
    from workbench.training.steps import StepOutput

    seen = []

    def doubled_target_step(model, batch, ctx):
        seen.append(ctx.training)
        pred = model(batch.input, batch.cond).float()
        loss, terms = ctx.criterion(pred, 2 * batch.target, batch.mask)
        return StepOutput(loss, {**terms, "extra": 1.5})

    config = make_config(steps=4, val_every=2)
    rec = Recorder()
    Trainer(build(config), BlobSampler(), config, callbacks=[rec], step=doubled_target_step).fit()
    assert True in seen and False in seen
    vals = rec.of(Validation)
    assert vals and all(v.terms["extra"] == 1.5 for v in vals)
    assert all(v.images == {} for v in vals)  # this step returns no previews


def test_model_objective_is_used_without_a_task_fork():
    """A model class may carry its own objective (as a diffusion model will)."""
    from workbench.training.steps import StepOutput, resolve_step, supervised_step

    def own(model, batch, ctx):
        return StepOutput(model(batch.input, batch.cond).float().mean() * 0, {"own": 1.0})

    config = make_config(steps=2, val_every=1)
    model = build(config)
    assert resolve_step(model) is supervised_step
    Own = type("Own", (type(model),), {"objective": staticmethod(own)})
    model.__class__ = Own
    assert resolve_step(model) is own
    rec = Recorder()
    Trainer(model, BlobSampler(), config, callbacks=[rec]).fit()
    assert rec.of(StepEnd)[0].terms == {"own": 1.0}


def test_preview_of_2d_and_3d_batches():
    from workbench.training.steps import preview_slice

    assert preview_slice(torch.zeros(2, 1, 5, 6, 7)).shape == (5, 6)
    assert preview_slice(torch.zeros(2, 3, 9, 11)).shape == (9, 11)
    assert preview_slice(torch.zeros(2, 1, 13)).shape == (1, 13)


def test_resume_keeps_weights_moved_while_stopped(tmp_path):
    """A front end stops training, the user moves a slider, then resumes: the move is kept and logged."""
    from workbench.losses import LossWeights

    config = make_config(steps=4, checkpoint_every=2)
    lw = LossWeights(config.loss.weights)
    run(config, tmp_path, loss_weights=lw)
    lw.set("l1", 0.25)  # moved while stopped
    longer = make_config(steps=6, checkpoint_every=2)
    t, _, rec = run(longer, tmp_path, resume=True, loss_weights=lw)
    assert t.loss_weights.get()["l1"] == 0.25
    changes = rec.of(WeightsChanged)
    assert [(c.step, c.name, c.new) for c in changes] == [(5, "l1", 0.25)]
    assert set(rec.of(StepEnd)[0].terms) >= {"mse", "l1"}
    # without a front end's weights, the checkpoint's weights are restored (the CLI's resume)
    t2, _, rec2 = run(make_config(steps=8, checkpoint_every=2), tmp_path, resume=True)
    assert t2.loss_weights.get()["l1"] == 0.25 and not rec2.of(WeightsChanged)


# --------------------------------------------------------------------------- Ctrl-C
def sigint_at(steps):
    """A callback that sends this process SIGINT (a real Ctrl-C) at each StepEnd in ``steps``."""
    import signal

    def cb(event):
        if isinstance(event, StepEnd) and event.step in steps:
            os.kill(os.getpid(), signal.SIGINT)
    return cb


def test_ctrl_c_stops_at_a_step_and_keeps_last_pt_then_resume_is_exact(tmp_path):
    import signal

    config = make_config(steps=8, checkpoint_every=100, val_every=4)
    straight, _, _ = run(config, tmp_path / "a")
    before = signal.getsignal(signal.SIGINT)
    _, r1, rec = run(config, tmp_path / "b", callbacks=[sigint_at({3})])
    assert (r1.reason, r1.steps_done) == ("stopped", 3)
    assert rec.of(Finished)[0].reason == "stopped"
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3  # checkpoint_every=100: written by the stop
    assert signal.getsignal(signal.SIGINT) is before  # the trainer's handler is gone after fit
    resumed, r2, _ = run(config, tmp_path / "b", resume=True)
    assert r2.steps_done == 8
    assert_same_weights(straight.raw_model, resumed.raw_model)


def test_second_ctrl_c_aborts_at_once(tmp_path):
    import signal

    config = make_config(steps=8, checkpoint_every=100)
    before = signal.getsignal(signal.SIGINT)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, callbacks=[sigint_at({2}), lambda e: steps.append(getattr(e, "step", None)),
                                         sigint_at({2})])
    assert not (tmp_path / "last.pt").exists()  # aborted inside step 2's callbacks, before any save
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_handler_only_in_the_main_thread(tmp_path):
    import signal

    seen = []
    config = make_config(steps=2)
    th = threading.Thread(target=lambda: seen.append(run(config, tmp_path)[1].steps_done))
    th.start()
    th.join()
    assert seen == [2] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
