"""Routing rules: which analyzers see a series, decided from its attributes alone.

``config/routes.toml`` holds ordered ``[[route]]`` tables::

    [[route]]
    name = "dsc"                       # unique; other analyzers' ``needs`` refer to it
    analyzer = "dsc"                   # entry point in ``pacsnode.analyzers``; omit for a
                                       # route that only names series (e.g. "vfa")
    match = { SeriesDescription = "ep2d_perf|(?<![a-z])dsc(?![a-z])" }
    not_match = { ImageType = "DERIVED" }
    settings = { }                     # validated by the analyzer's own settings model
    send_to = ["pacs"]                 # destination names
    stable_after = 20                  # seconds of quiet that complete the series (optional)
    retention_days = 90                # remove its series (and results) after this many days
                                       # (optional; default [storage] retention_days)
    on_late = "ignore"                 # or "reanalyze"
    exclusive = true                   # see below
    enabled = true

Matching is pure (no I/O): every key of ``match`` names a DICOM attribute of the
series (``SeriesDescription``, ``ProtocolName``, ``Modality``, ``ImageType``,
``MRAcquisitionType``, ``Manufacturer``, ...); its value is a regular expression
(or a list of them, any of which may match) searched case-insensitively in the
attribute's value (multi-valued attributes as ``A\\B\\C``). All ``match`` keys must
match, an absent attribute does not match, and any matching ``not_match`` key
excludes the route.

Routes are tried in file order. Among ``exclusive`` routes (the default) the first
match wins; a route with ``exclusive = false`` (the ``qc`` route) applies in
addition to whatever exclusive route matched.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydicom.datadict import keyword_dict

from analyzers.contract import Analyzer, AnalyzerSettings

__all__ = [
    "Route",
    "RouteDecision",
    "RouteError",
    "RouteTable",
    "load_routes",
    "parse_routes",
]

log = logging.getLogger(__name__)

OnLate = Literal["ignore", "reanalyze"]
_ROUTE_KEYS = {"name", "analyzer", "match", "not_match", "settings", "send_to", "stable_after",
               "on_late", "exclusive", "enabled", "description", "retention_days"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RouteError(ValueError):
    """``routes.toml`` is wrong; the message names the file, the route and the key."""


def _attribute_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Route:
    """One ``[[route]]`` rule.

    Parameters
    ----------
    name:
        Unique name, used by ``needs`` of analyzers and in the job ledger.
    analyzer:
        The analyzer's entry-point name, or ``None`` for a route that only labels series.
    match, not_match:
        Attribute keyword → compiled case-insensitive patterns.
    settings:
        The raw ``settings`` table (validated later against the analyzer's model).
    send_to:
        Destination names the outputs go to.
    stable_after:
        Quiet seconds that complete the series; ``None`` uses ``[routing] stable_after``.
    on_late:
        What an instance arriving after completion does: ``ignore`` (log) or ``reanalyze``.
    exclusive:
        Whether the route takes part in "first exclusive match wins".
    enabled:
        A disabled route never matches.
    retention_days:
        Days its series and their results are kept (``node.ops.retention``); ``None`` uses
        ``[storage] retention_days``.
    """

    name: str
    analyzer: str | None
    match: Mapping[str, tuple[re.Pattern[str], ...]]
    not_match: Mapping[str, tuple[re.Pattern[str], ...]] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    send_to: tuple[str, ...] = ()
    stable_after: float | None = None
    on_late: OnLate = "ignore"
    exclusive: bool = True
    enabled: bool = True
    description: str = ""
    retention_days: int | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise RouteError(f"route name {self.name!r}: use 1-64 letters, digits, '_', '-' or '.'")
        if not self.match:
            raise RouteError(f"route {self.name!r}: match needs at least one attribute")
        if self.stable_after is not None and self.stable_after <= 0:
            raise RouteError(f"route {self.name!r}: stable_after must be > 0 seconds")
        if self.on_late not in ("ignore", "reanalyze"):
            raise RouteError(f"route {self.name!r}: on_late is \"ignore\" or \"reanalyze\"")
        if self.retention_days is not None and (isinstance(self.retention_days, bool)
                                                or not isinstance(self.retention_days, int)
                                                or self.retention_days < 0):
            raise RouteError(f"route {self.name!r}: retention_days is a whole number of days >= 0")

    def explain(self, attributes: Mapping[str, Any]) -> tuple[bool, list[str]]:
        """Whether the route matches the attributes, and one line of reason per key."""
        if not self.enabled:
            return False, ["route is disabled (enabled = false)"]
        reasons: list[str] = []
        matched = True
        for keyword, patterns in self.match.items():
            text = _attribute_text(attributes.get(keyword))
            if text is None:
                reasons.append(f"{keyword} is absent")
                matched = False
                continue
            hit = next((p for p in patterns if p.search(text)), None)
            if hit is None:
                reasons.append(f"{keyword} {text!r} matches none of "
                               + ", ".join(repr(p.pattern) for p in patterns))
                matched = False
            else:
                found = hit.search(text)
                reasons.append(f"{keyword} {text!r} matches {hit.pattern!r}"
                               + (f" (at {found.group(0)!r})" if found and found.group(0) else ""))
        for keyword, patterns in self.not_match.items():
            text = _attribute_text(attributes.get(keyword))
            if text is None:
                continue
            hit = next((p for p in patterns if p.search(text)), None)
            if hit is not None:
                reasons.append(f"excluded: {keyword} {text!r} matches not_match {hit.pattern!r}")
                matched = False
        return matched, reasons

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        """Whether the route applies to a series with these attributes."""
        return self.explain(attributes)[0]


@dataclass(frozen=True)
class RouteDecision:
    """How one route fared against one series."""

    route: Route
    matched: bool
    selected: bool
    reasons: tuple[str, ...]


@dataclass
class RouteTable:
    """The ordered routes of a ``routes.toml`` and which of them can run here.

    ``unavailable`` maps a route name to why it cannot run (analyzer not installed);
    such a route still labels series (for ``needs``) but makes no jobs.
    """

    routes: tuple[Route, ...]
    source: str = "routes"
    unavailable: dict[str, str] = field(default_factory=dict)
    settings: dict[str, AnalyzerSettings] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    needs: dict[str, dict[str, str]] = field(default_factory=dict)
    wants_priors: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [r.name for r in self.routes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RouteError(f"{self.source}: route names must be unique: {', '.join(duplicates)}")

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)

    def decide(self, attributes: Mapping[str, Any]) -> list[RouteDecision]:
        """Every route with whether it matched and whether it was selected."""
        decisions = []
        exclusive_taken = False
        for route in self.routes:
            matched, reasons = route.explain(attributes)
            selected = matched and (not route.exclusive or not exclusive_taken)
            if matched and route.exclusive and exclusive_taken:
                reasons = [*reasons, "an earlier exclusive route already matched"]
            if selected and route.exclusive:
                exclusive_taken = True
            decisions.append(RouteDecision(route, matched, selected, tuple(reasons)))
        return decisions

    def select(self, attributes: Mapping[str, Any]) -> list[Route]:
        """The routes a series with these attributes takes (labels included)."""
        return [d.route for d in self.decide(attributes) if d.selected]

    def runnable(self, attributes: Mapping[str, Any]) -> list[Route]:
        """The selected routes that make jobs: they name an installed analyzer."""
        return [r for r in self.select(attributes)
                if r.analyzer is not None and r.name not in self.unavailable]

    def validate(
        self,
        load: Callable[[str], Analyzer],
        destinations: Iterable[str] | None = None,
        missing: type[Exception] = LookupError,
    ) -> list[str]:
        """Check every route against the installed analyzers and the destinations.

        Settings of an installed analyzer are validated by its ``settings_model``
        (errors raise :class:`RouteError`). A route whose analyzer is not installed
        is recorded in :attr:`unavailable` and reported in the returned warnings;
        its series stay un-routed. An unknown destination is an error.
        """
        warnings: list[str] = []
        known = set(destinations) if destinations is not None else None
        for route in self.routes:
            if known is not None:
                unknown = [d for d in route.send_to if d not in known]
                if unknown:
                    raise RouteError(
                        f"{self.source}: route {route.name!r}: send_to names unknown destination(s) "
                        f"{', '.join(unknown)}; configured: {', '.join(sorted(known)) or 'none'} "
                        "([[destinations]] in node.toml)")
            if route.analyzer is None:
                continue
            try:
                analyzer = load(route.analyzer)
            except missing:
                reason = f"analyzer {route.analyzer!r} is not installed"
                self.unavailable[route.name] = reason
                warnings.append(f"route {route.name!r}: {reason}; its series stay un-routed")
                continue
            model = getattr(analyzer, "settings_model", AnalyzerSettings)
            try:
                self.settings[route.name] = model.model_validate(dict(route.settings))
            except ValueError as exc:
                raise RouteError(f"{self.source}: route {route.name!r}: settings invalid for "
                                 f"analyzer {route.analyzer!r}:\n{exc}") from exc
            self.versions[route.name] = str(getattr(analyzer, "version", "?"))
            self.needs[route.name] = dict(getattr(analyzer, "needs", {}) or {})
            self.wants_priors[route.name] = bool(getattr(analyzer, "wants_priors", False))
            for role, wanted in self.needs[route.name].items():
                if self.route(wanted.rstrip("?")) is None:
                    message = (f"route {route.name!r}: analyzer {route.analyzer!r} needs role "
                               f"{role!r} from route {wanted.rstrip('?')!r}, which {self.source} "
                               "does not define")
                    if wanted.endswith("?"):
                        warnings.append(message + " (optional role: it stays empty)")
                    else:
                        raise RouteError(message)
        return warnings


def _patterns(route: str, key: str, keyword: str, value: Any, source: str) -> tuple[re.Pattern[str], ...]:
    if keyword not in keyword_dict:
        raise RouteError(f"{source}: route {route!r}: {key}.{keyword} is not a DICOM attribute keyword "
                         "(e.g. SeriesDescription, ProtocolName, Modality, ImageType)")
    items = value if isinstance(value, list) else [value]
    compiled = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise RouteError(f"{source}: route {route!r}: {key}.{keyword} must be a regular expression "
                             "string or a list of them")
        try:
            compiled.append(re.compile(item, re.IGNORECASE))
        except re.error as exc:
            raise RouteError(f"{source}: route {route!r}: {key}.{keyword} = {item!r} is not a valid "
                             f"regular expression: {exc}") from exc
    return tuple(compiled)


def _route_from_table(table: Mapping[str, Any], position: int, source: str) -> Route:
    name = table.get("name")
    if not isinstance(name, str):
        raise RouteError(f"{source}: route #{position + 1} needs name = \"...\"")
    extra = sorted(set(table) - _ROUTE_KEYS)
    if extra:
        raise RouteError(f"{source}: route {name!r}: unknown key(s) {', '.join(extra)}; allowed: "
                         + ", ".join(sorted(_ROUTE_KEYS)))
    for key in ("match", "not_match", "settings"):
        if not isinstance(table.get(key, {}), dict):
            raise RouteError(f"{source}: route {name!r}: {key} must be a table")
    match = {k: _patterns(name, "match", k, v, source) for k, v in table.get("match", {}).items()}
    not_match = {k: _patterns(name, "not_match", k, v, source)
                 for k, v in table.get("not_match", {}).items()}
    send_to = table.get("send_to", [])
    if isinstance(send_to, str):
        send_to = [send_to]
    if not isinstance(send_to, list) or not all(isinstance(d, str) for d in send_to):
        raise RouteError(f"{source}: route {name!r}: send_to is a list of destination names")
    analyzer = table.get("analyzer")
    if analyzer is not None and not isinstance(analyzer, str):
        raise RouteError(f"{source}: route {name!r}: analyzer is an analyzer name string")
    stable_after = table.get("stable_after")
    if stable_after is not None and not isinstance(stable_after, int | float):
        raise RouteError(f"{source}: route {name!r}: stable_after is a number of seconds")
    for flag in ("exclusive", "enabled"):
        if not isinstance(table.get(flag, True), bool):
            raise RouteError(f"{source}: route {name!r}: {flag} is true or false")
    try:
        return Route(
            name=name,
            analyzer=analyzer,
            match=match,
            not_match=not_match,
            settings=dict(table.get("settings", {})),
            send_to=tuple(send_to),
            stable_after=float(stable_after) if stable_after is not None else None,
            on_late=table.get("on_late", "ignore"),
            exclusive=table.get("exclusive", True),
            enabled=table.get("enabled", True),
            description=str(table.get("description", "")),
            retention_days=table.get("retention_days"),
        )
    except RouteError as exc:
        raise RouteError(f"{source}: {exc}") from None


def parse_routes(text: str, source: str = "routes.toml") -> RouteTable:
    """Parse the TOML text of a routes file (no analyzer lookup)."""
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RouteError(f"{source}: not valid TOML: {exc}") from exc
    extra = sorted(set(tree) - {"route"})
    if extra:
        raise RouteError(f"{source}: unknown top-level key(s) {', '.join(extra)}; routes are [[route]] tables")
    tables: Sequence[Any] = tree.get("route", [])
    if not isinstance(tables, list):
        raise RouteError(f"{source}: write each route as a [[route]] table")
    return RouteTable(tuple(_route_from_table(t, i, source) for i, t in enumerate(tables)), source)


def load_routes(path: Path | str) -> RouteTable:
    """Read ``routes.toml``; a missing file gives an empty table and a warning."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.warning("%s: no routes file; no series will be analyzed ([routing] routes)", file)
        return RouteTable((), str(file))
    return parse_routes(text, str(file))
