"""``pacsnode evaluate meningioma``: the detection stage of a model folder on labelled series.

Every row of each ``--labels`` CSV (the format of ``pacsnode train meningioma
--labels``: series with and without a meningioma) goes through the analyzer's
own path without a SEG (MNI152 brain fit, N4, candidate masses, the folder's
detection stage at its fixed threshold). Printed and written to ``--out``:
sensitivity and specificity with exact (Clopper-Pearson) 95 % CIs, the
calibration of the detection probability and the series it got wrong. Several
cohorts are pooled; each runs in a process of its own (up to ``--processes``).
Nothing is fitted: a held-out cohort is a test of the folder as it is.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from analyzers.meningioma.detection import CaseCandidates, DetectionModel

__all__ = ["main"]


def _cohort(folder: Path, labels: Path) -> tuple[list[CaseCandidates], list[str]]:
    import SimpleITK as sitk

    from analyzers.meningioma.train_detection import load_detection_cases

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    model = DetectionModel.load(folder)

    def progress(done: int, total: int) -> None:
        print(f"[meningioma] {labels}: {done}/{total} series", file=sys.stderr, flush=True)

    return load_detection_cases(labels, settings=model.candidate_settings, progress=progress)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacsnode evaluate meningioma", description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, action="append", required=True,
                        help="labels CSV of series with and without meningioma (repeatable: pooled)")
    parser.add_argument("--model-folder", type=Path,
                        help="model folder with detection.json (default: the reference model)")
    parser.add_argument("--out", type=Path, help="write the evaluation as JSON here")
    parser.add_argument("--processes", type=int, default=2, help="cohorts evaluated at once (default 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line of ``pacsnode evaluate meningioma``."""
    from analyzers.meningioma.analyzer import REFERENCE_MODEL_FOLDER
    from analyzers.meningioma.train_detection import evaluate_detection

    parser = _parser()
    args = parser.parse_args(argv)
    folder: Path = args.model_folder or REFERENCE_MODEL_FOLDER
    if not (folder / "detection.json").is_file():
        parser.error(f"{folder} holds no detection stage (detection.json); train one with `pacsnode train meningioma`")
    missing = [str(p) for p in args.labels if not p.is_file()]
    if missing:
        parser.error(f"labels CSV not found: {', '.join(missing)}")
    model = DetectionModel.load(folder)
    processes = max(1, min(args.processes, len(args.labels)))
    if processes > 1:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_cohort, [folder] * len(args.labels), args.labels))
    else:
        results = [_cohort(folder, labels) for labels in args.labels]
    cases = [case for cohort, _ in results for case in cohort]
    texts = [text for _, cohort_texts in results for text in cohort_texts]
    validation = "held-out cohort " + " + ".join(str(p) for p in args.labels)
    evaluation = evaluate_detection(model, cases, texts, model_name=str(folder), validation=validation)
    summary = {"model_folder": str(folder), "labels": [str(p) for p in args.labels], **evaluation.to_dict()}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    low, high = summary["sensitivity_ci95"]
    print(f"sensitivity {evaluation.sensitivity:.3f} (95 % CI {low:.3f}-{high:.3f}), "
          f"{evaluation.true_positives}/{evaluation.true_positives + evaluation.false_negatives} meningiomas found")
    low, high = summary["specificity_ci95"]
    print(f"specificity {evaluation.specificity:.3f} (95 % CI {low:.3f}-{high:.3f}), "
          f"{evaluation.true_negatives}/{evaluation.true_negatives + evaluation.false_positives} series without "
          "meningioma reported as such")
    for error in evaluation.errors:
        print(f"wrong: {error}")
    return 0
