"""Benchmark of the ``spine`` analyzer: CNN training time, inference per lesion, detection.

1. **training**: one phantom cohort (``--cases`` spine phantom cases, lesion ROIs of T1,
   T2, STIR, and T1C when the phantom simulates it, from the truth masks) is simulated
   once; then each sequence's CNN is trained for ``--epochs`` epochs at the study's
   settings (batch 16, Adam lr 1e-3) on the CPU with ``--threads`` torch threads, and on
   a CUDA GPU when one is available (the table says so when none is: not measured).
   Beside it, the training time of each shipped reference model as its ``pacsnode train``
   run recorded it (the study's 40 epochs on the whole training split; wall seconds of
   balancing, training and evaluation, phantom simulation excluded, with the device and
   threads it ran on).
2. **inference**: ROI crop + forward pass of the shipped reference model, per lesion and
   sequence (median of ``--repeats`` runs over the lesions of the cohort's first cases).
3. **detection**: automatic vertebral-lesion detection (:mod:`analyzers.spine.detect`)
   on ``--detect-cases`` phantom cases: lesions found / lesions present, false
   positives, correct vertebral levels among the found lesions, seconds per study.

Timings depend on the machine and its load; the first line printed names torch, the
threads and whether CUDA was available.

Run: ``.venv/bin/python -m bench.spine`` (``--help`` for the options). Prints a table and
a JSON line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from analyzers.phantoms.spine import simulate_spine
from analyzers.spine.analyzer import REFERENCE_MODEL_DIR
from analyzers.spine.dataset import LesionCohort, crop_lesion, phantom_cohort
from analyzers.spine.detect import detect_lesions
from analyzers.spine.errors import SpineDataError
from analyzers.spine.model import SEQUENCES, HyperParameters, SpineModelSet, fit_network

__all__ = ["main"]


def _phantom_cohorts(cases: int, seed: int) -> dict[str, LesionCohort]:
    """Cohorts of every sequence the spine phantom simulates (T1C only when it has it)."""
    try:
        return phantom_cohort(SEQUENCES, cases, seed)
    except SpineDataError:
        return phantom_cohort(tuple(s for s in SEQUENCES if s != "t1c"), cases, seed)


def _training(cases: int, epochs: int, seed: int) -> list[dict[str, Any]]:
    cohorts = _phantom_cohorts(cases, seed)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for sequence in cohorts:
            cohort = cohorts[sequence]
            start = time.perf_counter()
            fit_network(cohort.crops, cohort.labels, HyperParameters(epochs=epochs), seed=seed, device=device)
            seconds = time.perf_counter() - start
            rows.append({"device": device, "sequence": sequence, "images": len(cohort.labels), "epochs": epochs,
                         "seconds": round(seconds, 2),
                         "ms_per_image_epoch": round(1000 * seconds / (epochs * len(cohort.labels)), 1)})
    if not torch.cuda.is_available():
        rows += [{"device": "cuda", "sequence": s, "images": len(cohorts[s].labels), "epochs": epochs,
                  "seconds": None, "ms_per_image_epoch": None} for s in cohorts]
    return rows


def _reference_training() -> list[dict[str, Any]]:
    """What the shipped reference models' training runs recorded (model metadata)."""
    rows = []
    for sequence, model in SpineModelSet.load(REFERENCE_MODEL_DIR).models.items():
        info = model.info
        environment = info.get("environment", {})
        rows.append({"sequence": sequence, "epochs": model.hyper.epochs, "n_train": info.get("n_train"),
                     "seconds": info.get("training_seconds"), "device": environment.get("device", "cpu"),
                     "threads": environment.get("torch_threads"), "validation_auc": round(model.validation_auc, 3)})
    return rows


def _post_contrast() -> dict[str, Any]:
    """The phantom's option for a post-contrast series, when it has one."""
    return {"post_contrast": True} if "post_contrast" in inspect.signature(simulate_spine).parameters else {}


