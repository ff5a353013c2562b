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

Each model reports what the analyzer would: components of its foreground
probability kept at the model folder's operating point
(:mod:`analyzers.brainmets.operating`; nnU-Net's argmax without one).
``--lesion-free N`` adds N phantoms without metastases (false positives per
healthy brain); ``--sweep`` prints sensitivity and false positives per brain at
each confidence threshold, and ``--write-operating-point`` (one model) stores the
threshold with the highest sensitivity at no more than ``--max-fp-per-brain``
false positives per brain in the model folder. Choose it on a validation seed
and report it on another.
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
from analyzers.brainmets.operating import (
    OperatingPoint,
    ValidationCase,
    choose_operating_point,
    confident_lesions,
    sweep,
)

__all__ = ["main", "vessel_false_positives"]

#: Minimum lesion sizes (voxels) the operating point is chosen among.
_MIN_VOXELS = (1, 3)


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
    p.add_argument("--lesion-free", type=int, default=0, metavar="N",
                   help="with --phantom: add N phantoms without metastases (false positives per healthy brain)")
    p.add_argument("--sweep", action="store_true",
                   help="print sensitivity and false positives per brain at each confidence threshold")
    p.add_argument("--floor", type=float, default=0.05,
                   help="probability at which candidate lesions are cut out for the sweep (0.05)")
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="keep each case's truth and each model's probabilities here and reuse them on the next "
                        "run with the same model names, source, technique and seed (sweeps without inference)")
    p.add_argument("--max-fp-per-brain", type=float, default=1.0,
                   help="false-positive budget per brain for --write-operating-point (1.0)")
    p.add_argument("--write-operating-point", action="store_true",
                   help="one model: store the chosen threshold as operating_point.json in its folder")
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

    def lesion_free(k: int) -> tuple[Any, Any, Any]:
        case = simulate_brainmets(args.seed, args.cases + k, spacing_mm=args.spacing, metastases=0)
        image, labels = phantom_case_arrays(case, args.technique)
        return image, labels, case.truth_maps[f"{args.technique}_vessels"]

    for k in range(args.cases):
        yield f"case-{k + 1:04d}", partial(phantom, k)
    for k in range(args.lesion_free):
        yield f"free-{k + 1:04d}", partial(lesion_free, k)


def _cache_file(cache: Path, source: str, args: argparse.Namespace, case_id: str) -> Path:
    stem = f"{source}-{args.technique}-{args.seed}-{args.spacing}-{case_id}" if source == "phantom" \
        else f"{source}-{args.technique}-{args.labels_from}-{case_id}"
    return cache / f"{stem}.npz"


def _cached(cache: Path | None, source: str, args: argparse.Namespace, case_id: str,
            names: list[str]) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]] | None:
    """Truth, vessels and each model's probabilities of a case from an earlier run, if all are there."""
    if cache is None:
        return None
    path = _cache_file(cache, source, args, case_id)
    if not path.is_file():
        return None
    with np.load(path) as stored:
        if not all(f"p_{n}" in stored for n in names):
            return None
        vessels = stored["vessels"] if "vessels" in stored else None
        return stored["truth"], vessels, {n: stored[f"p_{n}"].astype(np.float32) for n in names}


