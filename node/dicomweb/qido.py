"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Query parameters (PS3.18 8.3.4):

* ``{attributeID}={value}``: an attribute by keyword (``PatientID``) or tag (``00100020``),
  matched as C-FIND matches it (``node.storage.query``): wildcards ``*`` and ``?``, date
  and time ranges ``20200101-20201231``, UID lists ``uid1,uid2`` or ``uid1\\uid2``.
* ``includefield``: extra attributes to return (repeated or comma separated), or ``all``
  for every attribute the index holds at and above the level.
* ``fuzzymatching=true``: a person name value without wildcards matches every name that
  starts with it, case-insensitively (``doe`` finds ``DOE^JOHN``); ``false`` (the default)
  matches the whole name, also case-insensitively.
* ``limit`` and ``offset``: paging over the matches in a stable order.

No match is answered ``200`` with ``[]`` (PS3.18 allows ``204``; an empty array is what
most servers and clients use, and it keeps the response type the same).
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from node.dicomweb.service import DicomwebService, dicom_json_response
from node.storage.attributes import ATTRIBUTES, DERIVED, LEVELS, Level, by_keyword, by_tag
from node.storage.query import InvalidQuery, Query, parse_count

__all__ = ["DEFAULT_RETURNS", "parse_search", "search", "to_json_rows"]

# PS3.18 Table 10.6.3-3/4/5: the attributes returned without includefield.
DEFAULT_RETURNS: dict[str, tuple[str, ...]] = {
    "STUDY": ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
              "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
              "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": ("Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
               "SeriesDate", "SeriesTime", "NumberOfSeriesRelatedInstances", "StudyInstanceUID"),
    "IMAGE": ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
              "BitsAllocated", "NumberOfFrames", "SeriesInstanceUID", "StudyInstanceUID"),
}
# Searching across studies returns the study attributes too (PS3.18 10.6.3.3.2).
_STUDY_CONTEXT = (*DEFAULT_RETURNS["STUDY"][:-2], "StudyInstanceUID")
_CONTROL = {"includefield", "fuzzymatching", "limit", "offset"}
_VR_OF: dict[str, str] = {a.keyword: a.vr for a in ATTRIBUTES}
_VR_OF.update({k: v[1] for k, v in DERIVED.items()})
_TAG_OF: dict[str, int] = {a.keyword: a.tag for a in ATTRIBUTES}
_TAG_OF.update({k: v[0] for k, v in DERIVED.items()})
_RETRIEVE_URL = "00081190"


def _keyword(name: str) -> str:
    """An attribute ID (keyword or 8-digit tag) as the keyword the index uses."""
    if "." in name:
        raise InvalidQuery(f"{name}: matching on sequence items is not supported")
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        attr = by_tag(int(name, 16))
        if attr is not None:
            return attr.keyword
        for keyword, (tag, _, _) in DERIVED.items():
            if tag == int(name, 16):
                return keyword
        raise InvalidQuery(f"{name} is not an attribute this node can search or return")
    if by_keyword(name) is not None or name in DERIVED:
        return name
    raise InvalidQuery(
        f"{name!r} is neither a query parameter (includefield, fuzzymatching, limit, offset) nor "
        "a searchable attribute keyword or tag"
    )


