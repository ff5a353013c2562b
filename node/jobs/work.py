"""What runs in a worker: call the analyzer, give its outputs the job's UIDs, check them.

Both executors use :func:`execute_job` (the local process pool directly, a Dask worker
after fetching the inputs by WADO-RS). It returns a picklable :class:`JobOutcome`:

* ``rejected`` with the reason, when the analyzer raised :class:`UnsuitableInput`;
* otherwise the outputs as DICOM Part 10 bytes and the findings.

Any other exception propagates: the runner records a failed attempt and retries.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from analyzers.contract import AnalysisInput, EarlierOutput, UnsuitableInput
from node.jobs.ledger import output_uid

__all__ = [
    "JobOutcome",
    "OutputRejected",
    "assign_output_uids",
    "check_outputs",
    "cite_predecessors",
    "execute_job",
    "to_part10",
]

_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "PatientID")
_IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1379.1"
#: SOP Class UIDs of the Structured Report storage classes share this root (PS3.4 B.5).
_SR_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.88."


class OutputRejected(ValueError):
    """An analyzer output fails the checks before storing (the job fails with this message)."""


@dataclass
class JobOutcome:
    """What a worker hands back for one job."""

    analyzer_version: str
    rejected: str | None = None
    outputs: list[bytes] = field(default_factory=list)
    output_uids: list[str] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)
    compute_seconds: float = 0.0


def _walk(ds: Dataset) -> Iterator[Dataset]:
    yield ds
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def assign_output_uids(job_id: str, datasets: list[Dataset]) -> None:
    """Replace the SOP Instance and Series Instance UIDs the analyzer chose by ones derived
    from the job id, everywhere they occur (references between outputs stay intact).

    The n-th output gets ``output_uid(job_id, "instance", n)``; the n-th distinct series
    ``output_uid(job_id, "series", n)``. An analyzer that returns its outputs in a
    deterministic order (the contract asks for it) gets the same UIDs on every run.
    """
    mapping: dict[str, str] = {}
    for ordinal, ds in enumerate(datasets):
        mapping[str(ds.SOPInstanceUID)] = output_uid(job_id, "instance", ordinal)
    series = list(dict.fromkeys(str(ds.SeriesInstanceUID) for ds in datasets))
    for ordinal, uid in enumerate(series):
        mapping[uid] = output_uid(job_id, "series", ordinal)
    for ds in datasets:
        for item in _walk(ds):
            for element in item:
                if element.VR == "UI" and isinstance(element.value, str) and element.value in mapping:
                    element.value = mapping[element.value]
        if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _referenced_uids(ds: Dataset) -> set[str]:
    found: set[str] = set()
    for item in _walk(ds):
        for keyword in ("ReferencedSOPInstanceUID", "SeriesInstanceUID"):
            if keyword in item and item is not ds:
                found.add(str(item[keyword].value))
    return found


def _traced_to_inputs(datasets: list[Dataset], inputs: set[str]) -> set[str]:
    """SOP Instance UIDs of the outputs that reference an input series, directly or through
    the series of other such outputs (a derivation chain within the job)."""
    references = {str(ds.SOPInstanceUID): _referenced_uids(ds) for ds in datasets}
    reached = set(inputs)
    traced: set[str] = set()
    while True:
        found = {str(ds.SOPInstanceUID) for ds in datasets
                 if str(ds.SOPInstanceUID) not in traced and references[str(ds.SOPInstanceUID)] & reached}
        if not found:
            return traced
        traced |= found
        reached |= {str(ds.SeriesInstanceUID) for ds in datasets if str(ds.SOPInstanceUID) in found}


def check_outputs(datasets: Iterable[Dataset], job: AnalysisInput) -> None:
    """The checks every output passes before it is stored.

    Required attributes present; same patient and study as the input; a new series (not
    the input's); a nested reference (Referenced Series, Source Image, Current Requested
    Procedure Evidence) to at least one input series, directly or through another output
    of the same job that does (a SEG on a derived image series that references the input,
    see docs/viewer.md).

    Raises
    ------
    OutputRejected
        Naming the output and what is wrong.
    """
    inputs = {job.series.series_instance_uid}
    for series_list in job.related.values():
        inputs.update(s.series_instance_uid for s in series_list)
    patient = job.series.attributes.get("PatientID")
    datasets = list(datasets)
    traced = _traced_to_inputs(datasets, inputs)
    for n, ds in enumerate(datasets):
        name = f"output {n} ({ds.get('Modality', '?')} {ds.get('SOPInstanceUID', '?')})"
        missing = [k for k in _REQUIRED if not ds.get(k)]
        if missing:
            raise OutputRejected(f"{name}: required attribute(s) missing: {', '.join(missing)}")
        if str(ds.StudyInstanceUID) != job.series.study_instance_uid:
            raise OutputRejected(f"{name}: StudyInstanceUID {ds.StudyInstanceUID} is not the input study "
                                 f"{job.series.study_instance_uid}")
        if patient is not None and str(ds.PatientID) != str(patient):
            raise OutputRejected(f"{name}: PatientID {ds.PatientID!r} is not the input patient {patient!r}")
        if str(ds.SeriesInstanceUID) in inputs:
            raise OutputRejected(f"{name}: written into an input series; outputs need their own series")
        if str(ds.SOPInstanceUID) not in traced:
            raise OutputRejected(f"{name}: references none of its input series (evidence, source images or "
                                 "referenced series sequences)")


def cite_predecessors(datasets: Iterable[Dataset], superseded: Iterable[EarlierOutput]) -> int:
    """Put the superseded job's Structured Reports in each new SR's Predecessor Documents Sequence.

    PS3.3 C.17.2.3: SR documents whose content this document includes, with or
    without changes; here the report of the same analysis before new related
    input (a VFA series, a SEG) arrived. Hierarchical references (study → series →
    instance). Returns how many SR outputs cite predecessors.
    """
    earlier = [e for e in superseded if e.sop_class_uid.startswith(_SR_CLASS_ROOT)]
    if not earlier:
        return 0
    by_study: dict[str, dict[str, list[EarlierOutput]]] = {}
    for output in earlier:
        by_study.setdefault(output.study_instance_uid, {}).setdefault(output.series_instance_uid, []).append(output)
    cited = 0
    for ds in datasets:
        if not str(ds.get("SOPClassUID", "")).startswith(_SR_CLASS_ROOT):
            continue
        studies = []
        for study_uid, series in by_study.items():
            study = Dataset()
            study.StudyInstanceUID = study_uid
            study.ReferencedSeriesSequence = []
            for series_uid, outputs in series.items():
                item = Dataset()
                item.SeriesInstanceUID = series_uid
                item.ReferencedSOPSequence = []
                for output in outputs:
                    reference = Dataset()
                    reference.ReferencedSOPClassUID = output.sop_class_uid
                    reference.ReferencedSOPInstanceUID = output.sop_instance_uid
                    item.ReferencedSOPSequence.append(reference)
                study.ReferencedSeriesSequence.append(item)
            studies.append(study)
        ds.PredecessorDocumentsSequence = studies
        cited += 1
    return cited


def to_part10(ds: Dataset) -> bytes:
    """Encode a dataset as a Part 10 file (explicit VR little endian unless it says otherwise)."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(_IMPLEMENTATION_CLASS_UID)
    ds.file_meta = meta
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def execute_job(analyzer_name: str, job: AnalysisInput) -> JobOutcome:
    """Run one job in this process (called by both executors).

    Raises
    ------
    OutputRejected
        An output failed :func:`check_outputs`.
    """
    from analyzers.registry import load_analyzer

    analyzer = load_analyzer(analyzer_name)
    version = str(analyzer.version)
    started = time.perf_counter()
    try:
        result = analyzer.analyze(job)
    except UnsuitableInput as exc:
        return JobOutcome(analyzer_version=version, rejected=exc.reason,
                          compute_seconds=time.perf_counter() - started)
    compute = time.perf_counter() - started
    datasets = list(result.datasets)
    assign_output_uids(job.job_id, datasets)
    check_outputs(datasets, job)
    cite_predecessors(datasets, job.superseded)
    return JobOutcome(
        analyzer_version=version,
        outputs=[to_part10(ds) for ds in datasets],
        output_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        findings=dict(result.findings),
        compute_seconds=compute,
    )
