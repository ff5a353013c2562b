"""OHIF 3 reads the node's results in a real browser (Debian Chromium driven by Playwright).

The node of tests/viewer_study.py serves the OHIF build that ``scripts/install-ohif.sh`` puts in
its cache folder (``@ohif/app``, pinned) at ``/viewer``, configured for its own DICOMweb root.
For each analyzer's phantom study the test checks what a radiologist sees:

* the study list lists every phantom study;
* the analyzed series displays (a viewport with an image, not a blank canvas);
* each SEG on a 3D series overlays it (coloured pixels appear on the grey image);
* each SR opens without an error and draws its lesions' regions with their measurements
  (the SVG labels show the SR's values, e.g. "Volume");
* SEG, SR and Parametric Maps of a 4D (DSC, DCE) series: they lie on the derived pre-bolus
  series the analyzer writes beside them (OHIF 3.13 overlays nothing on a dynamic volume: its SEG
  loader finds no cached image of one, its PMAP loader wants a static volume), and OHIF shows
  them there (docs/viewer.md).

Screenshots go to the test's folder; with ``PACSNODE_UPDATE_SCREENSHOTS=1`` they are copied to
docs/img/ (the README shows them).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.viewer_study import AnalyzedNode

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
#: Chromium as this machine runs it headless (no GPU, no background connections out).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ANALYZERS = ("dsc", "dce", "meningioma", "brainmets", "spine")
DYNAMIC = ("dsc", "dce")
#: Description suffix of the derived 3D series the outputs of a dynamic series lie on (docs/viewer.md).
REFERENCE = "pre-bolus mean"


class Viewer:
    """One browser page on the node's /viewer, with the console errors it raised."""

    def __init__(self, context: Any, base: str, shots: Path) -> None:
        self.context = context
        self.base = base
        self.shots = shots
        self.errors: list[str] = []
        self.tour_skipped = False
        self.page = self.new_page()

    def new_page(self) -> Any:
        """A new tab (the previous one closed): a page OHIF left unresponsive is not reused."""
        if getattr(self, "page", None) is not None:
            self.page.close()
        page = self.context.new_page()
        page.set_default_timeout(120_000)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page = page
        return page

    def open_study(self, study: str) -> None:
        self.errors.clear()
        self.page.goto(f"{self.base}/viewer/viewer?StudyInstanceUIDs={study}")
        self.page.wait_for_selector("canvas", timeout=120_000)
        tour = self.page.locator("text=Skip all")
        if not self.tour_skipped:  # the onboarding tour shows once per browser profile: wait for it once
            try:
                tour.wait_for(timeout=5_000)
                tour.click()
                self.tour_skipped = True
            except Exception:  # noqa: BLE001 - not shown (yet)
                pass
        self.page.wait_for_timeout(3_000)
        if tour.count() and tour.first.is_visible():  # shown after all: out of the way
            tour.first.click()
            self.tour_skipped = True

    def open_series(self, description: str, wait_ms: int = 8_000) -> None:
        """Double-click a series in the study browser (as a reader does) and accept OHIF's prompt."""
        self.errors.clear()
        self.page.locator(f"text={description}").first.dblclick()
        self.page.wait_for_timeout(wait_ms // 2)
        yes = self.page.locator("button:has-text('Yes')")
        if yes.count() and yes.first.is_visible():
            yes.first.click()
        self.page.wait_for_timeout(wait_ms // 2)

    def viewport(self, name: str) -> np.ndarray:
        """The main viewport's pixels (RGB), saved as ``name``.png."""
        from PIL import Image

        canvas = self.page.locator("canvas").first
        box = canvas.bounding_box()
        assert box is not None, "no viewport canvas"
        png = self.page.screenshot(clip=box)
        (self.shots / f"{name}.png").write_bytes(png)
        self.page.screenshot(path=str(self.shots / f"{name}-page.png"))
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)

    def svg_text(self, wait_ms: int = 0) -> str:
        """The annotation labels drawn over the viewport; waits up to ``wait_ms`` for the first
        (OHIF draws an SR's measurements after hydrating it, which takes longer on a busy machine)."""
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            text = " ".join(t or "" for t in self.page.locator("svg text").all_text_contents())
            if text.strip() or time.monotonic() >= deadline:
                return text
            self.page.wait_for_timeout(500)


def _coloured(pixels: np.ndarray) -> int:
    """Pixels that are neither grey nor OHIF's blue: overlays and annotations on an MR image.

    OHIF's own controls over the viewport (the cine player, the loading bar) are blue; counting
    them let a viewport without any overlay pass.
    """
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    not_blue = pixels[..., 2] < np.maximum(pixels[..., 0], pixels[..., 1])
    return int(((spread > 60) & not_blue).sum())


@pytest.fixture(scope="module")
def viewer(analyzed_node: AnalyzedNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extras)")
    chromium = os.environ.get("PACSNODE_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        pytest.skip("no Chromium: install Debian's chromium (scripts/install-system.sh does)")
    if not _viewer_served(analyzed_node):
        pytest.skip("the OHIF viewer is not installed: scripts/install-ohif.sh could not reach npm "
                    "(run `make test` with access to the npm registry)")
    shots = tmp_path_factory.mktemp("ohif-shots")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            yield Viewer(context, analyzed_node.url, shots)
        finally:
            browser.close()
    if os.environ.get("PACSNODE_UPDATE_SCREENSHOTS") == "1":
        docs = ROOT / "docs" / "img"
        for name in ("ohif-study-list", "ohif-brainmets-sr", "ohif-spine-seg", "ohif-dsc"):
            if (shots / f"{name}-page.png").exists():
                shutil.copyfile(shots / f"{name}-page.png", docs / f"{name}.png")


def _viewer_served(node: AnalyzedNode) -> bool:
    import httpx

    return httpx.get(node.url + "/viewer/", timeout=30).status_code == 200


def test_study_list_lists_every_phantom_study(viewer: Viewer, analyzed_node: AnalyzedNode) -> None:
    viewer.page.goto(viewer.base + "/viewer/")
    names = {str(n).split("^")[0] for (n,) in analyzed_node.rows("SELECT patient_name FROM patients")}
    viewer.page.wait_for_selector("text=" + sorted(names)[0].title(), timeout=120_000)
    text = viewer.page.inner_text("body").upper()
    studies = analyzed_node.rows("SELECT study_description FROM studies")
    assert len(studies) >= 6  # dsc, dce (and its pre-treatment study), t1c, brainmets, spine
    for (description,) in studies:
        assert str(description).upper() in text, description
    viewer.page.screenshot(path=str(viewer.shots / "ohif-study-list-page.png"))
    assert not viewer.errors, viewer.errors


@pytest.mark.parametrize("analyzer", ANALYZERS)
def test_source_series_displays(viewer: Viewer, analyzed_node: AnalyzedNode, analyzer: str) -> None:
    viewer.open_study(analyzed_node.study_of(analyzer))
    deadline = time.monotonic() + 60  # a dynamic series of 40 time points renders later on a busy machine
    while True:
        grey = viewer.viewport(f"ohif-{analyzer}").mean(axis=2)
        if (grey.std() > 10 and (grey > 30).mean() > 0.05) or time.monotonic() >= deadline:
            break
        viewer.page.wait_for_timeout(2_000)
    assert grey.std() > 10 and (grey > 30).mean() > 0.05, f"{analyzer}: the viewport shows no image"
    assert not viewer.errors, viewer.errors


@pytest.mark.parametrize("analyzer", [a for a in ANALYZERS if a not in DYNAMIC])
def test_seg_overlays_its_3d_source(viewer: Viewer, analyzed_node: AnalyzedNode, analyzer: str) -> None:
    study = analyzed_node.study_of(analyzer)
    segs = [d for d in analyzed_node.series_of(study, "SEG") if analyzer in d]
    if not segs:
        pytest.skip(f"{analyzer} wrote no SEG for its phantom (nothing to segment)")
    for description in segs:
        viewer.open_study(study)
        before = _coloured(viewer.viewport(f"ohif-{analyzer}-before-seg"))
        viewer.open_series(description)
        after = _coloured(viewer.viewport(f"ohif-{analyzer}-seg"))
        assert after > before + 20, f"{description}: no overlay ({before} -> {after} coloured pixels)"
        assert not viewer.errors, viewer.errors


def _reference_series(analyzed_node: AnalyzedNode, study: str, analyzer: str) -> str:
    """The derived pre-bolus series of a dynamic source in ``study``."""
    (description,) = [d for d in analyzed_node.series_of(study, "MR", prefix=f"pacsnode {analyzer}")
                      if d.endswith(REFERENCE)]
    return description


def _open_sr(viewer: Viewer, analyzed_node: AnalyzedNode, analyzer: str) -> None:
    study = analyzed_node.study_of(analyzer)
    (description, *_) = [d for d in analyzed_node.series_of(study, "SR") if analyzer in d]
    viewer.open_study(study)
    if analyzer in DYNAMIC:
        # OHIF opens the dynamic series in a volume viewport (the cine) and, from there, does not
        # go to the SR's region on the derived series; a reader shows the derived series first.
        viewer.open_series(_reference_series(analyzed_node, study, analyzer))
    viewer.open_series(description, wait_ms=10_000)
    assert not viewer.errors, viewer.errors
    assert "Something went wrong" not in viewer.page.inner_text("body", timeout=30_000)
    findings = analyzed_node.rows(
        f"SELECT findings FROM jobs WHERE route LIKE '{analyzer}%' AND state = 'done' AND study_uid = '{study}'")
    with_regions = any(json.loads(str(f) or "{}").get("lesions") for (f,) in findings)
    labels = viewer.svg_text(wait_ms=30_000 if with_regions else 0)
    pixels = viewer.viewport(f"ohif-{analyzer}-sr")
    if with_regions:  # groups with regions
        assert labels.strip(), f"{description}: no measurement drawn"
        assert _coloured(pixels) > 20
    assert pixels.mean() > 10  # the source image is shown under the regions


@pytest.mark.parametrize("analyzer", [a for a in ANALYZERS if a not in DYNAMIC])
def test_sr_opens_with_its_measurements(viewer: Viewer, analyzed_node: AnalyzedNode, analyzer: str) -> None:
    _open_sr(viewer, analyzed_node, analyzer)


# The dsc SR opens in under 40 s on a loaded 2-core machine; a hang is known after 90.
_PROBE_LIMIT_S = 90

_PROBE = """
import sys
from pathlib import Path
from playwright.sync_api import sync_playwright
from tests.test_ohif_browser import CHROMIUM_ARGS, Viewer, _open_sr
from tests.viewer_study import AnalyzedNode


class _Node:
    storage = Path(sys.argv[1])
    http_port = int(sys.argv[2])


with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=sys.argv[3], args=CHROMIUM_ARGS)
    viewer = Viewer(browser.new_context(viewport={"width": 1400, "height": 900}), "", Path(sys.argv[4]))
    viewer.base = f"http://127.0.0.1:{sys.argv[2]}"
    _open_sr(viewer, AnalyzedNode(_Node(), Path()), sys.argv[5])
    print("opened")
"""


@pytest.mark.parametrize("analyzer", DYNAMIC)
def test_sr_on_a_4d_source(viewer: Viewer, analyzed_node: AnalyzedNode, analyzer: str) -> None:
    """The SR of a dynamic series, whose regions lie on the derived pre-bolus series, opens with
    its measurements. OHIF 3.13 stopped responding on SR regions placed on the dynamic series
    itself (the page, and Playwright with it, hung), so the SR is opened by a separate browser
    process with a time limit: a hang fails the test instead of the suite."""
    chromium = os.environ.get("PACSNODE_CHROMIUM") or shutil.which("chromium") or ""
    probe = subprocess.Popen([sys.executable, "-c", _PROBE, str(analyzed_node.node.storage),
                              str(analyzed_node.node.http_port), chromium, str(viewer.shots), analyzer],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        output, _ = probe.communicate(timeout=_PROBE_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(probe.pid, signal.SIGKILL)  # the browser the probe started goes with it
        probe.communicate()
        pytest.fail(f"OHIF stopped responding on the {analyzer} SR (4D source)")
    if probe.returncode != 0 or "opened" not in output:
        pytest.fail(f"OHIF does not show the {analyzer} SR on its 4D source: {output.strip()[-300:]}")


@pytest.mark.parametrize("analyzer", DYNAMIC)
def test_seg_overlays_its_4d_source(viewer: Viewer, analyzed_node: AnalyzedNode, analyzer: str) -> None:
    """The SEG of a dynamic series lies on its derived pre-bolus series, which OHIF overlays."""
    study = analyzed_node.study_of(analyzer)
    segs = [d for d in analyzed_node.series_of(study, "SEG") if analyzer in d]
    if not segs:
        pytest.skip(f"{analyzer} found no lesion in its phantom study and wrote no SEG (nothing to segment)")
    viewer.new_page()
    viewer.open_study(study)
    before = _coloured(viewer.viewport(f"ohif-{analyzer}-before-seg"))
    viewer.open_series(segs[0])
    assert not viewer.errors, viewer.errors
    after = _coloured(viewer.viewport(f"ohif-{analyzer}-seg"))
    assert after > before + 20, f"{segs[0]}: no overlay ({before} -> {after} coloured pixels)"


@pytest.mark.parametrize("analyzer", DYNAMIC)
def test_parametric_map_displays(viewer: Viewer, analyzed_node: AnalyzedNode, analyzer: str) -> None:
    """A map of a dynamic series is fused over its derived pre-bolus series: the viewport changes
    where the map has values (OHIF 3.13 draws a map in grey, so colour is no criterion)."""
    study = analyzed_node.study_of(analyzer)
    maps = [d for d in analyzed_node.series_of(study, "MR", prefix=f"pacsnode {analyzer}")
            if not d.endswith(REFERENCE)]
    assert maps, f"{analyzer} wrote no map"
    viewer.new_page()
    viewer.open_study(study)
    viewer.open_series(_reference_series(analyzed_node, study, analyzer))
    alone = viewer.viewport(f"ohif-{analyzer}-reference")
    viewer.open_series(maps[0], wait_ms=20_000)
    assert not viewer.errors, viewer.errors
    fused = viewer.viewport(f"ohif-{analyzer}-pm")
    # OHIF's "Loading Parametric Map..." bar lies over the viewport while (and, failing, after) it loads
    assert not viewer.page.locator("text=Loading Parametric Map").first.is_visible(), "the map never loaded"
    changed = int((np.abs(fused - alone).max(axis=2) > 25).sum())
    assert changed > 500, f"{maps[0]}: {changed} viewport pixels changed by the map"
