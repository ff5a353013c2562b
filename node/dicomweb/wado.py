"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data and rendered images.

Instances go out as ``multipart/related; type="application/dicom"`` in their stored
transfer syntax, or in Explicit VR Little Endian when the Accept header asks for
``transfer-syntax=1.2.840.10008.1.2.1`` (compressed pixel data is decoded when pydicom
has a decoder for it, pylibjpeg among them; otherwise the answer is 406). Responses
stream: files are read a few megabytes at a time in a worker thread, so a series of
thousands of instances never sits in memory.
"""

from __future__ import annotations

import asyncio
import io
import logging
import mmap
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from node.dicomweb.dicom_json import element_path, parse_element_path
from node.dicomweb.metadata import URL_MARK_JSON
from node.dicomweb.multipart import (
    MediaType,
    NotAcceptable,
    closing_delimiter,
    new_boundary,
    parse_accept,
    part_header,
)
from node.dicomweb.service import DICOM_JSON, DicomwebService
from node.errors import InvalidDataset, NotFound
from node.storage.query import InvalidQuery, parse_count

__all__ = ["render_instance", "retrieve_bulkdata", "retrieve_frames", "retrieve_instances",
           "retrieve_metadata", "retrieve_rendered"]

log = logging.getLogger(__name__)

_CHUNK_BYTES = 8 * 1024 * 1024
_SEND_BYTES = 512 * 1024
_READ_AHEAD = 3
_METADATA_BATCH = 64
_PIXEL_DATA = 0x7FE00010
_DEFER = 1024
# Media types of compressed frames (PS3.18 Table 8.7.3-2), by transfer syntax.
_FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_MULTIPART = ("multipart/related", "multipart/*", "*/*")

# -- lookup -----------------------------------------------------------------------------------


def _rows(service: DicomwebService, request: Request) -> list[dict[str, Any]]:
    params = request.path_params
    rows = service.index.stored_instances(study_uid=params["study"],
                                          series_uid=params.get("series"),
                                          sop_uid=params.get("instance"))
    if not rows:
        what = ("instance " + params["instance"] if "instance" in params else
                "series " + params["series"] if "series" in params else "study " + params["study"])
        raise NotFound(f"no stored {what} under this path")
    return rows


def _instance_url(base: str, row: dict[str, Any]) -> str:
    return f"{base}/studies/{row['study_uid']}/series/{row['series_uid']}/instances/{row['sop_uid']}"


# -- instances --------------------------------------------------------------------------------


def _requested_syntax(header: str | None) -> str:
    """The transfer syntax the Accept header asks for; ``*`` means as stored."""
    for media in parse_accept(header):
        if media.type in _MULTIPART:
            kind = media.params.get("type", "application/dicom")
            if kind in ("application/dicom", "*/*", "application/*"):
                return media.params.get("transfer-syntax", "*") or "*"
    raise NotAcceptable(
        f"cannot answer Accept: {header}; this resource is available as "
        'multipart/related; type="application/dicom" (optionally with transfer-syntax=*, the '
        "stored syntax, or 1.2.840.10008.1.2.1)"
    )


def _plan(rows: list[dict[str, Any]], wanted: str) -> list[bool]:
    """For each instance: True when it must be transcoded to Explicit VR Little Endian."""
    plan = []
    for row in rows:
        stored = row["transfer_syntax_uid"]
        if wanted in ("*", stored):
            plan.append(False)
            continue
        if wanted != ExplicitVRLittleEndian:
            raise NotAcceptable(
                f"instance {row['sop_uid']} is stored as {stored} and the node transcodes only to "
                f"Explicit VR Little Endian ({ExplicitVRLittleEndian}), not to {wanted}"
            )
        if UID(stored).is_compressed and not get_decoder(stored).is_available:
            raise NotAcceptable(
                f"instance {row['sop_uid']} is stored as {stored}, for which no decoder is "
                "installed; ask for transfer-syntax=* to get it as stored"
            )
        plan.append(True)
    return plan


def transcode_to_explicit_le(path: Path) -> bytes:
    """The instance at ``path`` as a Part 10 file in Explicit VR Little Endian."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def _read_parts(service: DicomwebService, boundary: str, batch: list[tuple[dict, bool]],
                first: bool) -> tuple[bytes | memoryview, mmap.mmap | None]:
    """The multipart bytes of one batch (each part's header and the file as stored), and
    the pool buffer holding them, to hand back once sent.

    Files sent as stored are read with ``readinto`` straight into a buffer of
    ``service.buffers`` sized from their known lengths (one copy of the data, no per-file
    objects to join); a batch with a transcoded instance, or whose files changed size, is
    assembled piece by piece.
    """
    if any(transcode for _, transcode in batch) or any(row.get("size") is None for row, _ in batch):
        return _read_parts_joined(service, boundary, batch, first), None
    headers = [part_header(boundary, f"application/dicom; transfer-syntax={row['transfer_syntax_uid']}",
                           first=first and index == 0) for index, (row, _) in enumerate(batch)]
    length = sum(len(h) for h in headers) + sum(int(row["size"]) for row, _ in batch)
    buffer = service.buffers.take(length)
    view = memoryview(buffer)[:length]
    position = 0
    for header, (row, _) in zip(headers, batch, strict=True):
        size = int(row["size"])
        try:
            with open(service.store.absolute(row["path"]), "rb", buffering=0) as handle:
                view[position:position + len(header)] = header
                target = view[position + len(header):position + len(header) + size]
                read = 0
                while read < size:
                    count = handle.readinto(target[read:])
                    if not count:
                        break
                    read += count
                complete = read == size and not handle.read(1)
                del target
        except OSError:
            complete = False  # the joined path logs and skips it
        if not complete:  # changed on disk, or unreadable
            view.release()
            service.buffers.give(buffer)
            return _read_parts_joined(service, boundary, batch, first), None
        position += len(header) + size
    return view, buffer


