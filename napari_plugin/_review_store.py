"""Blinded reader study file: scores saved after every answer, un-blinded only at export (no Qt here).

One JSON file (``review.json``) holds every case of a review; a CSV beside it
(``review.csv``) holds the same scores as a table. Both are written atomically
(``workbench.io_utils.atomic_write_text``) after every answer, so closing napari
mid-review loses nothing and reopening the same file continues.

Blinding: the file stores, per case, the *sorted* names of the results and the
random seed that orders them; labels A, B, ... are assigned by that seed. The
label -> name map is never written until :meth:`ReviewStore.export`, which writes
``NAME_unblinded.json`` and ``NAME_unblinded.csv``. (Anyone holding the code and
the seed can still recompute the order: this is blinding for the reader, not
encryption.)
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import string
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

FORMAT = "recon-workbench-review"
VERSION = 1
CRITERIA = [
    ("sharpness", "Sharpness", "1 = blurred, 5 = crisp edges"),
    ("noise", "Noise", "1 = very noisy, 5 = no visible noise"),
    ("artefacts", "Artefacts", "1 = severe artefacts, 5 = none"),
    ("diagnostic_confidence", "Diagnostic confidence", "1 = not diagnostic, 5 = fully confident"),
]
CRITERIA_KEYS = [c[0] for c in CRITERIA]
SCORES = (1, 2, 3, 4, 5)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def blinded_order(candidates: list[str], seed: int) -> list[str]:
    """The candidates in blinded order (label A first) for ``seed``: a seeded permutation of the sorted names."""
    names = sorted(candidates)
    perm = np.random.default_rng(int(seed)).permutation(len(names))
    return [names[i] for i in perm]


def labels_for(n: int) -> list[str]:
    if n > 26:
        raise ValueError("a review case holds at most 26 results (A to Z)")
    return list(string.ascii_uppercase[:n])


class ReviewStore:
    """The review file at ``path`` (JSON); the CSV is ``path`` with ``.csv``."""

    def __init__(self, path: str | Path, reviewer: str = ""):
        from workbench.io_utils import InputError

        self.path = Path(path).expanduser()
        if self.path.suffix.lower() != ".json":
            self.path = self.path.with_suffix(".json")
        self.csv_path = self.path.with_suffix(".csv")
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"cannot read the review file {self.path}: {exc}") from exc
            if self.data.get("format") != FORMAT:
                raise InputError(f"{self.path} is not a review file of this workbench")
        else:
            self.data = {"format": FORMAT, "version": VERSION, "created": _now(), "reviewer": reviewer, "cases": {}}
        if reviewer:
            self.data["reviewer"] = reviewer

    # ------------------------------------------------------------------ cases
    def open_case(self, case_id: str, candidates: list[str], seed: Optional[int] = None) -> dict:
        """Start a case, or continue it when the file already has it (same results required)."""
        case_id = case_id.strip()
        if not case_id:
            raise ValueError("Give the case a name (e.g. the subject ID)")
        if len(set(candidates)) < 2:
            raise ValueError("Choose at least two different results to review")
        cases = self.data["cases"]
        if case_id in cases:
            case = cases[case_id]
            if sorted(candidates) != case["candidates"]:
                raise ValueError(f"The review file already has case '{case_id}' with other results "
                                 f"({', '.join(case['candidates'])}): use another case name or those layers")
            return case
        seed = int(secrets.randbits(32) if seed is None else seed)
        labels = labels_for(len(candidates))
        cases[case_id] = {
            "seed": seed, "candidates": sorted(candidates), "started": _now(), "updated": _now(),
            "scores": {lab: {**{k: None for k in CRITERIA_KEYS}, "comment": ""} for lab in labels},
        }
        self.save()
        return cases[case_id]

    def labels(self, case_id: str) -> list[str]:
        return list(self.data["cases"][case_id]["scores"])

    def mapping(self, case_id: str) -> dict[str, str]:
        """Label -> result name (used to display the case; written to disk only by :meth:`export`)."""
        case = self.data["cases"][case_id]
        return dict(zip(self.labels(case_id), blinded_order(case["candidates"], case["seed"])))

    def set_score(self, case_id: str, label: str, criterion: str, value: Optional[int]) -> None:
        if criterion not in CRITERIA_KEYS:
            raise ValueError(f"unknown criterion {criterion!r}")
        if value is not None and int(value) not in SCORES:
            raise ValueError(f"scores go from 1 to 5, got {value}")
        case = self.data["cases"][case_id]
        case["scores"][label][criterion] = None if value is None else int(value)
        case["updated"] = _now()
        self.save()

    def set_comment(self, case_id: str, label: str, text: str) -> None:
        case = self.data["cases"][case_id]
        case["scores"][label]["comment"] = str(text)
        case["updated"] = _now()
        self.save()

    def is_complete(self, case_id: str) -> bool:
        return all(s[k] is not None for s in self.data["cases"][case_id]["scores"].values() for k in CRITERIA_KEYS)

    # ------------------------------------------------------------------ files
    def _rows(self, unblinded: bool) -> list[dict]:
        rows = []
        for case_id, case in self.data["cases"].items():
            names = self.mapping(case_id) if unblinded else {}
            for label, s in case["scores"].items():
                row = {"case": case_id, "label": label}
                if unblinded:
                    row["layer"] = names[label]
                row.update({k: "" if s[k] is None else s[k] for k in CRITERIA_KEYS})
                row.update(comment=s.get("comment", ""), updated=case.get("updated", ""))
                rows.append(row)
        return rows

    @staticmethod
    def _csv_text(rows: list[dict], columns: list[str]) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def save(self) -> None:
        """Write the JSON and the (blinded) CSV atomically."""
        from workbench.io_utils import atomic_write_text

        self.data["updated"] = _now()
        atomic_write_text(self.path, json.dumps(self.data, indent=2))
        columns = ["case", "label", *CRITERIA_KEYS, "comment", "updated"]
        atomic_write_text(self.csv_path, self._csv_text(self._rows(False), columns))

    def export(self) -> tuple[Path, Path]:
        """Un-blind: write ``NAME_unblinded.json`` (label -> layer per case, with scores) and ``.csv``."""
        from workbench.io_utils import atomic_write_text

        stem = self.path.with_suffix("")
        json_path, csv_path = stem.with_name(stem.name + "_unblinded.json"), stem.with_name(stem.name + "_unblinded.csv")
        out = {"format": FORMAT + "-unblinded", "version": VERSION, "exported": _now(),
               "reviewer": self.data.get("reviewer", ""), "review_file": str(self.path), "cases": {}}
        for case_id, case in self.data["cases"].items():
            names = self.mapping(case_id)
            out["cases"][case_id] = {
                "seed": case["seed"], "labels": names, "complete": self.is_complete(case_id),
                "scores": {names[lab]: {"label": lab, **s} for lab, s in case["scores"].items()},
            }
        atomic_write_text(json_path, json.dumps(out, indent=2))
        columns = ["case", "label", "layer", *CRITERIA_KEYS, "comment", "updated"]
        atomic_write_text(csv_path, self._csv_text(self._rows(True), columns))
        self.data["exported"] = _now()
        self.save()
        return json_path, csv_path
