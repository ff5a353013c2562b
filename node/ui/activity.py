"""What the status pages see happen while the node runs: stored instances per second and
recent log lines.

Both live in memory for this process only; the durable state (jobs, deliveries, series)
is read from the index by :mod:`node.ui.queries`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from node.ingest import IngestOutcome
from node.storage.index import InstanceRecord

__all__ = ["IngestRate", "LogBuffer", "LogLine"]


class IngestRate:
    """Instances stored per second, counted by an ingest listener (one bucket per second).

    Parameters
    ----------
    window:
        Seconds of history kept.
    """

    def __init__(self, window: int = 600) -> None:
        self.window = window
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        self.started = time.time()

    def on_ingest(self, outcome: IngestOutcome, record: InstanceRecord) -> None:
        """Ingest listener: count one stored instance in the current second."""
        self.add()

    def add(self, count: int = 1, at: float | None = None) -> None:
        second = int(time.time() if at is None else at)
        with self._lock:
            self._counts[second] = self._counts.get(second, 0) + count
            if len(self._counts) > self.window + 60:
                cutoff = second - self.window
                for old in [s for s in self._counts if s < cutoff]:
                    del self._counts[old]

    def per_second(self, seconds: int, now: float | None = None) -> list[int]:
        """Counts of the last ``seconds`` complete seconds, oldest first."""
        last = int(time.time() if now is None else now) - 1
        with self._lock:
            return [self._counts.get(s, 0) for s in range(last - seconds + 1, last + 1)]

    def rate(self, seconds: int = 10, now: float | None = None) -> float:
        """Mean instances per second over the last ``seconds`` complete seconds (or since start)."""
        now = time.time() if now is None else now
        span = max(1, min(seconds, int(now - self.started)))
        return sum(self.per_second(span, now)) / span


@dataclass(frozen=True)
class LogLine:
    """One log record as the pages show it."""

    at: float
    level: str
    logger: str
    message: str
    ids: str = ""
    """Job and series ids the record carries as attributes (``job_id``, ``series_uid``), if any."""

    @property
    def time(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))


class LogBuffer(logging.Handler):
    """The last ``capacity`` log records of the node's loggers, for the job and dashboard pages.

    Parameters
    ----------
    capacity:
        How many records are kept.
    """

    def __init__(self, capacity: int = 5000, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.lines: deque[LogLine] = deque(maxlen=capacity)
        self._attached: list[logging.Logger] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            ids = " ".join(str(getattr(record, key)) for key in ("job_id", "series_uid") if getattr(record, key, None))
            self.lines.append(LogLine(record.created, record.levelname, record.name, message, ids))
        except (TypeError, ValueError):  # a malformed record must not break the logging call
            self.handleError(record)

    def attach(self, *names: str) -> None:
        """Listen to these loggers (and their children)."""
        for name in names:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            self._attached.append(logger)

    def detach(self) -> None:
        for logger in self._attached:
            logger.removeHandler(self)
        self._attached.clear()

    def mentioning(self, *needles: str, limit: int = 200) -> list[LogLine]:
        """The most recent lines that mention any of ``needles`` (a job id, a series UID), oldest first."""
        wanted = [n for n in needles if n]
        found = [line for line in list(self.lines) if any(n in line.message or n in line.ids for n in wanted)]
        return found[-limit:]

    def problems(self, limit: int = 10) -> list[LogLine]:
        """The most recent warnings and errors, newest first."""
        found = [line for line in list(self.lines) if line.level in ("WARNING", "ERROR", "CRITICAL")]
        return found[::-1][:limit]


def sparkline(values: list[int], width: int = 240, height: int = 40) -> dict[str, Any]:
    """An SVG polyline of ``values`` scaled to ``width`` × ``height`` (for the dashboard)."""
    top = max(values) if values and max(values) > 0 else 1
    step = width / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(values))
    return {"points": points, "width": width, "height": height, "top": top}
