"""Cohorts of phantom cases: per-case random streams, identities, folders and ``labels.csv``."""

from __future__ import annotations

import csv
import datetime as dt
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from analyzers.phantoms.anatomy import load_template
from analyzers.phantoms.dicomio import make_uid, write_case
from analyzers.phantoms.model import PhantomCase, PhantomError, Study
from analyzers.phantoms.positions import reposition

__all__ = ["CaseContext", "Progress", "case_context", "generate_cohort"]


@dataclass(frozen=True)
class CaseContext:
    """What makes a case unique and reproducible: its random stream and identifiers."""

    phantom: str
    seed: int
    case_index: int
    rng: np.random.Generator

    @property
    def patient_id(self) -> str:
        return f"PH{self.phantom.upper()}{self.seed:03d}{self.case_index:04d}"

    def uid(self, *parts: object) -> str:
        """A UID unique to this phantom, seed and case."""
        return make_uid(self.phantom, self.seed, self.case_index, *parts)

    def study(self, tag: str, date: dt.date, description: str) -> Study:
        """A study of this patient; ``tag`` distinguishes several studies of one case."""
        return Study(
            study_uid=self.uid("study", tag),
            date=date.strftime("%Y%m%d"),
            time_s=float(self.rng.uniform(7.5, 17.5) * 3600.0),
            accession=f"A{zlib.crc32(self.uid('acc', tag).encode()) % 10**8:08d}",
            description=description,
            frame_of_reference_uid=self.uid("for", tag),
            study_id=str(1 + self.case_index),
        )

    def random_date(self) -> dt.date:
        return dt.date(2023, 1, 2) + dt.timedelta(days=int(self.rng.integers(0, 700)))


def case_context(phantom: str, seed: int, case_index: int) -> CaseContext:
    """The context of case ``case_index`` (0-based) of ``phantom`` for ``seed``."""
    if seed < 0 or case_index < 0:
        raise PhantomError("seed and case index must be non-negative")
    stream = np.random.default_rng([seed, case_index, zlib.crc32(phantom.encode())])
    return CaseContext(phantom=phantom, seed=seed, case_index=case_index, rng=stream)


class Progress:
    """A one-line progress bar on a terminal (or when forced); silent otherwise."""

    def __init__(self, total: int, label: str, enabled: bool | None = None, stream: TextIO | None = None):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.start = time.monotonic()

    def advance(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {rate:.2f} case/s"
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _write_one(args: tuple[Callable[..., PhantomCase], str, int, int, Path, dict[str, Any], str]
               ) -> list[dict[str, Any]]:
    simulate, _name, seed, index, root, options, position = args
    case = reposition(simulate(seed=seed, case_index=index, **options), position)
    write_case(case, root / f"case-{index + 1:04d}")
    return case.label_rows


def generate_cohort(
    name: str,
    simulate: Callable[..., PhantomCase],
    out: Path,
    seed: int,
    cases: int,
    options: dict[str, Any],
    progress: bool | None = None,
    workers: int | None = 1,
) -> Path:
    """Simulate and write ``cases`` cases under ``out/name`` with a cohort ``labels.csv``.

    Parameters
    ----------
    simulate:
        ``simulate(seed=..., case_index=..., **options) -> PhantomCase``; must be
        a module-level function when ``workers > 1`` (it is pickled).
    progress:
        Show a progress bar; ``None`` shows it only on a terminal.
    workers:
        Processes writing cases in parallel (1 writes in this process); None uses
        one per CPU core, at most one per case.

    ``options`` may hold ``patient_position`` (``"HFS"`` default, ``"HFP"``,
    ``"HFDL"``, ...): every series is written as the scanner writes it for a
    patient lying so (:func:`analyzers.phantoms.positions.reposition`).
    """
    options = dict(options)
    position = str(options.pop("patient_position", None) or "HFS")
    if workers is None:
        workers = max(1, min(cases, os.cpu_count() or 1))
    if cases < 1:
        raise PhantomError(f"cases must be at least 1, got {cases}")
    if workers < 1:
        raise PhantomError(f"workers must be at least 1, got {workers}")
    root = Path(out) / name
    root.mkdir(parents=True, exist_ok=True)
    bar = Progress(cases, f"phantom {name}", enabled=progress)
    jobs = [(simulate, name, seed, i, root, options, position) for i in range(cases)]
    rows: list[dict[str, Any]] = []
    results: Iterable[list[dict[str, Any]]]
    if workers == 1:
        results = map(_write_one, jobs)
        for case_rows in results:
            rows.extend(case_rows)
            bar.advance()
    else:
        # Load the template before the pool forks so every worker shares it instead of loading its own.
        load_template()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for case_rows in pool.map(_write_one, jobs):
                rows.extend(case_rows)
                bar.advance()
    _write_labels(root / "labels.csv", rows)
    return root


def _write_labels(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        for key in row:
            if key not in fields:
                fields.append(key)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
