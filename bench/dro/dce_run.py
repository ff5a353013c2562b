"""Run the DCE reference object through the node and score what the PACS receives.

Shared by ``python -m bench.dce_dro`` and ``tests/test_dce_dro.py``: each *case* is one
study of the object (a noise level, with or without its VFA series), written as DICOM,
sent with storescu to a node with the shipped ``vfa``/``seg``/``dce`` routes, analysed,
delivered to Orthanc and read back from Orthanc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.dro.dce_object import DceObject
from bench.dro.dce_study import DceResults, StudyFiles, score_results, write_study
from bench.dro.dicomwrite import dro_uid
from bench.dro.harness import FinishedJob, pacs_chain, shipped_routes
from bench.dro.scoring import ParameterSummary, summarize, summary_row

__all__ = ["DceCase", "DceCaseResult", "markdown_table", "run_cases", "timing_line"]


@dataclass(frozen=True)
class DceCase:
    """One study of the object: its noise and whether its VFA series is sent."""

    label: str
    snr: float | None
    seed: int = 1
    with_vfa: bool = True


@dataclass(frozen=True)
class DceCaseResult:
    """A case's scores, its job and timings."""

    case: DceCase
    results: DceResults
    job: FinishedJob
    send_seconds: float

    @property
    def summary(self) -> dict[str, ParameterSummary]:
        """Per-parameter summary of the patch scores."""
        return summarize(self.results.scores)


def run_cases(obj: DceObject, cases: Sequence[DceCase], folder: Path, *,
              settings: dict[str, object] | None = None, timeout: float = 900.0) -> list[DceCaseResult]:
    """Write, send, analyse, deliver and score every case; one node and one Orthanc for all."""
    studies: list[tuple[DceCase, DceObject, StudyFiles]] = []
    for case in cases:
        noisy = obj.with_noise(case.snr, case.seed)
        files = write_study(noisy, folder / "studies" / case.label, name=f"dce dro {case.label}",
                            with_vfa=case.with_vfa)
        studies.append((case, noisy, files))
    routes = shipped_routes(("vfa", "seg", "dce"), {"dce": settings} if settings else None)
    with pacs_chain(folder / "chain", routes) as chain:
        sent = {}
        for case, _, files in studies:
            sent[case.label] = chain.send(files.all)
        jobs = {job.series_uid: job for job in chain.wait_for_jobs("dce", len(studies), timeout=timeout)}
        out = []
        for case, noisy, files in studies:
            job = jobs[dro_uid(files.study_uid, "series", 20)]
            outputs = chain.fetch(job.outputs, folder / "from-pacs" / case.label)
            out.append(DceCaseResult(case, score_results(noisy, outputs), job, sent[case.label]))
    return out


def markdown_table(results: Sequence[DceCaseResult]) -> str:
    """The accuracy table of docs/analyzers/dce.md."""
    lines = ["| case | Ktrans in tolerance | ve | vp | R1 | AIF peak / area error | AIF and T10 used |",
             "|---|---|---|---|---|---|---|"]
    for item in results:
        summary = item.summary
        cells = [summary_row(summary[p]) if p in summary else "(no map)" for p in ("ktrans", "ve", "vp", "r1")]
        aif = item.results.aif
        aif_cell = "n/a" if aif is None else f"{100 * aif.peak_error:+.1f} % / {100 * aif.area_error:+.1f} %"
        findings = item.job.findings
        blood = findings["aif"].get("blood_t10_s")
        used = (f"{findings['aif']['source']} AIF" + (f", blood T10 {blood} s" if blood else "")
                + f"; tissue T10 {findings['t10_source'].split(' (')[0]}")
        lines.append(f"| {item.case.label} | " + " | ".join(cells) + f" | {aif_cell} | {used} |")
    return "\n".join(lines)


def timing_line(results: Sequence[DceCaseResult]) -> str:
    """Send and compute seconds per case."""
    parts = [f"{r.case.label}: storescu {r.send_seconds:.1f} s, analysis "
             f"{r.job.compute_seconds or float('nan'):.1f} s" for r in results]
    return "; ".join(parts)
