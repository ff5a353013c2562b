"""Send a reference object through the node to a PACS and read the results back from it.

The chain under test is the one a hospital runs: dcmtk ``storescu`` → ``pacsnode serve``
(the shipped routes of ``config/routes.toml``, settings as given) → the analyzer → the
node's outbox → a Debian Orthanc. The results are read from Orthanc, not from the node:
what is scored is what a PACS user would see.

Usage::

    with pacs_chain(folder, shipped_routes(("vfa", "seg", "dce"))) as chain:
        chain.send(files)
        (job,) = chain.wait_for_jobs("dce", 1, timeout=300)
        outputs = chain.fetch(job.outputs, folder / "from-pacs")
        maps = read_parametric_maps(outputs)
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.peers import (
    ROOT,
    NodeProcess,
    OrthancProcess,
    free_port,
    have,
    orthanc_process,
    query_index,
    start_node,
    write_node_config,
)

__all__ = [
    "Chain",
    "ChainError",
    "FinishedJob",
    "ParametricMapVolume",
    "pacs_chain",
    "peers_missing",
    "read_parametric_maps",
    "shipped_routes",
    "sr_texts",
]


class ChainError(RuntimeError):
    """The chain did not deliver what was expected (the message says what and where)."""


def peers_missing() -> str | None:
    """Why the chain cannot run here (missing dcmtk or Orthanc), or None."""
    missing = [p for p in ("storescu", "Orthanc") if not have(p)]
    return f"missing {', '.join(missing)} (run scripts/install-system.sh)" if missing else None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def shipped_routes(names: Sequence[str],
                   settings: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The ``[[route]]`` blocks of the shipped ``config/routes.toml`` named ``names``.

    Parameters
    ----------
    names:
        Route names, in the order they are wanted (the shipped order matters for
        exclusive routes, so pass them in that order).
    settings:
        Route name → analyzer settings written into that route's ``settings`` table
        (replacing the shipped ones).
    """
    text = (ROOT / "config" / "routes.toml").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for block in text.split("[[route]]")[1:]:
        name = re.search(r'^name = "([^"]+)"', block, re.MULTILINE)
        if name is None or name.group(1) not in names:
            continue
        lines = [line for line in block.splitlines()
                 if line.strip() and not line.startswith("#") and not line.startswith("settings")]
        extra = (settings or {}).get(name.group(1))
        if extra:
            lines.append("settings = { " + ", ".join(f"{k} = {_toml_value(v)}"
                                                      for k, v in extra.items()) + " }")
        found[name.group(1)] = "[[route]]\n" + "\n".join(lines) + "\n"
    missing = [n for n in names if n not in found]
    if missing:
        raise ChainError(f"config/routes.toml has no route {missing}")
    return "\n".join(found[n] for n in names)


@dataclass(frozen=True)
class FinishedJob:
    """The latest round of one analyzer job, as the node's ledger records it."""

    job_id: str
    series_uid: str
    state: str
    outputs: tuple[str, ...]
    findings: dict[str, Any]
    error: str | None
    compute_seconds: float | None