def _non_negative(params: QueryParams, name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    return parse_count(raw, name)


def _visible(level: Level, keyword: str) -> bool:
    attr = by_keyword(keyword)
    attr_level = attr.level if attr is not None else DERIVED[keyword][2]
    return LEVELS.index(attr_level) <= LEVELS.index(level)


def parse_search(params: QueryParams, level: Level, fixed: dict[str, str]) -> Query:
    """The :class:`Query` for a QIDO-RS request's parameters, with ``fixed`` path UIDs.

    Raises
    ------
    InvalidQuery
        An unknown parameter or attribute, a malformed limit/offset/fuzzymatching value.
    """
    fuzzy_raw = params.get("fuzzymatching", "false").lower()
    if fuzzy_raw not in ("true", "false"):
        raise InvalidQuery(f"fuzzymatching must be true or false, got {fuzzy_raw!r}")
    fuzzy = fuzzy_raw == "true"
    matches: dict[str, str] = {}
    for name, value in params.multi_items():
        if name in _CONTROL:
            continue
        keyword = _keyword(name)
        if keyword in DERIVED:
            raise InvalidQuery(f"{keyword} can be returned but not matched")
        attr = by_keyword(keyword)
        assert attr is not None
        if attr.vr == "UI":
            value = value.replace(",", "\\")
        elif fuzzy and attr.vr == "PN" and value and not any(c in value for c in "*?"):
            value = value + "*"
        if keyword in matches:
            raise InvalidQuery(f"{keyword} is given twice; give one value (or a UID list)")
        matches[keyword] = value
    for keyword, value in fixed.items():
        if keyword in matches and matches[keyword] != value:
            raise InvalidQuery(f"{keyword} in the query contradicts the resource path")
        matches[keyword] = value
    returns = list(DEFAULT_RETURNS[level])
    if level != "STUDY" and "StudyInstanceUID" not in fixed:
        returns += _STUDY_CONTEXT
    if level == "IMAGE" and "SeriesInstanceUID" not in fixed:
        returns += ("Modality", "SeriesNumber", "SeriesDescription")
    for value in params.getlist("includefield"):
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name == "all":
                returns += [a.keyword for a in ATTRIBUTES if _visible(level, a.keyword)]
                returns += [k for k in DERIVED if _visible(level, k)]
            else:
                keyword = _keyword(name)
                if _visible(level, keyword):
                    returns.append(keyword)
    limit = _non_negative(params, "limit")
    offset = _non_negative(params, "offset") or 0
    return Query(level=level, matches=matches, returns=tuple(dict.fromkeys(returns)),
                 limit=limit, offset=offset)


def _value_json(keyword: str, value: Any) -> dict[str, Any]:
    vr = _VR_OF[keyword]
    if value is None or value == "":
        return {"vr": vr}
    if vr in ("IS", "US"):
        if isinstance(value, str):
            return {"vr": vr, "Value": [int(v) if v.strip() else None for v in value.split("\\")]}
        return {"vr": vr, "Value": [int(value)]}
    parts = str(value).split("\\")
    if vr == "PN":
        out = []
        for name in parts:
            groups = name.split("=")
            entry = {"Alphabetic": groups[0]}
            if len(groups) > 1:
                entry["Ideographic"] = groups[1]
            if len(groups) > 2:
                entry["Phonetic"] = groups[2]
            out.append(entry if name else None)
        return {"vr": vr, "Value": out}
    return {"vr": vr, "Value": [p if p else None for p in parts]}


def to_json_rows(rows: list[dict[str, Any]], query: Query, base_url: str) -> list[dict[str, Any]]:
    """Index rows as PS3.18 JSON objects, with the RetrieveURL of each match."""
    wanted = [k for k in query.returns if k in _VR_OF and _visible(query.level, k)]
    result = []
    for row in rows:
        item: dict[str, Any] = {}
        for keyword in wanted:
            item[f"{_TAG_OF[keyword]:08X}"] = _value_json(keyword, row.get(keyword))
        study = row.get("StudyInstanceUID")
        url = f"{base_url}/studies/{study}"
        if query.level in ("SERIES", "IMAGE"):
            url += f"/series/{row.get('SeriesInstanceUID')}"
        if query.level == "IMAGE":
            url += f"/instances/{row.get('SOPInstanceUID')}"
        item[_RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
        if any(isinstance(v, str) and not v.isascii() for v in row.values()):
            item["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
        result.append(dict(sorted(item.items())))
    return result


async def search(service: DicomwebService, request: Request, level: Level) -> Response:
    """Answer a QIDO-RS request at ``level`` (path UIDs narrow the search)."""
    fixed = {}
    if "study" in request.path_params:
        fixed["StudyInstanceUID"] = request.path_params["study"]
    if "series" in request.path_params:
        fixed["SeriesInstanceUID"] = request.path_params["series"]
    query = parse_search(request.query_params, level, fixed)
    rows = await service.blocking(service.index.find, query)
    return dicom_json_response(to_json_rows(rows, query, service.base_url(request)))
