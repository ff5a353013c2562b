"""What every output shares: the algorithm's identity, the output series, deterministic UIDs, the notice."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from analyzers._shared.output_sources import OutputError
from analyzers._shared.volume import Volume
from sr_templates import codes as c

__all__ = ["MANUFACTURER", "Algorithm", "OutputSeries", "derive_uid"]

MANUFACTURER = "pacsnode"
"""Manufacturer of every output."""

# ContentDescription is LO (64 characters): the short form of NOT_FOR_CLINICAL_USE.
_CONTENT_NOTICE = "NOT FOR CLINICAL USE"
_SEG_SERIES_NUMBER = 9100
_PM_SERIES_NUMBER = 9200
#: Largest stored value of an integer-scaled map; the next one marks voxels without a value.
_INTEGER_TOP = 65534
_SR_SERIES_NUMBER = 9300


def _observer_name(algorithm_name: str) -> str:
    """The device's name with pacsnode once (some analyzers name themselves "pacsnode dsc")."""
    if algorithm_name.startswith(MANUFACTURER):
        return algorithm_name
    return f"{MANUFACTURER} {algorithm_name}"


def derive_uid(*parts: str) -> str:
    """A UID determined by ``parts`` (e.g. job id and role), under pydicom's root.

    The same parts give the same UID, so a re-run of a job writes objects with
    the same identity instead of duplicates.
    """
    if not parts or any(not isinstance(p, str) or not p for p in parts):
        raise OutputError("derive_uid needs one or more non-empty strings")
    # generate_uid hashes the concatenation: length prefixes keep ("ab", "c") and ("a", "bc") apart.
    return str(generate_uid(entropy_srcs=["pacsnode", *(f"{len(p)}:{p}" for p in parts)]))


@dataclass(frozen=True)
class Algorithm:
    """The analyzer that made an output (Algorithm Identification)."""

    name: str
    version: str
    family: Code = c.ARTIFICIAL_INTELLIGENCE
    parameters: tuple[str, ...] = ()
    """TID 4019 Algorithm Parameters of the SR (e.g. the probability model and its
    validation, :meth:`analyzers._shared.probability.ProbabilityCalibration.algorithm_parameters`)."""

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise OutputError("algorithm name and version must not be empty")

    def content_sequence(self) -> hd.AlgorithmIdentificationSequence:
        """The SEG/PM Algorithm Identification Sequence."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=self.family, version=self.version
        )

    def sr_template(self) -> hd.sr.AlgorithmIdentification:
        """The SR template TID 4019 Algorithm Identification."""
        return hd.sr.AlgorithmIdentification(
            name=self.name, version=self.version, parameters=list(self.parameters) or None
        )


@dataclass(frozen=True)
class OutputSeries:
    """Identity of one output object and its series.

    Leave the UIDs ``None`` to derive them from the source series and the
    description (deterministic as well); the node passes UIDs derived from the
    job id.
    """

    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    instance_number: int = 1

    @classmethod
    def for_job(
        cls,
        job_id: str,
        role: str,
        *,
        series_number: int | None = None,
        series_description: str | None = None,
    ) -> OutputSeries:
        """UIDs derived from the job id and the output's role (``"seg"``, ``"pm-ktrans"``).

        Re-running the job gives the same UIDs, so the PACS replaces instead of
        duplicating its results.
        """
        series_uid = derive_uid(job_id, role, "series")
        return cls(
            series_instance_uid=series_uid,
            sop_instance_uid=derive_uid(job_id, role, "instance", "1"),
            series_number=series_number,
            series_description=series_description,
        )

    def resolve(
        self, source: Volume, algorithm: Algorithm, kind: str, default_number: int
    ) -> tuple[str, str, int, str]:
        """Series UID, SOP UID, series number and description of the object."""
        # Some analyzers name themselves "pacsnode dsc", others "meningioma": one prefix either way.
        name = _observer_name(algorithm.name)
        description = self.series_description or f"{name} {kind}"
        description = description[:64]
        series_uid = self.series_instance_uid or derive_uid(
            source.series_instance_uid, algorithm.name, algorithm.version, kind, "series"
        )
        sop_uid = self.sop_instance_uid or derive_uid(series_uid, str(self.instance_number))
        number = self.series_number if self.series_number is not None else default_number
        return series_uid, sop_uid, number, description


def _uses_private_codes(dataset: Dataset) -> bool:
    """Whether any item of ``dataset`` (recursively) uses :data:`codes.PRIVATE_SCHEME`."""
    for element in dataset:
        if element.VR == "SQ":
            if any(_uses_private_codes(item) for item in element.value):
                return True
        elif element.keyword == "CodingSchemeDesignator" and element.value == c.PRIVATE_SCHEME:
            return True
    return False


def _stamp(dataset: Dataset, description: str, body_part: str | None) -> None:
    """Attributes all outputs share beyond what highdicom sets."""
    dataset.SeriesDescription = description
    if body_part:
        dataset.BodyPartExamined = body_part
    # SOP Common Module: a private coding scheme used in the object is identified in
    # its Coding Scheme Identification Sequence.
    if _uses_private_codes(dataset):
        existing = list(dataset.get("CodingSchemeIdentificationSequence", []))
        if all(item.CodingSchemeDesignator != c.PRIVATE_SCHEME for item in existing):
            dataset.CodingSchemeIdentificationSequence = [
                *existing, c.coding_scheme_identification()
            ]
