"""Benchmark: full-volume extended Tofts fitting, voxels/s, against dcmri per voxel.

Synthetic volume (default 128 × 128 × 16 voxels × 60 frames at 5 s, Parker AIF,
QIBA-DRO-like parameter ranges: Ktrans 0-0.35 /min, ve 0.1-0.5, vp 0.001-0.1), with
Gaussian noise on the concentration. The whole volume is fitted by
:func:`analyzers.dce.tofts.fit_extended_tofts` followed by the analyzer's leakage test
(:func:`analyzers.dce.selection.select_leakage`, timed with the fit); ``dcmri.Tissue`` (its own fitter, one
voxel at a time, as its API works) fits a random subset of the same voxels, and our fit
of that subset is taken from the full-volume run. dcmri's voxels/s is measured on the
subset and extrapolated linearly to the volume (it is a per-voxel loop). Accuracy of both
on the subset is printed so the speed ratio is read at equal accuracy.

Run: ``.venv/bin/python -m bench.dce_fit`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from analyzers.dce.aif import parker_aif
from analyzers.dce.selection import select_leakage
from analyzers.dce.t1 import spgr_signal
from analyzers.dce.tofts import extended_tofts, fit_extended_tofts

__all__ = ["main"]

HCT, R1_MM, T10, TR, FA = 0.45, 5.0, 1.084, 0.005, 25.0


def _dcmri_fit(t: np.ndarray, cp: np.ndarray, conc: np.ndarray) -> tuple[float, float, float]:
    import dcmri as dc

    signal = spgr_signal(1.0, 1.0 / T10 + R1_MM * conc, TR, FA)
    tissue = dc.Tissue("HF", "FF", sequence="SS", ca=cp * (1 - HCT) / 1000.0, t=t, H=HCT,
                       r1=R1_MM * 1000.0, R10=1.0 / T10, FA=FA, TR=TR, S0=1.0)
    tissue.train(t, signal, init_s0=False)
    return float(tissue.PS) * 60.0, float(tissue.vi), float(tissue.vb) * (1 - HCT)


def _within(measured: np.ndarray, truth: np.ndarray, atol: float, rtol: float) -> float:
    ok = np.abs(measured - truth) <= atol + rtol * np.abs(truth)
    return 100.0 * float(np.mean(ok))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 16])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--dt", type=float, default=5.0, help="frame interval (s)")
    parser.add_argument("--noise-mM", type=float, default=0.005,
                        help="SD of Gaussian noise on the concentration (mM)")
    parser.add_argument("--dcmri-voxels", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    n_vox = int(np.prod(args.shape))
    t = np.arange(args.frames) * args.dt
    cp = parker_aif(t, delay=30.0, hematocrit=HCT)
    truth = np.stack([rng.uniform(0.0, 0.35, n_vox), rng.uniform(0.1, 0.5, n_vox),
                      rng.uniform(0.001, 0.1, n_vox)], axis=1)
    conc = extended_tofts(t, cp, truth[:, 0], truth[:, 1], truth[:, 2])
    conc += rng.normal(0.0, args.noise_mM, conc.shape)

    start = time.perf_counter()
    fit = fit_extended_tofts(t, cp, conc, batch_size=args.batch_size)
    selection = select_leakage(t, cp, conc, fit)
    fit = selection.fit
    ours_s = time.perf_counter() - start
    ours_rate = n_vox / ours_s

    subset = rng.choice(n_vox, size=min(args.dcmri_voxels, n_vox), replace=False)
    start = time.perf_counter()
    theirs = np.array([_dcmri_fit(t, cp, conc[i]) for i in subset])
    dcmri_s = time.perf_counter() - start
    dcmri_rate = subset.size / dcmri_s

    ours_sub = np.stack([fit.ktrans[subset], fit.ve[subset], fit.vp[subset]], axis=1)
    tol = [(0.005, 0.1), (0.05, 0.0), (0.025, 0.0)]
    names = ["Ktrans", "ve", "vp"]
    print(f"volume {args.shape[0]}x{args.shape[1]}x{args.shape[2]} = {n_vox} voxels x "
          f"{args.frames} frames (dt {args.dt} s), noise SD {args.noise_mM} mM")
    print(f"{'implementation':34s} {'voxels':>8s} {'seconds':>9s} {'voxels/s':>10s}")
    print(f"{'pacsnode fit + leakage test':34s} {n_vox:8d} {ours_s:9.2f} {ours_rate:10.0f}")
    print(f"{'dcmri Tissue.train (per voxel)':34s} {subset.size:8d} {dcmri_s:9.2f} "
          f"{dcmri_rate:10.1f}")
    print(f"dcmri extrapolated to the volume: {n_vox / dcmri_rate:.0f} s; "
          f"speed ratio pacsnode / dcmri = {ours_rate / dcmri_rate:.0f}x")
    print(f"pacsnode fit failures (NaN): {fit.n_failed} of {n_vox}; no detectable leakage (Ktrans 0): "
          f"{int(selection.no_leakage.sum())} (true Ktrans < 0.005 /min: {int((truth[:, 0] < 0.005).sum())})")
    print(f"\naccuracy on the {subset.size} shared voxels (median |error|; % within OSIPI tolerance)")
    print(f"{'parameter':10s} {'pacsnode':>22s} {'dcmri':>22s}")
    for j, name in enumerate(names):
        ok = np.isfinite(ours_sub[:, j])
        e_ours = np.median(np.abs(ours_sub[ok, j] - truth[subset[ok], j]))
        e_theirs = np.median(np.abs(theirs[:, j] - truth[subset, j]))
        w_ours = _within(ours_sub[ok, j], truth[subset[ok], j], *tol[j])
        w_theirs = _within(theirs[:, j], truth[subset, j], *tol[j])
        print(f"{name:10s} {e_ours:12.5f} ({w_ours:5.1f}%) {e_theirs:12.5f} ({w_theirs:5.1f}%)")
    agree = [_within(ours_sub[:, j], theirs[:, j], *tol[j]) for j in range(3)]
    print("pacsnode vs dcmri within OSIPI tolerance: "
          + ", ".join(f"{n} {a:.1f}%" for n, a in zip(names, agree, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
