"""Benchmark: the DSC reference object through storescu → node → Orthanc, maps scored from the PACS.

Every case of :mod:`bench.dro.dsc_object` (leak none / T1-dominant / T2*-dominant at
each SNR, and noise-free; with the tissue blood's relaxivity equal to the arterial
blood's, and with the literature tissue relaxivity) is written as its own study and
sent with dcmtk ``storescu``
to a ``pacsnode serve`` whose routes are the shipped ``dsc`` route (oSVD, the default)
plus a second, non-exclusive route that runs the same analyzer with
``method = "bayes"``. The node delivers both jobs' outputs to Orthanc; the Parametric
Maps are fetched from Orthanc and every patch is scored (:mod:`bench.dro.dsc_study`).

Run: ``.venv/bin/python -m bench.dro.dsc_bench`` (``--help`` for options). It prints
one Markdown table per method (rows: case; columns: CBV, CBF, MTT in tolerance, by
residue), the negative voxels of the delivered maps, and the compute time per job.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from pydicom import dcmread

from bench.dro.dsc_object import LEAKS, TISSUE_RELAXIVITIES, DscDroCase, make_case
from bench.dro.dsc_study import CaseResults, case_name, score_case, write_case
from bench.dro.harness import FinishedJob, pacs_chain, peers_missing, shipped_routes
from bench.dro.scoring import summarize, summary_row

__all__ = ["ROUTES", "bayes_route", "main", "run_cases"]

#: The routes under test: the shipped oSVD route, then the Bayesian one.
ROUTES = ("dsc", "dsc_bayes")


def bayes_route() -> str:
    """A second ``dsc`` route, not exclusive, with the Bayesian method and its own series numbers."""
    return ('[[route]]\nname = "dsc_bayes"\nanalyzer = "dsc"\nexclusive = false\n'
            "match = { SeriesDescription = 'ep2d_perf' }\nsend_to = [\"pacs\"]\n"
            'settings = { method = "bayes", series_number = 9600 }\n')


def run_cases(cases: list[DscDroCase], folder: Path, timeout: float = 900.0
              ) -> dict[str, list[tuple[DscDroCase, CaseResults, FinishedJob]]]:
    """Send every case through the chain; the scored results per route, in case order."""
    files_by_case = []
    for index, case in enumerate(cases):
        files_by_case.append(write_case(case, folder / "studies" / f"case{index:02d}"))
    routes = shipped_routes(("seg", "dsc")) + "\n" + bayes_route()
    results: dict[str, list[tuple[DscDroCase, CaseResults, FinishedJob]]] = {r: [] for r in ROUTES}
    with pacs_chain(folder / "chain", routes, stable_after=5.0) as chain:
        for files in files_by_case:
            chain.send(files)
        for route in ROUTES:
            jobs = {job.series_uid: job for job in chain.wait_for_jobs(route, len(cases), timeout=timeout)}
            for index, (case, files) in enumerate(zip(cases, files_by_case, strict=True)):
                series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
                job = jobs[series_uid]
                outputs = chain.fetch(job.outputs, folder / "from-pacs" / route / f"case{index:02d}")
                results[route].append((case, score_case(case, outputs), job))
    return results


def _table(rows: list[tuple[DscDroCase, CaseResults, FinishedJob]]) -> list[str]:
    lines = ["| case | CBV exp / gamma | CBF exp / gamma | MTT exp / gamma | negative voxels | "
             "empty voxels | job s |", "|---|---|---|---|---|---|---|"]
    for case, result, job in rows:
        cells = []
        for parameter in ("cbv", "cbf", "mtt"):
            parts = []
            for residue in ("exponential", "gamma"):
                rows_p = [s for s in result.scores if s.parameter == parameter and s.patch.startswith(residue)]
                parts.append(f"{sum(s.in_tolerance for s in rows_p)}/{len(rows_p)}")
            cells.append(" / ".join(parts))
        negative = sum(result.negative_voxels.values())
        seconds = f"{job.compute_seconds:.1f}" if job.compute_seconds is not None else "-"
        lines.append(f"| {case_name(case)} | {' | '.join(cells)} | {negative} | {result.empty_voxels} "
                     f"| {seconds} |")
    return lines


def _totals(rows: list[tuple[DscDroCase, CaseResults, FinishedJob]]) -> list[str]:
    lines = []
    for relaxivity in TISSUE_RELAXIVITIES:
        for leak in LEAKS:
            scores = [s for case, result, _ in rows
                      if case.leak == leak and case.tissue_relaxivity == relaxivity for s in result.scores]
            if not scores:
                continue
            summary = summarize(scores)
            lines.append(f"- {relaxivity} tissue relaxivity, leak {leak}: " + "; ".join(
                f"{parameter.upper()} {summary_row(summary[parameter])}" for parameter in ("cbv", "cbf", "mtt")
                if parameter in summary))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snr", type=float, nargs="+", default=[30.0, 50.0, 100.0])
    parser.add_argument("--noise-free", action="store_true", help="also the noise-free cases")
    parser.add_argument("--leak", choices=LEAKS, nargs="+", default=list(LEAKS))
    parser.add_argument("--tissue-relaxivity", choices=TISSUE_RELAXIVITIES, nargs="+",
                        default=list(TISSUE_RELAXIVITIES),
                        help="the object's tissue relaxivity: the arterial blood's, or the literature's "
                             "(grey matter drops the signal by 40 %%); both by default")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="keep the studies and results here")
    args = parser.parse_args(argv)
    reason = peers_missing()
    if reason:
        print(f"cannot run the chain: {reason}")
        return 2
    snrs: list[float | None] = [*args.snr, *([None] if args.noise_free else [])]
    conditions = [(leak, snr) for leak in args.leak for snr in snrs]
    cases = [make_case(leak, snr, seed=args.seed + i, tissue_relaxivity=relaxivity)
             for relaxivity in args.tissue_relaxivity for i, (leak, snr) in enumerate(conditions)]
    folder = args.out or Path(tempfile.mkdtemp(prefix="dsc-dro-"))
    started = time.monotonic()
    try:
        results = run_cases(cases, folder, timeout=max(900.0, 90.0 * len(cases)))
    finally:
        if args.out is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"DSC reference object: {len(cases)} cases, 32 patches each (16 exponential, 16 gamma "
          f"residue), through storescu -> node -> Orthanc in {time.monotonic() - started:.0f} s; "
          "CBV and CBF of literature-relaxivity cases scored after dividing by the relaxivity ratio "
          f"({', '.join(sorted({f'{c.relaxivity_ratio:.3f}' for c in cases}))})")
    for route, name in zip(ROUTES, ("oSVD (default)", "Bayesian (method = \"bayes\")"), strict=True):
        print(f"\n### {name}\n")
        print("\n".join(_table(results[route])))
        print()
        print("\n".join(_totals(results[route])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
