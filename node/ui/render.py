"""Pictures for the status pages: an instance (or one frame) as a PNG thumbnail, and the
mean-signal time curve of a dynamic series.

Single-frame and multi-frame images are rendered by the WADO-RS ``/rendered`` code
(:mod:`node.dicomweb.wado`), so the pages show what a DICOMweb client gets; float
Parametric Maps, which carry no integer Pixel Data, are scaled to their own range here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread

from node.dicomweb.wado import render_instance
from node.errors import InvalidDataset, NotFound
from node.storage.index import Index
from node.storage.store import InstanceStore

__all__ = ["render_png", "time_curve_png", "time_points"]


def render_png(path: Path, *, frame: int | None = None, size: int = 256) -> bytes:
    """A PNG of ``path`` no larger than ``size`` × ``size``; the middle frame of a multi-frame
    instance unless ``frame`` (1-based) is given.

    Raises
    ------
    node.errors.NotFound
        The instance has no pixel data (an SR) or no such frame.
    node.errors.InvalidDataset
        The pixel data cannot be decoded.
    """
    head = dcmread(path, defer_size="4 KB")  # large values (the pixels) are read only when used
    frames = int(head.get("NumberOfFrames", 1) or 1)
    if frame is None and frames > 1:
        frame = (frames + 1) // 2
    viewport = {"viewport": f"{size},{size}"}
    if "PixelData" in head or ("FloatPixelData" not in head and "DoubleFloatPixelData" not in head):
        return render_instance(path, viewport, "image/png", frame if frames > 1 else None)
    ds = dcmread(path)
    if frame is not None and not 1 <= frame <= frames:
        raise NotFound(f"frame {frame} does not exist; the instance has {frames} frame(s)")
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise InvalidDataset(f"the float pixel data cannot be decoded for rendering: {exc}") from exc
    if frames > 1:
        pixels = pixels[(frame or 1) - 1]
    finite = pixels[np.isfinite(pixels)]
    low, high = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite.size else (0.0, 1.0)
    scaled = np.clip((np.nan_to_num(pixels, nan=low) - low) / max(high - low, 1e-12), 0, 1) * 255
    image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def time_points(index: Index, series_uid: str) -> list[tuple[float, str]]:
    """For a dynamic series (three or more temporal positions or acquisitions): one instance per
    time point, the middle one of each by instance number, as ``(time point, relative path)``."""
    rows = index.reader().execute(
        "SELECT COALESCE(temporal_position, acquisition_number), path FROM instances "
        "WHERE series_uid = ? AND rows IS NOT NULL AND COALESCE(number_of_frames, 1) <= 1 "
        "ORDER BY COALESCE(temporal_position, acquisition_number), instance_number, sop_uid",
        (series_uid,)).fetchall()
    groups: dict[float, list[str]] = {}
    for position, path in rows:
        if position is None:
            return []
        try:
            groups.setdefault(float(position), []).append(path)
        except (TypeError, ValueError):
            return []
    if len(groups) < 3:
        return []
    return [(position, paths[len(paths) // 2]) for position, paths in sorted(groups.items())]


def time_curve_png(index: Index, store: InstanceStore, series_uid: str, *, width: int = 320,
                   height: int = 140) -> bytes:
    """The mean signal of the middle slice against time point, as a PNG line chart.

    Raises
    ------
    node.errors.NotFound
        The series is not dynamic (fewer than three time points).
    """
    points = time_points(index, series_uid)
    if not points:
        raise NotFound("the series has fewer than three time points; no time curve")
    values = []
    for _, path in points:
        ds = dcmread(store.absolute(path))
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        values.append(float(pixels.mean()) * slope + intercept)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    margin = 8
    low, high = min(values), max(values)
    span = max(high - low, 1e-9)
    xy = [(margin + i * (width - 2 * margin) / max(len(values) - 1, 1),
           height - margin - (v - low) / span * (height - 2 * margin)) for i, v in enumerate(values)]
    draw.rectangle((0, 0, width - 1, height - 1), outline=(200, 200, 200))
    draw.line(xy, fill=(20, 90, 170), width=2)
    draw.text((margin, 2), f"mean signal, {len(values)} time points ({low:.4g} to {high:.4g})", fill=(60, 60, 60))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
