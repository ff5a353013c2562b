"""The job ledger, deterministic output UIDs, output checks and the runner's bookkeeping."""

from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage, MRImageStorage

from analyzers.contract import AnalysisInput, EarlierOutput, SeriesInput
from node.ingest import Ingestor
from node.jobs.ledger import JobLedger, is_output_uid, job_id_for, output_uid
from node.jobs.run import JobRunner
from node.jobs.work import JobOutcome, OutputRejected, assign_output_uids, check_outputs, cite_predecessors
from node.outbox import Outbox
from node.routing.rules import Route, RouteTable
from node.samples import SeriesSpec, write_mr_series
from node.storage.index import Index
from node.storage.store import InstanceStore


@pytest.fixture
def index(tmp_path: Path):
    idx = Index(tmp_path / "index.sqlite")
    yield idx
    idx.close()


def _enqueue(ledger: JobLedger, series: str = "1.2.3.4", route: str = "qc", generation: int = 0) -> str:
    return ledger.enqueue(series_uid=series, study_uid="1.2.3", patient_id="P1", route=route, analyzer="qc",
                          send_to=["pacs"], generation=generation)


def test_state_machine_backoff_and_final_failure(index: Index) -> None:
    ledger = JobLedger(index, max_attempts=3, backoff_seconds=5.0)
    job_id = _enqueue(ledger)
    assert _enqueue(ledger) == job_id and len(ledger.jobs()) == 1  # idempotent
    [job] = ledger.claim(5)
    assert (job.state, job.attempts) == ("running", 1)
    assert ledger.claim(5) == []
    assert ledger.fail(job_id, "boom") == "queued"
    assert ledger.claim(5) == []  # backing off
    assert ledger.next_due() == pytest.approx(time.time() + 5.0, abs=1.0)
    [job] = ledger.claim(5, now=time.time() + 5.5)
    assert job.attempts == 2
    assert ledger.fail(job_id, "boom") == "queued"
    assert ledger.get(job_id).not_before - time.time() == pytest.approx(10.0, abs=1.0)  # doubled
    ledger.claim(5, now=time.time() + 11)
    assert ledger.fail(job_id, "boom again") == "failed"
    failed = ledger.get(job_id)
    assert (failed.state, failed.attempts, failed.error) == ("failed", 3, "boom again")
    assert [j.id for j in ledger.jobs(state="failed")] == [job_id]


def test_reject_done_requeue_and_priors(index: Index) -> None:
    ledger = JobLedger(index)
    rejected = _enqueue(ledger, "1.1")
    done = _enqueue(ledger, "1.2")
    interrupted = _enqueue(ledger, "1.3")
    ledger.claim(3)
    ledger.reject(rejected, "not a perfusion series")
    ledger.finish(done, outputs=["9.9"], findings={"rcbv": 2.5}, analyzer_version="1.0")
    assert ledger.requeue_running() == 1  # the crash left this one running
    assert ledger.get(interrupted).state == "queued"
    assert ledger.get(rejected).state == "rejected"
    assert ledger.get(done).outputs == ["9.9"] and ledger.get(done).findings == {"rcbv": 2.5}
    priors = ledger.priors(patient_id="P1", analyzer="qc", exclude_study="other")
    assert [p.findings for p in priors] == [{"rcbv": 2.5}]
    assert ledger.priors(patient_id="P1", analyzer="qc", exclude_study="1.2.3") == []
    assert ledger.counts()["queued"] == 1


def test_job_ids_and_output_uids_are_deterministic() -> None:
    assert job_id_for("1.2", "qc", 0) == job_id_for("1.2", "qc", 0) != job_id_for("1.2", "qc", 1)
    uid = output_uid("abc", "instance", 0)
    assert uid == output_uid("abc", "instance", 0) != output_uid("abc", "instance", 1)
    assert is_output_uid(uid) and len(uid) <= 64 and re.fullmatch(r"[0-9.]+", uid)
    assert all(not part.startswith("0") or part == "0" for part in uid.split("."))


