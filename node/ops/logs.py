"""The node's log: text or JSON lines, to stderr and/or a file, with job and series ids.

``[logging] format = "json"`` writes one JSON object per line (``time``, ``level``,
``logger``, ``message``, ``process`` and, when the line concerns them, ``job_id``,
``series_uid``, ``study_uid`` and ``calling_ae``). The ids come from
:func:`log_context`, a context manager over :mod:`contextvars` that the code handling a
job, a series or an association enters; every record logged inside it, by any logger,
carries them (a :class:`ContextFilter` on the handlers copies them onto the record). Ids
passed explicitly with ``extra={...}`` win over the context.

Worker processes of the local executor call :func:`setup_logging` with the node's
settings, so their lines go to the same file in the same format.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.config import LoggingSettings

__all__ = ["CONTEXT_KEYS", "ContextFilter", "JsonFormatter", "current_context", "log_context", "setup_logging"]

CONTEXT_KEYS = ("job_id", "series_uid", "study_uid", "calling_ae")

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("pacsnode_log_context", default=None)

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Tag every log record made inside the block with these ids (``None`` values are left out).

    Parameters
    ----------
    **ids:
        Any of ``job_id``, ``series_uid``, ``study_uid``, ``calling_ae``.

    Raises
    ------
    ValueError
        An unknown key.
    """
    unknown = set(ids) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"log context keys are {', '.join(CONTEXT_KEYS)}, not {', '.join(sorted(unknown))}")
    given = {k: str(v).strip() for k, v in ids.items() if v is not None and str(v).strip()}
    merged = {**(_context.get() or {}), **given}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    """The ids of the innermost :func:`log_context` (a copy)."""
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Copies the :func:`log_context` ids onto each record (attributes the record lacks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        ids = [f"{k}={getattr(record, k)}" for k in CONTEXT_KEYS if getattr(record, k, None)]
        record.context = f" [{' '.join(ids)}]" if ids else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}"
            + self.formatTime(record, "%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value:
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def _handlers(settings: LoggingSettings) -> list[logging.Handler]:
    handlers: list[logging.Handler] = []
    if settings.stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    if settings.file is not None:
        Path(settings.file).parent.mkdir(parents=True, exist_ok=True)
        # Append mode: the node and its worker processes write whole lines to one file.
        handlers.append(logging.FileHandler(settings.file, mode="a", encoding="utf-8"))
    if not handlers:
        handlers.append(logging.NullHandler())
    return handlers


def setup_logging(settings: LoggingSettings) -> None:
    """Configure the root logger from ``[logging]``: level, format, stderr and file.

    Replaces the root logger's handlers (calling it again reconfigures, it does not add).
    pynetdicom, which logs every PDU at INFO, and apscheduler are kept at WARNING and above.
    """
    formatter: logging.Formatter = JsonFormatter() if settings.is_json else logging.Formatter(_TEXT_FORMAT)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in _handlers(settings):
        handler.setFormatter(formatter)
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    root.setLevel(settings.level)
    for noisy in ("pynetdicom", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
