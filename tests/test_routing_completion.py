"""Series completion: count-based, quiet timer, state surviving restarts, late instances."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import MRImageStorage

from node.ingest import Ingestor
from node.jobs.ledger import OUTPUT_UID_ROOT
from node.routing.completion import CompletionTracker, expected_instances
from node.routing.rules import Route
from node.samples import SeriesSpec, write_mr_series
from node.storage.index import Index
from node.storage.store import InstanceStore


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, tuple[str, ...] | None]] = []
        self.event = threading.Event()

    def __call__(self, series_uid: str, generation: int, only: object) -> None:
        self.calls.append((series_uid, generation, tuple(only) if only else None))  # type: ignore[arg-type]
        self.event.set()

    def wait(self, timeout: float = 5.0) -> bool:
        ok = self.event.wait(timeout)
        self.event.clear()
        return ok


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Index, Ingestor]]:
    index = Index(tmp_path / "var" / "index.sqlite")
    store = InstanceStore(tmp_path / "var", fsync=False, min_free_bytes=0)
    yield index, Ingestor(store, index, allowed_sop_classes={MRImageStorage})
    index.close()


def _series(tmp_path: Path, name: str, *, slices: int = 4, time_points: int = 1, count: bool = True) -> list[bytes]:
    files = write_mr_series(tmp_path / name, SeriesSpec(series_description=name, slices=slices, rows=8, columns=8,
                                                        time_points=time_points, seed=hash(name) % 1000))
    blobs = []
    for path in files:
        if not count:
            ds = dcmread(path)
            del ds.ImagesInAcquisition
            ds.save_as(path, enforce_file_format=True)
        blobs.append(path.read_bytes())
    return blobs


def _settled(tracker: CompletionTracker, state: str = "complete", timeout: float = 10.0) -> bool:
    """Whether every tracked series reaches ``state`` (marked just after the callback returns)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if {s.state for s in tracker.series()} == {state}:
            return True
        time.sleep(0.02)
    return False


def _routes(on_late: str = "ignore", stable_after: float | None = None):
    route = Route("r", "qc", {"Modality": (re.compile("MR"),)}, on_late=on_late,  # type: ignore[arg-type]
                  stable_after=stable_after)
    return lambda attributes: [route]


def test_expected_instances_from_headers() -> None:
    assert expected_instances({"ImagesInAcquisition": "20"}) == 20
    assert expected_instances({"ImagesInAcquisition": 20, "NumberOfTemporalPositions": "40"}) == 800
    assert expected_instances({"NumberOfFrames": "120", "ImagesInAcquisition": "1"}) is None
    assert expected_instances({"SeriesDescription": "x"}) is None
    assert expected_instances({"ImagesInAcquisition": "0"}) is None


def test_count_reached_completes_at_once(parts, tmp_path: Path) -> None:
    index, ingestor = parts
    done = Recorder()
    tracker = CompletionTracker(index, _routes(), stable_after=30, on_complete=done)
    ingestor.listeners.append(tracker)
    tracker.start()
    try:
        blobs = _series(tmp_path, "counted", slices=5)
        for blob in blobs[:-1]:
            ingestor.ingest_part10(blob)
        assert not done.wait(0.3)
        started = time.monotonic()
        ingestor.ingest_part10(blobs[-1])
        assert done.wait(10.0)
        assert time.monotonic() - started < 5.0  # at once, not after stable_after = 30 s
        assert _settled(tracker)
        state = tracker.series(("complete",))[0]
        assert (state.reason, state.received, state.expected) == ("count", 5, 5)
    finally:
        tracker.stop()
    assert len(done.calls) == 1


def test_quiet_completion_waits_for_stable_after(parts, tmp_path: Path) -> None:
    index, ingestor = parts
    done = Recorder()
    tracker = CompletionTracker(index, _routes(stable_after=0.4), stable_after=30, on_complete=done)
    ingestor.listeners.append(tracker)
    tracker.start()
    try:
        blobs = _series(tmp_path, "quiet", count=False)
        for blob in blobs:
            ingestor.ingest_part10(blob)
            time.sleep(0.15)  # arriving more often than stable_after keeps the series open
        last = time.monotonic()
        assert done.wait(10.0)
        assert time.monotonic() - last >= 0.4 - 0.15 - 0.02
        assert tracker.series()[0].reason == "quiet"
    finally:
        tracker.stop()


