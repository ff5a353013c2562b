"""C-STORE ingest and C-FIND latency: pacsnode vs Orthanc vs dcmtk storescp, in one run.

Run ``python -m bench.ingest [--rounds 3]`` (or ``make bench``). It generates a
1,000-instance 256×256 MR series, a 2,000-instance 128×128 dynamic series and a
10,000-instance 128×128 series, and sends each with dcmtk ``storescu`` into every
server: over 1, 4 and 8 parallel associations, with and without Nagle, and the
10,000 instances over 4 associations. Each row gives instances/s and, for each
server, the CPU time its processes spent per instance (user + system, read from
``/proc``: all of pacsnode's processes, Orthanc's, storescp's; the senders' CPU is
not counted). While pacsnode takes the 10,000 instances, the resident memory of all
its processes together (VmRSS summed, and the proportional PSS that counts shared
pages once) is sampled every 0.2 s. Then the C-FIND latency at STUDY and SERIES
level: dcmtk ``findscu --repeat N`` on one association, the time of N+1 queries minus
the time of one, divided by N, with pacsnode and Orthanc (and ``--baseline``) holding
the same 50 instances, running side by side and taking turns level by level in each
round (``--only-find`` runs only these rows). Every figure is printed with its ratio
against Orthanc (and storescp) measured in the same run.

Servers: pacsnode (``pacsnode serve``, fsync on), Orthanc (Debian, default SQLite
index, SyncStorageArea on, started with its own configuration) and ``storescp``
writing files to disk (the ceiling: it never flushes). dcmtk tools run with
``TCP_NODELAY=1``; one row uses a default (Nagle on) ``storescu``, which is what sites
run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from node.samples import SeriesSpec, write_mr_series
from tests.peers import free_port, orthanc_process, wait_for_port, write_node_config

NODELAY = {**os.environ, "TCP_NODELAY": "1"}
ServerFactory = Callable[[Path], AbstractContextManager["Server"]]


@dataclass
class Server:
    name: str
    ae_title: str
    port: int
    pid: int
    http_port: int | None = None


@contextmanager
def pacsnode_server(folder: Path, extra: str = "", code: Path | None = None) -> Iterator[Server]:
    """A ``pacsnode serve``; ``code``: run the node from that source tree instead (PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port, extra=extra)
    # Started here rather than with tests.peers.start_node: on a busy machine importing the
    # node can take longer than that helper's 20 s wait.
    environment = {k: v for k, v in os.environ.items() if k != "PACSNODE_CONFIG"}
    if code is not None:
        environment["PYTHONPATH"] = str(code)
    with open(folder / "node.log", "ab") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "pacsnode"), "serve", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=str(folder))
    try:
        wait_for_port(port, timeout=300, process=process)
        # Also the HTTP port: until the node binds it, another server's free_port() may pick it.
        wait_for_port(http_port, timeout=300, process=process)
        yield Server("pacsnode" if code is None else "baseline", "PACSNODE", port, process.pid, http_port)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def orthanc_server(folder: Path) -> Iterator[Server]:
    with orthanc_process(folder) as orthanc:
        yield Server("Orthanc", orthanc.ae_title, orthanc.dicom_port, orthanc.process.pid)


