"""Benchmark: phantom cohort generation, cases/s, against the file system's own ceiling.

For each phantom it runs ``pacsnode phantom NAME --cases K --workers W`` as a user
would (a fresh process, template loading included) into a folder on the chosen
disk, then, in the same run, writes the same number of files of the same sizes
with nothing else to do (``W`` processes, plain ``open``/``write``/``close``): the
ceiling any generator writing one file per slice and time point can reach on that
disk. The table prints cases/s, files/s, MB/s, the ratio to the ceiling and the
issue's target (≥ 1 case/s for the 2D-heavy series, DSC and spine, on 2 cores).

Each figure is the median of ``--rounds`` runs, ``os.sync()`` before each. Nothing
is deleted until the end: on ext4 without a journal, creating a file skips every
free inode of its block group deleted in the last 60 s (6 min while the inode
table block is dirty), one buffer lookup each, so file creation right after a
mass deletion costs several times more (measured here: 30 % of all CPU samples
in ``recently_deleted`` under ``ext4_create``). Start the benchmark a few minutes
after deleting large folders on the same file system.

Run: ``.venv/bin/python -m bench.phantoms`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

__all__ = ["main"]

#: Phantoms whose series are 2D acquisitions (one file per slice, many slices or frames).
TWO_D_HEAVY = ("dsc", "spine")
TARGET_CASES_PER_S = 1.0


def _file_sizes(folder: Path) -> list[int]:
    return [path.stat().st_size for path in folder.rglob("*.dcm")]


def _write_files(args: tuple[str, list[int]]) -> None:
    folder, sizes = args
    os.makedirs(folder, exist_ok=True)
    payload = os.urandom(max(sizes, default=0))
    for number, size in enumerate(sizes):
        fd = os.open(os.path.join(folder, f"IM{number:05d}.dcm"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(payload)[:size]
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def _generate(name: str, out: Path, cases: int, workers: int, seed: int) -> float:
    command = [
        sys.executable, "-m", "node.cli", "phantom", name, "--out", str(out),
        "--cases", str(cases), "--workers", str(workers), "--seed", str(seed), "--no-progress",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _ceiling(out: Path, sizes: list[int], cases: int, workers: int) -> float:
    per_case = [sizes[i::cases] for i in range(cases)]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_write_files, [(str(out / f"case-{i:04d}"), chunk) for i, chunk in enumerate(per_case)]))
    return time.perf_counter() - start


def _run(args: argparse.Namespace, scratch: Path) -> list[tuple[str, float, float, float, float, float, int]]:
    rows = []
    for name in args.phantoms:
        generated, ceiling = [], []
        files, megabytes = 0, 0.0
        for round_number in range(args.rounds):
            out = scratch / f"{name}-{round_number}"
            os.sync()
            generated.append(_generate(name, out / "gen", args.cases, args.workers, seed=round_number))
            sizes = _file_sizes(out / "gen")
            files, megabytes = len(sizes), sum(sizes) / 1e6
            os.sync()
            ceiling.append(_ceiling(out / "ceiling", sizes, args.cases, args.workers))
            print(f"{name} round {round_number + 1}: generator {generated[-1]:.1f} s, plain files {ceiling[-1]:.1f} s",
                  file=sys.stderr)  # fmt: skip
        wall, floor = statistics.median(generated), statistics.median(ceiling)
        rows.append((name, args.cases / wall, files / wall, megabytes / wall, args.cases / floor, floor / wall, files))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.phantoms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantoms", nargs="+", default=list(TWO_D_HEAVY), help="phantoms (default: dsc spine)")
    parser.add_argument("--cases", type=int, default=12, help="cases per run (default 12)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: CPU cores)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per phantom; the median is printed (default 3)")
    parser.add_argument("--dir", type=Path, default=Path("var"), help="disk to write on (default ./var)")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="pacsnode-bench-phantoms-", dir=args.dir))
    try:
        rows = _run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    setup = f"{args.cases} cases per run, {args.workers} worker(s), median of {args.rounds}, written under {args.dir}"
    print(f"\n{setup}\n")
    print("| phantom | files/case | cases/s | files/s | MB/s | plain-file ceiling cases/s | vs ceiling | target |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rate, files_s, mb_s, ceiling_rate, ratio, files in rows:
        target = f"≥ {TARGET_CASES_PER_S:g} case/s" if name in TWO_D_HEAVY else "-"
        print(
            f"| {name} | {files / args.cases:.0f} | {rate:.2f} | {files_s:.0f} | {mb_s:.1f} | {ceiling_rate:.2f} "
            f"| {ratio:.2f}x | {target} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
