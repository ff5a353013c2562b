"""``pacsnode phantom``: write phantom cohorts and preview montages.

Usage::

    pacsnode phantom NAME|all --out DIR [--seed N] [--cases K] [--workers W] [--small]
                     [--patient-position HFS|HFP|FFS|FFP|HFDL|HFDR|FFDL|FFDR] [--set KEY=VALUE ...]
    pacsnode phantom preview NAME --png out.png [--seed N] [--case I] [--set KEY=VALUE ...]
    pacsnode phantom list

``--set`` passes an option to the phantom (``--set snr=80 --set pretreatment=false``);
values are read as JSON when they parse (numbers, true/false, null), else as text.
``--small`` writes each phantom at the smallest size its generator allows
(:data:`SMALL`: coarse grids, few slices and time points) for quick chain tests.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from analyzers.phantoms.brainmets import generate_brainmets, simulate_brainmets
from analyzers.phantoms.dce import generate_dce, simulate_dce
from analyzers.phantoms.dsc import generate_dsc, simulate_dsc
from analyzers.phantoms.model import PhantomCase, PhantomError
from analyzers.phantoms.positions import PATIENT_POSITIONS
from analyzers.phantoms.spine import generate_spine, simulate_spine
from analyzers.phantoms.t1c import generate_t1c, simulate_t1c

__all__ = ["PHANTOMS", "SMALL", "main"]

#: name -> (cohort generator, single-case simulator)
PHANTOMS: Mapping[str, tuple[Callable[..., Path], Callable[..., PhantomCase]]] = MappingProxyType(
    {
        "dsc": (generate_dsc, simulate_dsc),
        "dce": (generate_dce, simulate_dce),
        "t1c": (generate_t1c, simulate_t1c),
        "spine": (generate_spine, simulate_spine),
        "brainmets": (generate_brainmets, simulate_brainmets),
    }
)

#: Smallest options each generator accepts (whole head or spine in the field of view, coarse voxels):
#: a few hundred files for all five phantoms, for chain tests and demos.
SMALL: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "dsc": {"matrix": 32, "slices": 4, "time_points": 20, "pixel_mm": 7.2, "slice_mm": 10.0},
        "dce": {"matrix": 32, "slices": 4, "time_points": 60, "frame_s": 5.0, "pixel_mm": 7.2, "slice_mm": 10.0},
        "t1c": {"matrix": 48, "slices": 12, "pixel_mm": 4.0, "slice_mm": 4.0},
        "spine": {"slices": 5, "rows": 80, "columns": 56, "pixel_mm": 4.0, "slice_mm": 6.0},
        "brainmets": {"spacing_mm": 3.0},
    }
)


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return key.strip().replace("-", "_"), value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsnode phantom",
        description="Write digital reference objects (DICOM series + ground truth) or preview one case. "
        "Synthetic data, not for clinical use.",
    )
    parser.add_argument("name", help="a phantom (" + ", ".join(PHANTOMS) + "), 'all', 'preview' or 'list'")
    parser.add_argument("target", nargs="?", help="the phantom to preview (with 'preview')")
    parser.add_argument("--out", type=Path, help="output folder (cohorts go to OUT/NAME/)")
    parser.add_argument("--png", type=Path, help="preview image to write (with 'preview')")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same files")
    parser.add_argument("--cases", type=int, default=1, help="number of cases (patients) per phantom")
    parser.add_argument(
        "--small", action="store_true", help="smallest sizes the generators allow (quick tests and demos)"
    )
    parser.add_argument("--case", type=int, default=1, help="case number to preview (1-based)")
    parser.add_argument(
        "--patient-position", default="HFS", choices=PATIENT_POSITIONS,
        help="write every series as the scanner does for a patient lying so (default HFS; "
        "decubitus only for axial series)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes writing cases in parallel (default: one per CPU core, at most one per case)",
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show progress")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress")
    parser.add_argument(
        "--set",
        dest="options",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="phantom option, e.g. snr=80 (repeatable)",
    )
    return parser


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    accepted = [p for p in inspect.signature(PHANTOMS[name][1]).parameters if p not in {"seed", "case_index"}]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise PhantomError(f"{name} has no option {unknown[0]!r}; its options are: {', '.join(accepted)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pacsnode phantom`` command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["phantom"]:
        args_list = args_list[1:]
    parser = _parser()
    args = parser.parse_args(args_list)
    options = dict(args.options)
    try:
        if args.name == "list":
            for name, (generate, _) in PHANTOMS.items():
                summary = (generate.__doc__ or "").strip().splitlines()[0]
                print(f"{name:10s} {summary}")
            return 0
        if args.name == "preview":
            return _preview(parser, args, options)
        names = list(PHANTOMS) if args.name == "all" else [args.name]
        unknown = [n for n in names if n not in PHANTOMS]
        if unknown:
            parser.error(f"unknown phantom {unknown[0]!r}; choose from {', '.join(PHANTOMS)} or 'all'")
        if args.out is None:
            parser.error("--out DIR is required to write phantoms")
        if options and len(names) > 1:
            parser.error("--set applies to one phantom; run each phantom separately to set options")
        for name in names:
            chosen = {**(SMALL[name] if args.small else {}), **options}
            _check_options(name, chosen)
            start = time.monotonic()
            root = PHANTOMS[name][0](
                args.out, seed=args.seed, cases=args.cases, progress=args.progress, workers=args.workers,
                patient_position=args.patient_position, **chosen
            )
            elapsed = time.monotonic() - start
            print(f"{name}: {args.cases} case(s) in {root} ({elapsed:.1f} s, {args.cases / elapsed:.2f} case/s)")
    except PhantomError as exc:
        print(f"pacsnode phantom: {exc}", file=sys.stderr)
        return 2
    return 0


def _preview(parser: argparse.ArgumentParser, args: argparse.Namespace, options: dict[str, Any]) -> int:
    from analyzers.phantoms.preview import render_case

    if args.target not in PHANTOMS:
        parser.error(f"preview needs a phantom name: {', '.join(PHANTOMS)}")
    if args.png is None:
        parser.error("--png FILE is required for preview")
    if args.case < 1:
        parser.error("--case is 1-based")
    try:
        _check_options(args.target, {**(SMALL[args.target] if args.small else {}), **options})
    except PhantomError as exc:
        print(f"pacsnode phantom: {exc}", file=sys.stderr)
        return 2
    chosen = {**(SMALL[args.target] if args.small else {}), **options}
    case = PHANTOMS[args.target][1](seed=args.seed, case_index=args.case - 1, **chosen)
    path = render_case(case, args.png)
    print(f"{args.target}: preview of case {args.case} written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
