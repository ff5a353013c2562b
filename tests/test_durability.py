"""Nothing acknowledged is lost: SIGKILL in the middle of a storescu burst, then restart."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from node.samples import SeriesSpec, write_mr_series
from tests.peers import free_port, start_node, storescu_acknowledged, write_node_config

pytestmark = pytest.mark.peers



def _sop_uids_found(port: int, series_uid: str) -> set[str]:
    ae = AE(ae_title="CHECK")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SeriesInstanceUID = series_uid
    identifier.SOPInstanceUID = ""
    found = {str(ds.SOPInstanceUID) for status, ds in
             assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
             if status.Status == 0xFF00 and ds is not None}
    assoc.release()
    return found


def test_sigkill_mid_burst_loses_nothing_acknowledged(tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "burst", SeriesSpec(slices=300, rows=64, columns=64, seed=11))
    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    folder = tmp_path / "node"
    folder.mkdir()
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port)
    storage = folder / "var"
    node = start_node(config, storage=storage, port=port, http_port=http_port, log=folder / "node.log")

    sender_log = tmp_path / "storescu.log"
    with open(sender_log, "w") as handle:
        sender = subprocess.Popen(["storescu", "-v", "-aec", "PACSNODE", "127.0.0.1", str(port),
                                   *map(str, files)], stdout=handle, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TCP_NODELAY": "1"})
    deadline = time.monotonic() + 60
    while len(storescu_acknowledged(sender_log.read_text())) < 80 and time.monotonic() < deadline:
        time.sleep(0.01)
    node.kill()  # SIGKILL while the burst is in flight
    sender.wait(60)
    acknowledged = storescu_acknowledged(sender_log.read_text())
    assert 80 <= len(acknowledged) < len(files), "the kill did not land mid-burst"

    node = start_node(config, storage=storage, port=port, http_port=http_port, log=folder / "node.log")
    try:
        found = _sop_uids_found(port, series_uid)
        expected = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in acknowledged}
        assert expected <= found, f"{len(expected - found)} acknowledged instance(s) missing after restart"
        assert not list(storage.rglob("*.part")), "a half-written file is visible"
        for stored in (storage / "store").rglob("*.dcm"):
            assert dcmread(stored).SOPInstanceUID  # every visible file is complete and readable
    finally:
        node.stop()
