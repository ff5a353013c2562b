"""SEG, Parametric Map and TID 1500 SR builders: dciodvfy-clean and round-tripping."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.coding import Code

from analyzers._shared import outputs as out
from analyzers._shared.volume import Volume, load_segmentation, load_series
from analyzers.contract import NOT_FOR_CLINICAL_USE
from sr_templates import ANALYZERS, Quantity, report_template
from sr_templates import codes as c
from tests.test_volume import AXIAL, stored_values, write_series

ALGORITHM = out.Algorithm("brainmets", "1.2.3")


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of dciodvfy's output that report an error (skip when it is not installed)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")]


@pytest.fixture(scope="module")
def axial(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp("axial")
    files = write_series(folder, stored_values((6, 16, 18), seed=11),
                         origin=np.array([-20.0, -30.0, 10.0]), **AXIAL)
    return load_series(files)


@pytest.fixture(scope="module")
def oblique_dynamic(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp("oblique")
    angle = np.deg2rad(20.0)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    column = np.array([0.0, 0.0, -1.0])  # coronal-ish oblique
    files = write_series(folder, stored_values((3, 4, 10, 12), seed=12),
                         row_cosine=row, column_cosine=column, origin=np.array([5.0, 6.0, 7.0]),
                         times_s=np.array([0.0, 2.0, 4.0]))
    return load_series(files)


def lesion_masks(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    first = np.zeros(volume.shape3d, dtype=bool)
    first[1:4, 3:9, 4:8] = True
    second = np.zeros(volume.shape3d, dtype=bool)
    second[4, 10:13, 12:16] = True
    return first, second


def written(dataset: pydicom.Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_segmentation_roundtrip(axial: Volume, tmp_path: Path) -> None:
    template = report_template("brainmets")
    first, second = lesion_masks(axial)
    other = report_template("dsc").segment_classes["lesion"]
    seg = out.build_segmentation(
        axial,
        [out.Segment(template.segment_classes["metastasis"], first, "lesion 1"),
         out.Segment(other, second)],
        ALGORITHM,
        out.OutputSeries(series_instance_uid="1.2.3.4.5", sop_instance_uid="1.2.3.4.5.1"),
    )
    path = written(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []

    back = hd.seg.segread(path)
    assert back.SegmentationType == "BINARY"
    assert (back.SeriesInstanceUID, back.SOPInstanceUID) == ("1.2.3.4.5", "1.2.3.4.5.1")
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert back[keyword].value == axial.headers[0][keyword].value
    assert back.Manufacturer == "pacsnode"
    assert back.SoftwareVersions == "1.2.3"
    assert "brainmets" in back.SeriesDescription
    assert back.BodyPartExamined == "BRAIN"
    assert back.ContentDescription == "NOT FOR CLINICAL USE"
    description = back.SegmentSequence[0]
    assert description.SegmentLabel == "Metastasis"
    # Secondary malignant neoplasm, the same concept as the SR's finding type.
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == "128462008"
    assert description.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert description.SegmentAlgorithmName == "brainmets"
    assert description.SegmentAlgorithmType == "AUTOMATIC"
    assert description.TrackingID == "lesion 1"
    # The private code of the second class is declared in the object.
    schemes = [i.CodingSchemeDesignator
               for i in back.get("CodingSchemeIdentificationSequence", [])]
    assert c.PRIVATE_SCHEME not in schemes  # only standard codes in these two classes
    referenced = {str(i.ReferencedSOPInstanceUID)
                  for i in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(axial.sop_instance_uids)
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=list(axial.sop_instance_uids), segment_numbers=[1, 2]
    )
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), first)
    np.testing.assert_array_equal(pixels[..., 1].astype(bool), second)
    masks = load_segmentation(path, onto=axial)
    np.testing.assert_array_equal(masks["Metastasis"], first)
    np.testing.assert_array_equal(masks[other.label], second)


def test_segmentation_uids_are_deterministic_and_empty_mask_valid(
    axial: Volume, tmp_path: Path
) -> None:
    template = report_template("brainmets")
    empty = np.zeros(axial.shape3d, dtype=bool)
    segments = [out.Segment(template.segment_classes["metastasis"], empty)]
    one = out.build_segmentation(axial, segments, ALGORITHM)
    two = out.build_segmentation(axial, segments, ALGORITHM)
    assert one.SeriesInstanceUID == two.SeriesInstanceUID
    assert one.SOPInstanceUID == two.SOPInstanceUID
    assert out.derive_uid("job-1", "seg") == out.derive_uid("job-1", "seg")
    assert out.derive_uid("job-1", "seg") != out.derive_uid("job-2", "seg")
    assert out.derive_uid("job-1", "seg") != out.derive_uid("job-1s", "eg")  # parts do not run together
    assert dciodvfy_errors(written(one, tmp_path / "empty.dcm")) == []
    # A class with a private concept declares the private coding scheme.
    meningioma = report_template("meningioma").segment_classes["tumour"]
    private = out.build_segmentation(axial, [out.Segment(meningioma, empty)], ALGORITHM)
    item = private.CodingSchemeIdentificationSequence[0]
    assert (item.CodingSchemeDesignator, item.CodingSchemeUID) == (
        c.PRIVATE_SCHEME, c.PRIVATE_SCHEME_UID
    )
    assert dciodvfy_errors(written(private, tmp_path / "private.dcm")) == []
    with pytest.raises(out.OutputError, match="shape"):
        out.build_segmentation(
            axial, [out.Segment(template.segment_classes["metastasis"], empty[:-1])], ALGORITHM
        )


def _frames_by_position(dataset: pydicom.Dataset) -> list[np.ndarray]:
    return [np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
            for item in dataset.PerFrameFunctionalGroupsSequence]


@pytest.mark.parametrize("fixture", ["axial", "oblique_dynamic"])
def test_parametric_map_roundtrip(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    volume: Volume = request.getfixturevalue(fixture)
    quantity = report_template("dce").quantity("ktrans")
    values = np.random.default_rng(3).gamma(2.0, 0.05, size=volume.shape3d).astype(np.float32)
    values[0, 0, 0] = np.nan
    pm = out.build_parametric_map(volume, values, quantity, out.Algorithm("dce", "0.4"))
    path = written(pm, tmp_path / "pm.dcm")
    assert dciodvfy_errors(path) == []

    dataset = pydicom.dcmread(path)
    back = hd.pm.ParametricMap.from_dataset(dataset)
    assert back.BodyPartExamined == "BRAIN"
    assert "Laterality" not in back
    assert back.Manufacturer == "pacsnode" and back.ManufacturerModelName == "dce"
    assert back.StudyInstanceUID == volume.study_instance_uid
    assert back.SeriesInstanceUID != volume.series_instance_uid
    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "/min"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "126312"
    assert mapping.LUTLabel == "Ktrans"
    assert float(mapping.RealWorldValueSlope) == 1.0
    pixels = dataset.pixel_array
    assert pixels.dtype == np.float32
    expected = np.where(np.isfinite(values), values, np.float32(np.nan))  # failed fits stay NaN
    headers = volume.headers
    for frame, position in zip(pixels, _frames_by_position(dataset), strict=True):
        k = next(k for k, h in enumerate(headers)
                 if np.allclose([float(v) for v in h.ImagePositionPatient], position, atol=1e-4))
        np.testing.assert_array_equal(frame, expected[k])  # NaN where NaN
    referenced = {str(i.ReferencedSOPInstanceUID)
                  for i in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    first_time_point = volume.sop_instance_uids[0] if volume.is_dynamic else volume.sop_instance_uids
    assert referenced == set(first_time_point)


def _report(axial: Volume, with_seg: bool) -> tuple[pydicom.Dataset, pydicom.Dataset | None]:
    template = report_template("brainmets")
    first, second = lesion_masks(axial)
    seg = None
    if with_seg:
        seg = out.build_segmentation(
            axial,
            [out.Segment(template.segment_classes["metastasis"], first),
             out.Segment(template.segment_classes["metastasis"], second)],
            ALGORITHM,
        )
    lesions = [
        out.LesionFinding(
            tracking_id=f"lesion {n}",
            region=out.LesionRegion.from_mask(mask),
            measurements=[
                out.MeasuredValue(template.quantity("volume"), float(mask.sum()) * 2.16),
                out.MeasuredValue(template.quantity("probability"), 87.5 - n),
            ],
            impression=template.diagnosis("metastasis"),
            evaluations=[(c.EDEMA, c.PRESENT)],
            segment_number=n if with_seg else None,
        )
        for n, mask in enumerate((first, second), start=1)
    ]
    sr = out.build_measurement_report(
        axial, template, lesions, ALGORITHM, segmentation=seg,
        study_measurements=[out.MeasuredValue(template.quantity("lesion_count"), 2)],
        texts=[(c.COMMENT, "Two lesions.")],
    )
    return sr, seg


@pytest.mark.parametrize("with_seg", [True, False])
def test_measurement_report_roundtrip(axial: Volume, tmp_path: Path, with_seg: bool) -> None:
    sr, seg = _report(axial, with_seg)
    path = written(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []

    back = hd.sr.srread(path)
    assert back.PatientID == axial.headers[0].PatientID
    assert back.StudyInstanceUID == axial.study_instance_uid
    assert back.Manufacturer == "pacsnode" and back.SoftwareVersions == "1.2.3"
    assert "brainmets" in back.SeriesDescription
    assert back.CompletionFlag == "COMPLETE" and back.VerificationFlag == "UNVERIFIED"
    groups = back.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["lesion 1", "lesion 2"]
    first, _ = lesion_masks(axial)
    group = groups[0]
    assert group.tracking_uid == out.derive_uid(axial.series_instance_uid, "lesion 1")
    assert group.finding_type == c.METASTASIS
    assert [s.value for s in group.finding_sites] == [c.BRAIN]
    values = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
    assert values["118565006"][0] == pytest.approx(first.sum() * 2.16, rel=5e-4)  # 4 significant digits
    assert values["118565006"][1] == "mm3"
    assert values["122157"] == (86.5, "%")
    evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
    assert evaluations == {"121073": "128462008", "79654002": "52101004"}

    # Coordinates for viewers: the ellipse's bounding box (SCOORD POLYLINE) on the largest slice,
    # and the ellipse itself as SCOORD3D.
    items = group[0].ContentSequence
    scoord = next(i for i in items if i.ValueType == "SCOORD")
    scoord3d = next(i for i in items if i.ValueType == "SCOORD3D")
    largest = int(np.argmax(first.sum(axis=(1, 2))))
    image_ref = scoord.ContentSequence[0].ReferencedSOPSequence[0]
    assert image_ref.ReferencedSOPInstanceUID == axial.sop_instance_uids[largest]
    assert scoord.GraphicType == "POLYLINE" and scoord3d.GraphicType == "ELLIPSE"
    assert scoord3d.ReferencedFrameOfReferenceUID == axial.frame_of_reference_uid
    points = np.asarray(scoord3d.GraphicData, dtype=float).reshape(4, 3)
    rows, cols = np.nonzero(first[largest])
    centroid = axial.index_to_patient([cols.mean(), rows.mean(), largest])
    np.testing.assert_allclose(points.mean(axis=0), centroid, atol=1e-3)
    box = np.asarray(scoord.GraphicData, dtype=float).reshape(5, 2) - 0.5
    np.testing.assert_allclose(box[0], box[-1])  # closed
    ellipse_ijk = axial.patient_to_index(points)[:, :2]
    # the box holds the ellipse's axis end points and is centred on them
    assert np.all(ellipse_ijk >= box.min(axis=0) - 1e-3) and np.all(ellipse_ijk <= box.max(axis=0) + 1e-3)
    np.testing.assert_allclose(box[:4].mean(axis=0), ellipse_ijk.mean(axis=0), atol=1e-3)
    # every lesion voxel of the slice lies inside the box (at most half a pixel outside)
    assert cols.min() >= box[:, 0].min() - 0.5 and cols.max() <= box[:, 0].max() + 0.5
    assert rows.min() >= box[:, 1].min() - 0.5 and rows.max() <= box[:, 1].max() + 0.5

    if with_seg:
        assert seg is not None
        assert group.reference_type == Code("121191", "DCM", "Referenced Segment")
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert reference.referenced_segment_numbers == [1]
        evidence = {str(i.ReferencedSOPInstanceUID)
                    for s in back.CurrentRequestedProcedureEvidenceSequence
                    for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
        assert seg.SOPInstanceUID in evidence
    else:
        assert group.reference_type == Code("111030", "DCM", "Image Region")

    study = back.content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in study] == ["study"]
    assert study[0].get_measurements()[0].value == 2
    texts = [i.TextValue for i in pydicom.dcmread(path).ContentSequence[-1].ContentSequence]
    assert texts == [NOT_FOR_CLINICAL_USE, "Two lesions."]
    schemes = [i.CodingSchemeDesignator for i in back.CodingSchemeIdentificationSequence]
    assert c.PRIVATE_SCHEME in schemes  # the lesion count concept is private


def test_measurement_report_rejects_bad_references(axial: Volume) -> None:
    template = report_template("brainmets")
    first, _ = lesion_masks(axial)
    lesion = out.LesionFinding("lesion 1", out.LesionRegion.from_mask(first), segment_number=3)
    with pytest.raises(out.OutputError, match="no SEG"):
        out.build_measurement_report(axial, template, [lesion], ALGORITHM)
    seg = out.build_segmentation(
        axial, [out.Segment(template.segment_classes["metastasis"], first)], ALGORITHM
    )
    with pytest.raises(out.OutputError, match="segment 3 not in SEG"):
        out.build_measurement_report(axial, template, [lesion], ALGORITHM, segmentation=seg)
    twice = out.LesionFinding("lesion 1", out.LesionRegion.circle((5, 5, 2), 2.0))
    with pytest.raises(out.OutputError, match="unique"):
        out.build_measurement_report(axial, template, [twice, twice], ALGORITHM)


def test_summary_report_for_qc(oblique_dynamic: Volume, tmp_path: Path) -> None:
    template = report_template("qc")
    sr = out.build_summary_report(
        oblique_dynamic, template, out.Algorithm("qc", "0.1"),
        out.OutputSeries(series_instance_uid=out.derive_uid("job-7", "sr"),
                         sop_instance_uid=out.derive_uid("job-7", "sr", "1")),
        measurements=[out.MeasuredValue(template.quantity("snr"), 23.4),
                      out.MeasuredValue(template.quantity("time_points"), 3)],
        evaluations=[(c.QUALITY_FINDING, template.diagnosis("acceptable"))],
        texts=[(c.FINDING, "4 slices, 3 time points, 2.0 s apart")],
    )
    path = written(sr, tmp_path / "qc.dcm")
    assert dciodvfy_errors(path) == []
    back = hd.sr.srread(path)
    assert back.SOPInstanceUID == out.derive_uid("job-7", "sr", "1")
    assert back.content.get_volumetric_roi_measurement_groups() == []
    group = back.content.get_image_measurement_groups()[0]
    assert [(m.name.value, m.value) for m in group.get_measurements()] == [
        ("111787", 23.4), ("NTIMEPOINTS", 3)
    ]
    assert group.get_qualitative_evaluations()[0].value == c.NORMAL
    texts = [i.TextValue for i in pydicom.dcmread(path).ContentSequence[-1].ContentSequence
             if i.ValueType == "TEXT"]
    assert texts == [NOT_FOR_CLINICAL_USE, "4 slices, 3 time points, 2.0 s apart"]
    with pytest.raises(out.OutputError):
        out.build_summary_report(oblique_dynamic, template, out.Algorithm("qc", "0.1"))


def test_templates_are_complete() -> None:
    keys = {"dsc": {"rcbv", "rcbf", "probability"}, "dce": {"ktrans", "ve", "vp", "kep"},
            "meningioma": {"rad_score"}, "brainmets": {"volume"}, "spine": {"probability"},
            "qc": {"snr"}}
    for name in ANALYZERS:
        template = report_template(name)
        assert template.analyzer == name
        assert keys[name] <= set(template.quantities)
        for quantity in template.quantities.values():
            assert isinstance(quantity, Quantity)
            assert quantity.unit.scheme_designator == "UCUM"
    dce = report_template("dce")
    assert [dce.quantity(k).concept.value for k in ("ktrans", "ve", "vp", "kep")] == [
        "126312", "126314", "126331", "126313"
    ]
    dsc = report_template("dsc")
    assert (dsc.quantity("rcbv").concept.value, dsc.quantity("rcbf").concept.value) == (
        "126398", "126397"
    )
    assert dsc.quantity("probability").concept == c.PROBABILITY
    assert dsc.quantity("probability").unit.value == "%"
    assert report_template("meningioma").diagnosis("grade2_3").scheme_designator == "99PACSNODE"
    with pytest.raises(ValueError, match="known"):
        dsc.quantity("nope")


def test_analyzer_concepts_live_in_the_templates() -> None:
    from sr_templates import meningioma, spine

    dsc = report_template("dsc")
    assert (dsc.quantity("k2").concept, dsc.quantity("k2").unit) == (c.LEAKAGE_COEFFICIENT_K2, c.PER_SECOND)
    assert dsc.quantity("rwit").concept == c.RELATIVE_WASH_IN_TIME
    assert dsc.segment_classes["aif"].property_type == c.ARTERY
    assert report_template("meningioma").quantity("dtl_score").concept == c.DEEP_TRANSFER_LEARNING_SCORE
    assert meningioma.SEMANTIC_FEATURES["shape"] == c.TUMOUR_SHAPE
    assert set(meningioma.SHAPE_VALUES.values()) == {c.REGULAR_SHAPE, c.IRREGULAR_SHAPE}
    assert spine.TEMPLATE.methods["t1c"] == c.CLASSIFIER_T1C
    # Metastasis is one concept everywhere: SCT 128462008 secondary malignant neoplasm.
    brainmets = report_template("brainmets")
    codes = {brainmets.finding_type, brainmets.diagnosis("metastasis"),
             brainmets.segment_classes["metastasis"].property_type}
    assert {(code.value, code.scheme_designator) for code in codes} == {("128462008", "SCT")}
    # Every private concept is defined once: no two names share a code value with different meanings.
    private = [v for v in vars(c).values() if isinstance(v, Code) and v.scheme_designator == c.PRIVATE_SCHEME]
    meanings: dict[str, str] = {}
    for code in private:
        assert meanings.setdefault(code.value, code.meaning) == code.meaning, code.value
        assert len(code.value) <= 16


def test_segmentation_on_oblique_dynamic_series(oblique_dynamic: Volume, tmp_path: Path) -> None:
    template = report_template("dce")
    mask = np.zeros(oblique_dynamic.shape3d, dtype=bool)
    mask[1:3, 2:7, 3:5] = True
    mask[3, 8, 10] = True
    seg = out.build_segmentation(
        oblique_dynamic, [out.Segment(template.segment_classes["lesion"], mask)],
        out.Algorithm("dce", "0.4"), out.OutputSeries.for_job("job-9", "seg"),
    )
    assert seg.SOPInstanceUID == out.OutputSeries.for_job("job-9", "seg").sop_instance_uid
    path = written(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    masks = load_segmentation([path], onto=oblique_dynamic)
    np.testing.assert_array_equal(masks["Enhancing lesion"], mask)


@pytest.fixture(scope="module")
def enhanced_phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Volume, Path]:
    """A t1c phantom series as classic MR and as its Legacy Converted Enhanced MR (one multi-frame file)."""
    from analyzers.phantoms import simulate_t1c
    from analyzers.phantoms.dicomio import write_series as write_phantom_series

    case = simulate_t1c(seed=4, case_index=0, matrix=48, slices=12, pixel_mm=4.0, slice_mm=4.0)
    folder = tmp_path_factory.mktemp("enhanced")
    series = case.series[0]
    paths = write_phantom_series(folder / "classic", series, case.patient, case.scanner)
    legacy = [pydicom.dcmread(p) for p in paths]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy, series_instance_uid=out.derive_uid("enhanced", series.series_uid), series_number=99,
        sop_instance_uid=out.derive_uid("enhanced", series.series_uid, "1"), instance_number=1,
    )
    path = folder / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    return load_series(paths), load_series([path]), path


def _frame_positions(path: Path) -> dict[int, np.ndarray]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {n + 1: np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
            for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence)}


def pm_on_grid(parametric: pydicom.Dataset, volume: Volume) -> np.ndarray:
    """The float frames of a Parametric Map placed at their slices of ``volume`` (by plane position)."""
    frames = np.frombuffer(parametric.FloatPixelData, dtype="<f4").reshape(-1, *volume.shape3d[1:])
    grid = np.full(volume.shape3d, -12345.0, dtype=np.float32)
    for index, frame in enumerate(parametric.PerFrameFunctionalGroupsSequence):
        here = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        column, row, k = np.ravel(volume.patient_to_index(here))
        assert abs(column) < 1e-3 and abs(row) < 1e-3 and abs(k - round(k)) < 1e-3
        grid[round(k)] = frames[index]
    return grid


def test_seg_and_pm_on_enhanced_mr_source(
    enhanced_phantom: tuple[Volume, Volume, Path], tmp_path: Path
) -> None:
    classic, volume, source_path = enhanced_phantom
    assert int(volume.headers[0].NumberOfFrames) == volume.shape3d[0] > 1
    np.testing.assert_allclose(volume.affine, classic.affine, atol=1e-4)
    positions = _frame_positions(source_path)
    mask = np.zeros(volume.shape3d, dtype=bool)
    mask[3:7, 10:20, 12:22] = True
    seg = out.build_segmentation(
        volume, [out.Segment(report_template("brainmets").segment_classes["metastasis"], mask, "lesion 1")],
        ALGORITHM,
    )
    seg_path = written(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(seg_path) == []
    back = hd.seg.segread(seg_path)
    referenced = back.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [str(i.ReferencedSOPInstanceUID) for i in referenced] == [volume.headers[0].SOPInstanceUID]
    # Every SEG frame references the source frame at its own position.
    for frame in back.PerFrameFunctionalGroupsSequence:
        here = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        source_image = frame.DerivationImageSequence[0].SourceImageSequence[0]
        number = int(source_image.ReferencedFrameNumber)
        np.testing.assert_allclose(positions[number], here, atol=1e-3)
    masks = load_segmentation(seg_path, onto=volume)
    np.testing.assert_array_equal(masks["Metastasis"], mask)
    # The same SEG lies on the classic series too (same frame of reference and geometry).
    np.testing.assert_array_equal(load_segmentation(seg_path, onto=classic)["Metastasis"], mask)

    values = np.linspace(0.0, 3.0, mask.size, dtype=np.float32).reshape(volume.shape3d)
    pm = out.build_parametric_map(volume, values, report_template("dce").quantity("ktrans"),
                                  out.Algorithm("dce", "0.4"))
    pm_path = written(pm, tmp_path / "pm.dcm")
    assert dciodvfy_errors(pm_path) == []
    parametric = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(pm_path))
    assert str(parametric.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
               .ReferencedSOPInstanceUID) == volume.headers[0].SOPInstanceUID
    np.testing.assert_array_equal(pm_on_grid(parametric, volume), values)
    for frame in parametric.PerFrameFunctionalGroupsSequence:
        here = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        number = int(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        np.testing.assert_allclose(positions[number], here, atol=1e-3)


def test_sr_on_enhanced_mr_source_references_the_slice_frame(
        enhanced_phantom: tuple[Volume, Volume, Path], tmp_path: Path) -> None:
    # The SR's SCOORD references the frame that holds the slice, by its frame number.
    _, volume, source_path = enhanced_phantom
    lesion = out.LesionFinding("lesion 1", out.LesionRegion.circle((20, 20, 5), 3))
    sr = out.build_measurement_report(volume, report_template("brainmets"), [lesion], ALGORITHM)
    positions = _frame_positions(source_path)
    found = []

    def walk(items: Any) -> None:
        for item in items:
            if item.get("ValueType") == "SCOORD":
                found.append(item.ContentSequence[0].ReferencedSOPSequence[0])
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    assert len(found) == 1
    reference = found[0]
    assert str(reference.ReferencedSOPInstanceUID) == volume.headers[0].SOPInstanceUID
    np.testing.assert_allclose(positions[int(reference.ReferencedFrameNumber)],
                               volume.index_to_patient([0, 0, 5]), atol=1e-3)
    assert written(sr, tmp_path / "sr.dcm").is_file()


def test_enhanced_source_not_from_a_file_needs_its_dataset() -> None:
    from tests.test_volume import enhanced_mr as minimal_enhanced  # a dataset, not a file

    dataset = minimal_enhanced(stored_values((4, 3, 5)), np.zeros(3), 2.0)
    volume = load_series([dataset])
    mask = np.ones(volume.shape3d, dtype=bool)
    segment = out.Segment(report_template("brainmets").segment_classes["metastasis"], mask)
    with pytest.raises(out.OutputError, match="source_datasets"):
        out.build_segmentation(volume, [segment], ALGORITHM)


def test_parametric_map_keeps_nan_for_failed_fits(axial: Volume, tmp_path: Path) -> None:
    values = np.linspace(0.01, 0.4, int(np.prod(axial.shape3d)), dtype=np.float32).reshape(axial.shape3d)
    failed = np.zeros(axial.shape3d, dtype=bool)
    failed[2, 4:7, 5:9] = True
    values[failed] = np.nan
    values[0, 0, 0] = np.inf  # not a value either: stored as NaN
    quantity = report_template("dce").quantity("ktrans")
    pm = out.build_parametric_map(axial, values, quantity, out.Algorithm("dce", "0.4"))
    path = written(pm, tmp_path / "pm.dcm")
    assert dciodvfy_errors(path) == []
    parametric = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
    stored = pm_on_grid(parametric, axial)
    expected_nan = failed.copy()
    expected_nan[0, 0, 0] = True
    np.testing.assert_array_equal(np.isnan(stored), expected_nan)
    np.testing.assert_array_equal(stored[~expected_nan], values[~expected_nan])
    mapping = parametric.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    finite = values[np.isfinite(values)]
    assert float(mapping.DoubleFloatRealWorldValueFirstValueMapped) == pytest.approx(float(finite.min()))
    assert float(mapping.DoubleFloatRealWorldValueLastValueMapped) == pytest.approx(float(finite.max()))
    window = parametric.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert np.isfinite(float(window.WindowCenter)) and float(window.WindowWidth) > 0
    # A site whose viewer cannot show NaN asks for a fill value instead.
    filled = out.build_parametric_map(axial, values, quantity, out.Algorithm("dce", "0.4"), fill_value=-1.0)
    data = pm_on_grid(filled, axial)
    assert not np.isnan(data).any() and np.all(data[expected_nan] == -1.0)


def test_feature_and_per_sequence_measurements(axial: Volume, tmp_path: Path) -> None:
    from sr_templates.meningioma import feature_quantity
    from sr_templates.spine import vertebra

    meningioma = report_template("meningioma")
    features = ["original_glcm_JointEntropy", "original_shape_Sphericity"]
    tumour = out.LesionFinding(
        "meningioma 1", out.LesionRegion.circle((8, 8, 3), 4),
        measurements=[out.MeasuredValue(feature_quantity(f), 0.25 * (n + 1))
                      for n, f in enumerate(features)]
        + [out.MeasuredValue(meningioma.quantity("rad_score"), -0.7),
           out.MeasuredValue(meningioma.quantity("probability"), 33.0)],
        impression=meningioma.diagnosis("grade2_3"),
    )
    spine = report_template("spine")
    lesion = out.LesionFinding(
        "T12 lesion", out.LesionRegion.circle((4, 5, 1), 2), finding_sites=[vertebra("T12")],
        measurements=[out.MeasuredValue(spine.quantity("probability"), p, method=spine.methods[m])
                      for m, p in (("t1", 80.0), ("t2", 70.0), ("stir", 90.0))],
        impression=spine.diagnosis("metastasis"),
    )
    for template, finding in ((meningioma, tumour), (spine, lesion)):
        sr = out.build_measurement_report(
            axial, template, [finding], out.Algorithm(template.analyzer, "0.1")
        )
        path = written(sr, tmp_path / f"{template.analyzer}.dcm")
        assert dciodvfy_errors(path) == []
        group = hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()[0]
        measurements = group.get_measurements()
        assert [m.value for m in measurements] == [m.value for m in finding.measurements]
    names = [m.name.meaning for m in
             hd.sr.srread(tmp_path / "meningioma.dcm").content
             .get_volumetric_roi_measurement_groups()[0].get_measurements()]
    assert names[:2] == features
    spine_group = hd.sr.srread(tmp_path / "spine.dcm").content.get_volumetric_roi_measurement_groups()[0]
    assert [m.method.value for m in spine_group.get_measurements()] == ["CNNT1", "CNNT2", "CNNSTIR"]
    assert spine_group.finding_sites[0].value == vertebra("T12")


def test_report_citing_its_predecessor_is_valid(axial: Volume, tmp_path: Path) -> None:
    """The node's superseding reports carry a Predecessor Documents Sequence (node.jobs.work)."""
    from analyzers.contract import EarlierOutput
    from node.jobs.work import cite_predecessors

    earlier, _ = _report(axial, False)
    later, _ = _report(axial, False)
    later.SOPInstanceUID = out.derive_uid(str(earlier.SOPInstanceUID), "later")
    reference = EarlierOutput(str(earlier.StudyInstanceUID), str(earlier.SeriesInstanceUID),
                              str(earlier.SOPClassUID), str(earlier.SOPInstanceUID))
    assert cite_predecessors([later], [reference]) == 1
    path = written(later, tmp_path / "later.dcm")
    assert dciodvfy_errors(path) == []
    back = hd.sr.srread(path)
    cited = back.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert cited.ReferencedSOPInstanceUID == earlier.SOPInstanceUID