def test_dynamic_series_with_total_count_convention_completes_by_quiet(parts, tmp_path: Path) -> None:
    index, ingestor = parts
    done = Recorder()
    tracker = CompletionTracker(index, _routes(stable_after=0.3), stable_after=30, on_complete=done)
    ingestor.listeners.append(tracker)
    tracker.start()
    try:
        for blob in _series(tmp_path, "dynamic", slices=3, time_points=3):  # ImagesInAcquisition = all 9
            ingestor.ingest_part10(blob)
        assert done.wait(10.0)
        assert tracker.series()[0].reason == "quiet" and tracker.series()[0].received == 9
    finally:
        tracker.stop()


def test_timers_survive_a_restart(parts, tmp_path: Path) -> None:
    index, ingestor = parts
    first = Recorder()
    tracker = CompletionTracker(index, _routes(stable_after=0.5), stable_after=30, on_complete=first)
    ingestor.listeners.append(tracker)
    tracker.start()
    for blob in _series(tmp_path, "restart", count=False)[:2]:
        ingestor.ingest_part10(blob)
    tracker.stop()  # the node stops before the series is quiet
    assert first.calls == []
    second = Recorder()
    again = CompletionTracker(index, _routes(stable_after=0.5), stable_after=30, on_complete=second)
    again.start()
    try:
        assert second.wait(10.0)
        assert _settled(again)
    finally:
        again.stop()


def test_half_completed_and_untracked_series_are_finished_on_start(parts, tmp_path: Path) -> None:
    index, ingestor = parts
    for blob in _series(tmp_path, "untracked", count=False):  # indexed, but no tracker listened
        ingestor.ingest_part10(blob)
    tracker = CompletionTracker(index, _routes(stable_after=0.2), stable_after=30, on_complete=Recorder())
    for blob in _series(tmp_path, "completing", slices=2):
        ingestor.ingest_part10(blob)
        tracker(*_outcome_and_record(index, ingestor, blob))
    with index.transaction() as conn:  # the node died between "completing" and making the jobs
        assert conn.execute("UPDATE series_state SET state = 'completing'").rowcount == 1
    done = Recorder()
    restarted = CompletionTracker(index, _routes(stable_after=0.2), stable_after=30, on_complete=done)
    restarted.start()
    try:
        deadline = time.monotonic() + 15
        while len(done.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(done.calls) == 2
        assert _settled(restarted)
    finally:
        restarted.stop()


def _outcome_and_record(index: Index, ingestor: Ingestor, blob: bytes):
    """Replay the listener call for an already stored instance."""
    from io import BytesIO

    from node.storage.index import InstanceRecord

    ds = dcmread(BytesIO(blob), stop_before_pixels=True)

    class Outcome:
        series_instance_uid = str(ds.SeriesInstanceUID)
        study_instance_uid = str(ds.StudyInstanceUID)

    record = InstanceRecord(values={}, path="", size=0, digest="", transfer_syntax_uid="",
                            series_attributes={"Modality": "MR", "ImagesInAcquisition": str(ds.ImagesInAcquisition)})
    return Outcome(), record


@pytest.mark.parametrize("on_late", ["ignore", "reanalyze"])
def test_late_instances(parts, tmp_path: Path, on_late: str) -> None:
    index, ingestor = parts
    done = Recorder()
    tracker = CompletionTracker(index, _routes(on_late, stable_after=0.2), stable_after=30, on_complete=done)
    ingestor.listeners.append(tracker)
    tracker.start()
    try:
        blobs = _series(tmp_path, f"late-{on_late}", slices=4)
        for blob in blobs[:3]:
            ingestor.ingest_part10(blob)
        with index.transaction() as conn:  # headers promised 3: complete early, the 4th is late
            conn.execute("UPDATE series_state SET expected = 3, state = 'completing'")
        tracker._schedule_completion(tracker.series()[0].series_uid)
        assert done.wait(10.0) and _settled(tracker)
        ingestor.ingest_part10(blobs[3])
        state = tracker.series()[0]
        assert state.late == 1
        if on_late == "ignore":
            assert state.state == "complete"
            assert not done.wait(0.6)
        else:
            assert done.wait(10.0)
            assert done.calls[-1][1:] == (1, ("r",))
            assert _settled(tracker)
    finally:
        tracker.stop()


def test_outputs_of_jobs_are_not_tracked(parts) -> None:
    index, _ = parts
    tracker = CompletionTracker(index, _routes(), stable_after=1, on_complete=Recorder())
    tracker.instance_arrived(OUTPUT_UID_ROOT + "123", "1.2.3", {"Modality": "SR"})
    assert tracker.series() == []
