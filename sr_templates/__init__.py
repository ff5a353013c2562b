"""Declarative content of pacsnode's reports: what each analyzer says, in codes.

The structure of the outputs (SEG, Parametric Map, TID 1500 Measurement Report)
is built by :mod:`analyzers._shared.outputs`; this package only holds the data
that fills it: the coded concept and UCUM unit of every quantity, the segment
classes, the diagnoses and finding sites, per analyzer (one module each:
``dsc``, ``dce``, ``meningioma``, ``brainmets``, ``spine``, ``qc``). Codes come
from :mod:`sr_templates.codes`.

Use :func:`report_template` to get an analyzer's :class:`ReportTemplate`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from pydicom.sr.coding import Code

__all__ = [
    "ANALYZERS",
    "Quantity",
    "ReportTemplate",
    "SegmentClass",
    "TemplateError",
    "by_key",
    "report_template",
]

ANALYZERS = ("dsc", "dce", "meningioma", "brainmets", "spine", "qc")
"""Analyzers that have a report template module in this package."""


class TemplateError(ValueError):
    """A report template is missing or inconsistent."""


@dataclass(frozen=True)
class Quantity:
    """A measurable quantity: its concept, unit and the labels a viewer shows.

    Attributes
    ----------
    key:
        Name used in code and in the analyzers' ``findings`` (``"ktrans"``).
    concept:
        Coded concept name (e.g. DCM 126312 "Ktrans").
    unit:
        UCUM unit code.
    label:
        Short label, at most 16 characters (a Parametric Map's LUT Label).
    description:
        One line for a person (a Parametric Map's LUT Explanation, at most 64
        characters).
    """

    key: str
    concept: Code
    unit: Code
    label: str
    description: str

    def __post_init__(self) -> None:
        if not self.key or not self.key.isidentifier():
            raise TemplateError(f"quantity key {self.key!r} is not an identifier")
        if not 0 < len(self.label) <= 16:
            raise TemplateError(f"quantity label {self.label!r} must have 1-16 characters")
        if len(self.description) > 64:
            raise TemplateError(f"description of {self.key} is longer than 64 characters")
        if self.unit.scheme_designator != "UCUM":
            raise TemplateError(f"unit of {self.key} is not a UCUM code: {self.unit}")


@dataclass(frozen=True)
class SegmentClass:
    """A class of a binary SEG: label and segmented property category/type."""

    key: str
    label: str
    category: Code
    property_type: Code
    anatomic_region: Code | None = None

    def __post_init__(self) -> None:
        if not 0 < len(self.label) <= 64:
            raise TemplateError(f"segment label {self.label!r} must have 1-64 characters")


@dataclass(frozen=True)
class ReportTemplate:
    """What one analyzer reports.

    Attributes
    ----------
    analyzer:
        Analyzer name (``"dsc"``).
    title:
        Document title of the TID 1500 report (CID 7021).
    procedure:
        Procedure reported (CID 100).
    series_description:
        Stem of the SeriesDescription of the analyzer's outputs.
    finding_type:
        Default coded finding of a lesion measurement group.
    finding_site:
        Default finding site of a lesion, if any.
    quantities:
        Reported quantities by key.
    diagnoses:
        Diagnoses the analyzer can state (as an Impression), by key.
    segment_classes:
        Classes of the analyzer's SEG, by key.
    methods:
        Coded methods (e.g. one classifier per MR sequence), by key.
    body_part:
        BodyPartExamined of image outputs (``"BRAIN"``, ``"HEAD"``, ``"SPINE"``).
    """

    analyzer: str
    title: Code
    procedure: Code
    series_description: str
    finding_type: Code
    finding_site: Code | None = None
    quantities: Mapping[str, Quantity] = field(default_factory=lambda: MappingProxyType({}))
    diagnoses: Mapping[str, Code] = field(default_factory=lambda: MappingProxyType({}))
    segment_classes: Mapping[str, SegmentClass] = field(
        default_factory=lambda: MappingProxyType({})
    )
    methods: Mapping[str, Code] = field(default_factory=lambda: MappingProxyType({}))
    body_part: str = "BRAIN"

    def __post_init__(self) -> None:
        for key, quantity in self.quantities.items():
            if key != quantity.key:
                raise TemplateError(f"{self.analyzer}: quantity {quantity.key} filed as {key}")
        for key, segment_class in self.segment_classes.items():
            if key != segment_class.key:
                raise TemplateError(f"{self.analyzer}: segment {segment_class.key} filed as {key}")
        if len(self.series_description) > 40:
            # Leaves room for a suffix such as " SEG" or " Ktrans" within LO (64 chars).
            raise TemplateError(f"{self.analyzer}: series description stem is too long")

    def quantity(self, key: str) -> Quantity:
        """The quantity ``key``; :class:`TemplateError` names the known keys otherwise."""
        try:
            return self.quantities[key]
        except KeyError:
            raise TemplateError(
                f"{self.analyzer} has no quantity {key!r}; known: {sorted(self.quantities)}"
            ) from None

    def diagnosis(self, key: str) -> Code:
        """The diagnosis ``key``; :class:`TemplateError` names the known keys otherwise."""
        try:
            return self.diagnoses[key]
        except KeyError:
            raise TemplateError(
                f"{self.analyzer} has no diagnosis {key!r}; known: {sorted(self.diagnoses)}"
            ) from None


_Keyed = TypeVar("_Keyed", Quantity, SegmentClass)


def report_template(analyzer: str) -> ReportTemplate:
    """The :class:`ReportTemplate` of ``analyzer`` (``TEMPLATE`` of its module)."""
    if analyzer not in ANALYZERS:
        raise TemplateError(f"no report template for {analyzer!r}; known: {list(ANALYZERS)}")
    module = importlib.import_module(f"{__name__}.{analyzer}")
    template = module.TEMPLATE
    if not isinstance(template, ReportTemplate):
        raise TemplateError(f"{module.__name__}.TEMPLATE is not a ReportTemplate")
    return template


def by_key(*items: _Keyed) -> MappingProxyType[str, _Keyed]:
    """Read-only mapping of quantities or segment classes by their ``key``."""
    mapping = {item.key: item for item in items}
    if len(mapping) != len(items):
        raise TemplateError("duplicate keys in template items")
    return MappingProxyType(mapping)
