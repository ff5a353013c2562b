"""Benchmark: full DSC map computation, voxels/s, against a per-voxel reference loop.

Synthetic series (default 128 × 128 × 20 voxels × 60 frames at 1.5 s, SNR 50) from
the analytical forward model of :mod:`analyzers.dsc.simulate` (gamma-variate AIF
with recirculation, exponential residue, one leaky lesion). Two numbers:

* **pipeline**: :func:`analyzers.dsc.maps.compute_maps` on the whole series
  (brain mask, bolus timing, ΔR2*, automatic AIF, model-based leakage estimate
  and its neighbourhood gate, CBV, deconvolution, PSR), once with the default
  oSVD and once with the Bayesian method; voxels/s counts the analysed (brain)
  voxels.
* **core**: the oSVD deconvolution alone (ΔR2* and oSVD flow) for every brain
  voxel, vectorised, against :mod:`analyzers.dsc.loop` (one voxel at a time,
  each with its own truncations) on a random subset of the same voxels,
  extrapolated linearly (it is a loop). The two agree on that subset; the
  largest difference is printed.

With ``--detection-cases N`` it also measures the automatic dural-lesion
candidates (:mod:`analyzers.dsc.candidates`) on N cases of the project's DSC
phantom (default geometry, SNR 60): the fraction of lesions hit by a candidate
and the false candidates per case.

Wall time vs CPU time: every stage prints its wall time, its CPU time (user +
system, all threads of the process) and the time its threads spent runnable but
waiting for a CPU (run-queue delay from ``/proc/self/task/*/schedstat``, Linux).
On a machine shared with other work, wall ≈ CPU / threads + run-queue wait: a wall
time well above the CPU time with a large run-queue wait means the process was
waiting for a core, not computing (the figure to compare with the 15 s target on
an idle 2-core machine is then the CPU time of a single-threaded run).

Run: ``.venv/bin/python -m bench.dsc_maps`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from analyzers.dsc.loop import perfusion_loop
from analyzers.dsc.maps import MapOptions, compute_maps
from analyzers.dsc.signal import baseline_signal, delta_r2star
from analyzers.dsc.simulate import synthetic_series

__all__ = ["main"]


def _scheduler_seconds() -> tuple[float, float]:
    """(CPU time on a core, time runnable but waiting for one) summed over this process's threads.

    From ``/proc/self/task/*/schedstat`` (nanoseconds); (nan, nan) where it does not exist.
    """
    on_cpu = waiting = 0.0
    try:
        for task in Path("/proc/self/task").iterdir():
            try:
                fields = (task / "schedstat").read_text().split()
            except OSError:
                continue  # the thread ended meanwhile
            on_cpu += int(fields[0]) / 1e9
            waiting += int(fields[1]) / 1e9
    except OSError:
        return float("nan"), float("nan")
    return on_cpu, waiting


class _Stage:
    """Wall, CPU and run-queue wait of a block of code."""

    def __enter__(self) -> _Stage:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._sched = _scheduler_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.waiting = _scheduler_seconds()[1] - self._sched[1]


def _loop(signal: np.ndarray, timing: object, te_s: float,
          aif: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ΔR2* and oSVD one voxel at a time (the AIF's SVD is computed once)."""
    curves = np.empty(signal.shape, dtype=np.float64)
    for i, curve in enumerate(signal):
        s0 = baseline_signal(curve[None], timing)  # type: ignore[arg-type]
        curves[i] = delta_r2star(curve[None], s0, te_s)[0]
    # perfusion_loop walks the voxels one by one against one SVD of the AIF matrix.
    return perfusion_loop(curves, aif, times)


def detection(cases: int, seed: int) -> None:
    """Print the candidate detection rate on ``cases`` phantom cases."""
    from analyzers.dsc.candidates import find_candidates
    from analyzers.dsc.reference import white_matter_mask
    from analyzers.phantoms.dsc import simulate_dsc

    hit = total = false = 0
    by_label: dict[str, list[int]] = {}
    for index in range(cases):
        case = simulate_dsc(seed=seed, case_index=index)
        series, truth = case.series[0], case.truth_maps
        maps = compute_maps(series.pixels, series.times_s, case.truth["constants"]["te_s"])
        spacing = tuple(float(v) for v in series.grid.spacing)
        found = find_candidates(maps, white_matter_mask(maps), spacing)  # type: ignore[arg-type]
        lesion_any = truth["lesion_fraction"] > 0
        false += sum(not (mask & lesion_any).any() for mask in found)
        for item in case.truth["lesions"]:
            core = truth["lesion_labels"] == item["id"]
            found_it = any((mask & core).any() for mask in found)
            hit += found_it
            total += 1
            by_label.setdefault(item["label"], [0, 0])
            by_label[item["label"]][0] += found_it
            by_label[item["label"]][1] += 1
    print(f"automatic candidates on {cases} phantom cases (seed {seed}): {hit} of {total} "
          f"lesions hit ({hit / max(total, 1):.0%}), {false / max(cases, 1):.1f} false "
          "candidates per case")
    for label, (found_count, count) in sorted(by_label.items()):
        print(f"  {label}: {found_count} of {count}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(20, 128, 128), metavar=("Z", "Y", "X"))
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--loop-voxels", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detection-cases", type=int, default=0,
                        help="also measure automatic lesion candidates on N phantom cases")
    parser.add_argument("--skip-maps", action="store_true", help="only the detection measurement")
    args = parser.parse_args(argv)
    if args.detection_cases:
        detection(args.detection_cases, args.seed + 100)
    if args.skip_maps:
        return 0

    series = synthetic_series(shape=tuple(args.shape), frames=args.frames, snr=50.0,
                              lesion_k2=0.01, seed=args.seed)
    total = int(np.prod(args.shape))
    with _Stage() as pipeline:
        maps = compute_maps(series.signal, series.times, series.te_s)
    with _Stage() as bayes:
        compute_maps(series.signal, series.times, series.te_s, MapOptions(method="bayes"))
    brain = int(maps.brain_mask.sum())

    curves = series.signal[:, maps.brain_mask].T.astype(np.float64)
    scale = 100.0 * 60.0 * maps.options.k_h / maps.options.density
    with _Stage() as core:
        s0 = baseline_signal(curves, maps.timing)
        dr2 = delta_r2star(curves, s0, series.te_s)
        cbf = scale * maps.deconvolver.flow(dr2)

    rng = np.random.default_rng(args.seed)
    subset = rng.choice(brain, size=min(args.loop_voxels, brain), replace=False)
    with _Stage() as loop:
        _, cbf_loop = _loop(curves[subset], maps.timing, series.te_s, maps.aif_curve, series.times)
    loop_rate = subset.size / loop.wall
    cbf_diff = float(np.max(np.abs(cbf_loop - cbf[subset]) / np.abs(cbf_loop)))

    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"DSC maps: {args.shape[0]}x{args.shape[1]}x{args.shape[2]} voxels x {args.frames} "
          f"frames, {brain} brain voxels of {total}; {cores} CPU cores, load {load:.1f}, "
          f"OMP_NUM_THREADS={threads}, nice {os.nice(0)}")
    print(f"{'stage':<36}{'wall s':>8}{'CPU s':>8}{'queue s':>9}{'voxels/s':>11}{'vs loop':>9}")
    factor = brain / subset.size
    rows = [("pipeline, oSVD (compute_maps)", pipeline.wall, pipeline.cpu, pipeline.waiting,
             brain / pipeline.wall),
            ("pipeline, Bayesian (compute_maps)", bayes.wall, bayes.cpu, bayes.waiting,
             brain / bayes.wall),
            ("core (dR2*, oSVD), vectorised", core.wall, core.cpu, core.waiting, brain / core.wall),
            ("core, per-voxel loop (extrapolated)", loop.wall * factor, loop.cpu * factor,
             loop.waiting * factor, loop_rate)]
    for name, wall, cpu, waiting, rate in rows:
        print(f"{name:<36}{wall:>8.2f}{cpu:>8.2f}{waiting:>9.2f}{rate:>11,.0f}{rate / loop_rate:>8.0f}x")
    cpu_rate = brain / pipeline.cpu
    loop_cpu_rate = subset.size / loop.cpu
    print(f"CPU-time rates (load-independent): pipeline {cpu_rate:,.0f} voxels/s, loop "
          f"{loop_cpu_rate:,.0f} voxels/s, ratio {cpu_rate / loop_cpu_rate:.0f}x")
    print(f"loop subset: {subset.size} voxels in {loop.wall:.2f} s; largest relative difference "
          f"of CBF, loop vs vectorised: {cbf_diff:.1e}")
    for name, stage in (("oSVD", pipeline), ("Bayesian", bayes)):
        print(f"whole series under 15 s ({name}): wall {'yes' if stage.wall < 15.0 else 'no'} "
              f"({stage.wall:.1f} s), CPU {'yes' if stage.cpu < 15.0 else 'no'} ({stage.cpu:.1f} s over "
              f"all threads); {stage.waiting:.1f} s runnable but waiting for a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