def _inference(cases: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    models = SpineModelSet.load(REFERENCE_MODEL_DIR)
    rows = []
    samples = []
    for index in range(cases):
        case = simulate_spine(seed=seed, case_index=index, **_post_contrast())
        images = {s.folder: s.pixels[0] for s in case.series}
        samples += [(images, case.truth_maps["lesion_labels"] == info["id"]) for info in case.truth["lesions"]]
    for sequence, model in models.models.items():
        if sequence not in samples[0][0]:
            continue
        timings = []
        for _ in range(repeats):
            for images, mask in samples:
                start = time.perf_counter()
                model.probability_hemangioma(crop_lesion(images[sequence], mask))
                timings.append(1000 * (time.perf_counter() - start))
        rows.append({"sequence": sequence, "lesions": len(samples),
                     "ms_per_lesion": round(statistics.median(timings), 1)})
    return rows


def _detection(cases: int, seed: int) -> dict[str, Any]:
    present = found = false_positive = right_level = 0
    seconds = []
    for index in range(cases):
        case = simulate_spine(seed=seed, case_index=index)
        grid = case.series[0].grid
        start = time.perf_counter()
        result = detect_lesions(case.series[0].pixels[0], grid.affine[:, [2, 1, 0, 3]], grid.spacing,
                                case.series[1].pixels[0])
        seconds.append(time.perf_counter() - start)
        truth = case.truth_maps["lesion_labels"]
        levels = {info["id"]: info["level"] for info in case.truth["lesions"]}
        hit: set[int] = set()
        for lesion in result.lesions:
            ids = [int(i) for i in np.unique(truth[lesion.mask]) if i]
            if not ids:
                false_positive += 1
                continue
            hit |= set(ids)
            right_level += int(lesion.level == levels[ids[0]])
        present += len(levels)
        found += len(hit)
    return {"cases": cases, "lesions": present, "found": found, "detection_rate": round(found / present, 3),
            "false_positives": false_positive, "level_correct": right_level,
            "seconds_per_study": round(statistics.median(seconds), 2)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.spine", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="phantom cases for the training benchmark")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--detect-cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    training = _training(args.cases, args.epochs, args.seed)
    reference = _reference_training()
    inference = _inference(3, args.repeats, args.seed + 1)
    detection = _detection(args.detect_cases, args.seed + 2)
    print(f"torch {torch.__version__}, {args.threads} CPU threads, CUDA available: {torch.cuda.is_available()}")
    print("| device | sequence | ROIs | epochs | training s | ms per ROI-epoch |")
    print("|---|---|---|---|---|---|")
    for row in training:
        if row["seconds"] is None:
            print(f"| {row['device']} | {row['sequence']} | {row['images']} | {row['epochs']} | "
                  "not measured (no CUDA device) | - |")
            continue
        print(f"| {row['device']} | {row['sequence']} | {row['images']} | {row['epochs']} | {row['seconds']} | "
              f"{row['ms_per_image_epoch']} |")
    print("| reference model | epochs | training ROIs | training s (as recorded) | device | threads | held-out AUC |")
    print("|---|---|---|---|---|---|---|")
    for row in reference:
        print(f"| {row['sequence']} | {row['epochs']} | {row['n_train']} | {row['seconds']} | {row['device']} | "
              f"{row['threads']} | {row['validation_auc']} |")
    print("| sequence | lesions | inference ms per lesion (crop + CNN, CPU) |")
    print("|---|---|---|")
    for row in inference:
        print(f"| {row['sequence']} | {row['lesions']} | {row['ms_per_lesion']} |")
    print("| detection | cases | lesions | found | rate | false positives | level correct | s per study |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| phantom | {detection['cases']} | {detection['lesions']} | {detection['found']} | "
          f"{detection['detection_rate']} | {detection['false_positives']} | {detection['level_correct']} | "
          f"{detection['seconds_per_study']} |")
    print(json.dumps({"training": training, "reference_training": reference, "inference": inference,
                      "detection": detection}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
