"""Per-run metric files: ``metrics.csv`` (appended and flushed row by row) and TensorBoard scalars."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence

from workbench.io_utils import atomic_path


class RunLog:
    """Write training metrics of one run to ``run_dir/metrics.csv`` and ``run_dir/tb``.

    Parameters
    ----------
    run_dir : pathlib.Path
        The run folder (created when missing).
    terms : sequence of str
        Loss-term columns of the CSV (fixed for the file's lifetime; terms added
        later appear only in TensorBoard).
    resume_step : int, optional
        Continue an existing run: CSV rows after this step are dropped (they
        belong to the interrupted tail) and TensorBoard purges events after it.
    """

    def __init__(self, run_dir: Path, terms: Sequence[str], resume_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = run_dir / "metrics.csv"
        columns = ["step", "loss", *terms, "lr", "grad_norm", "val_loss"]
        rows: list[dict] = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or columns)
                rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        with atomic_path(self.csv_path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=columns)
                w.writeheader()
                w.writerows(rows)
        self._file = open(self.csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore", restval="")
        purge = resume_step + 1 if resume_step else None
        self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge, flush_secs=30)

    def step(self, step: int, loss: float, terms: dict, lr: float, grad_norm: float,
             val_loss: Optional[float] = None, val_terms: Optional[dict] = None) -> None:
        """Record one optimizer step (and its validation, if one ran at this step)."""
        self.tb.add_scalar("train/loss", loss, step)
        for k, v in terms.items():
            self.tb.add_scalar(f"train/{k}", v, step)
        self.tb.add_scalar("train/lr", lr, step)
        if math.isfinite(grad_norm):
            self.tb.add_scalar("train/grad_norm", grad_norm, step)
        if val_loss is not None:
            self.tb.add_scalar("val/loss", val_loss, step)
            for k, v in (val_terms or {}).items():
                self.tb.add_scalar(f"val/{k}", v, step)
        row = {"step": step, "loss": f"{loss:.6g}", "lr": f"{lr:.6g}", "grad_norm": f"{grad_norm:.6g}",
               "val_loss": "" if val_loss is None else f"{val_loss:.6g}"}
        row.update({k: f"{v:.6g}" for k, v in terms.items()})
        self._csv.writerow(row)
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()
        self.tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.tb.close()
