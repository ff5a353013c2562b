"""The interface between the node and an analyzer.

The node hands an analyzer an :class:`AnalysisInput` (file paths of the series
to analyze, related series of the same study by role, prior findings of the same
analyzer for the same patient, validated settings and a scratch folder) and
receives an :class:`AnalysisResult` (DICOM datasets to store and send, and a
JSON-able ``findings`` dict). An analyzer that cannot work on its input raises
:class:`UnsuitableInput` with a reason a person can act on; the job then ends
``rejected`` without retries.

Analyzers are pure: they import nothing from ``node``, open no socket and read
no index. The same input with the same model gives the same output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict
from pydicom import Dataset

__all__ = [
    "NOT_FOR_CLINICAL_USE",
    "AnalysisInput",
    "AnalysisResult",
    "Analyzer",
    "AnalyzerSettings",
    "EarlierOutput",
    "PriorFinding",
    "SeriesInput",
    "UnsuitableInput",
]

NOT_FOR_CLINICAL_USE = (
    "NOT FOR CLINICAL USE: research output of pacsnode; the model has not been "
    "validated at this site."
)


class UnsuitableInput(Exception):
    """The analyzer cannot work on this input; the reason tells a person what to change.

    Raising it ends the job as ``rejected`` (no retries). Use it for inputs that
    will never work (wrong sequence, too few time points, no brain in the field of
    view), not for transient faults.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AnalyzerSettings(BaseModel):
    """Base for an analyzer's own settings model (``settings`` of a route).

    Unknown keys are errors so that a typo in ``routes.toml`` is reported at
    start-up instead of being silently ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class SeriesInput:
    """One series as the node holds it.

    Attributes
    ----------
    series_instance_uid, study_instance_uid:
        The UIDs of the series and its study.
    files:
        Paths of the series' instance files (DICOM Part 10), in no particular order.
    attributes:
        Indexed attributes of the series (``SeriesDescription``, ``Modality``,
        ``PatientID``, ``StudyDate``, ...), keyed by DICOM keyword.
    """

    series_instance_uid: str
    study_instance_uid: str
    files: tuple[Path, ...]
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PriorFinding:
    """Findings of an earlier job of the same analyzer for the same patient."""

    job_id: str
    study_instance_uid: str
    series_instance_uid: str
    study_date: str | None
    findings: Mapping[str, Any]
    analyzer_version: str


@dataclass(frozen=True)
class EarlierOutput:
    """An output of the earlier job of the same series and route that this job supersedes.

    The node cites the earlier Structured Reports in the new ones' Predecessor
    Documents Sequence (PS3.3 C.17.2.3), so a viewer shows the report history.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class AnalysisInput:
    """Everything an analyzer may look at for one job.

    ``superseded`` lists the outputs of the earlier job this one replaces (a re-run
    with new related input); empty for a first run.
    """

    job_id: str
    series: SeriesInput
    related: Mapping[str, Sequence[SeriesInput]]
    priors: Sequence[PriorFinding]
    settings: AnalyzerSettings
    scratch: Path
    superseded: Sequence[EarlierOutput] = ()


@dataclass
class AnalysisResult:
    """What an analyzer produced for one job.

    Attributes
    ----------
    datasets:
        DICOM objects to store and send (SEG, Parametric Map, SR, ...). Each must
        reference its source instances and carry the source's patient and study.
    findings:
        A JSON-able summary; indexed by the node, shown by ``pacsnode status`` and
        given to later jobs of the same analyzer as priors.
    """

    datasets: list[Dataset] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Analyzer(Protocol):
    """What the node calls.

    ``needs`` maps a role to a route name of another series of the same study
    (``{"roi": "seg?"}``); a trailing ``?`` marks the role optional.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    needs: ClassVar[Mapping[str, str]]
    wants_priors: ClassVar[bool]
    settings_model: ClassVar[type[AnalyzerSettings]]

    def analyze(self, job: AnalysisInput) -> AnalysisResult:
        """Analyze one series; raise :class:`UnsuitableInput` when it cannot be done."""
        ...
