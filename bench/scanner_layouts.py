"""Every analyzer on every vendor layout: a table of layout x analyzer -> done / rejected / failed.

Usage::

    python -m bench.scanner_layouts [--analyzers dsc,dce,...] [--cases NAME,...] [--json FILE]

Phantom cases also take a seed, the full size and a patient position:
``--cases phantom-t1c@3,phantom-dsc@1:full,phantom-mprage@0:HFDL``.

Cases are the real scanner series of ``reference-data/scanner-dicom`` (classic GE and Siemens,
Siemens MOSAIC, Siemens XA enhanced per volume, Philips enhanced whole series), a MOSAIC DSC
series built from the real MOSAIC EPI files (60 time points with a first-pass dip) and the
project's ``--small`` phantoms. Each analyzer runs in this process exactly as a node job
would call it (default settings, reference models); ``failed`` means an exception other than
``UnsuitableInput`` (a defect: the node would retry, then fail the job).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

from analyzers.contract import AnalysisInput, SeriesInput, UnsuitableInput
from analyzers.registry import load_analyzer

__all__ = ["CASES", "main", "run_case"]

ANALYZERS = ("dsc", "dce", "meningioma", "brainmets", "spine")


def _real(relative: str) -> Callable[[Path], list[Path]]:
    def files(_: Path) -> list[Path]:
        from tests.scanner_data import series_files

        return series_files(relative)
    return files


def _mosaic_dsc(scratch: Path) -> list[Path]:
    from tests.scanner_data import write_mosaic_dsc

    return write_mosaic_dsc(scratch / "mosaic-dsc")


def _xa_dsc(scratch: Path) -> list[Path]:
    from tests.scanner_data import write_xa_dsc

    return write_xa_dsc(scratch / "xa-dsc")


def _philips_dsc(scratch: Path) -> list[Path]:
    from tests.scanner_data import write_philips_dsc

    return [write_philips_dsc(scratch / "philips-dsc" / "dsc.dcm")]


def _phantom(name: str, folder: str, seed: int = 0, small: bool = True,
             position: str = "HFS") -> Callable[[Path], list[Path]]:
    def files(scratch: Path) -> list[Path]:
        from analyzers.phantoms.cli import PHANTOMS, SMALL
        from analyzers.phantoms.dicomio import write_case
        from analyzers.phantoms.positions import reposition

        case = reposition(PHANTOMS[name][1](seed=seed, **(SMALL[name] if small else {})), position)
        written = write_case(case, scratch / f"phantom-{name}")
        return sorted((written / folder).iterdir())
    return files


_PHANTOM_SERIES = {"phantom-dsc": ("dsc", "dsc"), "phantom-dce": ("dce", "dce"), "phantom-t1c": ("t1c", "t1c"),
                   "phantom-mprage": ("brainmets", "mprage"), "phantom-spine-t1": ("spine", "t1")}

#: case name -> (layout in words, file maker)
CASES: dict[str, tuple[str, Callable[[Path], list[Path]]]] = {
    "ge-3d-t1": ("classic GE, oblique 3D T1 (130 slices)", _real("ge-signa-pioneer-classic/05_3D_Ax_T1_MP_RAGE_R22")),
    "siemens-sag-t1": ("classic Siemens, 2D sagittal T1 (35 slices)", _real("siemens-decubitus-hfs/3_t1_fl2d_sag")),
    "mosaic-epi": ("Siemens MOSAIC EPI, 2 volumes", _real("siemens-vd13-mosaic/ax/axasc35")),
    "mosaic-jpeg2000": ("Siemens MOSAIC, JPEG 2000, 2 volumes", _real("siemens-vd13-mosaic/axmb/AxInt36mb")),
    "mosaic-dsc": ("Siemens MOSAIC DSC from the real EPI (60 time points, dip)", _mosaic_dsc),
    "xa-enhanced": ("Siemens XA Enhanced MR, one instance per volume (21 x 39 frames)",
                    _real("siemens-xa30-enhanced/10_DWI_dir80_PA")),
    "xa-dsc": ("Siemens XA Enhanced MR DSC from the real XA30 volume (30 instances, dip)", _xa_dsc),
    "philips-dsc": ("Philips Enhanced MR whole series: DSC from the real pCASL slices (30 time points, dip)",
                    _philips_dsc),
    "philips-pcasl": ("Philips Enhanced MR whole series, pCASL label/control",
                      _real("philips-enhanced/1903_WIP_SOURCE_-_3DpCASL.dcm")),
    "philips-fieldmap": ("Philips Enhanced MR whole series, magnitude + phase",
                         _real("philips-enhanced/2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm")),
    "phantom-dsc": ("classic phantom DSC (--small)", _phantom("dsc", "dsc")),
    "phantom-dce": ("classic phantom DCE (--small)", _phantom("dce", "dce")),
    "phantom-t1c": ("classic phantom T1C (--small)", _phantom("t1c", "t1c")),
    "phantom-mprage": ("classic phantom MPRAGE (--small)", _phantom("brainmets", "mprage")),
    "phantom-spine-t1": ("classic phantom spine T1 (--small)", _phantom("spine", "t1")),
}


def _case(name: str) -> tuple[str, Callable[[Path], list[Path]]]:
    """A case by name; ``phantom-NAME@SEED[:full][:POSITION]`` picks a seed, the full size and a
    patient position (``phantom-t1c@3:full:HFP``)."""
    if name in CASES:
        return CASES[name]
    base, _, rest = name.partition("@")
    if base not in CASES or not base.startswith("phantom-") or not rest:
        raise KeyError(f"unknown case {name!r}; known: {', '.join(CASES)} (phantoms also as NAME@SEED[:full][:POS])")
    seed_text, *flags = rest.split(":")
    phantom, folder = _PHANTOM_SERIES[base]
    position = next((f for f in flags if f != "full"), "HFS")
    size = "full" if "full" in flags else "--small"
    return (f"classic phantom {phantom} ({size}, seed {seed_text}, {position})",
            _phantom(phantom, folder, int(seed_text), "full" not in flags, position))


def run_case(analyzer_name: str, files: list[Path], scratch: Path) -> dict[str, Any]:
    """Run one analyzer on one series as a job would; the outcome and its reason."""
    analyzer = load_analyzer(analyzer_name)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    series = SeriesInput(str(header.SeriesInstanceUID), str(header.StudyInstanceUID), tuple(files),
                         {"SeriesDescription": str(header.get("SeriesDescription", ""))})
    job = AnalysisInput(job_id=f"bench-{analyzer_name}", series=series, related={}, priors=(),
                        settings=analyzer.settings_model(), scratch=scratch)
    started = time.monotonic()
    try:
        result = analyzer.analyze(job)
    except UnsuitableInput as exc:
        return {"result": "rejected", "reason": exc.reason, "seconds": time.monotonic() - started}
    except Exception as exc:  # noqa: BLE001 - the bench reports any defect instead of stopping
        return {"result": "failed", "reason": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc(limit=4), "seconds": time.monotonic() - started}
    kinds = sorted({str(d.Modality) for d in result.datasets})
    return {"result": "done", "reason": f"{len(result.datasets)} outputs ({', '.join(kinds)})",
            "seconds": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scanner_layouts", description=__doc__.splitlines()[0])
    parser.add_argument("--analyzers", default=",".join(ANALYZERS))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pacsnode-layouts-") as tmp:
        scratch = Path(tmp)
        for case in args.cases.split(","):
            layout, make = _case(case)
            try:
                files = make(scratch / case)
            except (OSError, ValueError) as exc:
                print(f"{case}: cannot prepare ({exc})", file=sys.stderr)
                continue
            for name in args.analyzers.split(","):
                work = scratch / case / f"job-{name}"
                work.mkdir(parents=True, exist_ok=True)
                outcome = run_case(name, files, work)
                rows.append({"case": case, "layout": layout, "analyzer": name, **outcome})
                print(f"| {case} | {name} | {outcome['result']} | {outcome['reason'][:160]} | "
                      f"{outcome['seconds']:.1f} s |", flush=True)
                if outcome["result"] == "failed":
                    print(outcome["trace"], file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any(r["result"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