def _output(study: str, patient: str, referenced_series: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.SOPInstanceUID = "1.9.1"
    ds.SeriesInstanceUID = "1.9.2"
    ds.StudyInstanceUID = study
    ds.PatientID = patient
    ds.Modality = "SR"
    item = Dataset()
    item.SeriesInstanceUID = referenced_series
    reference = Dataset()
    reference.ReferencedSOPInstanceUID = "1.9.1"  # an output referencing another output
    ds.ReferencedSeriesSequence = [item]
    ds.ContentSequence = [reference]
    return ds


def _input(tmp_path: Path) -> AnalysisInput:
    series = SeriesInput("1.5.1", "1.5", (), {"PatientID": "P1"})
    return AnalysisInput("job-1", series, {}, [], None, tmp_path)  # type: ignore[arg-type]


def test_assign_output_uids_keeps_references(tmp_path: Path) -> None:
    first, second = _output("1.5", "P1", "1.5.1"), _output("1.5", "P1", "1.5.1")
    second.SOPInstanceUID = "1.9.3"
    assign_output_uids("job-1", [first, second])
    assert first.SOPInstanceUID == output_uid("job-1", "instance", 0)
    assert second.SOPInstanceUID == output_uid("job-1", "instance", 1)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == output_uid("job-1", "series", 0)
    assert second.ContentSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert first.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.5.1"  # inputs untouched


@pytest.mark.parametrize(("change", "message"), [
    (lambda ds: setattr(ds, "StudyInstanceUID", "1.6"), "not the input study"),
    (lambda ds: setattr(ds, "PatientID", "P2"), "not the input patient"),
    (lambda ds: delattr(ds, "Modality"), "Modality"),
    (lambda ds: setattr(ds.ReferencedSeriesSequence[0], "SeriesInstanceUID", "7.7"), "references none"),
    (lambda ds: setattr(ds, "SeriesInstanceUID", "1.5.1"), "input series"),
])
def test_check_outputs_refuses(tmp_path: Path, change, message: str) -> None:
    job = _input(tmp_path)
    good = _output("1.5", "P1", "1.5.1")
    check_outputs([good], job)
    change(good)
    with pytest.raises(OutputRejected, match=message):
        check_outputs([good], job)


def test_check_outputs_follows_a_derivation_chain(tmp_path: Path) -> None:
    """A SEG on a derived image series of the same job passes when that series references the
    input; a chain that never reaches an input series is refused."""
    job = _input(tmp_path)
    derived = _output("1.5", "P1", "1.5.1")  # e.g. the pre-bolus mean of a dynamic input
    seg = _output("1.5", "P1", derived.SeriesInstanceUID)
    seg.SOPInstanceUID, seg.SeriesInstanceUID = "1.9.5", "1.9.6"
    check_outputs([seg, derived], job)
    derived.ReferencedSeriesSequence[0].SeriesInstanceUID = "7.7"
    with pytest.raises(OutputRejected, match="references none"):
        check_outputs([seg, derived], job)


class _ScriptedExecutor:
    """An executor whose outcomes the test decides (the runner's bookkeeping alone)."""

    remote = False
    capacity = 2

    def __init__(self, outcomes: list[object]) -> None:
        self.outcomes = outcomes
        self.submitted: list[str] = []

    def submit(self, analyzer: str, job: AnalysisInput) -> concurrent.futures.Future[JobOutcome]:
        self.submitted.append(job.job_id)
        future: concurrent.futures.Future[JobOutcome] = concurrent.futures.Future()
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]
        return future

    def close(self) -> None:
        pass


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_runner_retries_failures_rejects_unsuitable_and_stores_outputs(tmp_path: Path) -> None:
    index = Index(tmp_path / "var" / "index.sqlite")
    store = InstanceStore(tmp_path / "var", fsync=False, min_free_bytes=0)
    ingestor = Ingestor(store, index, allowed_sop_classes={MRImageStorage, Comprehensive3DSRStorage})
    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=3, rows=8, columns=8))
    for path in files:
        ingestor.ingest_part10(path.read_bytes())
    series_uid = index.instance_paths()[0][2].split("/")[-2]
    study_uid = index.instance_paths()[0][2].split("/")[-3]
    ledger = JobLedger(index, max_attempts=2, backoff_seconds=0.05)
    outbox = Outbox(index, store, [])
    table = RouteTable((Route("qc", "qc", {"Modality": (re.compile("MR"),)}),))
    from analyzers.qc import QcAnalyzer
    from node.jobs.work import execute_job

    real = execute_job("qc", AnalysisInput(job_id_for(series_uid, "qc", 0),
                                           SeriesInput(series_uid, study_uid, tuple(files), {"PatientID": "DEMO-0001"}),
                                           {}, [], QcAnalyzer.settings_model(), tmp_path))
    executor = _ScriptedExecutor([RuntimeError("worker crashed"), real,
                                  JobOutcome(analyzer_version="1", rejected="not a perfusion series")])
    runner = JobRunner(ledger, index, store, ingestor, outbox, table, lambda: executor, tmp_path / "scratch")
    flaky = ledger.enqueue(series_uid=series_uid, study_uid=study_uid, patient_id="DEMO-0001", route="qc",
                           analyzer="qc", send_to=["pacs"])
    runner.start()
    try:
        assert _wait(lambda: ledger.get(flaky).state == "done")
        job = ledger.get(flaky)
        assert job.attempts == 2 and executor.submitted == [flaky, flaky]
        assert job.outputs == real.output_uids and index.lookup_instance(job.outputs[0]) is not None
        assert [d.sop_uid for d in outbox.deliveries()] == job.outputs
        unsuitable = ledger.enqueue(series_uid=series_uid, study_uid=study_uid, patient_id="DEMO-0001",
                                    route="qc", analyzer="qc", send_to=[], generation=1)
        runner.wake()
        assert _wait(lambda: ledger.get(unsuitable).state == "rejected")
        assert ledger.get(unsuitable).attempts == 1 and "perfusion" in ledger.get(unsuitable).error
    finally:
        runner.stop()
        index.close()


