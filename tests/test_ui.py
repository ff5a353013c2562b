"""The status pages at /ui on a running node: series sent by C-STORE go through the qc
route, and the dashboard, studies → series → job → outputs, the routes test box and the
outbox (dead letters, retry) show what the index holds; POST actions follow the tokens."""

from __future__ import annotations

import io
import json
import logging
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydicom import dcmread
from starlette.testclient import TestClient

from node.config import load_settings
from node.dicomweb import create_app
from node.dimse.scu import send_files
from node.runtime import Node
from node.samples import SeriesSpec, write_mr_series
from node.ui import mount_ui
from tests.peers import VENV_BIN, dimse_destination, free_port, wait_until, write_node_config

QC_ONLY = """
[[route]]
name = "qc"
analyzer = "qc"
exclusive = false
match = { Modality = '^MR$' }
send_to = ["pacs"]
"""
SERIES = 3
SLICES = 6
DYNAMIC = (3, 4)  # slices × time points of one dynamic series


def _settings(folder: Path, *, extra_http: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.toml").write_text(QC_ONLY, encoding="utf-8")
    down = free_port()  # nothing listens there: the deliveries end dead-lettered
    extra = f"""stable_after = 1.0

[jobs]
workers = 1
backoff_seconds = 0.2

{dimse_destination('pacs', 'NOBODY', down, max_attempts=1)}{extra_http}"""
    return load_settings(write_node_config(folder, port=free_port(), http_port=free_port(), extra=extra))


def _query(node: Node, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{node.settings.storage.index_path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _wait(predicate, timeout: float, what: str) -> None:
    wait_until(predicate, timeout, what, poll=0.1)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, httpx.Client]]:
    folder = tmp_path_factory.mktemp("ui")
    logger = logging.getLogger("node")
    level = logger.level
    logger.setLevel(logging.INFO)  # as `pacsnode serve` logs: the job page shows the job's lines
    node = Node(_settings(folder / "node"))
    node.start()
    try:
        files = []
        for n in range(SERIES):
            files += write_mr_series(folder / f"s{n}", SeriesSpec(series_description=f"t1_se_tra {n}", slices=SLICES,
                                                                  rows=24, columns=24, seed=n))
        files += write_mr_series(folder / "dyn", SeriesSpec(series_description="ep2d_perf dynamic",
                                                            slices=DYNAMIC[0], time_points=DYNAMIC[1], rows=24,
                                                            columns=24, seed=99))
        report = send_files(files, ae_title="PACSNODE", host="127.0.0.1", port=node.settings.dicom.port,
                            calling_ae="SCANNER")
        assert report.sent == len(files)
        total = SERIES + 1
        _wait(lambda: _query(node, "SELECT COUNT(*) FROM deliveries WHERE state = 'dead'") == [(total,)], 90,
              "every job done and its SR dead-lettered")
        assert node.http is not None
        with httpx.Client(base_url=f"http://127.0.0.1:{node.http.port}", timeout=30) as client:
            yield node, client
    finally:
        node.stop()
        logger.setLevel(level)


def _links(html: str, pattern: str) -> list[str]:
    return sorted(set(re.findall(rf'href="(/ui/{pattern})"', html)))


def test_dashboard_counts_match_the_index(running) -> None:
    node, client = running
    page = client.get("/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    instances = _query(node, "SELECT COUNT(*) FROM instances")[0][0]
    assert instances == SERIES * SLICES + DYNAMIC[0] * DYNAMIC[1] + SERIES + 1  # inputs + one SR per job
    assert re.search(rf'data-testid="instances">{instances}<', html)
    assert re.search(r'data-state="done">4<', html) and re.search(r'data-state="failed">0<', html)
    assert re.search(r'data-testid="dead">4<', html) and re.search(r'data-testid="pending">0<', html)
    assert "qc" in html.split('data-testid="queue"')[1].split("</table>")[0]
    assert "no free-space threshold" in html and "free of" in html  # disk card (min_free_gb = 0)
    # every stored instance was counted for the instances-per-second history
    pages = node.http.app.pages  # type: ignore[union-attr]
    time.sleep(1.05)  # the history holds complete seconds only
    assert sum(pages.rate.per_second(600)) == instances
    live = client.get("/ui/live/dashboard")
    assert live.status_code == 200 and "<html" not in live.text and 'data-testid="instances"' in live.text
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
    assert client.get("/ui/static/ui.js").status_code == 200
    assert "text/css" in client.get("/ui/static/ui.css").headers["content-type"]


def test_studies_series_job_outputs(running) -> None:
    _, client = running
    studies = client.get("/ui/studies").text
    study_links = _links(studies, r"studies/[0-9.]+")
    assert len(study_links) == SERIES + 1  # a study per generated series (seeds differ)
    assert "DEMO-0001" in studies
    study = next(page for page in (client.get(link).text for link in study_links) if "t1_se_tra" in page)
    series_links = _links(study, r"series/[0-9.]+")
    assert len(series_links) == 2  # the MR series and the qc SR series
    assert "complete" in study and "result" in study
    mr_series = next(s for s in series_links if "1.2.826.0.1.3680043.10.1379.5." not in s)
    sr_series = next(s for s in series_links if "1.2.826.0.1.3680043.10.1379.5." in s)
    series = client.get(mr_series).text
    assert f'data-testid="instance-count">{SLICES}<' in series
    job_link = _links(series, r"jobs/[0-9a-f]{32}")[0]
    job = client.get(job_link).text
    assert 'class="state s-done">done<' in job
    assert "volume_loadable" in job and "not for clinical use" in job.lower()
    assert "job " in job and 'data-testid="job-log"' in job and "done: 1 output(s)" in job
    downloads = _links(job, r"instances/[0-9.]+/file")
    assert len(downloads) == 1
    sr = client.get(downloads[0])
    assert sr.headers["content-type"] == "application/dicom"
    assert dcmread(io.BytesIO(sr.content)).Modality == "SR"
    assert 'class="state s-dead">dead<' in job
    rendered = client.get(_links(series, r"instances/[0-9.]+/rendered.png\?size=512")[0].replace("&amp;", "&"))
    image = Image.open(io.BytesIO(rendered.content))
    assert rendered.headers["content-type"] == "image/png" and image.size == (24, 24)
    thumbnail = client.get(mr_series + "/thumbnail.png")
    assert thumbnail.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (24, 24)
    made_by = client.get(sr_series).text
    assert job_link in made_by  # the result series links back to the job that made it
    sr_render = client.get(downloads[0].replace("/file", "/rendered.png"))
    assert sr_render.status_code == 404 and "no Pixel Data" in sr_render.text
    assert client.get("/ui/studies", params={"offset": "x"}).status_code == 200
    assert client.get("/ui/jobs/" + "0" * 32).status_code == 404
    assert client.get("/ui/series/1.2.3").status_code == 404
    assert client.get(sr_series + "/thumbnail.png").status_code == 404  # an SR has no image


def test_dynamic_series_has_a_time_curve(running) -> None:
    node, client = running
    uid = _query(node, "SELECT series_uid FROM series WHERE series_description = 'ep2d_perf dynamic'")[0][0]
    page = client.get(f"/ui/series/{uid}").text
    assert f"/ui/series/{uid}/curve.png" in page
    curve = client.get(f"/ui/series/{uid}/curve.png")
    assert curve.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(curve.content)).size == (320, 140)
    still = _query(node, "SELECT series_uid FROM series WHERE series_description = 't1_se_tra 0'")[0][0]
    assert client.get(f"/ui/series/{still}/curve.png").status_code == 404


def test_routes_test_box_agrees_with_the_cli(running) -> None:
    node, client = running
    page = client.get("/ui/routes", params={"description": "t1_se_tra", "modality": "MR"}).text
    assert "→ routes: qc" in page and "MATCH" in page
    none = client.get("/ui/routes", params={"description": "t1_se_tra", "modality": "CT"}).text
    assert "→ routes: none" in none and "no match" in none
    config = node.settings.storage.path.parent / "node.toml"
    cli = subprocess.run([str(VENV_BIN / "pacsnode"), "routes", "test", "--config", str(config), "--description",
                          "t1_se_tra", "--modality", "CT"], capture_output=True, text=True, check=True,
                         cwd=config.parent).stdout
    assert "→ routes: none" in cli
    table = page.split('data-testid="routes"')[1].split("</table>")[0]
    assert "qc" in table and "Modality ~ ^MR$" in table


def test_outbox_retry_and_reprocess(running) -> None:
    node, client = running
    outbox = client.get("/ui/outbox").text
    assert "Dead letters <small class=\"muted\">4</small>" in outbox
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', outbox).group(1)
    forged = client.post("/ui/outbox/retry", data={"destination": "pacs"}, follow_redirects=False)
    assert forged.status_code == 403  # no CSRF field: not from our page
    done = client.post("/ui/outbox/retry", data={"destination": "pacs", "csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and "queued%204%20delivery" in done.headers["location"]
    # sent again (nobody listens), so dead again after one more attempt each
    _wait(lambda: _query(node, "SELECT COUNT(*) FROM deliveries WHERE state = 'dead' AND attempts = 1") == [(4,)]
          and _query(node, "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == [(0,)], 30, "retried")
    uid = _query(node, "SELECT series_uid FROM series WHERE series_description = 't1_se_tra 1'")[0][0]
    again = client.post(f"/ui/series/{uid}/reprocess", data={"analyzer": "qc", "csrf": csrf}, follow_redirects=False)
    assert again.status_code == 303 and "queued%201%20job" in again.headers["location"]
    _wait(lambda: _query(node, f"SELECT state FROM jobs WHERE series_uid = '{uid}' AND generation = 1") == [("done",)],
          60, "the second round")
    page = client.get(f"/ui/series/{uid}").text
    assert page.count('class="state s-done">done<') == 2 and "qc#1" in page
    # both actions are in the audit trail, with who did them
    actions = _query(node, "SELECT actor, detail FROM audit_log WHERE event = 'operator-action' ORDER BY id")
    assert [json.loads(detail)["action"] for _, detail in actions] == ["retry-deliveries", "reprocess"]
    assert all(actor.startswith("status page: ") for actor, _ in actions)
    assert json.loads(actions[0][1])["deliveries"] == 4 and json.loads(actions[1][1])["series_uid"] == uid


def test_tokens_guard_pages_and_actions(running, tmp_path: Path) -> None:
    node, _ = running
    reader, writer = "r" * 24, "w" * 24
    tokens = f"""
[[http.tokens]]
token = "{reader}"
scope = "read"
name = "viewer"

[[http.tokens]]
token = "{writer}"
scope = "read-write"
name = "operator"
"""
    settings = _settings(tmp_path / "tok")
    settings = settings.model_copy(update={
        "http": settings.http.model_copy(update={"tokens": _settings(tmp_path / "tok2", extra_http=tokens)
                                                 .http.tokens}),
        "storage": node.settings.storage})
    app = mount_ui(create_app(settings, store=node.store, index=node.index, ingestor=node.ingestor), settings,
                   index=node.index, store=node.store)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        first = client.get("/ui/jobs", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"].startswith("/ui/login?next=%2Fui%2Fjobs")
        assert client.get("/ui/live/dashboard", headers={"X-Requested-With": "fetch"}).status_code == 401
        assert client.post("/ui/login", data={"token": "x" * 24}).status_code == 401
        signed = client.post("/ui/login", data={"token": reader, "next": "/ui/jobs"}, follow_redirects=False)
        assert signed.status_code == 303 and signed.headers["location"] == "/ui/jobs"
        cookie = signed.cookies["pacsnode_ui"]
        assert reader not in cookie and "httponly" in signed.headers["set-cookie"].lower()
        assert "samesite=strict" in signed.headers["set-cookie"].lower()
        jobs = client.get("/ui/jobs")
        assert jobs.status_code == 200 and "viewer (read)" in jobs.text
        outbox = client.get("/ui/outbox").text
        assert 'data-testid="retry"' not in outbox  # no action buttons for a read token
        assert client.post("/ui/outbox/retry", data={}).status_code == 403
        # the cookie is for the pages only: DICOMweb still wants the bearer token
        assert client.get("/dicom-web/studies").status_code == 401
        client.post("/ui/logout")
        client.cookies.clear()
        client.post("/ui/login", data={"token": writer})
        outbox = client.get("/ui/outbox").text
        assert 'data-testid="retry"' in outbox and "operator (read-write)" in outbox
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', outbox).group(1)
        assert client.post("/ui/outbox/retry", data={"csrf": "0" * 32}).status_code == 403
        retried = client.post("/ui/outbox/retry", data={"csrf": csrf}, follow_redirects=False)
        assert retried.status_code == 303 and "delivery" in retried.headers["location"]
        client.cookies.clear()
        bearer = client.get("/ui/", headers={"Authorization": f"Bearer {writer}"})
        assert bearer.status_code == 200 and 'data-testid="instances"' in bearer.text
        by_script = client.post("/ui/outbox/retry", headers={"Authorization": f"Bearer {writer}"},
                                follow_redirects=False)
        assert by_script.status_code == 303  # a script with the header needs no CSRF field
        wrong = client.get("/ui/", headers={"Authorization": "Bearer " + "z" * 24}, follow_redirects=False)
        assert wrong.status_code == 303


def test_audit_page_lists_what_the_trail_holds(running) -> None:
    node, client = running
    stored = _query(node, "SELECT COUNT(*) FROM audit_log WHERE event = 'instances-stored' AND actor = 'SCANNER'")[0][0]
    assert stored > 0
    rows = "SELECT COUNT(*) FROM audit_log WHERE event = 'instances-stored'"
    before = _query(node, rows)[0][0]
    page = client.get("/ui/audit", params={"since": "1h", "event": "instances-stored"}).text
    table = page.split('data-testid="audit"')[1].split("</table>")[0]
    assert before <= table.count("<tr><td") <= _query(node, rows)[0][0]  # the trail is flushed once a second
    assert "SCANNER" in table and "association" not in table
    associations = client.get("/ui/audit", params={"event": "association"}).text
    assert "accepted" in associations or "released" in associations
    wrong = client.get("/ui/audit", params={"since": "yesterday"}).text
    assert "is not a duration" in wrong
