"""``dce`` end to end: the pre-treatment study, then the follow-up study of the same patient,
sent with dcmtk ``storescu`` to a running node; the second SR stored in Orthanc cites the first.

The phantom is written by ``pacsnode phantom dce --small`` (pre-treatment study included):
the smallest size the generator allows (32×32×4 voxels of 7.2×7.2×10 mm, 60 frames of 5 s). In
this case (seed 1) the lesion is not hyperperfused before treatment, and not after it:
the study's rule reads the follow-up as "unreliable marker of recurrence", not as
necrosis. Each study carries a lesion SEG (as a radiologist would send), drawn from the
phantom's truth, so both studies have a matched lesion. Both SRs are fetched back from
Orthanc and re-read with highdicom.

The helpers here are used by ``tests/test_priors.py`` and ``tests/test_dce_late.py`` too.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from analyzers._shared import outputs as out
from analyzers._shared.volume import load_series
from sr_templates import codes as c
from sr_templates.dce import TEMPLATE
from tests.peers import (
    ROOT,
    VENV_BIN,
    NodeProcess,
    OrthancProcess,
    free_port,
    have,
    query_index,
    start_node,
    wait_until,
    write_node_config,
)

pytestmark = [pytest.mark.peers, pytest.mark.slow]

#: Options on top of ``--small`` (see the module docstring).
PHANTOM_OPTIONS = {"pretreatment": True}

SHIPPED_ROUTES = ("vfa", "seg", "dce")


def shipped_routes(names: tuple[str, ...] = SHIPPED_ROUTES) -> str:
    """The ``[[route]]`` blocks of the shipped ``config/routes.toml`` with these names (their order kept)."""
    text = (ROOT / "config" / "routes.toml").read_text(encoding="utf-8")
    blocks = text.split("[[route]]")[1:]
    kept = []
    for block in blocks:
        name = re.search(r'^name = "([^"]+)"', block, re.MULTILINE)
        if name and name.group(1) in names:
            body = "\n".join(line for line in block.splitlines() if not line.startswith("#"))
            kept.append("[[route]]" + body.rstrip() + "\n")
    assert [re.search(r'name = "([^"]+)"', b).group(1) for b in kept] == list(names)  # type: ignore[union-attr]
    return "\n".join(kept)


def write_phantom(folder: Path, seed: int, label: str) -> Path:
    """One ``dce`` phantom case (follow-up + pre-treatment study) by the ``pacsnode phantom`` CLI."""
    args = [str(VENV_BIN / "pacsnode"), "phantom", "dce", "--small", "--out", str(folder), "--seed", str(seed),
            "--no-progress", "--set", f"label={json.dumps(label)}"]
    for key, value in PHANTOM_OPTIONS.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    subprocess.run(args, check=True, capture_output=True, timeout=300, cwd=ROOT)
    case = folder / "dce" / "case-0001"
    assert (case / "dce").is_dir() and (case / "pre_dce").is_dir()
    return case


def write_truth_seg(case: Path, tag: str) -> Path:
    """A lesion SEG of one study drawn from the phantom's truth (the radiologist's SEG)."""
    truth = np.load(case / "truth" / "maps.npz")
    dynamic = load_series(sorted((case / f"{tag}dce").iterdir()))
    seg = out.build_segmentation(dynamic, [out.Segment(TEMPLATE.segment_classes["lesion"],
                                                       truth[f"{tag}lesion_labels"] > 0, tracking_id="drawn")],
                                 out.Algorithm(name="phantom truth", version="1"))
    folder = case / f"{tag}seg"
    folder.mkdir(exist_ok=True)
    seg.save_as(folder / "seg.dcm")
    return folder


def study_files(case: Path, tag: str, *, vfa: bool = True, seg: bool = False) -> list[Path]:
    """The files of one study: VFA series first (as a scanner sends them), the SEG, then the dynamic."""
    folders = sorted(case.glob(f"{tag}vfa_fa*")) if vfa else []
    if seg:
        folders.append(case / f"{tag}seg")
    folders.append(case / f"{tag}dce")
    return [p for folder in folders for p in sorted(folder.iterdir()) if p.is_file()]


def storescu(port: int, files: list[Path], *, called: str = "PACSNODE") -> None:
    """Send files with dcmtk's ``storescu`` (one association)."""
    # -R: propose the SOP classes of the files (storescu's default list lacks Segmentation Storage)
    result = subprocess.run(["storescu", "-R", "-aet", "SCANNER", "-aec", called, "127.0.0.1", str(port),
                             *map(str, files)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"storescu failed ({len(files)} files): {result.stderr[-2000:]}"


@dataclass
class DceNode:
    """A running node configured with the shipped vfa/seg/dce routes, sending to an Orthanc."""

    node: NodeProcess
    config: Path

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return query_index(self.config.parent / "var" / "index.sqlite", sql, params)

    def jobs(self) -> list[dict[str, Any]]:
        """The ledger's dce jobs, oldest first."""
        rows = self.query("SELECT id, series_uid, study_uid, state, generation, findings, outputs, supersedes, "
                          "inputs, error FROM jobs WHERE route = 'dce' ORDER BY created_at")
        keys = ("id", "series_uid", "study_uid", "state", "generation", "findings", "outputs", "supersedes",
                "inputs", "error")
        found = []
        for row in rows:
            item = dict(zip(keys, row, strict=True))
            for key in ("findings", "outputs", "inputs"):
                item[key] = json.loads(item[key]) if item[key] else None
            found.append(item)
        return found

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest round of the dce job of each series (a late related series adds rounds)."""
        found: dict[str, dict[str, Any]] = {}
        for job in self.jobs():
            if job["series_uid"] not in found or job["generation"] > found[job["series_uid"]]["generation"]:
                found[job["series_uid"]] = job
        return found

    def settled(self, series: int) -> bool:
        """``series`` dynamic series analysed: nothing queued or running, latest rounds done and delivered."""
        latest = self.latest()
        return (len(latest) == series and all(j["state"] in ("done", "failed", "rejected") for j in self.jobs())
                and all(j["state"] == "done" and self.delivered(j["id"]) for j in latest.values()))

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(predicate, timeout, what, self.node.log)

    def delivered(self, job_id: str) -> bool:
        rows = self.query("SELECT state FROM deliveries WHERE job_id = ?", (job_id,))
        return bool(rows) and all(r[0] == "sent" for r in rows)


def node_config(folder: Path, orthanc: OrthancProcess, *, port: int | None = None, priors: str = "",
                routes: str | None = None, destination_kind: str = "dimse") -> Path:
    """A node config with the shipped dce routes, quiet completion after 1.5 s and Orthanc as ``pacs``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.toml").write_text(routes or shipped_routes(), encoding="utf-8")
    if destination_kind == "dimse":
        destination = (f'kind = "dimse"\nae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\n'
                       f"port = {orthanc.dicom_port}")
    else:
        destination = f'kind = "dicomweb"\nurl = "{orthanc.url}/dicom-web"'
    extra = f"""stable_after = 1.5

[jobs]
workers = 2
backoff_seconds = 0.5

[[destinations]]
name = "pacs"
{destination}
backoff_seconds = 0.3
max_attempts = 50

{priors}
"""
    return write_node_config(folder, port=port or free_port(), http_port=free_port(), extra=extra)


def start(config: Path) -> DceNode:
    text = config.read_text()
    port = int(text.split("port = ")[1].split()[0])
    http_port = int(text.split("[http]")[1].split("port = ")[1].split()[0])
    node = start_node(config, storage=config.parent / "var", port=port, http_port=http_port,
                      log=config.parent / "node.log", env={"OMP_NUM_THREADS": "1"})
    return DceNode(node, config)


@pytest.fixture
def dce_node(tmp_path: Path, orthanc: OrthancProcess) -> Iterator[DceNode]:
    running = start(node_config(tmp_path / "node", orthanc))
    try:
        yield running
    finally:
        running.node.stop()


def orthanc_sr(orthanc: OrthancProcess, sop_uids: list[str], folder: Path) -> hd.sr.Comprehensive3DSR:
    """The SR among ``sop_uids`` as Orthanc holds it, re-read with highdicom."""
    import httpx

    for uid in sop_uids:
        found = httpx.post(orthanc.url + "/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": uid}},
                           timeout=30).json()
        if not found:
            continue
        data = httpx.get(f"{orthanc.url}/instances/{found[0]}/file", timeout=30).content
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uid}.dcm"
        path.write_bytes(data)
        if dcmread(path, stop_before_pixels=True).Modality == "SR":
            return hd.sr.srread(path)
    raise AssertionError(f"no SR among {len(sop_uids)} output(s) in Orthanc")


