"""``pacsnode train brainmets``: train an nnU-Net v2 brain-metastasis model.

Builds an nnU-Net raw dataset from brain-metastasis phantoms (``--phantom
--cases N``) or from labelled studies (``--labels``: a folder of DICOM files such as
the node's storage, or a labels.csv; see :mod:`analyzers.brainmets.labelled`),
extracts nnU-Net's dataset fingerprint, writes a compact
``3d_fullres`` plan in stock nnU-Net v2 format (:func:`dataset.compact_plans`:
a small PlainConvUNet that trains on CPU; a GPU site can train the stock plans
with nnU-Net's own commands instead), preprocesses with nnU-Net's
``DefaultPreprocessor`` and trains ``nnUNetTrainer`` (progress: nnU-Net's
per-epoch log lines). The results folder (``dataset.json``, ``plans.json``,
``fold_*/checkpoint_final.pth``) and a model card are written to ``--out``.

For the MPRAGE model, ``--labels-from space`` carries the SPACE labels onto
MPRAGE by rigid registration (setting B of "MRI cross-technique transfer
learning for brain metastasis detection", Eur Radiol Exp 2025;9:15);
``--labels-from truth`` uses labels drawn on the MPRAGE itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["TrainingError", "main", "train_labelled_model", "train_phantom_model"]

_DATASET_ID = {"space": 921, "mprage": 922}


class TrainingError(RuntimeError):
    """Training could not be set up or did not produce a model."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacsnode train brainmets", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--phantom", action="store_true", help="train on brain-metastasis phantoms")
    src.add_argument("--labels", type=Path, metavar="FOLDER_OR_CSV",
                     help="labelled studies: a folder of DICOM files (the node's [storage] path, an export) "
                          "with a SEG per labelled series, or a labels.csv (series_dir, seg[, seg_on, case])")
    p.add_argument("--cases", type=int, default=20, help="number of phantom cases (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for the results folder and model card")
    p.add_argument("--technique", choices=("space", "mprage"), default="space")
    p.add_argument("--labels-from", choices=("truth", "space"), default="truth",
                   help="MPRAGE labels: drawn on MPRAGE (truth) or carried from SPACE by registration")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    p.add_argument("--spacing", type=float, default=2.0, help="phantom voxel size in mm (default 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a loaded CPU two threads ran five times slower)")
    p.add_argument("--oversample", type=float, default=0.33,
                   help="nnU-Net oversample_foreground_percent: share of each batch centred on a lesion voxel")
    p.add_argument("--patch", type=int, nargs=3, default=(24, 32, 32), metavar=("Z", "Y", "X"),
                   help="training patch in voxels (default 24 32 32; multiples of 4)")
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--augment", action="store_true",
                   help="nnU-Net's full data augmentation (nnUNetTrainer) instead of nnUNetTrainerNoDA")
    p.add_argument("--eval-cases", type=int, default=0,
                   help="held-out cases to evaluate into the model card (phantoms of seed + 1000, or the last "
                        "labelled cases, which are then not trained on)")
    p.add_argument("--init-weights", type=Path, metavar="CHECKPOINT",
                   help="start from the network weights of an nnU-Net checkpoint_final.pth trained with the same "
                        "plans (fine-tuning: a further run with a fresh learning-rate schedule)")
    p.add_argument("--lesion-balanced", action="store_true",
                   help="centre foreground patches on every lesion equally often instead of in proportion to "
                        "its volume (small metastases are seen as often as large ones)")
    return p


class _Source(Protocol):
    """Where the training cases come from: phantoms or labelled studies."""

    description: str
    validation: str
    limitation: str

    def write(self, raw: Path, technique: str, labels_from: str) -> tuple[int, int, int]:
        """Write the nnU-Net raw dataset; return cases, lesions and cases with lesions."""
        ...

    def held_out(self, technique: str) -> Iterator[tuple[Any, Any, Any]]:
        """Held-out (image, labels, vessel fraction or None) to evaluate the model on."""
        ...