class _HeldExecutor(_ScriptedExecutor):
    """An executor whose job ends only when the test says so (after the node has stopped)."""

    def __init__(self) -> None:
        super().__init__([])
        self.futures: list[concurrent.futures.Future[JobOutcome]] = []

    def submit(self, analyzer: str, job: AnalysisInput) -> concurrent.futures.Future[JobOutcome]:
        self.submitted.append(job.job_id)
        self.futures.append(concurrent.futures.Future())
        return self.futures[-1]


def test_a_job_ending_after_the_stop_is_queued_again_at_the_next_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    index = Index(tmp_path / "var" / "index.sqlite")
    store = InstanceStore(tmp_path / "var", fsync=False, min_free_bytes=0)
    ingestor = Ingestor(store, index, allowed_sop_classes={MRImageStorage})
    for path in write_mr_series(tmp_path / "in", SeriesSpec(slices=2, rows=8, columns=8)):
        ingestor.ingest_part10(path.read_bytes())
    series_uid, study_uid = index.instance_paths()[0][2].split("/")[-2:-4:-1]
    ledger = JobLedger(index, max_attempts=2, backoff_seconds=0.05)
    executor = _HeldExecutor()
    runner = JobRunner(ledger, index, store, ingestor, Outbox(index, store, []),
                       RouteTable((Route("qc", "qc", {"Modality": (re.compile("MR"),)}),)), lambda: executor,
                       tmp_path / "scratch")
    job_id = ledger.enqueue(series_uid=series_uid, study_uid=study_uid, patient_id="DEMO-0001", route="qc",
                            analyzer="qc", send_to=[])
    runner.start()
    try:
        assert _wait(lambda: executor.submitted == [job_id])
    finally:
        runner.stop()
    with caplog.at_level("INFO", logger="node.jobs.run"):
        executor.futures[0].set_result(JobOutcome(analyzer_version="1"))
    assert "runs again after the next start" in caplog.text
    assert ledger.get(job_id).state == "running"
    assert ledger.requeue_running() == 1 and ledger.get(job_id).state == "queued"
    index.close()


