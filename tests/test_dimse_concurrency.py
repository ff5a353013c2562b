"""Many concurrent associations into a node whose job runner is busy: every C-STORE is answered.

Regression test for C-STOREs that waited for their response until the DIMSE timeout
(3 to 5 of 50 series in the chain benchmark). The node had answered; the response was
lost in the sender: pynetdicom 3's requestor reactor can take a DIMSE response off the
queue in the moment ``send_c_store`` pauses it, which a loaded machine makes likely
(:func:`node.dimse.scu.keep_responses_for_caller`). The node's own senders (outbox,
``pacsnode send``, C-MOVE sub-associations) use the same SCU code as this test.

The test makes the load itself: busy threads in the sending process (GIL contention, as
the benchmark's sender threads and a loaded machine cause), several sender threads each
opening short associations (the race is likeliest at an association's first C-STORE), and
a node that runs ``qc`` jobs on the series completed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from node.dimse.scu import SendReport, send_files
from node.samples import SeriesSpec, write_mr_series
from tests.peers import node_process, query_index

pytestmark = [pytest.mark.peers]

_QC = """
[[route]]
name = "qc"
analyzer = "qc"
match = { Modality = '^MR$' }
send_to = []
"""
_SENDERS = 6
_SERIES_PER_SENDER = 4
_INSTANCES = 8
_BUSY_THREADS = 8


def _rows(index: Path, sql: str) -> list[tuple]:
    return query_index(index, sql)


def test_every_c_store_is_answered_under_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    series = [
        write_mr_series(tmp_path / "in" / f"s{n}",
                        SeriesSpec(slices=_INSTANCES, rows=16, columns=16, seed=n, patient_id=f"LOAD-{n:02d}",
                                   series_description=f"load {n}"))
        for n in range(_SENDERS * _SERIES_PER_SENDER)
    ]
    folder = tmp_path / "node"
    folder.mkdir()
    (folder / "routes.toml").write_text(_QC, encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    with node_process(folder, extra="stable_after = 30\n\n[jobs]\nworkers = 2\n") as node:
        stop = threading.Event()

        def busy() -> None:
            count = 0
            while not stop.is_set():
                count += 1

        reports: list[tuple[int, SendReport | str]] = []
        acknowledged: list[float] = []

        def sender(first: int) -> None:
            for n in range(first, len(series), _SENDERS):
                try:
                    report: SendReport | str = send_files(series[n], ae_title=node.ae_title, host="127.0.0.1",
                                                          port=node.port, calling_ae="LOAD", dimse_timeout=10)
                except RuntimeError as exc:  # the association was aborted
                    report = str(exc)
                reports.append((n, report))
                acknowledged.append(time.time())

        burners = [threading.Thread(target=busy) for _ in range(_BUSY_THREADS)]
        senders = [threading.Thread(target=sender, args=(first,)) for first in range(_SENDERS)]
        for thread in burners + senders:
            thread.start()
        try:
            for thread in senders:
                thread.join(timeout=240)
        finally:
            stop.set()
            for thread in burners:
                thread.join()
        last_ack = max(acknowledged)

        failed = {n: (r if isinstance(r, str) else r.failed[:2]) for n, r in reports
                  if isinstance(r, str) or r.sent != _INSTANCES or r.failed}
        assert len(reports) == len(series)
        assert not failed, f"series whose C-STOREs were not all answered: {failed}"
        lost = [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage().lower()]
        assert not lost, f"DIMSE responses taken by the association reactor: {lost[:3]}"

        index = node.storage / "index.sqlite"
        counts = dict(_rows(index, "SELECT s.series_description, COUNT(*) FROM instances i "
                                   "JOIN series s ON s.series_uid = i.series_uid "
                                   "WHERE s.series_description LIKE 'load %' GROUP BY 1"))
        assert counts == {f"load {n}": _INSTANCES for n in range(len(series))}
        # The job runner was at work while the associations were sending.
        started = _rows(index, f"SELECT COUNT(*) FROM jobs WHERE started_at < {last_ack}")
        assert started and started[0][0] >= 1
