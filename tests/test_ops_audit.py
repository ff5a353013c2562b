"""The audit trail: real associations, a syslog receiver on loopback, ``pacsnode audit``."""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from node.config import load_settings
from node.ops.audit import AuditTrail, InvalidSince, SyslogTarget, parse_since
from node.ops.commands import add_commands
from node.storage.index import Index
from tests.peers import NodeProcess, free_port, node_process, write_node_config


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def _datagrams(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recvfrom(65535)[0] for _ in range(count)]


def test_associations_and_queries_are_audited_and_sent_to_syslog(tmp_path: Path,
                                                                  receiver: socket.socket) -> None:
    index = Index(tmp_path / "index.sqlite")
    audit = AuditTrail(index, source_id="PACSNODE",
                       syslog=SyslogTarget("127.0.0.1", receiver.getsockname()[1]))
    scp = AE(ae_title="PACSNODE")
    scp.require_called_aet = True
    scp.add_supported_context(Verification)
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelFind)

    seen_by_the_service: list[str] = []

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        # the service's own handler still reads the identifier the audit handler decoded
        seen_by_the_service.append(event.identifier.PatientID)
        yield 0x0000, None

    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_C_FIND, on_find), *audit.dimse_bindings(messages=True)])
    try:
        scu = AE(ae_title="WORKSTATION")
        scu.add_requested_context(Verification)
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = scu.associate("127.0.0.1", port, ae_title="PACSNODE")
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "PAT-42"
        query.StudyInstanceUID = ""
        list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        assoc.release()
        wrong = scu.associate("127.0.0.1", port, ae_title="SOMEONE")
        assert wrong.is_rejected
        time.sleep(0.5)  # the server's release/reject notifications run in its threads
    finally:
        server.shutdown()
    assert seen_by_the_service == ["PAT-42"]
    events = audit.events()
    kinds = [(e.event, e.detail.get("result")) for e in events]
    assert ("association", "accepted") in kinds
    assert ("association", "released") in kinds
    assert ("association", "rejected") in kinds
    queries = [e for e in events if e.event == "query"]
    assert len(queries) == 1
    assert queries[0].actor == "WORKSTATION"
    assert queries[0].peer.startswith("127.0.0.1:")
    assert queries[0].detail["keys"] == {"QueryRetrieveLevel": "STUDY", "PatientID": "PAT-42"}
    rejected = next(e for e in events if e.detail.get("result") == "rejected")
    assert rejected.outcome == "minor-failure"
    assert rejected.called == "SOMEONE"

    # one syslog datagram per row, an RFC 5424 frame around a PS3.15 A.5 audit message
    frames = _datagrams(receiver, len(events))
    messages = [ET.fromstring(f.split(b"\xef\xbb\xbf", 1)[1]) for f in frames]
    assert all(f.startswith(b"<85>1 ") for f in frames)
    query_message = next(m for m in messages if m.find("EventIdentification/EventID")
                         .get("csd-code") == "110112")
    assert json.loads(query_message.find("ParticipantObjectIdentification/ParticipantObjectQuery")
                      .text) == {"QueryRetrieveLevel": "STUDY", "PatientID": "PAT-42"}
    outcomes = sorted(m.find("EventIdentification").get("EventOutcomeIndicator") for m in messages)
    assert outcomes == ["0", "0", "0", "4"]
    index.close()


def test_the_audit_table_is_append_only(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    audit = AuditTrail(index)
    audit.delivery("hospital-pacs", instances=12, job_id="job-1")
    audit.delivery("hospital-pacs", instances=3, error="association rejected")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        with index.transaction() as conn:
            conn.execute("DELETE FROM audit_log")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        with index.transaction() as conn:
            conn.execute("UPDATE audit_log SET outcome = 'success'")
    rows = audit.events(event="delivery")
    assert [(r.outcome, r.detail["instances"]) for r in rows] == [("success", 12),
                                                                 ("serious-failure", 3)]
    index.close()


def test_parse_since() -> None:
    assert parse_since("1d") == 86400
    assert parse_since("30m") == 1800
    with pytest.raises(InvalidSince):
        parse_since("yesterday")


@pytest.mark.peers
def test_pacsnode_audit_lists_what_a_running_node_received(node: NodeProcess, mr_series: list[Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["storescu", "-aet", "SCANNER", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                    *map(str, mr_series)], check=True, capture_output=True, timeout=120)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config")

    add_commands(sub, lambda a: load_settings(a.config, environ={}), config_option)
    deadline = time.monotonic() + 10
    while True:  # the node writes aggregated rows once a second
        args = parser.parse_args(["audit", "--since", "1d", "--json", "--config", str(node.config)])
        assert args.func(args) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        stored = [r for r in rows if r["event"] == "instances-stored"]
        if sum(r["detail"]["instances"] for r in stored) >= len(mr_series) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(r["detail"]["instances"] for r in stored) == len(mr_series)
    assert {r["actor"] for r in stored} == {"SCANNER"}
    assert any(r["event"] == "config-load" for r in rows)


def test_node_toml_audit_section_sends_a_running_nodes_events_to_syslog(tmp_path: Path,
                                                                         receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    extra = f'\n[audit]\nsyslog_host = "127.0.0.1"\nsyslog_port = {port}\napp_name = "pacsnode-test"\n'
    with node_process(tmp_path / "node", extra=extra) as node:
        start = receiver.recvfrom(65535)[0]  # config-load at start
        assert b" pacsnode-test - IHE+RFC-3881 - " in start and b"110120" in start
        echo = subprocess.run(["echoscu", "-aet", "AUDITED", "-aec", node.ae_title, "127.0.0.1", str(node.port)],
                              capture_output=True, timeout=30)
        assert echo.returncode == 0
        messages = [receiver.recvfrom(65535)[0] for _ in range(2)]  # association accepted, released
        assert all(b"AUDITED" in m and b"110114" in m for m in messages), messages
    with pytest.raises(ValueError, match="syslog_port"):
        load_settings(_written(tmp_path / "bad.toml", "[audit]\nsyslog_host = \"x\"\nsyslog_port = 0\n"))


def _written(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_command_line_actions_are_audited(tmp_path: Path, receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    config = write_node_config(tmp_path, port=free_port(), http_port=free_port(),
                               extra=f'\n[audit]\nsyslog_host = "127.0.0.1"\nsyslog_port = {port}\n')
    pacsnode = str(Path(sys.executable).parent / "pacsnode")
    done = subprocess.run([pacsnode, "outbox", "retry", "--config", str(config)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and "queued 0 delivery(ies) again" in done.stdout, done.stderr
    message = receiver.recvfrom(65535)[0]
    assert b"110100" in message and b"command line: " in message
    refused = subprocess.run([pacsnode, "reprocess", "1.2.3.4", "--config", str(config)], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
    assert refused.returncode == 1  # an unknown series: nothing queued, nothing audited
    index = Index(tmp_path / "var" / "index.sqlite")
    try:
        actions = [e for e in AuditTrail(index).events() if e.event == "operator-action"]
    finally:
        index.close()
    assert [(e.detail["action"], e.detail["deliveries"]) for e in actions] == [("retry-deliveries", 0)]
    assert actions[0].actor.startswith("command line: ")