def test_inputs_related_roles_priors_and_reprocess(tmp_path: Path) -> None:
    from analyzers.contract import UnsuitableInput
    from node.jobs.run import reprocess
    from node.routing.completion import create_tables

    index = Index(tmp_path / "var" / "index.sqlite")
    store = InstanceStore(tmp_path / "var", fsync=False, min_free_bytes=0)
    ingestor = Ingestor(store, index, allowed_sop_classes={MRImageStorage})
    study = "1.2.826.0.1.3680043.10.1379.77"
    for name in ("ep2d_perf", "t1_vibe_fa2", "t1_vibe_fa15"):
        for path in write_mr_series(tmp_path / name, SeriesSpec(series_description=name, slices=2, rows=8,
                                                                columns=8, study_uid=study)):
            ingestor.ingest_part10(path.read_bytes())
    by_description = {r[0]: r[1] for r in index.reader().execute("SELECT series_description, series_uid FROM series")}
    table = RouteTable((Route("vfa", None, {"SeriesDescription": (re.compile("fa[0-9]"),)}),
                        Route("perf", "qc", {"SeriesDescription": (re.compile("perf"),)})))
    table.needs["perf"] = {"t1": "vfa", "roi": "seg?"}
    table.wants_priors["perf"] = True
    ledger = JobLedger(index)
    runner = JobRunner(ledger, index, store, ingestor, Outbox(index, store, []), table, lambda: None,
                       tmp_path / "scratch")
    earlier = ledger.enqueue(series_uid="9.9", study_uid="9", patient_id="DEMO-0001", route="perf", analyzer="qc",
                             send_to=[])
    ledger.claim(1)
    ledger.finish(earlier, outputs=[], findings={"rcbv": 1.8}, analyzer_version="1")
    job_id = ledger.enqueue(series_uid=by_description["ep2d_perf"], study_uid=study, patient_id="DEMO-0001",
                            route="perf", analyzer="qc", send_to=[])
    job_input = runner.build_input(ledger.get(job_id))
    assert sorted(s.attributes["SeriesDescription"] for s in job_input.related["t1"]) == ["t1_vibe_fa15",
                                                                                          "t1_vibe_fa2"]
    assert job_input.related["roi"] == []
    assert len(job_input.series.files) == 2 and all(p.exists() for p in job_input.series.files)
    assert [p.findings for p in job_input.priors] == [{"rcbv": 1.8}]
    table.needs["perf"] = {"mask": "seg"}
    with pytest.raises(UnsuitableInput, match="reprocess"):
        runner.build_input(ledger.get(job_id))

    create_tables(index)
    first = reprocess(index, table, ledger, by_description["ep2d_perf"])
    second = reprocess(index, table, ledger, by_description["ep2d_perf"], analyzer="qc")
    assert len(first) == len(second) == 1 and len({job_id, *first, *second}) == 3
    assert [ledger.get(i).generation for i in (*first, *second)] == [1, 2]
    with pytest.raises(KeyError):
        reprocess(index, table, ledger, by_description["ep2d_perf"], analyzer="dsc")
    index.close()


def test_new_reports_cite_the_reports_they_replace() -> None:
    seg_class = "1.2.840.10008.5.1.4.1.1.66.4"
    earlier = [
        EarlierOutput("1.2.3", "1.2.3.9", Comprehensive3DSRStorage, "1.2.3.9.1"),
        EarlierOutput("1.2.3", "1.2.3.8", seg_class, "1.2.3.8.1"),  # a SEG is not a predecessor document
        EarlierOutput("1.2.3", "1.2.3.9", Comprehensive3DSRStorage, "1.2.3.9.2"),
    ]
    report, segmentation = Dataset(), Dataset()
    report.SOPClassUID, segmentation.SOPClassUID = Comprehensive3DSRStorage, seg_class
    assert cite_predecessors([report, segmentation], earlier) == 1
    assert "PredecessorDocumentsSequence" not in segmentation
    [study] = report.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID) == ("1.2.3", "1.2.3.9")
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence] == ["1.2.3.9.1", "1.2.3.9.2"]
    assert {r.ReferencedSOPClassUID for r in series.ReferencedSOPSequence} == {Comprehensive3DSRStorage}
    fresh = Dataset()
    fresh.SOPClassUID = Comprehensive3DSRStorage
    assert cite_predecessors([fresh], []) == 0 and "PredecessorDocumentsSequence" not in fresh