class _PhantomSource:
    def __init__(self, cases: int, seed: int, spacing_mm: float, eval_cases: int) -> None:
        self.cases, self.seed, self.spacing_mm, self.eval_cases = cases, seed, spacing_mm, eval_cases
        self.description = f"phantom cohort brainmets, seed {seed}, {cases} cases at {spacing_mm} mm"
        self.validation = (f"held-out phantoms (seed {seed + 1000}, {eval_cases} cases), instance metrics of the study"
                           if eval_cases > 0 else "none beyond nnU-Net's training pseudo-Dice")
        self.limitation = "trained on synthetic phantoms only"

    def write(self, raw: Path, technique: str, labels_from: str) -> tuple[int, int, int]:
        from analyzers.brainmets.dataset import write_phantom_dataset
        from analyzers.phantoms.brainmets import simulate_brainmets

        manifest = {"cases": self.cases, "seed": self.seed, "spacing_mm": self.spacing_mm,
                    "labels_from": labels_from}
        cache = raw / "pacsnode_phantoms.json"
        if cache.is_file() and {"source", "lesions", "positive_cases"} <= set(json.loads(cache.read_text())) \
                and json.loads(cache.read_text())["source"] == manifest:
            # Same phantoms as last time: reuse the written dataset (simulation is the slow part on CPU).
            cached = json.loads(cache.read_text())
            print(f"[brainmets] reusing the phantom dataset in {raw}", flush=True)
            return self.cases, int(cached["lesions"]), int(cached["positive_cases"])
        phantoms = []
        for n in range(self.cases):
            print(f"[brainmets] phantom {n + 1}/{self.cases}", flush=True)
            phantoms.append(simulate_brainmets(self.seed, n, spacing_mm=self.spacing_mm))
        write_phantom_dataset(raw, phantoms, technique, labels_from)  # type: ignore[arg-type]
        n_lesions = sum(len(c.truth["lesions"]) for c in phantoms)
        n_positive = sum(bool(c.truth["lesions"]) for c in phantoms)
        cache.write_text(json.dumps({"source": manifest, "lesions": n_lesions, "positive_cases": n_positive}))
        return self.cases, n_lesions, n_positive

    def held_out(self, technique: str) -> Iterator[tuple[Any, Any, Any]]:
        from analyzers.brainmets.dataset import phantom_case_arrays
        from analyzers.phantoms.brainmets import simulate_brainmets

        for k in range(self.eval_cases):
            case = simulate_brainmets(self.seed + 1000, k, spacing_mm=self.spacing_mm)
            image, labels = phantom_case_arrays(case, technique)  # type: ignore[arg-type]
            yield image, labels, case.truth_maps[f"{technique}_vessels"]


class _LabelledSource:
    def __init__(self, labels: Path, technique: str, labels_from: str, eval_cases: int) -> None:
        from analyzers.brainmets.labelled import describe, find_labelled_cases

        cases = find_labelled_cases(labels, technique, labels_from)  # type: ignore[arg-type]
        if len(cases) - eval_cases < 2:
            raise TrainingError(f"{describe(cases)} in {labels}: {eval_cases} held out leaves fewer than 2 to train on")
        self.train_cases = cases[:len(cases) - eval_cases]
        self.test_cases = cases[len(cases) - eval_cases:]
        self.description = f"labelled studies in {labels}: {describe(self.train_cases)}"
        self.validation = (f"{len(self.test_cases)} held-out labelled case(s) of {labels} (the last in UID order), "
                           "instance metrics of the study" if self.test_cases
                           else "none beyond nnU-Net's training pseudo-Dice")
        self.limitation = f"trained on {len(self.train_cases)} labelled case(s) only"

    def write(self, raw: Path, technique: str, labels_from: str) -> tuple[int, int, int]:
        import SimpleITK as sitk

        from analyzers.brainmets.dataset import write_dataset_cases
        from analyzers.brainmets.labelled import labelled_case_arrays
        from analyzers.brainmets.metrics import connected_components

        lesions = positive = 0

        def pairs() -> Iterator[tuple[Any, Any]]:
            nonlocal lesions, positive
            for number, case in enumerate(self.train_cases, start=1):
                print(f"[brainmets] labelled case {number}/{len(self.train_cases)}: {case.case_id}", flush=True)
                image, labels = labelled_case_arrays(case)
                count = connected_components(sitk.GetArrayFromImage(labels) > 0)[1]
                lesions += count
                positive += bool(count)
                yield image, labels

        write_dataset_cases(raw, pairs(), len(self.train_cases))
        return len(self.train_cases), lesions, positive

    def held_out(self, technique: str) -> Iterator[tuple[Any, Any, Any]]:
        from analyzers.brainmets.labelled import labelled_case_arrays

        for case in self.test_cases:
            image, labels = labelled_case_arrays(case)
            yield image, labels, None