def _read_parts_joined(service: DicomwebService, boundary: str, batch: list[tuple[dict, bool]],
                       first: bool) -> bytes:
    pieces: list[bytes] = []
    for row, transcode in batch:
        path = service.store.absolute(row["path"])
        try:
            data = transcode_to_explicit_le(path) if transcode else path.read_bytes()
        except OSError as exc:
            log.error("WADO-RS: instance %s is indexed but cannot be read: %s", row["sop_uid"], exc)
            continue
        syntax = ExplicitVRLittleEndian if transcode else row["transfer_syntax_uid"]
        pieces.append(part_header(boundary, f"application/dicom; transfer-syntax={syntax}",
                                  first=first and not pieces))
        pieces.append(data)
    return b"".join(pieces)


async def _stream_instances(service: DicomwebService, boundary: str,
                            work: list[tuple[dict, bool]]) -> AsyncIterator[bytes | memoryview]:
    # Files are read in batches of a few MB by worker threads, the next batches while the
    # current one is being sent (read-ahead of _READ_AHEAD batches bounds the memory).
    batches: list[list[tuple[dict, bool]]] = [[]]
    size = 0
    for item in work:
        if size >= _CHUNK_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += int(item[0]["size"] or 0)
    loop = asyncio.get_running_loop()
    ahead: deque[asyncio.Future[tuple[bytes | memoryview, mmap.mmap | None]]] = deque()
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        ahead.append(loop.run_in_executor(None, _read_parts, service, boundary,
                                          batches[submitted], submitted == 0))
        submitted += 1

    try:
        while submitted < min(_READ_AHEAD, len(batches)):
            submit()
        while ahead:
            data, buffer = await ahead.popleft()
            if submitted < len(batches):
                submit()
            chunk = memoryview(data)
            # Slices the socket takes at once: a larger write is mostly copied into the
            # transport's buffer first and sent from there.
            for start in range(0, len(chunk), _SEND_BYTES):
                yield chunk[start:start + _SEND_BYTES]
            del chunk, data
            if buffer is not None:
                service.buffers.give(buffer)
        yield closing_delimiter(boundary)
    finally:
        for future in ahead:
            if not future.cancel() and not future.cancelled() and future.exception() is None:
                _, buffer = future.result()
                if buffer is not None:
                    service.buffers.give(buffer)


async def retrieve_instances(service: DicomwebService, request: Request) -> Response:
    """Study, series or instance retrieval as multipart/related application/dicom."""
    wanted = _requested_syntax(request.headers.get("accept"))
    rows = await service.blocking(_rows, service, request)
    plan = _plan(rows, wanted)
    boundary = new_boundary()
    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    headers = {}
    if not any(plan):
        # Sent as stored: the length is known from the files, so the body goes out with a
        # Content-Length instead of chunked framing (less work for every client).
        length = await service.blocking(_body_length, service, boundary, rows)
        if length is not None:
            headers["Content-Length"] = str(length)
    return StreamingResponse(_stream_instances(service, boundary, list(zip(rows, plan, strict=True))),
                             media_type=media, headers=headers)


