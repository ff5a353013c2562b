"""Completion never fires early, for every vendor layout: real scanner files through the real
ingest path (headers, private completion hints) and the completion tracker."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import EnhancedMRImageStorage, MRImageStorage

from node.ingest import Ingestor
from node.routing.completion import CompletionTracker, expected_instances
from node.routing.rules import Route
from node.storage.index import Index
from node.storage.store import InstanceStore
from tests.scanner_data import requires_scanner_dicom, series_files


@pytest.fixture
def tracked(tmp_path: Path) -> Iterator[tuple[Ingestor, CompletionTracker, list[str]]]:
    """An ingest path with a completion tracker whose quiet timer (60 s) never fires in a test."""
    index = Index(tmp_path / "var" / "index.sqlite")
    store = InstanceStore(tmp_path / "var", fsync=False, min_free_bytes=0)
    ingestor = Ingestor(store, index, allowed_sop_classes={MRImageStorage, EnhancedMRImageStorage})
    completed: list[str] = []
    route = Route("r", "qc", {"Modality": (re.compile("MR"),)})  # type: ignore[arg-type]
    tracker = CompletionTracker(index, lambda attributes: [route], stable_after=60,
                                on_complete=lambda uid, generation, only: completed.append(uid))
    ingestor.listeners.append(tracker)
    yield ingestor, tracker, completed
    index.close()


def _send(ingestor: Ingestor, tracker: CompletionTracker, files: list[Path]) -> list[tuple[str, int | None]]:
    """Ingest ``files`` one by one; the series' state after each."""
    states = []
    for path in files:
        ingestor.ingest_part10(path.read_bytes())
        (state,) = tracker.series()
        states.append((state.state, state.expected))
    return states


def test_expected_instances_per_layout() -> None:
    # Enhanced MR: one instance per volume (Siemens XA), whole series (Philips), unknown.
    assert expected_instances({"NumberOfFrames": "39", "NumberOfTemporalPositions": "21",
                               "TemporalPositionsInInstance": 1}) == 21
    assert expected_instances({"NumberOfFrames": "240", "NumberOfTemporalPositions": "3",
                               "TemporalPositionsInInstance": 3}) == 1
    assert expected_instances({"NumberOfFrames": "80", "NumberOfTemporalPositions": "60",
                               "TemporalPositionsInInstance": 2}) == 30
    assert expected_instances({"NumberOfFrames": "120", "ImagesInAcquisition": "1"}) is None
    # MOSAIC: ImagesInAcquisition counts slices in a mosaic, not instances.
    mosaic = {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"], "ImagesInAcquisition": "35"}
    assert expected_instances(mosaic) is None
    assert expected_instances({**mosaic, "NumberOfTemporalPositions": "60"}) == 60
    assert expected_instances({**mosaic, "ImageType": "ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC"}) is None
    # GE: ImagesInAcquisition is all images when it is slices x phases.
    ge = {"Manufacturer": "GE MEDICAL SYSTEMS", "GELocationsInAcquisition": 20}
    assert expected_instances({**ge, "ImagesInAcquisition": "1200", "NumberOfTemporalPositions": "60"}) == 1200
    assert expected_instances({**ge, "ImagesInAcquisition": "20", "NumberOfTemporalPositions": "60"}) == 1200
    assert expected_instances({**ge, "ImagesInAcquisition": "130"}) is None  # 130 is not 20 x phases
    assert expected_instances({**ge, "ImagesInAcquisition": "40", "NumberOfTemporalPositions": "60"}) is None
    # Siemens / Philips classic: images per time point.
    assert expected_instances({"Manufacturer": "SIEMENS", "ImagesInAcquisition": "20",
                               "NumberOfTemporalPositions": "60"}) == 1200


@requires_scanner_dicom
def test_siemens_xa_per_volume_series_waits_for_every_volume(tracked) -> None:
    ingestor, tracker, completed = tracked
    files = series_files("siemens-xa30-enhanced/10_DWI_dir80_PA")
    random.Random(7).shuffle(files)
    tracker.start()
    try:
        states = _send(ingestor, tracker, files)
    finally:
        tracker.stop()
    assert states[0] == ("open", 21)
    assert all(state == "open" for state, _ in states[:-1])  # not complete at 1, 2, ... 20 instances
    assert states[-1][0] in {"completing", "complete"}
    assert len(completed) == 1


@requires_scanner_dicom
@pytest.mark.parametrize(("series", "count"), [
    ("ge-signa-pioneer-classic/05_3D_Ax_T1_MP_RAGE_R22", 130),
    ("siemens-decubitus-hfs/3_t1_fl2d_sag", None),
    ("siemens-vd13-mosaic/ax/axasc35", None),
    ("siemens-vd13-mosaic/axmb/AxInt36mb", None),
    ("philips-enhanced/1903_WIP_SOURCE_-_3DpCASL.dcm", None),
])
def test_real_series_count_is_right_or_unknown(tracked, series: str, count: int | None) -> None:
    """The count the headers give is the series' instance count; when they cannot say (MOSAIC,
    Philips without NumberOfTemporalPositions) none is used and the quiet timer decides."""
    ingestor, tracker, completed = tracked
    files = series_files(series)
    states = _send(ingestor, tracker, files)
    assert {expected for _, expected in states} == {count}
    if count is None:
        assert {state for state, _ in states} == {"open"}
    else:
        assert count == len(files)
        assert {state for state, _ in states[:-1]} == {"open"}
        assert states[-1][0] == "completing"
    assert completed == []  # tracker not started: nothing completes in this test
