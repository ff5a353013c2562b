"""Fuzz a serving node for a while: ``python -m bench.fuzz --minutes 10``.

The same properties as ``tests/fuzz`` (tests/fuzz/harness.py): DIMSE association requests,
PDU streams, C-STORE datasets, C-FIND identifiers, STOW-RS bodies, QIDO-RS and WADO-RS
requests, every one answered with a DICOM status, an HTTP status below 500, A-ABORT or a
closed connection, the node answering C-ECHO afterwards with no handler exception in its
log. Here hypothesis explores freely (a new seed per batch, shrinking on failure) until the
time is up, round-robin over the properties. A failure is shrunk to a minimal input,
recorded with it, and the node is restarted if it stopped answering.

Prints a summary and writes a JSON report (inputs per property, what the node answered,
failures, the node's RSS before and after); exit code 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.fuzz import strategies
from tests.fuzz.harness import (
    FUZZ_NODE_ENV,
    STORED,
    FuzzTarget,
    check_association_request,
    check_c_find,
    check_c_store,
    check_pdu_stream,
    check_qido,
    check_stow,
    check_wado,
    store_reference_instance,
)
from tests.peers import NodeProcess, node_process, tree_stats, wait_for_port

_BATCH = 40
#: The properties, in the order they take turns.
PROPERTIES = ("association-request", "pdu-stream", "c-store-dataset", "c-find-identifier", "stow-body",
              "qido-request", "wado-request")


@dataclass
class PropertyRun:
    """What one property saw: inputs tried, the node's answers, failures."""

    name: str
    inputs: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _properties(target: FuzzTarget, client: httpx.Client
                ) -> list[tuple[str, st.SearchStrategy[Any], Callable[[Any], str]]]:
    return [
        ("association-request", strategies.association_requests(),
         lambda case: check_association_request(target, case)),
        ("pdu-stream", strategies.pdu_streams(), lambda case: check_pdu_stream(target, case)),
        ("c-store-dataset", strategies.datasets(), lambda case: check_c_store(target, *case)),
        ("c-find-identifier", strategies.find_identifiers(), lambda case: check_c_find(target, case)),
        ("stow-body", strategies.stow_bodies(), lambda case: check_stow(target, client, *case)),
        ("qido-request", strategies.qido_requests(), lambda case: check_qido(target, client, *case)),
        ("wado-request", strategies.wado_paths(*STORED), lambda case: check_wado(target, client, *case)),
    ]


def _batch(run: PropertyRun, strategy: st.SearchStrategy[Any], check: Callable[[Any], str],
           target: FuzzTarget, batch_seed: int, examples: int) -> None:
    """Up to ``examples`` inputs of one property; a failure is shrunk and recorded."""

    @seed(batch_seed)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def explore(case: Any) -> None:
        run.inputs += 1
        since = target.log_position()
        run.answers[check(case)] += 1
        target.assert_healthy(since)

    started = time.monotonic()
    try:
        explore()
    except (AssertionError, ExceptionGroup) as exc:  # the shrunk failure(s), inputs in the notes
        for failure in (exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)):
            notes = "\n".join(getattr(failure, "__notes__", []))
            run.failures.append(f"seed {batch_seed}: {str(failure)[:2000]}\n{notes[:4000]}")
    finally:
        run.seconds += time.monotonic() - started


def _rss_mb(node: NodeProcess) -> float:
    """RSS of the node's processes together (main process, DIMSE receivers)."""
    return tree_stats(node.process.pid)[0]


@dataclass
class _Running:
    node: NodeProcess
    target: FuzzTarget


def _start(stack: ExitStack, folder: Path) -> _Running:
    node = stack.enter_context(node_process(folder, env=FUZZ_NODE_ENV))
    wait_for_port(node.http_port)
    target = FuzzTarget(node.port, node.http_port, node.log, index=node.storage / "index.sqlite")
    store_reference_instance(target)
    return _Running(node, target)


def _alive(target: FuzzTarget) -> bool:
    try:
        target.assert_healthy(target.log_position())
    except (AssertionError, OSError):
        return False
    return True


def fuzz(minutes: float, base_seed: int, workdir: Path, only: set[str] | None = None) -> dict[str, Any]:
    """Fuzz a node started in ``workdir`` for ``minutes`` (only the properties named in
    ``only``, when given); returns the report."""
    deadline = time.monotonic() + minutes * 60
    rng = random.Random(base_seed)
    restarts = 0
    with ExitStack() as stack, httpx.Client(timeout=60) as client:
        running = _start(stack, workdir / "node0")
        rss_start = _rss_mb(running.node)
        runs = {name: PropertyRun(name) for name, _, _ in _properties(running.target, client)
                if not only or name in only}
        while time.monotonic() < deadline:
            for name, strategy, check in _properties(running.target, client):
                if time.monotonic() >= deadline:
                    break
                if only and name not in only:
                    continue
                _batch(runs[name], strategy, check, running.target, rng.randrange(2**32), _BATCH)
                if not _alive(running.target):
                    restarts += 1
                    runs[name].failures.append("the node stopped answering C-ECHO; restarted")
                    stack.close()
                    running = _start(stack, workdir / f"node{restarts}")
            print(_line(runs, deadline), flush=True)
        rss_end = _rss_mb(running.node)
    return {
        "minutes": minutes, "seed": base_seed, "node_restarts": restarts,
        "rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1)},
        "properties": {name: {"inputs": r.inputs, "seconds": round(r.seconds, 1),
                              "answers": dict(r.answers.most_common(12)), "failures": r.failures}
                       for name, r in runs.items()},
        "inputs": sum(r.inputs for r in runs.values()),
        "failures": sum(len(r.failures) for r in runs.values()),
    }


def _line(runs: dict[str, PropertyRun], deadline: float) -> str:
    left = max(0.0, deadline - time.monotonic()) / 60
    counts = ", ".join(f"{name} {r.inputs}" for name, r in runs.items())
    failed = sum(len(r.failures) for r in runs.values())
    return f"[{left:4.1f} min left] inputs: {counts}; failures: {failed}"


def _summary(report: dict[str, Any]) -> Iterator[str]:
    yield (f"fuzzed {report['minutes']:g} min (seed {report['seed']}): {report['inputs']} inputs, "
           f"{report['failures']} failure(s), node restarts {report['node_restarts']}, "
           f"RSS {report['rss_mb']['start']} -> {report['rss_mb']['end']} MB")
    for name, run in report["properties"].items():
        top = ", ".join(f"{answer} x{count}" for answer, count in list(run["answers"].items())[:5])
        yield f"  {name:<20} {run['inputs']:>6} inputs  {len(run['failures'])} failed   {top}"
    for name, run in report["properties"].items():
        for failure in run["failures"]:
            yield f"\nFAILURE in {name}:\n{failure}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to fuzz (10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the batch seeds (random)")
    parser.add_argument("--only", nargs="+", choices=PROPERTIES, help="fuzz only these properties")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON report (default bench/results/fuzz-<time>.json)")
    args = parser.parse_args(argv)
    base_seed = args.seed if args.seed is not None else random.randrange(2**31)
    with tempfile.TemporaryDirectory(prefix="pacsnode-fuzz-") as workdir:
        report = fuzz(args.minutes, base_seed, Path(workdir), set(args.only or ()))
    out = args.out or Path("bench/results") / f"fuzz-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    for line in _summary(report):
        print(line)
    print(f"report: {out}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
