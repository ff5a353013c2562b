"""Person Name matching (PS3.4 C.2.2.2) with Unicode case folding, for C-FIND and QIDO-RS alike.

The index calls :func:`pn_match` from SQL (registered as ``pn_match(column, pattern)`` on every
connection): SQLite's own ``lower()`` folds ASCII only, so ``Äneas^Rüdiger`` or ``Διονυσιος``
were not found even by their exact value. Values reach the index already decoded from whatever
Specific Character Set they were sent in (pydicom decodes ISO 8859-x, ISO 2022 and GB18030), so
one comparison of Unicode strings serves every accepted character set.

* Case: PN matches case-insensitively (PS3.4 leaves PN case to the SCP; Orthanc and dcmtk's
  SCPs do the same); both sides are NFC-normalised and ``str.casefold``-ed.
* Wildcards ``*`` (any run of characters, none included) and ``?`` (one character).
* Component groups (alphabetic ``=`` ideographic ``=`` phonetic): a query of one group matches a
  name when it matches any of the name's groups, so ``Yamada^Tarou``, ``山田^太郎`` and ``Yama*``
  all find ``Yamada^Tarou=山田^太郎=やまだ^たろう``; a query with ``=`` matches group by group, an
  empty group of the query matching anything.
* Trailing component delimiters and spaces are not significant (``Buc^Jérôme^^`` is ``Buc^Jérôme``).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["fold", "pn_match"]


def fold(text: str) -> str:
    """``text`` NFC-normalised and case-folded (Unicode-aware, not only ASCII)."""
    return unicodedata.normalize("NFC", text).casefold()


def _trim(group: str) -> str:
    return group.rstrip("^ ").strip()


@lru_cache(maxsize=256)
def _pattern(query_group: str) -> re.Pattern[str] | str:
    """A compiled wildcard pattern, or the folded text itself for a single value."""
    folded = fold(_trim(query_group))
    if "*" not in folded and "?" not in folded:
        return folded
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in folded)
    return re.compile(regex, re.DOTALL)


def _group_matches(value: str, query_group: str) -> bool:
    pattern = _pattern(query_group)
    folded = fold(_trim(value))
    if isinstance(pattern, str):
        return folded == pattern
    return pattern.fullmatch(folded) is not None


def pn_match(stored: str | None, query: str) -> bool:
    """Whether the stored Person Name matches the query value (see the module docstring)."""
    if stored is None:
        return False
    groups = stored.split("=")
    wanted = query.split("=")
    if len(wanted) == 1:
        return any(_group_matches(group, query) for group in groups if _trim(group) or not _trim(query))
    for position, query_group in enumerate(wanted):
        if _trim(query_group) in ("", "*"):
            continue
        if not _group_matches(groups[position] if position < len(groups) else "", query_group):
            return False
    return True