def train_phantom_model(
    out: Path,
    *,
    cases: int,
    seed: int,
    technique: str,
    labels_from: str,
    epochs: int,
    iterations: int,
    spacing_mm: float,
    eval_cases: int = 0,
    **options: Any,
) -> Path:
    """Run the whole pipeline on phantoms; return the results folder ``out/model``.

    ``options`` are those of :func:`train_labelled_model` (device, threads, oversample,
    augment, patch, batch_size, init_weights, lesion_balanced).
    """
    if cases < 2:
        raise TrainingError("need at least 2 cases, 1 epoch and 1 iteration per epoch")
    return _train(out, _PhantomSource(cases, seed, spacing_mm, eval_cases), technique=technique,
                  labels_from=labels_from, epochs=epochs, iterations=iterations, **options)


def train_labelled_model(
    out: Path,
    *,
    labels: Path,
    technique: str,
    labels_from: str,
    epochs: int,
    iterations: int,
    eval_cases: int = 0,
    **options: Any,
) -> Path:
    """Train on labelled studies (a folder of DICOM files or a labels.csv, see
    :mod:`analyzers.brainmets.labelled`); the last ``eval_cases`` cases are held out and
    evaluated into the model card. Returns the results folder ``out/model``.
    """
    try:
        source = _LabelledSource(labels, technique, labels_from, eval_cases)
    except ValueError as exc:  # LabelsError
        raise TrainingError(str(exc)) from exc
    return _train(out, source, technique=technique, labels_from=labels_from, epochs=epochs,
                  iterations=iterations, **options)


