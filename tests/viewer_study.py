"""One node holding every analyzer's phantom study and its outputs, for the output conformance
test and the OHIF browser test (started once per test session: the five small phantoms are
sent once and every shipped route runs on them, about a minute on two cores)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import ROOT, VENV_BIN, NodeProcess, free_port, query_index, start_node, wait_until, write_node_config

__all__ = ["AnalyzedNode", "analyzed_node"]

FINAL = ("done", "failed", "rejected", "dead")


@dataclass
class AnalyzedNode:
    node: NodeProcess
    phantoms: Path

    @property
    def index(self) -> Path:
        return self.node.storage / "index.sqlite"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.http_port}"

    def rows(self, sql: str) -> list[tuple]:
        return query_index(self.index, sql)

    def study_of(self, analyzer: str) -> str:
        """The study holding ``analyzer``'s SR; of several, one where it also wrote a SEG (its own
        phantom's study: other phantoms' studies routed to it get "nothing found" reports)."""
        rows = self.rows(
            "SELECT s.study_uid FROM series s WHERE s.modality = 'SR' AND s.series_description LIKE "
            f"'pacsnode {analyzer}%' ORDER BY EXISTS (SELECT 1 FROM series g WHERE g.study_uid = s.study_uid "
            f"AND g.modality = 'SEG' AND g.series_description LIKE 'pacsnode {analyzer}%') DESC, s.study_uid")
        assert rows, f"no SR of {analyzer}"
        return str(rows[0][0])

    def series_of(self, study: str, modality: str, prefix: str = "pacsnode") -> list[str]:
        """Descriptions of the series of ``study`` with ``modality`` whose description starts so."""
        rows = self.rows(f"SELECT series_description FROM series WHERE study_uid = '{study}' AND "
                         f"modality = '{modality}' AND series_description LIKE '{prefix}%'")
        return sorted(str(r[0]) for r in rows)

    def files(self, modality: str | None = None) -> list[tuple[str, str, Path]]:
        """(series description, modality, file) of every stored instance (of ``modality``)."""
        where = f"WHERE s.modality = '{modality}'" if modality else ""
        rows = self.rows("SELECT s.series_description, s.modality, i.path FROM instances i "
                         f"JOIN series s ON s.series_uid = i.series_uid {where}")
        return [(str(d), str(m), self.node.storage / str(p)) for d, m, p in rows]


def _routes_without_destinations() -> str:
    """The shipped routes, delivering nowhere (this node is the PACS the viewer reads)."""
    text = (ROOT / "config" / "routes.toml").read_text(encoding="utf-8")
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("send_to"))


@pytest.fixture(scope="session")
def analyzed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalyzedNode]:
    root = tmp_path_factory.mktemp("analyzed")
    # The OHIF build is looked for when the node starts (its /viewer); installing is a no-op once
    # cached, and leaves the viewer off (the browser test then skips) when npm is unreachable.
    subprocess.run(["bash", str(ROOT / "scripts" / "install-ohif.sh")], timeout=900, check=False)
    phantoms = root / "phantoms"
    made = subprocess.run([str(VENV_BIN / "pacsnode"), "phantom", "all", "--out", str(phantoms), "--cases", "1",
                           "--small", "--no-progress"], capture_output=True, text=True, timeout=300, check=False)
    assert made.returncode == 0, made.stderr
    # dsc needs the first pass and its recirculation (at least 32 frames of 1.5 s): 40 time points.
    # On the smallest dce grid (7.2 mm voxels) the automatic segmentation finds no lesion; seed 1
    # on a 3.6 mm grid has an enhancing recurrence that it finds, so the dce SEG and SR hold a
    # lesion (the pre-treatment study of that patient stays a "nothing found" report).
    for name, options in (("dsc", ("--set", "time_points=40")),
                          ("dce", ("--seed", "1", "--set", "matrix=64", "--set", "slices=8",
                                   "--set", "pixel_mm=3.6", "--set", "slice_mm=8.0"))):
        shutil.rmtree(phantoms / name)
        made = subprocess.run([str(VENV_BIN / "pacsnode"), "phantom", name, "--out", str(phantoms), "--cases", "1",
                               "--small", "--no-progress", *options],
                              capture_output=True, text=True, timeout=300, check=False)
        assert made.returncode == 0, made.stderr
    folder = root / "node"
    folder.mkdir()
    (folder / "routes.toml").write_text(_routes_without_destinations(), encoding="utf-8")
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port,
                               extra="stable_after = 1.5\n\n[jobs]\nworkers = 2\nbackoff_seconds = 0.5\n")
    node = start_node(config, storage=folder / "var", port=port, http_port=http_port, log=folder / "node.log",
                      env={"OMP_NUM_THREADS": "1"})
    try:
        sent = subprocess.run([str(VENV_BIN / "pacsnode"), "send", str(phantoms), "--to", node.address,
                               "--quiet"], capture_output=True, text=True, timeout=300, check=False)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        analyzed = AnalyzedNode(node, phantoms)

        series = len({path.parent for path in phantoms.rglob("*.dcm")})

        def settled() -> bool:
            # every phantom series has its qc job (created with the series' other jobs), all finished
            jobs = analyzed.rows("SELECT route, state FROM jobs")
            return sum(route == "qc" for route, _ in jobs) >= series and \
                all(state in FINAL for _, state in jobs)

        wait_until(settled, 600, "every job of the phantom studies finished", node.log, poll=1.0)
        yield analyzed
    finally:
        node.stop()
