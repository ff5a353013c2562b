"""The status pages in a real browser (headless Debian Chromium driven by Playwright) while
50 small series flow through the qc chain into Orthanc.

The test signs in with a read-write token, watches the dashboard refresh itself while
the series arrive over several associations, opens a job page, tests a SeriesDescription
on the routes page, and saves screenshots (the dashboard and a job page) in its temporary
folder; with ``PACSNODE_UPDATE_SCREENSHOTS=1`` the final ones are copied to docs/img/ for the
README (so that an ordinary test run leaves the checkout as it was).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from node.dimse.scu import send_files
from node.samples import SeriesSpec, write_mr_series
from tests.peers import free_port, query_index, start_node, wait_for_port, write_node_config

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SERIES = 50
SLICES = 5
TOKEN = "ui-browser-test-token-rw-0001"
QC_ONLY = """
[[route]]
name = "qc"
analyzer = "qc"
exclusive = false
match = { Modality = '^MR$' }
send_to = ["pacs"]
"""


def _chromium() -> str | None:
    """Debian's chromium (or the one named by PACSNODE_CHROMIUM)."""
    named = os.environ.get("PACSNODE_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _count(index: Path, sql: str) -> int:
    rows = query_index(index, sql)
    return int(rows[0][0]) if rows else 0


def test_dashboard_and_job_page_under_load(tmp_path: Path, orthanc) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                                   "playwright; the dev extras have it)")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium found: install Debian's chromium (scripts/install-system.sh does) or set "
                    "PACSNODE_CHROMIUM to a Chromium binary")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    folder = tmp_path / "node"
    folder.mkdir()
    (folder / "routes.toml").write_text(QC_ONLY, encoding="utf-8")
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port, extra=f"""stable_after = 2.0

[jobs]
workers = 2
backoff_seconds = 0.5

[[destinations]]
name = "pacs"
kind = "dimse"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
backoff_seconds = 0.5
""")
    with open(config, "a", encoding="utf-8") as extra:
        extra.write(f'\n[[http.tokens]]\ntoken = "{TOKEN}"\nscope = "read-write"\nname = "operator"\n')
    index = folder / "var" / "index.sqlite"
    total_instances = SERIES * SLICES + SERIES  # the inputs and one qc SR per series
    senders = ThreadPoolExecutor(4, thread_name_prefix="scanner")
    # the node starts while the series are written and the browser starts
    starting = senders.submit(start_node, config, storage=folder / "var", port=port, http_port=http_port,
                              log=folder / "node.log")
    node = None
    sent: list[int] = []
    try:
        series = [write_mr_series(tmp_path / "in" / f"s{n:02d}", SeriesSpec(
            patient_id=f"UI-{n:03d}", patient_name=f"Browser^Test{n}", series_description=f"t1_se_tra {n}",
            slices=SLICES, rows=32, columns=32, seed=n)) for n in range(SERIES)]
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            try:
                node = starting.result(timeout=150)
                wait_for_port(http_port, timeout=30, process=node.process)  # HTTP starts after DIMSE
                context = browser.new_context(viewport={"width": 1360, "height": 900})
                page = context.new_page()
                base = f"http://127.0.0.1:{http_port}"
                page.goto(base + "/ui/")
                assert "/ui/login" in page.url  # a token is configured: sign in first
                page.fill("input[name=token]", TOKEN)
                page.click("button[type=submit]")
                page.wait_for_selector("[data-testid=instances]")
                assert page.inner_text("[data-testid=instances]") == "0"

                # four scanners, one association per series
                def push(files: list[Path]) -> None:
                    report = send_files(files, ae_title="PACSNODE", host="127.0.0.1", port=port,
                                        calling_ae="SCANNER")
                    sent.append(report.sent)

                futures = [senders.submit(push, files) for files in series]
                # the dashboard refreshes itself: no reload from here on
                page.wait_for_function("() => Number(document.querySelector('[data-testid=instances]')"
                                       ".textContent) >= 100", timeout=60_000)
                page.screenshot(path=str(shots / "dashboard-arriving.png"), full_page=True)
                page.wait_for_function("() => Number(document.querySelector('[data-state=done]').textContent) > 0",
                                       timeout=60_000)
                page.screenshot(path=str(shots / "dashboard-under-load.png"), full_page=True)
                for future in futures:
                    future.result(timeout=60)
                assert sum(sent) == SERIES * SLICES

                # a finished job while the others flow
                job = context.new_page()
                job.goto(base + "/ui/jobs?state=done")
                job.click("[data-testid=jobs] tbody tr:first-child a")
                job.wait_for_selector("[data-testid=job-state]")
                assert job.inner_text("[data-testid=job-state]") == "done"
                assert "volume_loadable" in job.inner_text("[data-testid=findings]")
                assert "Comprehensive SR" in job.inner_text("[data-testid=outputs]") or \
                    "SR" in job.inner_text("[data-testid=outputs]")
                done_so_far = _count(index, "SELECT COUNT(*) FROM jobs WHERE state = 'done'")
                job.screenshot(path=str(shots / "job.png"), full_page=True)

                # everything analyzed and delivered: the dashboard says so by itself
                page.wait_for_function(
                    f"() => document.querySelector('[data-state=done]').textContent === '{SERIES}' && "
                    "document.querySelector('[data-testid=pending]').textContent === '0' && "
                    f"document.querySelector('[data-testid=instances]').textContent === '{total_instances}'",
                    timeout=90_000)
                assert page.inner_text("[data-testid=dead]") == "0"
                assert page.inner_text("[data-state=failed]") == "0"
                assert page.inner_text("[data-sent=pacs]") == str(SERIES)
                page.screenshot(path=str(shots / "dashboard-final.png"), full_page=True)
                # the job page of a job still delivering or done shows its outputs sent now
                job.reload()
                assert "sent" in job.inner_text("[data-testid=outputs]")
                job.screenshot(path=str(shots / "job-final.png"), full_page=True)
                # the read-write button: a form POST with the session cookie and its CSRF field
                job.click("text=Run qc again on this series")
                job.wait_for_selector(".flash")
                assert job.inner_text(".flash") == "queued 1 job(s) of qc"
                assert "/ui/series/" in job.url and "qc#1" in job.inner_text("main")

                # the routes test box decides like `pacsnode routes test`
                page.goto(base + "/ui/routes")
                page.fill("input[name=description]", "ep2d_perf")
                page.fill("input[name=modality]", "CT")
                page.click("form.routetest button")
                assert page.inner_text("[data-testid=chosen]") == "→ routes: none"
                page.fill("input[name=modality]", "MR")
                page.click("form.routetest button")
                assert page.inner_text("[data-testid=chosen]") == "→ routes: qc"

                studies = browser.new_context().new_page()
                studies.goto(base + "/ui/studies")
                assert "/ui/login" in studies.url  # a new context has no session
            finally:
                browser.close()
    finally:
        senders.shutdown(wait=True, cancel_futures=True)
        if node is None and starting.done() and starting.exception() is None:
            node = starting.result()
        if node is not None:
            node.stop()
    assert _count(index, "SELECT COUNT(*) FROM deliveries d JOIN jobs j ON j.id = d.job_id "
                         "WHERE j.generation = 0 AND d.state = 'sent'") == SERIES
    assert _count(index, "SELECT COUNT(*) FROM jobs WHERE generation = 1") == 1  # the button's job
    assert 0 < done_so_far <= SERIES
    for name in ("dashboard-arriving.png", "dashboard-under-load.png", "job.png", "dashboard-final.png",
                 "job-final.png"):
        assert (shots / name).stat().st_size > 10_000, name
    if os.environ.get("PACSNODE_UPDATE_SCREENSHOTS") == "1":
        docs = ROOT / "docs" / "img"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots / "dashboard-under-load.png", docs / "ui-dashboard.png")
        shutil.copyfile(shots / "job-final.png", docs / "ui-job.png")
