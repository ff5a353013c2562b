"""The outbox against a real Orthanc: retries with backoff, dead letters, retry, STOW-RS."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import MRImageStorage

from node.config import DestinationSettings
from node.ingest import Ingestor
from node.outbox import Outbox
from node.samples import SeriesSpec, write_mr_series
from node.storage.index import Index
from node.storage.store import InstanceStore

pytestmark = pytest.mark.peers


@pytest.fixture
def stored(tmp_path: Path):
    index = Index(tmp_path / "var" / "index.sqlite")
    store = InstanceStore(tmp_path / "var", fsync=False, min_free_bytes=0)
    ingestor = Ingestor(store, index, allowed_sop_classes={MRImageStorage})
    instances = []
    for path in write_mr_series(tmp_path / "in", SeriesSpec(slices=3, rows=8, columns=8)):
        outcome = ingestor.ingest_part10(path.read_bytes())
        instances.append((outcome.sop_instance_uid, outcome.series_instance_uid))
    yield index, store, instances
    index.close()


def _queue(outbox: Outbox, index: Index, instances: list[tuple[str, str]], destination: str) -> None:
    with index.transaction() as conn:
        assert outbox.enqueue(conn, job_id="job", instances=instances, destinations=[destination]) == len(instances)
        assert outbox.enqueue(conn, job_id="job", instances=instances, destinations=[destination]) == 0


def _orthanc_instances(orthanc) -> list[str]:
    return list(orthanc.get("/instances"))


def test_dead_letter_then_retry_delivers_once(stored, orthanc) -> None:
    index, store, instances = stored
    destination = DestinationSettings(name="pacs", kind="dimse", ae_title=orthanc.ae_title, host="127.0.0.1",
                                      port=orthanc.dicom_port, max_attempts=2, backoff_seconds=1.0)
    outbox = Outbox(index, store, [destination])
    _queue(outbox, index, instances, "pacs")
    orthanc.stop()
    assert outbox.deliver_due()
    first = outbox.deliveries()
    assert {d.state for d in first} == {"pending"} and {d.attempts for d in first} == {1}
    assert first[0].not_before > time.time()  # backing off
    time.sleep(1.1)
    assert outbox.deliver_due()
    assert {d.state for d in outbox.deliveries()} == {"dead"}
    assert not outbox.deliver_due()  # dead letters wait for a person
    orthanc.start_again()
    assert outbox.retry(destination="pacs") == 3
    assert outbox.deliver_due()
    assert {d.state for d in outbox.deliveries()} == {"sent"}
    assert not outbox.deliver_due()
    assert len(_orthanc_instances(orthanc)) == 3


def test_unknown_destination_is_a_dead_letter(stored) -> None:
    index, store, instances = stored
    outbox = Outbox(index, store, [])
    _queue(outbox, index, instances[:1], "gone")
    outbox.deliver_due()
    [delivery] = outbox.deliveries()
    assert delivery.state == "dead" and "not configured" in delivery.error
    assert outbox.counts() == {"gone": {"dead": 1}}


def test_stow_rs_destination(stored, orthanc) -> None:
    index, store, instances = stored
    if not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists():
        pytest.skip("Orthanc's DICOMweb plugin is not installed")
    destination = DestinationSettings(name="web", kind="dicomweb", url=orthanc.url + "/dicom-web")
    outbox = Outbox(index, store, [destination])
    _queue(outbox, index, instances, "web")
    outbox.start()
    try:
        outbox.wake()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and {d.state for d in outbox.deliveries()} != {"sent"}:
            time.sleep(0.05)
    finally:
        outbox.stop()
    assert {d.state for d in outbox.deliveries()} == {"sent"}
    assert len(_orthanc_instances(orthanc)) == 3
