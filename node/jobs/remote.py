"""The job as a Dask worker runs it: inputs by WADO-RS, outputs by STOW-RS.

The worker shares no disk with the node. It retrieves every input series (the one to
analyze and the related ones) from the node's DICOMweb service into a temporary
folder, runs :func:`node.jobs.work.execute_job` there, and stores the checked outputs
back with STOW-RS; the node ingests them like any arriving instance. The returned
outcome carries the output UIDs, not the bytes.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from pydicom import dcmread

from analyzers.contract import AnalysisInput, SeriesInput
from node.jobs.work import JobOutcome, execute_job

__all__ = ["RemoteStoreFailed", "run_remote_job"]


class RemoteStoreFailed(RuntimeError):
    """STOW-RS of a job's outputs to the node did not store every instance."""


def _client(url: str, token: str | None) -> Any:
    from dicomweb_client.api import DICOMwebClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return DICOMwebClient(url=url, headers=headers)


def _fetch(client: Any, series: SeriesInput, folder: Path) -> SeriesInput:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n, ds in enumerate(client.retrieve_series(series.study_instance_uid, series.series_instance_uid)):
        path = folder / f"{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return dataclasses.replace(series, files=tuple(files))


def run_remote_job(analyzer: str, job: AnalysisInput, node_url: str, token: str | None) -> JobOutcome:
    """Fetch, analyze, store back; runs on a Dask worker (log lines tagged with the job's ids)."""
    from node.ops.logs import log_context

    with log_context(job_id=job.job_id, series_uid=job.series.series_instance_uid,
                     study_uid=job.series.study_instance_uid):
        return _run_remote_job(analyzer, job, node_url, token)


def _run_remote_job(analyzer: str, job: AnalysisInput, node_url: str, token: str | None) -> JobOutcome:
    client = _client(node_url, token)
    with tempfile.TemporaryDirectory(prefix=f"pacsnode-{job.job_id}-") as tmp:
        root = Path(tmp)
        series = _fetch(client, job.series, root / "series")
        related = {role: [_fetch(client, s, root / role / str(i)) for i, s in enumerate(items)]
                   for role, items in job.related.items()}
        scratch = root / "scratch"
        scratch.mkdir()
        local = dataclasses.replace(job, series=series, related=related, scratch=scratch)
        outcome = execute_job(analyzer, local)
        if outcome.outputs:
            from io import BytesIO

            datasets = [dcmread(BytesIO(data)) for data in outcome.outputs]
            response = client.store_instances(datasets)
            failed = response.get("FailedSOPSequence") if response is not None else None
            if failed:
                raise RemoteStoreFailed(f"the node refused {len(failed)} output(s) of job {job.job_id}")
        return dataclasses.replace(outcome, outputs=[])
