"""Attribute matching as PS3.4 C.2.2.2 defines it, turned into SQL over the index.

Shared by C-FIND and QIDO-RS so both protocols match the same way:

* universal matching: an empty value (or ``*``) matches everything;
* single value matching: exact, case-sensitive, except PN which matches
  case-insensitively with Unicode case folding, by component group (node.storage.matching);
* empty value matching: ``""`` (two double quotes) matches an empty or absent value, e.g. the
  instances stored without a PatientID;
* wildcard matching: ``*`` and ``?`` in any value but UI, dates, times and numbers;
* list of UID matching: ``uid1\\uid2``;
* range matching for DA, TM and DT: ``20200101-20201231``, ``-2020``, ``2020-``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.errors import NodeError
from node.storage.attributes import DERIVED, LEVELS, Attribute, Level, by_keyword

__all__ = ["INT64_MAX", "InvalidQuery", "Query", "build_sql", "parse_count"]

#: The largest integer SQLite stores (and so the largest limit, offset or number matched).
INT64_MAX = 2**63 - 1

_ALIAS = {"patients": "p", "studies": "st", "series": "se", "instances": "i"}
_LEVEL_TABLE = {"PATIENT": "patients", "STUDY": "studies", "SERIES": "series", "IMAGE": "instances"}
_NUMERIC = {"IS", "US", "UL", "SS", "SL", "DS", "FD", "FL"}
# ASCII digits only: str.isdigit() and int() also take superscripts and other scripts' digits.
_COUNT = re.compile(r"[0-9]{1,19}")
_SIGNED = re.compile(r"[+-]?[0-9]{1,19}")


class InvalidQuery(NodeError):
    """A query key or value that cannot be matched; the message says which and why."""

    dimse = 0xC000
    http = 400


@dataclass
class Query:
    """A query at one level: matching keys (keyword → value) and the return keys wanted."""

    level: Level
    matches: Mapping[str, str] = field(default_factory=dict)
    returns: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0


def parse_count(text: str, name: str, *, maximum: int = INT64_MAX, minimum: int = 0) -> int:
    """A count written in ASCII digits (``limit``, ``offset``, a frame number), within bounds.

    Raises
    ------
    InvalidQuery
        Anything else: other characters (superscripts and other scripts' digits included), a
        sign, or a value outside ``minimum``..``maximum``; the message names ``name``.
    """
    if not _COUNT.fullmatch(text) or not minimum <= int(text) <= maximum:
        raise InvalidQuery(f"{name} must be a whole number from {minimum} to {maximum} in the "
                           f"digits 0-9, got {text[:40]!r}")
    return int(text)


def _column(attr: Attribute) -> str:
    return f"{_ALIAS[attr.table]}.{attr.column}"


def _glob(pattern: str) -> str:
    return pattern.replace("[", "[[]")


def _pad_time(value: str, upper: bool) -> str:
    digits = value.replace(":", "")
    if not upper:
        return digits
    template = "235959.999999"
    return digits + template[len(digits) :]


def _condition(attr: Attribute, value: str, params: list[Any]) -> str | None:
    column = _column(attr)
    value = value.strip()
    if value in ("", "*"):
        return None
    if value == '""':
        # Empty value matching: two double quotes match an empty or absent attribute.
        return f"({column} IS NULL OR {column} = '')"
    if attr.vr == "UI":
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        if any(c in value for c in "*?"):
            raise InvalidQuery(f"{attr.keyword}: wildcards are not allowed in UIDs")
        params.extend(uids)
        return f"{column} IN ({', '.join('?' for _ in uids)})"
    if attr.vr in ("DA", "TM", "DT") and "-" in value:
        low, _, high = value.partition("-")
        parts = []
        if attr.vr == "TM":
            low, high = _pad_time(low, False), (_pad_time(high, True) if high else "")
        elif attr.vr == "DT" and high:
            high = high + "99999999999999"[: max(0, 14 - len(high))]
        if low:
            parts.append(f"{column} >= ?")
            params.append(low)
        if high:
            parts.append(f"{column} <= ?")
            params.append(high)
        if not parts:
            raise InvalidQuery(f"{attr.keyword}: a range needs a start or an end, got {value!r}")
        return f"({column} IS NOT NULL AND {' AND '.join(parts)})"
    if attr.vr in _NUMERIC:
        if not _SIGNED.fullmatch(value.strip()) or abs(int(value)) > INT64_MAX:
            raise InvalidQuery(f"{attr.keyword}: expected a whole number (digits 0-9, at most "
                               f"{INT64_MAX}), got {value[:40]!r}")
        params.append(int(value))
        return f"{column} = ?"
    if attr.vr == "DA" and not (value.isascii() and value.isdigit()):
        raise InvalidQuery(f"{attr.keyword}: expected a date YYYYMMDD or a range, got {value!r}")
    if attr.vr == "PN":
        # Unicode case folding, wildcards and component groups: node.storage.matching
        params.append(value)
        return f"pn_match({column}, ?)"
    if any(c in value for c in "*?"):
        params.append(_glob(value))
        return f"{column} GLOB ?"
    if attr.vr == "CS" and "\\" in value:
        options = value.split("\\")
        params.extend(options)
        return f"{column} IN ({', '.join('?' for _ in options)})"
    params.append(value)
    return f"{column} = ?"


def _derived_sql(keyword: str) -> str:
    return {
        "NumberOfPatientRelatedStudies": "(SELECT COUNT(*) FROM studies x WHERE x.patient_key = p.patient_key)",
        "NumberOfPatientRelatedSeries": (
            "(SELECT COUNT(*) FROM series x JOIN studies y ON x.study_uid = y.study_uid "
            "WHERE y.patient_key = p.patient_key)"
        ),
        "NumberOfPatientRelatedInstances": (
            "(SELECT COUNT(*) FROM instances x JOIN studies y ON x.study_uid = y.study_uid "
            "WHERE y.patient_key = p.patient_key)"
        ),
        "ModalitiesInStudy": (
            "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series x "
            "WHERE x.study_uid = st.study_uid AND modality IS NOT NULL ORDER BY m))"
        ),
        "SOPClassesInStudy": (
            "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT sop_class_uid AS c FROM instances x "
            "WHERE x.study_uid = st.study_uid ORDER BY c))"
        ),
        "NumberOfStudyRelatedSeries": "(SELECT COUNT(*) FROM series x WHERE x.study_uid = st.study_uid)",
        "NumberOfStudyRelatedInstances": (
            "(SELECT COUNT(*) FROM instances x WHERE x.study_uid = st.study_uid)"
        ),
        "NumberOfSeriesRelatedInstances": (
            "(SELECT COUNT(*) FROM instances x WHERE x.series_uid = se.series_uid)"
        ),
    }[keyword]


def _joins(level: Level) -> str:
    parts = {
        "PATIENT": "patients p",
        "STUDY": "studies st JOIN patients p ON p.patient_key = st.patient_key",
        "SERIES": (
            "series se JOIN studies st ON st.study_uid = se.study_uid "
            "JOIN patients p ON p.patient_key = st.patient_key"
        ),
        "IMAGE": (
            "instances i JOIN series se ON se.series_uid = i.series_uid "
            "JOIN studies st ON st.study_uid = se.study_uid "
            "JOIN patients p ON p.patient_key = st.patient_key"
        ),
    }
    return parts[level]


def _visible(level: Level, attr_level: Level) -> bool:
    return LEVELS.index(attr_level) <= LEVELS.index(level)


def build_sql(query: Query) -> tuple[str, list[Any], list[str]]:
    """SQL, its parameters and the keywords of the selected columns, in order.

    Raises
    ------
    InvalidQuery
        A matching key that the index does not hold at or above the query level,
        or a value that cannot be matched.
    """
    if query.level not in LEVELS:
        raise InvalidQuery(f"unknown query level {query.level!r}; use one of {', '.join(LEVELS)}")
    params: list[Any] = []
    conditions: list[str] = []
    for keyword, value in query.matches.items():
        attr = by_keyword(keyword)
        if attr is None:
            if keyword in DERIVED:
                continue  # derived keys are return-only here; matching on them is not supported
            raise InvalidQuery(f"{keyword} is not a supported matching key")
        if not _visible(query.level, attr.level):
            raise InvalidQuery(
                f"{keyword} is a {attr.level.lower()}-level key and cannot be matched at the "
                f"{query.level.lower()} level"
            )
        if value is None:
            continue
        condition = _condition(attr, str(value), params)
        if condition:
            conditions.append(condition)
    selected: list[str] = []
    columns: list[str] = []
    wanted = list(dict.fromkeys((*query.matches.keys(), *query.returns)))
    for keyword in wanted:
        attr = by_keyword(keyword)
        if attr is not None and _visible(query.level, attr.level):
            selected.append(keyword)
            columns.append(_column(attr))
        elif keyword in DERIVED and _visible(query.level, DERIVED[keyword][2]):
            selected.append(keyword)
            columns.append(_derived_sql(keyword))
    unique = {"PATIENT": "p.patient_key", "STUDY": "st.study_uid", "SERIES": "se.series_uid",
              "IMAGE": "i.sop_uid"}[query.level]
    columns.append(unique)
    order = {
        "PATIENT": "p.patient_key",
        "STUDY": "st.study_date, st.study_time, st.study_uid",
        "SERIES": "se.series_number, se.series_uid",
        "IMAGE": "i.instance_number, i.sop_uid",
    }[query.level]
    sql = f"SELECT {', '.join(columns)} FROM {_joins(query.level)}"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += f" ORDER BY {order}"
    if query.limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params.extend([int(query.limit), int(query.offset)])
    elif query.offset:
        sql += " LIMIT -1 OFFSET ?"
        params.append(int(query.offset))
    return sql, params, selected