def sr_texts(dataset: Any) -> list[str]:
    """Every TextValue in an SR content tree."""
    found = [str(dataset.TextValue)] if "TextValue" in dataset else []
    for item in dataset.get("ContentSequence", []):
        found.extend(sr_texts(item))
    return found


def lesion_measurements(sr: hd.sr.Comprehensive3DSR) -> dict[str, float]:
    """Measurements of the SR's first lesion group by code meaning."""
    groups = sr.content.get_volumetric_roi_measurement_groups() or sr.content.get_planar_roi_measurement_groups()
    assert groups, "the SR has no lesion measurement group"
    return {m.name.meaning: float(m.value) for m in groups[0].get_measurements()}


@pytest.fixture(scope="module")
def flat_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed 1: a recurrence that was not hyperperfused before treatment (the rule's 'unreliable' case)."""
    case = write_phantom(tmp_path_factory.mktemp("dce-phantom"), seed=1, label="recurrence")
    write_truth_seg(case, "pre_")
    write_truth_seg(case, "")
    return case


@pytest.mark.skipif(not have("storescu"), reason="dcmtk storescu is missing")
def test_pretreatment_then_followup_sr_in_orthanc_cites_the_first(flat_case: Path, dce_node: DceNode,
                                                                  orthanc: OrthancProcess, tmp_path: Path) -> None:
    started = time.monotonic()
    storescu(dce_node.node.port, study_files(flat_case, "pre_", seg=True))
    dce_node.wait(lambda: dce_node.settled(1), 120, "the pre-treatment dce job, its outputs in Orthanc")
    (first,) = dce_node.latest().values()
    storescu(dce_node.node.port, study_files(flat_case, "", seg=True))
    dce_node.wait(lambda: dce_node.settled(2), 120, "the follow-up dce job, its outputs in Orthanc")
    second = next(j for j in dce_node.latest().values() if j["id"] != first["id"])
    elapsed = time.monotonic() - started
    assert first["study_uid"] != second["study_uid"]
    # Ktrans, vp, ve, kep, T1 maps (float and integer-scaled), SEG, SR, and the pre-bolus mean as a
    # derived MR image per slice of the dynamic series (the reference image of the maps)
    slices = len({tuple(round(float(v), 2) for v in dcmread(f, stop_before_pixels=True).ImagePositionPatient)
                  for f in (flat_case / "dce").iterdir() if f.is_file()})
    assert slices > 0
    assert len(first["outputs"]) == len(second["outputs"]) == 12 + slices

    first_sr = orthanc_sr(orthanc, first["outputs"], tmp_path / "first")
    second_sr = orthanc_sr(orthanc, second["outputs"], tmp_path / "second")
    assert first_sr.PatientID == second_sr.PatientID
    assert first_sr.StudyDate < second_sr.StudyDate
    assert str(second_sr.StudyInstanceUID) == second["study_uid"]
    first_values = lesion_measurements(first_sr)
    second_values = lesion_measurements(second_sr)
    texts = sr_texts(second_sr)
    impression = next(t for t in texts if t.startswith("lesion 1:"))
    # The prior values and date the follow-up cites are the values the first SR reports.
    cited = re.search(r"pre-treatment (\d{8}): rKtrans ([0-9.]+), rVP ([0-9.]+), hyperperfusion (yes|no)", impression)
    assert cited is not None, impression
    assert cited.group(1) == str(first_sr.StudyDate)
    assert float(cited.group(2)) == pytest.approx(first_values[c.RELATIVE_KTRANS.meaning], rel=1e-4)
    assert float(cited.group(3)) == pytest.approx(first_values[c.RELATIVE_VP.meaning], rel=1e-4)
    assert cited.group(4) == "no"
    # The reliability flag: no hyperperfusion before, none now → unreliable, not necrosis.
    assert first_values[c.RELATIVE_KTRANS.meaning] < 1.5 and first_values[c.RELATIVE_VP.meaning] < 1.5
    assert second_values[c.RELATIVE_KTRANS.meaning] < 1.5 and second_values[c.RELATIVE_VP.meaning] < 1.5
    assert "unreliable marker of recurrence" in impression and "favours radiation necrosis" not in impression
    change = 100.0 * (second_values[c.RELATIVE_KTRANS.meaning] / first_values[c.RELATIVE_KTRANS.meaning] - 1.0)
    assert second_values[c.CHANGE_FROM_PRIOR.meaning] == pytest.approx(change, rel=1e-3, abs=1e-3)
    assert any("not for clinical use" in t.lower() for t in sr_texts(second_sr))
    first_impression = next(t for t in sr_texts(first_sr) if t.startswith("lesion 1:"))
    assert "no matched pre-treatment lesion" in first_impression
    # The ledger agrees: the follow-up's finding names the first job as its prior.
    lesion = second["findings"]["lesions"][0]
    assert lesion["prior"]["job_id"] == first["id"] and lesion["unreliable_marker_of_recurrence"] is True
    assert second["findings"]["lesion_source"] == "SEG of the study"
    assert second["inputs"]["roi"] and len(second["inputs"]["vfa"]) == 4
    print(f"\npre-treatment + follow-up study, storescu → both SRs in Orthanc: {elapsed:.1f} s")
