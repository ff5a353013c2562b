"""``pacsnode evaluate brainmets``: the study's table for one or two models.

Each model (an nnU-Net v2 results folder) segments held-out brain-metastasis
phantoms (``--phantom``) or labelled studies (``--labels``: a folder of DICOM files
such as the node's storage, or a labels.csv; :mod:`analyzers.brainmets.labelled`);
predictions are compared with the truth by the study's
instance metrics (:mod:`analyzers.brainmets.metrics`): per-patient instance
F1/PPV/sensitivity and lesion-wise voxel Dice/PPV/sensitivity as mean ± SD and
median (IQR), the Wilcoxon signed-rank p-value between two models, and pooled
instance metrics. False-positive instances that overlap a vessel of the
phantom are counted separately (the bright-vessel false positives of
MPRAGE-like images).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from analyzers.brainmets.labelled import LabelledCase, LabelsError, find_labelled_cases, labelled_case_arrays
from analyzers.brainmets.metrics import CaseMetrics, connected_components, evaluate_case, format_table

__all__ = ["main", "vessel_false_positives"]


def vessel_false_positives(pred_mask: np.ndarray, gt_mask: np.ndarray, vessel_fraction: np.ndarray) -> int:
    """Predicted components that touch no lesion but overlap a vessel (fraction ≥ 0.5)."""
    labels, count = connected_components(pred_mask)
    if count == 0:
        return 0
    on_lesion = np.bincount(labels[gt_mask > 0], minlength=count + 1)[1:] > 0
    on_vessel = np.bincount(labels[vessel_fraction >= 0.5], minlength=count + 1)[1:] > 0
    return int(np.count_nonzero(on_vessel & ~on_lesion))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacsnode evaluate brainmets", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True,
                   help="NAME=RESULTS_FOLDER or RESULTS_FOLDER (once or twice)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--phantom", action="store_true", help="evaluate on held-out phantoms")
    src.add_argument("--labels", type=Path, metavar="FOLDER_OR_CSV",
                     help="labelled studies: a folder of DICOM files (the node's [storage] path, an export) "
                          "with a SEG per labelled series, or a labels.csv (series_dir, seg[, seg_on, case])")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=1000, help="phantom seed (keep it apart from training seeds)")
    p.add_argument("--technique", choices=("space", "mprage"), default="space")
    p.add_argument("--labels-from", choices=("truth", "space"), default="truth",
                   help="with --labels and --technique mprage: labels drawn on a SPACE series of the study, "
                        "carried by registration")
    p.add_argument("--spacing", type=float, default=2.0)
    p.add_argument("--no-mirroring", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write per-case metrics here")
    return p


def _cases(args: argparse.Namespace) -> Iterator[tuple[str, Callable[[], tuple[Any, Any, Any]]]]:
    """(case id, loader of (image, labels, vessel fraction or None)) of the evaluation cases."""
    if args.labels is not None:
        def labelled(case: LabelledCase) -> tuple[Any, Any, Any]:
            image, labels = labelled_case_arrays(case)
            return image, labels, None

        for case in find_labelled_cases(args.labels, args.technique, args.labels_from):
            yield case.case_id, partial(labelled, case)
        return
    from analyzers.brainmets.dataset import phantom_case_arrays
    from analyzers.phantoms.brainmets import simulate_brainmets

    def phantom(k: int) -> tuple[Any, Any, Any]:
        case = simulate_brainmets(args.seed, k, spacing_mm=args.spacing)
        image, labels = phantom_case_arrays(case, args.technique)
        return image, labels, case.truth_maps[f"{args.technique}_vessels"]

    for k in range(args.cases):
        yield f"case-{k + 1:04d}", partial(phantom, k)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``pacsnode evaluate brainmets``; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if len(args.model) > 2:
        print("pacsnode evaluate brainmets: give one or two --model", file=sys.stderr)
        return 2
    import SimpleITK as sitk

    from analyzers.brainmets.inference import ModelFolderError, NnUNetModel

    models: dict[str, NnUNetModel] = {}
    try:
        for spec in args.model:
            name, _, path = spec.rpartition("=")
            folder = Path(path)
            models[name or folder.name] = NnUNetModel(folder, mirroring=not args.no_mirroring, threads=args.threads)
    except ModelFolderError as exc:
        print(f"pacsnode evaluate brainmets: {exc}", file=sys.stderr)
        return 1
    results: dict[str, list[CaseMetrics]] = {n: [] for n in models}
    vessel_fp: dict[str, int] = dict.fromkeys(models, 0)
    try:
        cases = list(_cases(args))
    except LabelsError as exc:
        print(f"pacsnode evaluate brainmets: {exc}", file=sys.stderr)
        return 1
    for k, (case_id, load) in enumerate(cases):
        try:
            image, labels, vessels = load()
        except LabelsError as exc:
            print(f"pacsnode evaluate brainmets: {exc}", file=sys.stderr)
            return 1
        truth = sitk.GetArrayFromImage(labels) > 0
        for name, model in models.items():
            pred = model.predict_image(image) > 0
            results[name].append(evaluate_case(truth, pred, case_id))
            if vessels is not None:
                vessel_fp[name] += vessel_false_positives(pred, truth, vessels)
        print(f"[brainmets] evaluated case {k + 1}/{len(cases)}", file=sys.stderr, flush=True)
    print(format_table(results))
    if args.phantom:
        print("; ".join(f"{n}: {v} false-positive instance(s) on vessels in {len(cases)} cases"
                        for n, v in vessel_fp.items()))
    if args.json:
        args.json.write_text(json.dumps(
            {n: [c.to_dict() for c in cs] for n, cs in results.items()} | {"vessel_false_positives": vessel_fp},
            indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