def _store(cache: Path | None, source: str, args: argparse.Namespace, case_id: str, truth: np.ndarray,
           vessels: np.ndarray | None, probabilities: dict[str, np.ndarray]) -> None:
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"truth": truth}
    if vessels is not None:
        arrays["vessels"] = vessels.astype(np.float16)
    arrays.update({f"p_{n}": p.astype(np.float16) for n, p in probabilities.items()})
    np.savez_compressed(_cache_file(cache, source, args, case_id), **arrays)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``pacsnode evaluate brainmets``; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if len(args.model) > 2:
        print("pacsnode evaluate brainmets: give one or two --model", file=sys.stderr)
        return 2
    import SimpleITK as sitk

    from analyzers.brainmets.inference import ModelFolderError, NnUNetModel

    if args.write_operating_point and len(args.model) != 1:
        print("pacsnode evaluate brainmets: --write-operating-point needs exactly one --model", file=sys.stderr)
        return 2
    models: dict[str, NnUNetModel] = {}
    points: dict[str, OperatingPoint] = {}
    try:
        for spec in args.model:
            name, _, path = spec.rpartition("=")
            folder = Path(path)
            models[name or folder.name] = NnUNetModel(folder, mirroring=not args.no_mirroring, threads=args.threads)
            points[name or folder.name] = OperatingPoint.load(folder)
    except (ModelFolderError, ValueError) as exc:
        print(f"pacsnode evaluate brainmets: {exc}", file=sys.stderr)
        return 1
    results: dict[str, list[CaseMetrics]] = {n: [] for n in models}
    vessel_fp: dict[str, int] = dict.fromkeys(models, 0)
    validation: dict[str, list[ValidationCase]] = {n: [] for n in models}
    try:
        cases = list(_cases(args))
    except LabelsError as exc:
        print(f"pacsnode evaluate brainmets: {exc}", file=sys.stderr)
        return 1
    keep_probabilities = args.sweep or args.write_operating_point
    origin = "phantom" if args.phantom else "labels"
    for k, (case_id, load) in enumerate(cases):
        cached = _cached(args.cache, origin, args, case_id, list(models))
        if cached is None:
            try:
                image, labels, vessels = load()
            except LabelsError as exc:
                print(f"pacsnode evaluate brainmets: {exc}", file=sys.stderr)
                return 1
            truth = sitk.GetArrayFromImage(labels) > 0
            probabilities = {name: model.foreground_probability(image) for name, model in models.items()}
            _store(args.cache, origin, args, case_id, truth, vessels, probabilities)
        else:
            truth, vessels, probabilities = cached
        for name in models:
            probability = probabilities[name]
            pred = confident_lesions(probability, np.eye(4), points[name])[0].mask
            results[name].append(evaluate_case(truth, pred, case_id))
            if vessels is not None:
                vessel_fp[name] += vessel_false_positives(pred, truth, vessels)
            if keep_probabilities:
                validation[name].append(ValidationCase(case_id, truth, probability.astype(np.float16)))
        print(f"[brainmets] evaluated case {k + 1}/{len(cases)}", file=sys.stderr, flush=True)
    print(format_table(results))
    if args.phantom:
        print("; ".join(f"{n}: {v} false-positive instance(s) on vessels in {len(cases)} cases"
                        for n, v in vessel_fp.items()))
    lesion_free = sum(1 for c in results[next(iter(results))] if c.n_gt == 0)
    for name, metrics in results.items():
        fp_free = sum(c.false_positives for c in metrics if c.n_gt == 0)
        print(f"{name}: operating point {points[name].threshold:.2f} (floor {points[name].floor:.2f}); "
              f"{sum(c.false_positives for c in metrics) / len(metrics):.2f} false positives per brain"
              + (f", {fp_free / lesion_free:.2f} per brain without metastases ({lesion_free})" if lesion_free else ""))
    sweeps: dict[str, list[dict[str, Any]]] = {}
    if keep_probabilities:
        for name, cases_of_model in validation.items():
            rows = [r for size in _MIN_VOXELS for r in sweep(cases_of_model, floor=args.floor, min_voxels=size)]
            sweeps[name] = [r.to_dict() for r in rows]
            print(f"{name}: min voxels  threshold  sensitivity  FP/brain  FP/brain without metastases "
                  f"(floor {args.floor})")
            for r in rows:
                print(f"  {r.min_voxels}  {r.threshold:.2f}  {r.sensitivity:.3f}  {r.fp_per_brain:.2f}  "
                      f"{r.fp_per_lesion_free_brain:.2f}")
    if args.write_operating_point:
        name, folder = next(iter(models)), next(iter(models.values())).folder
        n_lesions = sum(c.n_gt for c in results[name])
        source = (f"phantoms seed {args.seed} ({args.technique}, {args.spacing} mm)" if args.phantom
                  else f"labelled studies {args.labels}")
        rows = [r for size in _MIN_VOXELS for r in sweep(validation[name], floor=args.floor, min_voxels=size)]
        point = choose_operating_point(rows, floor=args.floor, validation=source, n_lesions=n_lesions,
                                       max_fp_per_brain=args.max_fp_per_brain)
        print(f"wrote {point.save(folder)}: {point.statement()}")
    if args.json:
        args.json.write_text(json.dumps(
            {n: [c.to_dict() for c in cs] for n, cs in results.items()} | {"vessel_false_positives": vessel_fp}
            | {"sweeps": sweeps},
            indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
