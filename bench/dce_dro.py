"""Benchmark: the ``dce`` analyzer on the DCE reference object, through the node, scored from the PACS.

Writes the reference object of :mod:`bench.dro.dce_object` (a QIBA-style Ktrans × ve × vp
grid with Ktrans = 0 patches, one T10 per slice, an artery and a sinus) as DICOM studies:
noise-free and with Rician noise at each ``--snr``, with its VFA series, plus one study
without VFA (``--no-vfa-snr``). Each study goes through dcmtk ``storescu`` → ``pacsnode
serve`` (shipped ``vfa``/``seg``/``dce`` routes) → Orthanc; the Parametric Maps and the SR
are read back from Orthanc and every patch is scored with the OSIPI tolerances (patch
median; Ktrans 0.005 /min + 10 %, ve 0.05, vp 0.025, R1 0.05 /s + 5 %). The SR's AIF
curve is compared with the true plasma AIF (peak and area).

Run: ``.venv/bin/python -m bench.dce_dro`` (``--help``); ``--markdown`` prints the table
of docs/analyzers/dce.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.dro.dce_object import DceDesign, build
from bench.dro.dce_run import DceCase, markdown_table, run_cases, timing_line

__all__ = ["main"]


def _snr(text: str) -> float | None:
    return None if text.lower() in ("none", "inf", "noise-free") else float(text)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snr", nargs="+", default=["none", "100", "50", "20"],
                        help="noise levels of the studies with VFA ('none' = noise-free)")
    parser.add_argument("--no-vfa-snr", default="50",
                        help="noise level of the study sent without its VFA series ('off' to skip)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--t10", type=float, nargs="+", default=list(DceDesign().t10_s),
                        help="tissue T10 (s) of the patch slices, one slice each")
    parser.add_argument("--out", type=Path, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--markdown", action="store_true", help="print the markdown table")
    args = parser.parse_args(argv)

    obj = build(DceDesign(t10_s=tuple(args.t10)))
    cases = [DceCase("noise-free" if _snr(s) is None else f"SNR {s}", _snr(s), args.seed) for s in args.snr]
    if args.no_vfa_snr != "off":
        cases.append(DceCase(f"SNR {args.no_vfa_snr}, no VFA", _snr(args.no_vfa_snr), args.seed, with_vfa=False))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pacsnode-dce-dro-") as tmp:
        folder = args.out or Path(tmp)
        results = run_cases(obj, cases, folder)
    elapsed = time.monotonic() - started
    print(f"DCE reference object: {obj.dynamic.shape[1]} slices x {obj.dynamic.shape[2]} x "
          f"{obj.dynamic.shape[3]} voxels, {obj.dynamic.shape[0]} frames of {obj.design.frame_s} s, "
          f"{len(obj.patches)} patches; seed {args.seed}; load average {os.getloadavg()[0]:.2f}")
    print(markdown_table(results) if args.markdown else "")
    for item in results:
        print(f"{item.case.label}, the SR in Orthanc:")
        print(f"    {item.results.sr_line('lesion 1:')[:400]}")
        print(f"    {item.results.sr_line('AIF:')[:300]}")
        print(f"    {item.results.sr_line('AIF quality')[:300]}")
        print(f"    {item.results.sr_line('T10 of tissue')[:300]}")
    print(timing_line(results))
    print(f"total {elapsed:.0f} s")
    print(json.dumps({item.case.label: {p: {"in_tolerance": s.n_in_tolerance, "patches": s.n_patches,
                                            "bias": round(s.bias, 4), "worst": round(s.worst, 4)}
                                        for p, s in item.summary.items()}
                      for item in results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
