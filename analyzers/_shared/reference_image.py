"""A derived 3D image series of a dynamic (4D) source, for outputs a viewer overlays.

A DSC or DCE series holds every time point in one series (one SeriesInstanceUID).
Viewers that load such a series as one dynamic volume (OHIF 3: a cine over the time
points) cannot put a SEG, a Parametric Map or SR coordinates on it: OHIF's SEG loader
finds no cached image of a dynamic volume, its Parametric Map loader wants a static
volume. :func:`build_reference_image` writes what they can use: the mean of chosen time
points (e.g. the pre-bolus baseline) as a classic MR Image series of its own, one
instance per slice, on the source grid:

- Image Type ``DERIVED\\SECONDARY\\OTHER``, Derivation Code "Pixel by pixel mean"
  (DCM 113049) and a Derivation Description naming the averaged time points;
- per slice, a Source Image Sequence of the averaged source images (frames of a
  multi-frame source, the mosaic of a MOSAIC source) with purpose "Source image for
  image processing operation" (DCM 121322), and the source series in the Referenced
  Series Sequence (Common Instance Reference): the derivation stays traceable;
- the source's patient, study, frame of reference and acquisition attributes, the
  series' geometry from the source volume (PS3.3 C.7.6.2).

The SEG, Parametric Maps and SR of the analysis then reference this series (its
:attr:`ReferenceImage.volume` is a 3D :class:`~analyzers._shared.volume.Volume` the
builders of :mod:`analyzers._shared.outputs` take as their source), and it references
the dynamic series: PS3.3's derivation chain from the outputs to the acquired frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, MRImageStorage

from analyzers._shared.dicom_layouts import decimal_string
from analyzers._shared.output_sources import OutputError
from analyzers._shared.outputs import MANUFACTURER, Algorithm, OutputSeries, derive_uid
from analyzers._shared.volume import CLASSIC, Volume
from analyzers.contract import NOT_FOR_CLINICAL_USE

__all__ = ["ReferenceImage", "build_reference_image"]

_SERIES_NUMBER = 9000
_UINT16_TOP = 65535
#: Attributes copied from the source when it has them (patient, study, series, frame of
#: reference, acquisition): the derived image describes the same patient and acquisition.
_COPIED = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "PatientIdentityRemoved",
    "DeidentificationMethod", "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "StudyDescription", "Modality", "PatientPosition", "BodyPartExamined",
    "Laterality", "FrameOfReferenceUID", "PositionReferenceIndicator", "ContentDate", "ContentTime",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName",
    "RepetitionTime", "EchoTime", "EchoTrainLength", "InversionTime", "FlipAngle",
    "MagneticFieldStrength", "ImagedNucleus", "ImagingFrequency", "NumberOfAverages",
    "PixelBandwidth", "ReceiveCoilName", "TransmitCoilName", "SliceThickness",
)
#: Type 2 attributes of the modules written: present, empty when the source has no value.
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator",
    "ScanOptions", "MRAcquisitionType", "EchoTime", "EchoTrainLength", "PatientOrientation",
)
#: Scanning Sequence (MR Image module, Type 1) of an enhanced source, from its Echo Pulse Sequence.
_SCANNING_FROM_ECHO = {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}


@dataclass(frozen=True)
class ReferenceImage:
    """The derived series: its instances and the 3D volume the other outputs reference.

    Attributes
    ----------
    datasets:
        One MR Image instance per slice, in slice order.
    volume:
        The series as a 3D :class:`Volume` (headers are the instances without pixel data).
    """

    datasets: list[Dataset]
    volume: Volume


def _time_points(source: Volume, time_points: Sequence[int] | slice) -> list[int]:
    count = source.data.shape[0]
    chosen = list(range(count))[time_points] if isinstance(time_points, slice) else list(time_points)
    if not chosen:
        raise OutputError("a reference image needs at least one time point")
    if any(not 0 <= int(t) < count for t in chosen):
        raise OutputError(f"time points {chosen} are outside the series' {count} time points")
    return sorted({int(t) for t in chosen})


def _stored_pixels(mean: np.ndarray) -> tuple[np.ndarray, str]:
    """uint16 pixels of the mean and what was done to fit them (empty when only rounded)."""
    finite = np.where(np.isfinite(mean), mean, 0.0)
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= _UINT16_TOP:
        return np.rint(finite).astype(np.uint16), ""
    scale = _UINT16_TOP / (high - low) if high > low else 1.0
    pixels = np.rint((finite - low) * scale).astype(np.uint16)
    return pixels, f"; scaled to 0-{_UINT16_TOP} (stored = (mean - {low:.6g}) x {scale:.6g})"


def _source_items(source: Volume, slice_index: int, times: list[int]) -> list[Dataset]:
    """Source Image Sequence items of one slice: the averaged images (frames) of every time point."""
    items: list[Dataset] = []
    seen: set[tuple[str, int]] = set()
    for t in times:
        uid = str(source.sop_instance_uids[t, slice_index])
        frame = int(source.frame_numbers[t, slice_index]) if source.frame_numbers is not None else 0
        if (uid, frame) in seen:
            continue
        seen.add((uid, frame))
        item = Dataset()
        item.ReferencedSOPClassUID = str(source.sop_class_uids[t, slice_index])
        item.ReferencedSOPInstanceUID = uid
        if frame:
            item.ReferencedFrameNumber = frame
        purpose = Dataset()
        code = codes.DCM.SourceImageForImageProcessingOperation
        purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = (
            code.value, code.scheme_designator, code.meaning)
        item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
        items.append(item)
    return items


def _referenced_series(source: Volume, items: list[Dataset]) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = source.series_instance_uid
    instances = []
    for uid, sop_class in dict.fromkeys(
            (str(i.ReferencedSOPInstanceUID), str(i.ReferencedSOPClassUID)) for i in items):
        instance = Dataset()
        instance.ReferencedSOPClassUID = sop_class
        instance.ReferencedSOPInstanceUID = uid
        instances.append(instance)
    series.ReferencedInstanceSequence = DicomSequence(instances)
    return series


def _acquisition_defaults(dataset: Dataset, header: Dataset) -> None:
    """MR Image module Type 1 attributes an enhanced source carries elsewhere."""
    if not dataset.get("ScanningSequence"):
        echo = str(header.get("EchoPulseSequence", "")).upper()
        scanning = list(_SCANNING_FROM_ECHO.get(echo, ["RM"]))
        if str(header.get("EchoPlanarPulseSequence", "")).upper() == "YES":
            scanning.append("EP")
        dataset.ScanningSequence = scanning
    if not dataset.get("SequenceVariant"):
        dataset.SequenceVariant = "NONE"


def _window(pixels: np.ndarray) -> tuple[float, float]:
    inside = pixels[pixels > 0]
    if inside.size == 0:
        return 0.5, 1.0
    low, high = np.percentile(inside, [0.5, 99.5])
    width = max(float(high - low), 1.0)
    return float(low) + width / 2.0, width


def build_reference_image(
    source: Volume,
    time_points: Sequence[int] | slice,
    algorithm: Algorithm,
    output: OutputSeries | None = None,
    *,
    what: str = "mean",
) -> ReferenceImage:
    """The mean of ``time_points`` of a dynamic ``source`` as a derived 3D MR series.

    Parameters
    ----------
    source:
        The dynamic (4D) series.
    time_points:
        Indices (or a slice) of the time points averaged, e.g. the pre-bolus baseline.
    algorithm:
        The analyzer (Manufacturer Model Name, Software Versions).
    output:
        Series UID, number and description; the instances' UIDs derive from the series UID.
    what:
        What the mean is, for the Derivation Description and the default description
        (``"pre-bolus mean"``).

    Returns
    -------
    ReferenceImage
        The instances and the 3D volume that SEG, Parametric Map and SR builders reference.

    Raises
    ------
    OutputError
        The source is not dynamic or a time point is outside it.
    """
    if not source.is_dynamic:
        raise OutputError("a reference image is made of a dynamic (4D) series; a 3D series is its own")
    times = _time_points(source, time_points)
    mean = source.data[times].astype(np.float64).mean(axis=0)
    pixels, scaling = _stored_pixels(mean)
    series_uid, _, number, description = (output or OutputSeries()).resolve(
        source, algorithm, what, _SERIES_NUMBER)
    header = source.headers[0]
    frames = (f"time point {times[0] + 1}" if len(times) == 1
              else f"time points {times[0] + 1}-{times[-1] + 1}" if times == list(range(times[0], times[-1] + 1))
              else "time points " + ", ".join(str(t + 1) for t in times))
    derivation = (f"{what}: pixel by pixel mean of {frames} of {source.data.shape[0]} of series "
                  f"{source.series_instance_uid}{scaling}")[:1024]
    center, width = _window(pixels)
    direction = source.direction
    orientation = [decimal_string(v) for v in (*direction[:, 0], *direction[:, 1])]
    dz, dy, dx = source.spacing
    datasets: list[Dataset] = []
    for k in range(source.shape3d[0]):
        ds = Dataset()
        for keyword in _COPIED:
            value = header.get(keyword)
            if value not in (None, ""):
                setattr(ds, keyword, value)
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        _acquisition_defaults(ds, header)
        sop_uid = derive_uid(series_uid, "instance", str(k + 1))
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.Manufacturer = MANUFACTURER
        ds.ManufacturerModelName = algorithm.name[:64]
        ds.SoftwareVersions = algorithm.version
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.DerivationDescription = derivation
        code = codes.DCM.PixelByPixelMean
        derivation_code = Dataset()
        derivation_code.CodeValue, derivation_code.CodingSchemeDesignator, derivation_code.CodeMeaning = (
            code.value, code.scheme_designator, code.meaning)
        ds.DerivationCodeSequence = DicomSequence([derivation_code])
        items = _source_items(source, k, times)
        ds.SourceImageSequence = DicomSequence(items)
        ds.ReferencedSeriesSequence = DicomSequence([_referenced_series(source, items)])
        ds.ImageComments = NOT_FOR_CLINICAL_USE
        ds.ImageOrientationPatient = orientation
        position = source.affine[:3, 2] * k + source.affine[:3, 3]
        ds.ImagePositionPatient = [decimal_string(v) for v in position]
        ds.PixelSpacing = [decimal_string(dy), decimal_string(dx)]
        if "SliceThickness" not in ds:
            ds.SliceThickness = decimal_string(dz)
        ds.SpacingBetweenSlices = decimal_string(dz)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.WindowCenter, ds.WindowWidth = decimal_string(center), decimal_string(width)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        datasets.append(ds)
    volume = Volume(
        data=mean.astype(np.float32),
        affine=source.affine.copy(),
        spacing=source.spacing,
        times=None,
        sop_instance_uids=np.array([str(d.SOPInstanceUID) for d in datasets], dtype=object),
        headers=tuple(_without_pixels(d) for d in datasets),
        sop_class_uids=np.array([MRImageStorage] * len(datasets), dtype=object),
        layout=CLASSIC,
        frame_numbers=np.zeros(len(datasets), dtype=np.int64),
    )
    return ReferenceImage(datasets, volume)


def _without_pixels(dataset: Dataset) -> Dataset:
    header = Dataset()
    header.update(dataset)
    del header.PixelData
    return header