def test_default_series_description_names_pacsnode_once(axial: Volume) -> None:
    for name in ("meningioma", "pacsnode brainmets"):
        _, _, _, description = out.OutputSeries().resolve(axial, out.Algorithm(name, "1"), "SEG", 300)
        assert description == f"pacsnode {name.removeprefix('pacsnode ')} SEG"
    given = out.OutputSeries(series_description="site text").resolve(axial, out.Algorithm("dce", "1"), "PM", 1)
    assert given[3] == "site text"


def test_integer_scaled_companion_map(axial: Volume, tmp_path: Path) -> None:
    """The integer companion holds the same values within one scaling step, marks missing values
    outside the mapped range, takes the source's Modality, and dcmtk renders it (the float map it
    cannot: "no pixel data found")."""
    values = np.linspace(0.01, 0.4, int(np.prod(axial.shape3d)), dtype=np.float32).reshape(axial.shape3d)
    values[1, 2, 3] = np.nan
    quantity = report_template("dce").quantity("ktrans")
    pm = out.build_parametric_map(axial, values, quantity, out.Algorithm("dce", "0.4"), integer_scaled=True)
    path = written(pm, tmp_path / "pm-int.dcm")
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.Modality == axial.headers[0].Modality == "MR"
    assert back.BitsAllocated == 16 and "PixelData" in back and "FloatPixelData" not in back
    assert back.SeriesDescription.endswith("Ktrans int")
    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope, intercept = float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)
    assert (int(mapping.RealWorldValueFirstValueMapped), int(mapping.RealWorldValueLastValueMapped)) == (0, 65534)
    frames = back.pixel_array.reshape(-1, *axial.shape3d[1:])
    grid = np.zeros(axial.shape3d, dtype=np.float64)
    stored_grid = np.zeros(axial.shape3d, dtype=np.uint16)
    for index, frame in enumerate(back.PerFrameFunctionalGroupsSequence):
        here = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        k = round(float(np.ravel(axial.patient_to_index(here))[2]))
        stored_grid[k] = frames[index]
        grid[k] = frames[index] * slope + intercept
    assert stored_grid[1, 2, 3] == 65535
    finite = np.isfinite(values)
    np.testing.assert_allclose(grid[finite], values[finite], atol=slope / 2 + 1e-9)
    if shutil.which("dcmj2pnm"):
        run = subprocess.run(["dcmj2pnm", "+on", "+Wm", str(path), str(tmp_path / "pm.png")], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert (tmp_path / "pm.png").stat().st_size > 0


def test_measurement_values_fit_a_decimal_string(axial: Volume, tmp_path: Path) -> None:
    """SR numbers are written with 4 significant digits (a DS holds 16 characters); a volume takes
    no "Mean" derivation; the device observer is named with pacsnode once."""
    assert out.significant(10.000000000000002) == 10.0
    assert out.significant(5.46650347986346) == 5.467
    assert out.significant(0.000123456) == 0.0001235
    assert out.significant(0.0) == 0.0
    template = report_template("brainmets")
    first, _ = lesion_masks(axial)
    quantity = Quantity("spacing", c.VOLUME, c.CUBIC_MILLIMETER, "Volume", "volume")
    with pytest.raises(out.OutputError, match="no derivation"):
        out.MeasuredValue(quantity, 1.0, derivation=c.MEAN).template()
    lesion = out.LesionFinding("lesion 1", out.LesionRegion.from_mask(first),
                               measurements=[out.MeasuredValue(quantity, 10.000000000000002)])
    sr = out.build_measurement_report(axial, template, [lesion], out.Algorithm("pacsnode brainmets", "1"))
    path = written(sr, tmp_path / "sr.dcm")
    text = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60).stdout \
        if shutil.which("dsrdump") else ""
    numbers = [item.MeasuredValueSequence[0].NumericValue for item in _num_items(pydicom.dcmread(path))]
    assert numbers and all(len(str(n.original_string if hasattr(n, "original_string") else n)) <= 16
                           for n in numbers)
    assert "10.0" in [str(n) for n in numbers]
    observer = [item.TextValue for item in pydicom.dcmread(path).ContentSequence
                if item.ConceptNameCodeSequence[0].CodeValue == "121013"]  # Device Observer Name
    assert observer == ["pacsnode brainmets"]
    if text:
        assert 'NUM:(,,"Volume")="10.0"' in text


def _num_items(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    found = []
    for item in dataset.get("ContentSequence", []):
        if item.get("ValueType") == "NUM":
            found.append(item)
        found += _num_items(item)
    return found
