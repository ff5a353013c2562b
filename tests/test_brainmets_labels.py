"""brainmets from labelled studies: a folder of DICOM files with SEGs (as the node stores them)
or a labels.csv, read for ``pacsnode train brainmets --labels`` and ``evaluate --labels``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from analyzers._shared import outputs as out
from analyzers._shared.volume import load_series
from analyzers.brainmets import evaluate, train
from analyzers.brainmets.analyzer import METASTASIS_SEGMENT, reference_model
from analyzers.brainmets.dataset import phantom_case_arrays
from analyzers.brainmets.labelled import LabelsError, find_labelled_cases, labelled_case_arrays
from analyzers.phantoms.brainmets import simulate_brainmets
from analyzers.phantoms.dicomio import write_case

SEED = 4321


def _mask_on(volume_image: sitk.Image, labels: sitk.Image) -> np.ndarray:
    """The phantom truth on the grid of the series as read from its files."""
    resampled = sitk.Resample(labels, volume_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled) > 0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """Three SPACE + MPRAGE phantom studies; each SPACE series has a SEG of its metastases."""
    root = tmp_path_factory.mktemp("labelled") / "store"
    masks = []
    for k in range(3):
        case = simulate_brainmets(SEED, k, metastases=2, spacing_mm=2.0)
        folder = write_case(case, root / f"study-{k}")
        volume = load_series(sorted((folder / "space").iterdir()))
        _, truth = phantom_case_arrays(case, "space")
        mask = _mask_on(volume.to_sitk(), truth)
        assert mask.any()
        seg = out.build_segmentation(volume, [out.Segment(METASTASIS_SEGMENT, mask)],
                                     out.Algorithm(name="labels", version="1"))
        seg.Manufacturer = "Site annotation tool"  # a reader's labels, not pacsnode's own prediction
        (folder / "seg").mkdir()
        seg.save_as(folder / "seg" / "seg.dcm")
        if k == 0:  # pacsnode's own prediction stored beside it: not a label
            seg.SeriesInstanceUID, seg.SOPInstanceUID = generate_uid(), generate_uid()
            seg.Manufacturer = out.MANUFACTURER
            seg.save_as(folder / "seg" / "prediction.dcm")
        masks.append(mask)
    return root, masks


def test_a_folder_of_studies_gives_one_case_per_seg_of_the_technique(store: tuple[Path, list[np.ndarray]]) -> None:
    root, _ = store
    cases = find_labelled_cases(root, "space")
    assert len(cases) == 3
    for case in cases:
        assert {p.parent.name for p in case.image_files} == {"space"}
        assert [p.name for p in case.seg_files] == ["seg.dcm"]
        assert case.seg_on == ()
    with pytest.raises(LabelsError, match=r"no labelled mprage study.*1 SEG series made by pacsnode itself"):
        find_labelled_cases(root, "mprage")
    carried = find_labelled_cases(root, "mprage", "space")  # setting B: SPACE labels onto MPRAGE
    assert len(carried) == 3
    assert all({p.parent.name for p in c.image_files} == {"mprage"} and c.seg_on for c in carried)


def test_labels_read_back_exactly_and_carry_onto_mprage(store: tuple[Path, list[np.ndarray]]) -> None:
    root, masks = store
    cases = find_labelled_cases(root, "space")
    by_study = {c.image_files[0].parent.parent.name: c for c in cases}
    image, labels = labelled_case_arrays(by_study["study-0"])
    assert labels.GetSize() == image.GetSize() and labels.GetSpacing() == image.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels) > 0, masks[0])
    # Setting B: the SPACE SEG carried onto the same study's MPRAGE by rigid registration
    # overlaps the MPRAGE's own phantom truth.
    case = next(c for c in find_labelled_cases(root, "mprage", "space")
                if c.image_files[0].parent.parent.name == "study-0")
    image, labels = labelled_case_arrays(case)
    _, truth = phantom_case_arrays(simulate_brainmets(SEED, 0, metastases=2, spacing_mm=2.0), "mprage")
    own = _mask_on(image, truth)
    carried = sitk.GetArrayFromImage(labels) > 0
    dice = 2 * np.count_nonzero(own & carried) / (np.count_nonzero(own) + np.count_nonzero(carried))
    assert dice > 0.6


def test_labels_csv_and_its_errors(store: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    root, _ = store
    csv_file = root / "labels.csv"
    csv_file.write_text("case,series_dir,seg\n" + "".join(
        f"s{k},study-{k}/space,study-{k}/seg/seg.dcm\n" for k in range(3)), encoding="utf-8")
    cases = find_labelled_cases(csv_file, "space")
    assert [c.case_id for c in cases] == ["s0", "s1", "s2"]  # a CSV names its SEG explicitly
    assert cases[0].seg_files == (root / "study-0" / "seg" / "seg.dcm",)
    broken = tmp_path / "labels.csv"
    broken.write_text("series_dir\nstudy-0/space\n", encoding="utf-8")
    with pytest.raises(LabelsError, match=r"columns \['seg'\] are missing"):
        find_labelled_cases(broken, "space")
    broken.write_text("series_dir,seg\nnowhere,nothing.dcm\n", encoding="utf-8")
    with pytest.raises(LabelsError, match="does not exist"):
        find_labelled_cases(broken, "space")


def test_evaluate_on_labelled_studies(store: tuple[Path, list[np.ndarray]], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = store
    model = reference_model("space")
    assert model is not None
    # One study of the three: nnU-Net inference on the CPU is the cost of this test.
    assert evaluate.main(["--labels", str(root / "study-1"), "--model", f"space={model}", "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Instance F1 score (%)" in printed and "space: pooled PPV" in printed
    assert evaluate.main(["--labels", str(root / "nothing-here"), "--model", str(model)]) == 1
    assert "neither a folder of DICOM files nor a labels.csv" in capsys.readouterr().err


def test_train_on_labelled_studies_holds_out_and_cards(store: tuple[Path, list[np.ndarray]], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = store
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path))  # training sets them; restored after the test
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    run = tmp_path / "run"
    assert train.main(["--labels", str(root), "--out", str(run), "--epochs", "1", "--iterations", "2",
                       "--eval-cases", "1", "--threads", "1"]) == 0
    assert (run / "model" / "fold_all" / "checkpoint_final.pth").is_file()
    raw = next((run / "nnunet" / "nnUNet_raw").iterdir())
    assert len(list((raw / "labelsTr").iterdir())) == 2  # the third study is held out
    card = (run / "model_card.md").read_text(encoding="utf-8")
    assert f"labelled studies in {root}: 2 labelled case(s)" in card
    assert "1 held-out labelled case(s)" in card and "pooled instance F1" in card
    assert train.main(["--labels", str(root), "--out", str(run), "--eval-cases", "2"]) == 1


def test_a_node_storage_is_read_from_store_not_from_duplicates(store: tuple[Path, list[np.ndarray]],
                                                               tmp_path: Path) -> None:
    import shutil

    root, _ = store
    node = tmp_path / "var"
    shutil.copytree(root / "study-0", node / "store" / "study-0")
    (node / "duplicates").mkdir()
    shutil.copytree(root / "study-1", node / "duplicates" / "study-1")  # a differing copy set aside
    (node / "index.sqlite").write_bytes(b"SQLite format 3\x00")
    cases = find_labelled_cases(node, "space")
    assert [c.image_files[0].parent.parent.name for c in cases] == ["study-0"]