def _train(
    out: Path,
    source: _Source,
    *,
    technique: str,
    labels_from: str,
    epochs: int,
    iterations: int,
    device: str = "cpu",
    threads: int = 1,
    oversample: float = 0.33,
    augment: bool = False,
    patch: Sequence[int] = (24, 32, 32),
    batch_size: int = 3,
    init_weights: Path | None = None,
    lesion_balanced: bool = False,
) -> Path:
    """Write the raw dataset from ``source``, plan, preprocess, train and write the card.

    ``init_weights`` (an nnU-Net ``checkpoint_final.pth`` of the same plans) starts the
    network from those weights instead of a random initialisation. ``lesion_balanced``
    centres foreground patches on every lesion equally often
    (:func:`dataset.balance_lesion_sampling`) instead of in proportion to its volume.
    """
    import torch

    from analyzers._shared.modelcard import CardMetric, DataDescription, ModelCard, write_model_card
    from analyzers.brainmets.dataset import balance_lesion_sampling, compact_plans

    if epochs < 1 or iterations < 1:
        raise TrainingError("need at least 2 cases, 1 epoch and 1 iteration per epoch")
    if not 0.0 <= oversample <= 1.0:
        raise TrainingError("oversample must be between 0 and 1")
    if technique == "space" and labels_from == "space":
        labels_from = "truth"
    torch.set_num_threads(threads)
    work = Path(out) / "nnunet"
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / name)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # augmentation in the main process: no workers
    dataset_id = _DATASET_ID[technique] + (10 if labels_from == "space" else 0)
    suffix = "fromSPACE" if labels_from == "space" else ""
    dataset_name = f"Dataset{dataset_id:03d}_Brainmets{technique.upper()}{suffix}"
    raw = work / "nnUNet_raw" / dataset_name
    started = time.monotonic()
    cases, n_lesions, n_positive = source.write(raw, technique, labels_from)

    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA

    print("[brainmets] nnU-Net fingerprint", flush=True)
    fingerprint = extract_fingerprint_dataset(dataset_id, num_processes=1, show_progress_bar=False)
    import numpy as np

    spacing = np.median(np.asarray(fingerprint["spacings"]), axis=0)
    shape = np.median(np.asarray(fingerprint["shapes_after_crop"]), axis=0)
    per_channel = fingerprint["foreground_intensity_properties_per_channel"]
    intensity = per_channel["0"] if "0" in per_channel else per_channel[0]
    # 3 stages and a small patch (24x32x32: 48x64x64 mm at 2 mm, the largest metastasis of 30 mm fits):
    # lesions are a larger share of each patch than in a whole-brain-sized one, which is what lets the
    # Dice + CE loss leave the all-background solution within the few hundred iterations a CPU affords.
    plans = compact_plans(dataset_name, spacing, shape, intensity, patch_size=tuple(patch), n_stages=3,
                          batch_size=batch_size)
    pre = work / "nnUNet_preprocessed" / dataset_name
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
    shutil.copy(raw / "dataset.json", pre / "dataset.json")
    print("[brainmets] nnU-Net preprocessing", flush=True)
    preprocessed = pre / plans["configurations"]["3d_fullres"]["data_identifier"]
    # nnU-Net trains fold "all" on every case it finds here: drop those of an earlier run.
    shutil.rmtree(preprocessed, ignore_errors=True)
    DefaultPreprocessor(verbose=False).run(dataset_id, "3d_fullres", "nnUNetPlans", num_processes=1)
    if lesion_balanced:
        balanced = balance_lesion_sampling(preprocessed, seed=0)
        print(f"[brainmets] patch centres balanced over {balanced} lesions", flush=True)
    dataset = json.loads((raw / "dataset.json").read_text())
    # nnU-Net's own entry point passes this flag inside the plans dict.
    # Stock nnU-Net trainers only, so that stock nnU-Net finds the class named in the checkpoint.
    trainer_class = nnUNetTrainer if augment else nnUNetTrainerNoDA
    trainer = trainer_class({**plans, "continue_training": False}, "3d_fullres", "all", dataset,
                            device=torch.device(device))
    trainer.oversample_foreground_percent = oversample
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = max(1, iterations // 5)
    trainer.save_every = max(1, min(epochs, 10))  # checkpoint_latest.pth as it goes
    if init_weights is not None:
        trainer.initialize()
        checkpoint = torch.load(Path(init_weights), map_location="cpu", weights_only=False)
        try:
            # torch.compile (CUDA) wraps the network; the checkpoint holds the plain module's keys.
            getattr(trainer.network, "_orig_mod", trainer.network).load_state_dict(checkpoint["network_weights"])
        except (KeyError, RuntimeError) as exc:
            raise TrainingError(f"{init_weights} does not hold weights of this network: {exc}") from exc
        print(f"[brainmets] starting from the weights of {init_weights}", flush=True)
    print(f"[brainmets] training {epochs} epochs x {iterations} iterations on {device}", flush=True)
    trainer.run_training()
    results = Path(trainer.output_folder_base)
    model = Path(out) / "model"
    if model.exists():
        shutil.rmtree(model)
    (model / "fold_all").mkdir(parents=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copy(results / name, model / name)
    shutil.copy(results / "fold_all" / "checkpoint_final.pth", model / "fold_all" / "checkpoint_final.pth")
    ema_dice = trainer.logger.get_value("ema_fg_dice", step=-1)
    metrics = [CardMetric("training EMA pseudo-Dice (nnU-Net, training patches)", float(ema_dice),
                          note="nnU-Net's running foreground Dice on validation patches of the training cases; "
                               "not a held-out result")]
    metrics += _held_out_metrics(model, source.held_out(technique), threads)
    label_note = ("carried from SPACE by rigid registration" if labels_from == "space"
                  else "drawn on the series itself")
    card = ModelCard(
        name=f"brainmets-{technique}" + ("-from-space" if labels_from == "space" else ""),
        version="1",
        analyzer="brainmets",
        model_description=f"nnU-Net v2 ({trainer_class.__name__}) with compact 3d_fullres plans: PlainConvUNet, "
                          f"{len(plans['configurations']['3d_fullres']['architecture']['arch_kwargs']['strides'])} "
                          "stages, 8 base features, patch "
                          + "x".join(str(v) for v in plans["configurations"]["3d_fullres"]["patch_size"]),
        intended_use="research on phantoms: detection and segmentation of brain metastases on 3D T1C; "
                     "not for clinical use",
        data=DataDescription(
            source=source.description,
            n_cases=cases, n_patients=cases, n_positive=n_positive,
            positive_label="metastasis voxels", negative_label="background",
            features=(f"{technique.upper()}-like T1C",),
            notes=f"{n_lesions} lesions; labels {label_note}",
        ),
        validation=source.validation,
        metrics=tuple(metrics),
        references=("Isensee et al., nnU-Net, Nat Methods 2021",
                    "MRI cross-technique transfer learning for brain metastasis detection, Eur Radiol Exp 2025;9:15"),
        limitations=(source.limitation,
                     f"{epochs} epochs x {iterations} iterations"
                     + (f" fine-tuning the weights of {init_weights}" if init_weights is not None else "")
                     + ": a short run"),
        extra={"epochs": epochs, "iterations_per_epoch": iterations, "device": device, "threads": threads,
               "trainer": trainer_class.__name__, "oversample_foreground_percent": oversample,
               "training_seconds": round(time.monotonic() - started, 1),
               "init_weights": str(init_weights) if init_weights is not None else None,
               "lesion_balanced_sampling": lesion_balanced},
    )
    write_model_card(card, Path(out))
    return model


def _held_out_metrics(model: Path, cases: Iterator[tuple[Any, Any, Any]], threads: int) -> list[Any]:
    """Card metrics of ``model`` on held-out (image, labels, vessel fraction or None) cases."""
    import SimpleITK as sitk

    from analyzers._shared.modelcard import CardMetric
    from analyzers.brainmets.evaluate import vessel_false_positives
    from analyzers.brainmets.inference import NnUNetModel
    from analyzers.brainmets.instances import DEFAULT_MIN_VOXELS
    from analyzers.brainmets.metrics import evaluate_case, pooled_metrics, summarize_cases

    net = NnUNetModel(model, threads=threads)
    results, visible = [], []
    on_vessels = 0
    has_vessels = False
    for k, (image, labels, vessels) in enumerate(cases):
        gt = sitk.GetArrayFromImage(labels) > 0
        pred = net.predict_image(image) > 0
        results.append(evaluate_case(gt, pred, str(k)))
        # As the analyzer reports them: components under DEFAULT_MIN_VOXELS dropped, in truth and prediction.
        visible.append(evaluate_case(_drop_small(gt), _drop_small(pred), str(k)))
        vessel_fp = vessel_false_positives(pred, gt, vessels) if vessels is not None else 0
        has_vessels = has_vessels or vessels is not None
        on_vessels += vessel_fp
        print(f"[brainmets] held-out case {k + 1}: {results[-1].true_positives} TP, "
              f"{results[-1].false_positives} FP ({vessel_fp} on vessels), {results[-1].false_negatives} FN",
              flush=True)
    if not results:
        return []
    out = [CardMetric("false-positive instances on vessels (sum over held-out cases)", float(on_vessels),
                      note=f"of {sum(r.false_positives for r in results)} false-positive instances in {len(results)} "
                           "cases; bright on MPRAGE-like, dark on SPACE-like phantoms")] if has_vessels else []
    for tag, rows in (("", results), (f" (lesions >= {DEFAULT_MIN_VOXELS} voxels)", visible)):
        summary = summarize_cases(rows)
        pooled = pooled_metrics(rows)
        out += [CardMetric(f"per-patient {name}{tag} (mean)", summary[name].mean,
                           note=f"SD {summary[name].sd:.3f}, median {summary[name].median_iqr()}")
                for name in ("instance_f1", "instance_ppv", "instance_sensitivity", "lesion_dice")]
        out.append(CardMetric(f"pooled instance F1{tag}", pooled.f1,
                              note=f"TP {pooled.true_positives}, FP {pooled.false_positives}, "
                                   f"FN {pooled.false_negatives}"))
    return out


def _drop_small(mask: Any) -> Any:
    """``mask`` without its 26-connected components of fewer than ``DEFAULT_MIN_VOXELS`` voxels."""
    import numpy as np

    from analyzers.brainmets.instances import DEFAULT_MIN_VOXELS
    from analyzers.brainmets.metrics import connected_components

    labels, n = connected_components(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= DEFAULT_MIN_VOXELS
    keep[0] = False
    return keep[labels]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``pacsnode train brainmets``; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    options = dict(device=args.device, threads=args.threads, oversample=args.oversample, augment=args.augment,
                   patch=args.patch, batch_size=args.batch_size, init_weights=args.init_weights,
                   lesion_balanced=args.lesion_balanced)
    try:
        if args.labels is not None:
            model = train_labelled_model(
                args.out, labels=args.labels, technique=args.technique, labels_from=args.labels_from,
                epochs=args.epochs, iterations=args.iterations, eval_cases=args.eval_cases, **options)
        else:
            model = train_phantom_model(
                args.out, cases=args.cases, seed=args.seed, technique=args.technique, labels_from=args.labels_from,
                epochs=args.epochs, iterations=args.iterations, spacing_mm=args.spacing,
                eval_cases=args.eval_cases, **options)
    except (TrainingError, ValueError) as exc:
        print(f"pacsnode train brainmets: {exc}", file=sys.stderr)
        return 1
    print(f"[brainmets] results folder: {model}; model card: {args.out / 'model_card.md'}")
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