def _body_length(service: DicomwebService, boundary: str, rows: list[dict[str, Any]]) -> int | None:
    """The multipart body's length when every file is there (their sizes from the disk)."""
    total = len(closing_delimiter(boundary))
    for index, row in enumerate(rows):
        try:
            size = service.store.absolute(row["path"]).stat().st_size
        except OSError:
            return None  # a missing file is skipped while streaming: the length is unknown
        row["size"] = size
        header = part_header(boundary, f"application/dicom; transfer-syntax="
                                       f"{row['transfer_syntax_uid']}", first=index == 0)
        total += len(header) + size
    return total


# -- metadata ---------------------------------------------------------------------------------


def _metadata_batch(service: DicomwebService, base: str, rows: list[dict], first: bool) -> bytes:
    """The metadata of ``rows`` as JSON array items (comma-led unless ``first``), read from the
    stored metadata (:mod:`node.dicomweb.metadata`), made from the files where missing."""
    texts = service.metadata.texts(rows)
    items = []
    for row in rows:
        text = texts.get(row["sop_uid"])
        if text is None:
            log.error("metadata: instance %s is indexed but its file cannot be read", row["sop_uid"])
            continue
        items.append(text.replace(URL_MARK_JSON, _instance_url(base, row)))
    text = ",".join(items)
    return ((("" if first else ",") + text) if items else "").encode("utf-8")


async def _stream_metadata(service: DicomwebService, base: str,
                           rows: list[dict]) -> AsyncIterator[bytes]:
    yield b"["
    first = True
    for start in range(0, len(rows), _METADATA_BATCH):
        chunk = await service.blocking(_metadata_batch, service, base,
                                       rows[start : start + _METADATA_BATCH], first)
        if chunk:
            first = False
            yield chunk
    yield b"]"


async def retrieve_metadata(service: DicomwebService, request: Request) -> Response:
    """Study, series or instance metadata as an application/dicom+json array."""
    accepted = parse_accept(request.headers.get("accept"))
    if not any(m.type in (DICOM_JSON, "application/json", "*/*", "application/*") for m in accepted):
        raise NotAcceptable(f"metadata is available as {DICOM_JSON}, not {request.headers['accept']}")
    rows = await service.blocking(_rows, service, request)
    return StreamingResponse(_stream_metadata(service, service.base_url(request), rows),
                             media_type=DICOM_JSON)


# -- pixel data -------------------------------------------------------------------------------