@contextmanager
def storescp_server(folder: Path) -> Iterator[Server]:
    out = folder / "storescp"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(["storescp", "-od", str(out), "-aet", "STORESCP", str(port)],
                               env=NODELAY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        yield Server("storescp", "STORESCP", port, process.pid)
    finally:
        process.terminate()
        process.wait(10)


# -- processes: CPU and memory ------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the given processes so far (those still alive)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """Summed VmRSS and summed PSS (shared pages counted once) of the processes, in MB."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


class MemorySampler:
    """Samples the memory of a process tree every ``interval`` s until stopped."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.start = memory_mb(process_tree(pid))
        self.peak_rss, self.peak_pss = self.start
        self.processes = len(process_tree(pid))
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.2):
            tree = process_tree(self.pid)
            rss, pss = memory_mb(tree)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.processes = max(self.processes, len(tree))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


# -- sending and querying -----------------------------------------------------------------------


def _send(server: Server, files: list[Path], associations: int, env: dict[str, str]) -> float:
    """Seconds to send ``files`` over ``associations`` parallel storescu processes."""
    chunks = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    processes = [subprocess.Popen(
        ["storescu", "-aec", server.ae_title, "127.0.0.1", str(server.port), *map(str, chunk)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for chunk in chunks]
    errors = [p.communicate()[1] for p in processes]
    elapsed = time.perf_counter() - started
    failed = [e for p, e in zip(processes, errors, strict=True) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"storescu into {server.name} failed: {failed[0][-500:]!r}")
    return elapsed


def _settle_disk() -> None:
    """Flush everyone's dirty pages before a timed run.

    On ext4 (data=ordered) an fsync waits for the journal commit, which writes the dirty
    data of other files too: without this, the server measured right after the data were
    generated, or right after storescp (which never fsyncs), pays for their writes.
    """
    os.sync()


FIND_KEYS = {
    "STUDY": ["QueryRetrieveLevel=STUDY", "PatientID=BENCH-1", "StudyInstanceUID", "StudyDate",
              "PatientName", "AccessionNumber", "ModalitiesInStudy"],
    "SERIES": ["QueryRetrieveLevel=SERIES", "StudyInstanceUID={study}", "SeriesInstanceUID", "Modality",
               "SeriesNumber", "SeriesDescription"],
}


def _findscu(server: Server, level: str, study_uid: str, repeat: int) -> float:
    keys = [k.format(study=study_uid) for k in FIND_KEYS[level]]
    command = ["findscu", "-S", "-aec", server.ae_title, "--repeat", str(repeat),
               *(arg for key in keys for arg in ("-k", key)), "127.0.0.1", str(server.port)]
    started = time.perf_counter()
    done = subprocess.run(command, env=NODELAY, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"findscu on {server.name} failed: {done.stderr[-500:]!r}")
    return elapsed


def find_latency_ms(server: Server, level: str, study_uid: str, queries: int = 200, pairs: int = 3) -> float:
    """Milliseconds per C-FIND on one association: (``queries`` + 1 queries - 1 query) / ``queries``,
    the median of ``pairs`` such pairs (process start and association cancel out)."""
    samples = []
    for _ in range(pairs):
        one = _findscu(server, level, study_uid, 1)
        many = _findscu(server, level, study_uid, queries + 1)
        samples.append((many - one) / queries * 1000)
    return statistics.median(samples)


def scraped_received_instances(server: Server) -> int:
    """``pacsnode_received_instances_total`` summed over calling AEs, read from the node's ``/metrics``."""
    url = f"http://127.0.0.1:{server.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("pacsnode_received_instances_total")))


# -- the table ----------------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    data: str
    associations: int
    nagle: bool = False
    sample_memory: bool = False


@dataclass
class Row:
    case: Case
    instances: int
    megabytes: float
    seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def rate(self, server: str) -> float | None:
        runs = self.seconds.get(server)
        return self.instances / statistics.median(runs) if runs else None

    def cpu_ms(self, server: str) -> float | None:
        runs = self.cpu.get(server)
        return statistics.median(runs) / self.instances * 1000 if runs else None


@dataclass
class Memory:
    start_rss: float = 0.0
    start_pss: float = 0.0
    peak_rss: float = 0.0
    peak_pss: float = 0.0
    processes: int = 0


def run_rows(data: dict[str, list[Path]], work: Path, servers: dict[str, ServerFactory], cases: list[Case],
             rounds: int, scrapes: list[tuple[str, int, int]], memory: Memory) -> list[Row]:
    rows: list[Row] = []
    for case in cases:
        files = data[case.data]
        row = Row(case, len(files), sum(p.stat().st_size for p in files) / 1e6)
        # Servers take turns within each round, so a burst of load on a shared machine hits
        # them alike; the median over rounds is reported.
        for round_number in range(rounds):
            for name, factory in servers.items():
                if case.nagle and name == "storescp":
                    continue
                folder = work / f"{name}-{case.data}-{case.associations}-{round_number}"
                with factory(folder) as server:
                    _settle_disk()
                    tree = process_tree(server.pid)
                    sampler = MemorySampler(server.pid) if case.sample_memory and name == "pacsnode" else None
                    cpu_before = cpu_seconds(tree)
                    elapsed = _send(server, files, case.associations, dict(os.environ) if case.nagle else NODELAY)
                    row.cpu.setdefault(name, []).append(
                        cpu_seconds(sorted(set(process_tree(server.pid)) | set(tree))) - cpu_before)
                    row.seconds.setdefault(name, []).append(elapsed)
                    if sampler is not None:
                        sampler.stop()
                        memory.start_rss, memory.start_pss = sampler.start
                        memory.peak_rss = max(memory.peak_rss, sampler.peak_rss)
                        memory.peak_pss = max(memory.peak_pss, sampler.peak_pss)
                        memory.processes = max(memory.processes, sampler.processes)
                    if server.http_port:
                        # The node's own count of what it stored, against what storescu sent.
                        scrapes.append((case.label, len(files), scraped_received_instances(server)))
                shutil.rmtree(folder, ignore_errors=True)
        rows.append(row)
        print(f"  {case.label}: " + ", ".join(f"{n} {row.rate(n):.0f} inst/s" for n in servers if row.rate(n)),
              flush=True)
    return rows


def measure_finds(files: list[Path], work: Path, servers: dict[str, ServerFactory],
                  rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per C-FIND by level and server: the servers (storescp aside) run side by side,
    hold the same ``files`` and take turns level by level in each round."""
    from pydicom import dcmread

    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    samples: dict[str, dict[str, list[float]]] = {}
    with ExitStack() as stack:
        running = [stack.enter_context(factory(work / f"find-{name}"))
                   for name, factory in servers.items() if name != "storescp"]
        for server in running:
            _send(server, files, 1, NODELAY)
        _settle_disk()
        for _ in range(rounds):
            for level in FIND_KEYS:
                for server in running:
                    samples.setdefault(level, {}).setdefault(server.name, []).append(
                        find_latency_ms(server, level, study_uid))
    return {level: {name: statistics.median(values) for name, values in by_server.items()}
            for level, by_server in samples.items()}


def _fmt(value: float | None, pattern: str = "{:.0f}") -> str:
    return "-" if value is None else pattern.format(value)


def print_tables(rows: list[Row], scrapes: list[tuple[str, int, int]], finds: dict[str, dict[str, float]],
                 memory: Memory | None) -> None:
    if rows:
        print()
        print("| C-STORE (storescu) | pacsnode inst/s | Orthanc inst/s | storescp inst/s | pacsnode MB/s | "
              "vs Orthanc | vs storescp | CPU ms/inst pacsnode | Orthanc | storescp |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            ours, theirs, scp = row.rate("pacsnode"), row.rate("Orthanc"), row.rate("storescp")
            mb = row.megabytes / statistics.median(row.seconds["pacsnode"]) if ours else None
            print(f"| {row.case.label} | {_fmt(ours)} | {_fmt(theirs)} | {_fmt(scp)} | {_fmt(mb, '{:.1f}')} | "
                  f"{_fmt(ours / theirs if ours and theirs else None, '{:.2f}x')} | "
                  f"{_fmt(ours / scp if ours and scp else None, '{:.2f}x')} | "
                  f"{_fmt(row.cpu_ms('pacsnode'), '{:.2f}')} | {_fmt(row.cpu_ms('Orthanc'), '{:.2f}')} | "
                  f"{_fmt(row.cpu_ms('storescp'), '{:.2f}')} |")
        print()
        print("| /metrics after each pacsnode run | sent by storescu | pacsnode_received_instances_total | match |")
        print("|---|---|---|---|")
        for label, sent, counted in scrapes:
            print(f"| {label} | {sent} | {counted} | {'yes' if sent == counted else 'NO'} |")
    if finds:
        baseline = any("baseline" in values for values in finds.values())
        print()
        print("| C-FIND, one association (findscu --repeat) | pacsnode ms | Orthanc ms | speed vs Orthanc |"
              + (" baseline ms | baseline vs Orthanc |" if baseline else ""))
        print("|---|---|---|---|" + ("---|---|" if baseline else ""))
        for level, values in finds.items():
            line = (f"| {level} | {values['pacsnode']:.2f} | {values['Orthanc']:.2f} | "
                    f"{values['Orthanc'] / values['pacsnode']:.2f}x |")
            if baseline:
                line += f" {values['baseline']:.2f} | {values['Orthanc'] / values['baseline']:.2f}x |"
            print(line)
    if any(row.rate("baseline") for row in rows):
        print()
        print("| C-STORE (storescu) | pacsnode inst/s | baseline inst/s | ratio | CPU ms/inst pacsnode | baseline |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            ours, base = row.rate("pacsnode"), row.rate("baseline")
            print(f"| {row.case.label} | {_fmt(ours)} | {_fmt(base)} | "
                  f"{_fmt(ours / base if ours and base else None, '{:.2f}x')} | "
                  f"{_fmt(row.cpu_ms('pacsnode'), '{:.2f}')} | {_fmt(row.cpu_ms('baseline'), '{:.2f}')} |")
    if memory is not None and memory.processes:
        print()
        print(f"| pacsnode memory while ingesting (all {memory.processes} processes) | start MB | peak MB |")
        print("|---|---|---|")
        print(f"| RSS summed | {memory.start_rss:.0f} | {memory.peak_rss:.0f} |")
        print(f"| PSS summed (shared pages once) | {memory.start_pss:.0f} | {memory.peak_pss:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--rss-instances", type=int, default=10_000,
                        help="instances of the large row, during which pacsnode's memory is sampled (10,000)")
    parser.add_argument("--skip-rss", action="store_true", help="leave out the large row")
    parser.add_argument("--skip-find", action="store_true", help="leave out the C-FIND rows")
    parser.add_argument("--only-find", action="store_true",
                        help="run only the C-FIND rows (50 instances in each server; --rounds "
                             "and --baseline apply)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="send each case this many times per server, interleaved; report "
                             "the median (1)")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="also run the node from another source tree (e.g. an earlier checkout) in "
                             "every round and print its rows beside pacsnode's")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only the rows whose label contains one of these texts")
    args = parser.parse_args(argv)
    if args.only_find and args.skip_find:
        parser.error("--only-find and --skip-find exclude each other")
    for tool in ("storescu", "storescp", "findscu", "Orthanc"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run `make setup` (installs dcmtk and orthanc)", file=sys.stderr)
            return 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pacsnode-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"generating data in {work} ...", flush=True)
    mr_slices = 50 if args.only_find else 1000
    data = {"mr": write_mr_series(work / "data-mr", SeriesSpec(patient_id="BENCH-1", slices=mr_slices, rows=256,
                                                               columns=256, seed=1))}
    if not args.only_find:
        data["dyn"] = write_mr_series(work / "data-dyn", SeriesSpec(
            patient_id="BENCH-1", slices=20, time_points=100, rows=128, columns=128, seed=2,
            series_description="ep2d_perf"))
    large = f"{args.rss_instances:,} x 34 KiB MR, 4 assoc"
    cases = [
        Case("1,000 x 128 KiB MR, 1 assoc", "mr", 1),
        Case("1,000 x 128 KiB MR, 4 assoc", "mr", 4),
        Case("1,000 x 128 KiB MR, 8 assoc", "mr", 8),
        Case("2,000 x 34 KiB dynamic, 1 assoc", "dyn", 1),
        Case("1,000 x 128 KiB MR, 1 assoc, Nagle on", "mr", 1, nagle=True),
    ]
    if not args.skip_rss:
        cases.append(Case(large, "large", 4, sample_memory=True))
    if args.only is not None:
        cases = [c for c in cases if any(text in c.label for text in args.only)]
    if args.only_find:
        cases = []
    if any(c.data == "large" for c in cases):
        data["large"] = write_mr_series(work / "data-large", SeriesSpec(
            patient_id="BENCH-RSS", slices=args.rss_instances, rows=128, columns=128, seed=3))
    servers: dict[str, ServerFactory] = {
        "pacsnode": pacsnode_server, "Orthanc": orthanc_server, "storescp": storescp_server,
    }
    if args.baseline:
        baseline = Path(args.baseline).resolve()
        servers["baseline"] = lambda folder: pacsnode_server(folder, code=baseline)
    scrapes: list[tuple[str, int, int]] = []
    memory = Memory()
    rows = run_rows(data, work, servers, cases, max(1, args.rounds), scrapes, memory)

    finds: dict[str, dict[str, float]] = {}
    if not args.skip_find:
        finds = measure_finds(data["mr"][:50], work, servers, max(1, args.rounds))
    print_tables(rows, scrapes, finds, memory)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(sent == counted for _, sent, counted in scrapes) else 1


if __name__ == "__main__":
    sys.exit(main())