@dataclass
class Chain:
    """A running node that delivers to a running Orthanc."""

    node: NodeProcess
    orthanc: OrthancProcess
    folder: Path

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return query_index(self.node.storage / "index.sqlite", sql, params)

    def send(self, files: Sequence[Path], *, calling_ae: str = "DRO") -> float:
        """Send ``files`` with dcmtk ``storescu`` in one association; returns the seconds it took."""
        started = time.monotonic()
        # -R: propose only the SOP classes of the files (the default list lacks SEG storage)
        result = subprocess.run(["storescu", "-R", "-aet", calling_ae, "-aec", self.node.ae_title,
                                 "127.0.0.1", str(self.node.port), *map(str, files)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise ChainError(f"storescu failed ({len(files)} files): {result.stderr[-2000:]}")
        return time.monotonic() - started

    def _latest(self, route: str) -> dict[str, FinishedJob]:
        rows = self._query("SELECT id, series_uid, state, generation, outputs, findings, error, "
                           "compute_seconds FROM jobs WHERE route = ? ORDER BY created_at", (route,))
        latest: dict[str, tuple[int, FinishedJob]] = {}
        for job_id, series, state, generation, outputs, findings, error, seconds in rows:
            job = FinishedJob(job_id, series, state, tuple(json.loads(outputs) if outputs else ()),
                              json.loads(findings) if findings else {}, error, seconds)
            if series not in latest or generation >= latest[series][0]:
                latest[series] = (generation, job)
        return {series: job for series, (_, job) in latest.items()}

    def _delivered(self, job_id: str) -> bool:
        rows = self._query("SELECT state FROM deliveries WHERE job_id = ?", (job_id,))
        return bool(rows) and all(r[0] == "sent" for r in rows)

    def wait_for_jobs(self, route: str, count: int, *, timeout: float = 600.0) -> list[FinishedJob]:
        """Wait until ``count`` series of ``route`` are analysed and their outputs delivered.

        Returns the latest round of each series' job. A rejected or failed job ends the
        wait with :class:`ChainError` quoting the job's error.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self._latest(route)
            broken = [j for j in jobs.values() if j.state in ("failed", "rejected")]
            if broken:
                raise ChainError(f"{route} job {broken[0].job_id} {broken[0].state}: {broken[0].error}")
            done = [j for j in jobs.values() if j.state == "done" and self._delivered(j.job_id)]
            if len(done) >= count:
                return done
            time.sleep(0.5)
        log = self.node.log.read_text(errors="replace")[-3000:] if self.node.log.exists() else ""
        raise ChainError(f"timed out after {timeout} s waiting for {count} {route} job(s)\n{log}")

    def fetch(self, sop_uids: Sequence[str], folder: Path) -> list[Path]:
        """Download the instances ``sop_uids`` from Orthanc into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        with httpx.Client(base_url=self.orthanc.url, timeout=60) as client:
            for uid in sop_uids:
                found = client.post("/tools/find", json={"Level": "Instance",
                                                         "Query": {"SOPInstanceUID": uid}}).json()
                if not found:
                    raise ChainError(f"instance {uid} is not in Orthanc")
                path = folder / f"{uid}.dcm"
                path.write_bytes(client.get(f"/instances/{found[0]}/file").content)
                paths.append(path)
        return paths


@contextmanager
def pacs_chain(folder: Path, routes: str, *, stable_after: float = 1.5, workers: int = 1,
               env: Mapping[str, str] | None = None) -> Iterator[Chain]:
    """Start Orthanc and a node that sends its results there; stop both afterwards.

    Parameters
    ----------
    folder:
        Working folder (node storage, configs, logs, Orthanc's database).
    routes:
        The node's ``routes.toml`` text; every analyzer route should ``send_to = ["pacs"]``.
    stable_after:
        Quiet time after which a series without a count is complete.
    workers:
        Job workers of the node.
    env:
        Extra environment of the node process (e.g. ``OMP_NUM_THREADS``).
    """
    reason = peers_missing()
    if reason:
        raise ChainError(reason)
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        orthanc = stack.enter_context(orthanc_process(folder / "orthanc"))
        node_folder = folder / "node"
        node_folder.mkdir(parents=True, exist_ok=True)
        (node_folder / "routes.toml").write_text(routes, encoding="utf-8")
        port, http_port = free_port(), free_port()
        extra = (f"stable_after = {stable_after}\n\n[jobs]\nworkers = {workers}\nbackoff_seconds = 0.5\n\n"
                 f'[[destinations]]\nname = "pacs"\nkind = "dimse"\nae_title = "{orthanc.ae_title}"\n'
                 f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\nbackoff_seconds = 0.3\n'
                 "max_attempts = 50\n")
        config = write_node_config(node_folder, port=port, http_port=http_port, extra=extra)
        node = start_node(config, storage=node_folder / "var", port=port, http_port=http_port,
                          log=node_folder / "node.log",
                          env={"OMP_NUM_THREADS": "1", **(env or {})})
        stack.callback(node.stop)
        yield Chain(node, orthanc, folder)


@dataclass(frozen=True)
class ParametricMapVolume:
    """One Parametric Map read back: real-world values on the slices of its source.

    ``values`` is (z, y, x) with slices ordered by ``slice_z_mm`` (position along the
    normal of the image plane, ascending).
    """

    label: str
    code_value: str
    unit: str
    values: NDArray[np.float64]
    slice_z_mm: tuple[float, ...]


def _first(item: Dataset, keyword: str) -> Dataset | None:
    seq = item.get(keyword)
    return seq[0] if seq else None


def _required(item: Dataset | None, keyword: str) -> Dataset:
    found = _first(item, keyword) if item is not None else None
    if found is None:
        raise ChainError(f"a Parametric Map lacks {keyword}")
    return found


def _parametric_map(ds: Dataset) -> ParametricMapVolume:
    pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    frames = ds.PerFrameFunctionalGroupsSequence
    orientation = _first(shared, "PlaneOrientationSequence") if shared is not None else None
    if orientation is None:
        orientation = _required(frames[0], "PlaneOrientationSequence")
    cosines = np.asarray([float(v) for v in orientation.ImageOrientationPatient], dtype=np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    depth, values = [], []
    mapping_item: Dataset | None = None
    for index, frame in enumerate(frames):
        plane = _required(frame, "PlanePositionSequence")
        position = np.asarray([float(v) for v in plane.ImagePositionPatient], dtype=np.float64)
        holder = frame if "RealWorldValueMappingSequence" in frame else shared
        mapping_item = _first(holder, "RealWorldValueMappingSequence") if holder is not None else None
        if mapping_item is None:
            raise ChainError("a Parametric Map frame has no Real World Value Mapping")
        slope = float(mapping_item.RealWorldValueSlope)
        intercept = float(mapping_item.RealWorldValueIntercept)
        depth.append(float(position @ normal))
        real = pixels[index] * slope + intercept
        # An integer map marks voxels without a value by a stored value past the mapped range.
        last = mapping_item.get("RealWorldValueLastValueMapped")
        values.append(real if last is None else np.where(pixels[index] > float(last), np.nan, real))
    order = np.argsort(depth)
    assert mapping_item is not None
    quantity = _first(mapping_item, "QuantityDefinitionSequence")
    code = _first(quantity, "ConceptCodeSequence") if quantity is not None else None
    unit = _first(mapping_item, "MeasurementUnitsCodeSequence")
    return ParametricMapVolume(label=str(mapping_item.LUTLabel),
                               code_value=str(code.CodeValue) if code is not None else "",
                               unit=str(unit.CodeValue) if unit is not None else "",
                               values=np.stack([values[i] for i in order]),
                               slice_z_mm=tuple(depth[i] for i in order))


def read_parametric_maps(paths: Sequence[Path]) -> dict[str, ParametricMapVolume]:
    """The Parametric Maps among ``paths``, keyed by their LUT label (e.g. ``"Ktrans"``).

    Where a quantity comes both as a float map and as an integer-scaled companion (for
    viewers without float images), the float map is the one returned.
    """
    maps: dict[str, ParametricMapVolume] = {}
    floats: set[str] = set()
    for path in paths:
        ds = dcmread(path)
        if ds.SOPClassUID != "1.2.840.10008.5.1.4.1.1.30":
            continue
        volume = _parametric_map(ds)
        is_float = "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        if volume.label in floats and not is_float:
            continue
        maps[volume.label] = volume
        if is_float:
            floats.add(volume.label)
    return maps


def sr_texts(dataset: Dataset) -> list[str]:
    """Every TextValue of an SR content tree, depth first."""
    found = [str(dataset.TextValue)] if "TextValue" in dataset else []
    for item in dataset.get("ContentSequence", []):
        found.extend(sr_texts(item))
    return found