def _native_frame_length(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    if bits % 8:
        raise NotAcceptable("frames of 1-bit pixel data are not served; retrieve the instance")
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8


def _frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _read_native_frames(path: Path, numbers: list[int]) -> list[bytes]:
    """Frames of uncompressed little endian pixel data, read at their offsets."""
    ds = dcmread(path, defer_size=_DEFER)
    syntax = ds.file_meta.TransferSyntaxUID
    raw = ds.get_item(_PIXEL_DATA)
    if raw is None:
        raise NotFound("the instance has no Pixel Data")
    count = _frame_count(ds)
    for n in numbers:
        if n > count:
            raise NotFound(f"frame {n} does not exist; the instance has {count} frame(s)")
    if syntax.is_compressed or not syntax.is_little_endian or syntax.is_deflated:
        return [_decoded_frame(path, n) for n in numbers]
    length = _native_frame_length(ds)
    if isinstance(raw, RawDataElement) and raw.value is None:
        frames = []
        with open(path, "rb") as handle:
            for n in numbers:
                handle.seek(raw.value_tell + (n - 1) * length)
                frames.append(handle.read(length))
        return frames
    value = bytes(ds.PixelData)
    return [value[(n - 1) * length : n * length] for n in numbers]


def _decoded_frame(path: Path, number: int) -> bytes:
    array = pixel_array(str(path), index=number - 1)
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _encapsulated_frames(path: Path, numbers: list[int]) -> list[bytes]:
    ds = dcmread(path)
    count = _frame_count(ds)
    for n in numbers:
        if n > count:
            raise NotFound(f"frame {n} does not exist; the instance has {count} frame(s)")
    frames = list(generate_frames(ds.PixelData, number_of_frames=count))
    return [frames[n - 1] for n in numbers]


def _frame_numbers(text: str, limit: int) -> list[int]:
    """A frame list (PS3.18 8.3.3.1: one or more non-duplicate frame numbers), at most ``limit``
    numbers, each in the digits 0-9."""
    items = text.split(",", limit)
    if len(items) > limit:
        raise InvalidQuery(f"a frame list names at most {limit} frames ([http] "
                           "max_frames_per_request); ask for the instance, or in several requests")
    numbers = [parse_count(item.strip(), "a frame number", minimum=1, maximum=2**31 - 1)
               for item in items]
    if len(set(numbers)) != len(numbers):
        raise InvalidQuery("a frame list names each frame once (PS3.18 8.3.3.1); it repeats "
                           f"{sorted(n for n in set(numbers) if numbers.count(n) > 1)[:10]}")
    return numbers


def _frame_media(header: str | None, stored: str) -> tuple[str, bool]:
    """``(media type, encapsulated)`` for frames of an instance stored in ``stored``."""
    compressed_media = _FRAME_MEDIA.get(stored)
    for media in parse_accept(header):
        kind = media.params.get("type", "application/octet-stream")
        if media.type == "application/octet-stream" or (
                media.type in _MULTIPART and kind in ("application/octet-stream", "*/*")):
            return "application/octet-stream", False
        if compressed_media and media.type in _MULTIPART and kind == compressed_media:
            wanted = media.params.get("transfer-syntax", stored)
            if wanted in ("*", stored):
                return compressed_media, True
    raise NotAcceptable(
        "frames of this instance are available as application/octet-stream (uncompressed)"
        + (f" or {compressed_media}" if compressed_media else "")
    )


def _multipart(parts: list[bytes], content_type: str, location: str | None = None) -> Response:
    boundary = new_boundary()
    body = b"".join(part_header(boundary, content_type, first=i == 0, location=location) + p
                    for i, p in enumerate(parts)) + closing_delimiter(boundary)
    media = f'multipart/related; type="{content_type.split(";")[0]}"; boundary={boundary}'
    return Response(body, media_type=media)


async def retrieve_frames(service: DicomwebService, request: Request) -> Response:
    """``/frames/{list}``: frames as multipart/related application/octet-stream (or the
    stored compressed media type when asked)."""
    numbers = _frame_numbers(request.path_params["frames"], service.http.max_frames_per_request)
    row = (await service.blocking(_rows, service, request))[0]
    media, encapsulated = _frame_media(request.headers.get("accept"), row["transfer_syntax_uid"])
    path = service.store.absolute(row["path"])
    reader: Callable[[Path, list[int]], list[bytes]] = (
        _encapsulated_frames if encapsulated else _read_native_frames)
    frames = await service.blocking(reader, path, numbers)
    # native frames are little endian pixels, i.e. Explicit VR Little Endian (PS3.18 8.7.3.3.2)
    syntax = row["transfer_syntax_uid"] if encapsulated else ExplicitVRLittleEndian
    return _multipart(frames, f"{media}; transfer-syntax={syntax}")


def _bulk_value(path: Path, element: tuple[int, ...]) -> bytes:
    if element == (_PIXEL_DATA,):
        ds = dcmread(path, defer_size=_DEFER)
        if _PIXEL_DATA not in ds:
            raise NotFound("the instance has no Pixel Data")
        return b"".join(_read_native_frames(path, list(range(1, _frame_count(ds) + 1))))
    ds = dcmread(path)
    current: Any = ds
    for position, step in enumerate(element):
        try:
            current = current[step] if position % 2 else current[step].value
        except (KeyError, IndexError, TypeError):
            raise NotFound(f"no bulk data at {element_path(element)} in this instance") from None
    if not isinstance(current, bytes | bytearray):
        raise NotFound(f"the attribute at {element_path(element)} is not binary bulk data")
    return bytes(current)


async def retrieve_bulkdata(service: DicomwebService, request: Request) -> Response:
    """``/bulkdata/{tag path}``: a binary value named by a BulkDataURI of the metadata."""
    try:
        element = parse_element_path(request.path_params["path"])
    except ValueError as exc:
        raise InvalidQuery(str(exc)) from None
    accepted = parse_accept(request.headers.get("accept"))
    if not any(m.type in (*_MULTIPART, "application/octet-stream")
               and m.params.get("type", "application/octet-stream")
               in ("application/octet-stream", "*/*") for m in accepted):
        raise NotAcceptable("bulk data is available as application/octet-stream")
    row = (await service.blocking(_rows, service, request))[0]
    value = await service.blocking(_bulk_value, service.store.absolute(row["path"]), element)
    return _multipart([value], "application/octet-stream")


# -- rendered ---------------------------------------------------------------------------------


def _window(params: dict[str, str], ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """8-bit grey levels by the VOI window (PS3.3 C.11.2.1.2): ``window=center,width[,function]``
    from the request, else the instance's first window, else the full pixel range."""
    function = "linear"
    if "window" in params:
        fields = [f.strip() for f in params["window"].split(",")]
        try:
            center, width = float(fields[0]), float(fields[1])
        except (ValueError, IndexError):
            raise InvalidQuery(f"window is center,width[,function], got {params['window']!r}") from None
        if len(fields) > 2:
            function = fields[2].lower()
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        first = lambda v: float(v[0] if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue" else v)  # noqa: E731
        center, width = first(ds.WindowCenter), first(ds.WindowWidth)
    else:
        low, high = float(pixels.min()), float(pixels.max())
        center, width, function = (low + high) / 2, max(high - low, 1.0), "linear-exact"
    if width <= 0 or (function == "linear" and width < 1):
        raise InvalidQuery(f"window width must be positive (at least 1 for linear), got {width}")
    values = pixels.astype(np.float64)
    if function == "linear":
        scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    elif function == "linear-exact":
        scaled = ((values - center) / width + 0.5) * 255
    elif function == "sigmoid":
        scaled = 255 / (1 + np.exp(-4 * (values - center) / width))
    else:
        raise InvalidQuery(f"window function must be linear, linear-exact or sigmoid, got {function!r}")
    return np.clip(scaled, 0, 255).astype(np.uint8)


def render_instance(path: Path, params: dict[str, str], media: str, frame: int | None) -> bytes:
    """The ``/rendered`` picture of a stored instance (or of one frame), as WADO-RS returns it.

    Parameters
    ----------
    path:
        The instance file.
    params:
        The query parameters of PS3.18 that apply: ``window`` (center,width,function),
        ``viewport`` (width,height), ``quality`` (JPEG).
    media:
        ``"image/png"`` or ``"image/jpeg"``.
    frame:
        1-based frame of a multi-frame instance; None for a single-frame one.

    Raises
    ------
    node.errors.NotFound
        No Pixel Data, or no such frame.
    node.storage.query.InvalidQuery
        A malformed parameter, or a multi-frame instance without a frame.
    node.errors.InvalidDataset
        The pixel data cannot be decoded.
    """
    ds = dcmread(path)
    if "PixelData" not in ds:
        raise NotFound("the instance has no Pixel Data to render")
    count = _frame_count(ds)
    if frame is None and count > 1:
        raise InvalidQuery(f"the instance has {count} frames; ask for /frames/{{n}}/rendered")
    index = (frame or 1) - 1
    if index >= count:
        raise NotFound(f"frame {index + 1} does not exist; the instance has {count} frame(s)")
    try:
        pixels = pixel_array(ds, index=index) if count > 1 else ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise InvalidDataset(f"the pixel data cannot be decoded for rendering: {exc}") from exc
    if int(ds.get("SamplesPerPixel", 1) or 1) == 1:
        grey = _window(params, ds, apply_modality_lut(pixels, ds))
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            grey = 255 - grey
        image = Image.fromarray(grey, mode="L")
    else:
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    if "viewport" in params:
        try:
            width, height = (int(v) for v in params["viewport"].split(",")[:2])
        except ValueError:
            raise InvalidQuery(f"viewport is width,height, got {params['viewport']!r}") from None
        if width < 1 or height < 1 or width * height > 64_000_000:
            raise InvalidQuery("viewport width and height must be positive and reasonable")
        image.thumbnail((width, height))
    out = io.BytesIO()
    if media == "image/png":
        image.save(out, format="PNG")
    else:
        quality = params.get("quality", "90")
        image.save(out, format="JPEG", quality=parse_count(quality, "quality", minimum=1, maximum=100))
    return out.getvalue()


def _rendered_media(accepted: list[MediaType]) -> str:
    for media in accepted:
        if media.type in ("image/jpeg", "image/png"):
            return media.type
        if media.type in ("*/*", "image/*"):
            return "image/jpeg"
    raise NotAcceptable("rendered images are available as image/jpeg or image/png")


async def retrieve_rendered(service: DicomwebService, request: Request) -> Response:
    """``/rendered``: a single-frame instance (or one frame) as a windowed PNG or JPEG."""
    media = _rendered_media(parse_accept(request.headers.get("accept")))
    frame = None
    if "frames" in request.path_params:
        numbers = _frame_numbers(request.path_params["frames"], service.http.max_frames_per_request)
        if len(numbers) != 1:
            raise InvalidQuery("render one frame at a time")
        frame = numbers[0]
    row = (await service.blocking(_rows, service, request))[0]
    data = await service.blocking(render_instance, service.store.absolute(row["path"]),
                                  dict(request.query_params), media, frame)
    return Response(data, media_type=media)
