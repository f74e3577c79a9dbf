"""``workbench`` command line: ``workbench tasks``, ``workbench <task> <verb> ...``.

Each task adds its own verbs (``workbench sr predict ...``); the DWI verbs also stay at
the top level (``workbench denoise ...`` = ``workbench dwi denoise ...``).

Bad input ends with one line on stderr and exit status 2 (``--debug`` shows the
traceback); nothing is written and nothing is overwritten in that case.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from workbench import __version__

EXIT_INPUT_ERROR = 2


class _ProgressBar:
    """tqdm bars fed by the trainer's events and by inference progress."""

    def __init__(self, enabled: bool = True, desc: str = "working", unit: str = "step"):
        self.enabled = enabled
        self.bar = None
        self.desc, self.unit = desc, unit

    def stage(self, desc: str, unit: str = "it") -> "_ProgressBar":
        """Name the next inference bar (e.g. ``stage("tiles", "tile")``)."""
        self.desc, self.unit = desc, unit
        return self

    def stage_fn(self, desc: str, unit: str = "it"):
        """A progress callable that names its own bar (for several stages handed out at once)."""
        def report(done: int, total: int) -> None:
            self.stage(desc, unit)
            self.inference(done, total)
        return report

    def on_event(self, event) -> None:
        from tqdm import tqdm

        from workbench.training.events import Finished, StepEnd, Validation

        if not self.enabled:
            return
        if isinstance(event, StepEnd):
            if self.bar is None:
                self.bar = tqdm(total=event.total_steps, desc="training", unit="step", dynamic_ncols=True)
            self.bar.n = event.step
            self.bar.set_postfix(loss=f"{event.loss:.4g}", lr=f"{event.lr:.2g}", refresh=False)
            self.bar.refresh()
        elif isinstance(event, Validation) and self.bar is not None:
            self.bar.write(f"step {event.step}: held-out loss {event.loss:.5g} (best {event.best_loss:.5g})")
        elif isinstance(event, Finished) and self.bar is not None:
            self.bar.close()
            self.bar = None

    def inference(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if not self.enabled:
            return
        # One bar per stage: a stage may report 0 of N first (a resumed dataset); a new stage is one with another
        # name or total, or whose count went back.
        if self.bar is not None and (self.bar.desc != self.desc or self.bar.total != total or done < self.bar.n):
            self.bar.close()
            self.bar = None
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True)
        self.bar.n = done
        self.bar.refresh()
        if done == total:
            self.bar.close()
            self.bar = None


def build_parser() -> argparse.ArgumentParser:
    from workbench.tasks import TASK_MODULES, get_task
    from workbench.tasks.dwi import cli as dwi_cli

    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{tasks,config,<task>,<dwi verb>}")

    sub.add_parser("tasks", help="list the tasks")
    p = sub.add_parser("config", help="print a task's default config as YAML (a starting point for --config)")
    p.add_argument("--task", default="dwi", help="task name (default: dwi)")
    p.add_argument("--model", help="the defaults for this model of the task (e.g. --task sr --model sr3)")
    for name in TASK_MODULES:
        task = get_task(name)
        tp = sub.add_parser(name, help=f"{task.label}: {task.summary}")
        tp.set_defaults(task=name, prefix=f"{name} ")
        task.add_commands(tp.add_subparsers(dest="command", required=True))
    # the DWI verbs at the top level, as before the task layer
    for p in dwi_cli.add_commands(sub, legacy=True).values():
        p.set_defaults(task="dwi", prefix="")
    return parser


def _run(args: argparse.Namespace) -> int:
    bar = _ProgressBar(enabled=not args.quiet)
    if args.command == "tasks":
        from workbench.tasks import TASKS

        for task in TASKS.values():
            print(task.describe())
        return 0
    if args.command == "config":
        from workbench.tasks import get_task

        task = get_task(args.task)
        if args.model and args.model not in (task.models or (args.model,)):
            from workbench.io_utils import InputError

            raise InputError(f"task {task.name} has no model {args.model!r}; its models: {', '.join(task.models)}")
        cfg = task.config_for_model(args.model) if args.model else task.default_config()
        print(cfg.to_yaml(), end="")
        return 0
    from workbench.tasks import get_task

    return get_task(args.task).run_command(args, bar)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``workbench`` console script."""
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from workbench.io_utils import InputError
    from workbench.tasks.base import Cancelled

    try:
        return _run(args)
    except (InputError, FileNotFoundError, ValidationError) as exc:
        if args.debug:
            raise
        msg = str(exc).replace("\n", "; ")
        print(f"workbench {getattr(args, 'prefix', '')}{args.command}: error: {msg}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except (KeyboardInterrupt, Cancelled):
        # outputs are written atomically, so none is half-written; a training run keeps the last
        # checkpoint it wrote (train.checkpoint_every), from which --resume continues
        print("interrupted: no output was written (a training run keeps its last checkpoint, if any)",
              file=sys.stderr)
        return 130
    finally:
        if "workbench.training.distributed" in sys.modules:  # a torchrun rank: leave the process group before
            from workbench.training.distributed import cleanup  # exit (gloo threads torn down at interpreter

            cleanup()  # shutdown can abort the process: "terminate called without an active exception")


if __name__ == "__main__":
    sys.exit(main())
