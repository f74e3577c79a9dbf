"""The task layer: registry, aliases, configs, and that the generic core names no task."""

import re
from pathlib import Path

import pytest

from workbench.config import Config
from workbench.tasks import TASKS, canonical_task_name, get_task
from workbench.tasks.base import Task, TaskOptions

CORE = Path(__file__).resolve().parents[1] / "workbench"


def test_registry_lists_tasks_and_unknown_names_list_the_known_ones():
    assert list(TASKS) == ["dwi", "sr", "dot", "xray2ct"]
    assert all(isinstance(t, Task) and t.name == n for n, t in TASKS.items())
    with pytest.raises(ValueError, match="unknown task 'ct'; known tasks: dot, dwi, sr, xray2ct"):
        get_task("ct")
    assert canonical_task_name("dwi_denoise") == "dwi" and "dwi_denoise" in TASKS


@pytest.mark.parametrize("name", ["dwi", "sr", "dot", "xray2ct"])
def test_every_task_has_a_valid_default_config_and_view(name):
    task = get_task(name)
    cfg = task.default_config()
    assert cfg.task == name
    again = Config.from_yaml(cfg.to_yaml())  # round trip through YAML
    assert again == cfg
    assert isinstance(task.options(cfg), TaskOptions)
    roles = {layer.role for layer in task.view.layers}
    assert {task.view.input_role, task.view.output_role, task.view.reference_role} <= roles


def test_unset_steps_and_learning_rate_take_the_tasks_defaults_and_set_ones_are_kept():
    dwi = Config()
    assert dwi.train.steps == get_task("dwi").default_steps == 2000
    assert dwi.train.lr == get_task("dwi").default_lr == 2e-3 != Task.default_lr
    other = Config.model_validate({"task": "dot", "train": {"steps": 10}})
    assert (other.train.steps, other.train.lr) == (10, Task.default_lr)
    mine = Config.model_validate({"train": {"lr": 3e-4}})
    assert mine.train.lr == 3e-4 and Config.from_yaml(mine.to_yaml()).train.lr == 3e-4
    assert "2000 training steps at learning rate 0.002" in get_task("dwi").describe()
    # a task with its own rate gets it where the config leaves the rate unset, and only there
    dwi_task = get_task("dwi")
    try:
        dwi_task.default_lr = 7e-4
        assert Config().train.lr == 7e-4 and Config.model_validate({"train": {"lr": 3e-3}}).train.lr == 3e-3
        assert Config.model_validate({"task": "dot"}).train.lr == Task.default_lr
    finally:
        del dwi_task.default_lr
    assert Config().train.lr == 2e-3
    with pytest.raises(ValueError):
        Config.model_validate({"train": {"lr": 0}})


def test_task_options_are_strict():
    with pytest.raises(ValueError, match="scael"):
        get_task("sr").default_config(scael=4)
    with pytest.raises(ValueError):
        Config.model_validate({"task": "sr", "options": {"scale": 3}})
    assert Config.model_validate({"task": "sr", "options": {"scale": 2}}).options["scale"] == 2


def test_a_config_for_another_task_is_refused_by_sr_train():
    from workbench.io_utils import InputError
    from workbench.tasks.sr.workflow import resolve_config

    with pytest.raises(InputError, match="workbench config --task sr"):
        resolve_config(get_task("dwi").default_config())


GENERIC = ["training/trainer.py", "training/steps.py", "training/checkpoint.py", "training/schedules.py",
           "training/sampling.py", "training/events.py", "tiling.py", "losses.py", "models/__init__.py"]


@pytest.mark.parametrize("rel", GENERIC)
def test_generic_core_modules_name_no_task(rel):
    text = (CORE / rel).read_text()
    code = re.sub(r'""".*?"""', "", text, flags=re.S)  # docstrings may give examples
    for task in ("dwi", "sr", "super_res", "denois", "dot", "xray2ct"):
        assert not re.search(rf"(task\s*==\s*['\"]{task})|(['\"]{task}['\"]\s*==\s*task)", code), rel
    for module in ("dwi", "sr", "dot", "xray2ct"):
        assert f"workbench.tasks.{module}" not in code, rel


def test_dwi_verbs_work_under_the_task_and_as_top_level_aliases(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    from workbench.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["--quiet", "dwi", "simulate", str(a), "--shape", "12", "12", "6", "--scheme", "dti"]) == 0
    assert main(["--quiet", "simulate", str(b), "--shape", "12", "12", "6", "--scheme", "dti"]) == 0
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "dwi.nii.gz" in files
    assert np.array_equal(nib.load(a / "dwi.nii.gz").get_fdata(), nib.load(b / "dwi.nii.gz").get_fdata())
    capsys.readouterr()
    assert main(["--quiet", "evaluate", str(a / "dwi.nii.gz"), "--reference", str(a / "clean.nii.gz"),
                 "--json"]) == 0
    assert main(["--quiet", "dwi", "evaluate", str(a / "dwi.nii.gz"), "--reference", str(a / "clean.nii.gz"),
                 "--json"]) == 0
    import json

    out = capsys.readouterr().out
    half = len(out) // 2
    assert out[:half] == out[half:] and json.loads(out[:half])["psnr_dwi"] > 0


def test_config_command_prints_each_task_default(capsys):
    from workbench.cli import main

    assert main(["config", "--task", "sr"]) == 0
    text = capsys.readouterr().out
    assert Config.from_yaml(text).task == "sr" and "rrdb_sr" in text
