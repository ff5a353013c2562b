"""The instance files: one DICOM Part 10 file per SOP instance, written atomically.

Layout under ``[storage] path``::

    store/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    duplicates/<SOPInstanceUID>.<digest>.dcm   differing copies kept by the keep_first policy
    tmp files: .<name>.<crc32>-<random>.part beside their target, settled at start-up

A file becomes visible under its final name only after all its bytes are on
disk, so a crash at any moment leaves either the whole file or none under that
name. The write is: temporary name → write → ``fsync`` the file → rename. That
is one flush per instance; the directory is *not* fsynced after each rename
(directories are fsynced once, when they are created). See ``docs/storage.md``.

Why one flush is enough to acknowledge:

- ``fsync`` of the temporary file makes its bytes and its inode durable. On the
  journaling file systems the node supports (ext4, XFS, btrfs) it also makes
  the temporary file's directory entry durable: the journal commit that fsync
  forces contains the file's creation.
- The rename that follows is a metadata operation in the same journal. It becomes
  durable with the next journal commit (the next instance's fsync, or the file
  system's periodic commit). A power loss can therefore undo at most the last
  renames, leaving a complete temporary file and no final file.
- :meth:`InstanceStore.recover_partial_files` (run at every start) *promotes*
  such a temporary file to its final name when it is complete, and deletes it
  otherwise. "Complete" is proven by the CRC-32 of the whole file, which the
  writer puts in the temporary name before the first byte is written: a torn or
  never-flushed file does not match it. A complete temporary file that was not
  yet acknowledged (crash between fsync and the success status) is promoted as
  well: the sender retries it, which is an identical duplicate.
- A process crash (SIGKILL) without power loss loses nothing the kernel already
  accepted; the same recovery applies.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import OutOfResources

__all__ = ["InstanceStore", "PartialRecovery", "StoredFile", "file_tag", "safe_component"]

_UID = re.compile(r"^[0-9][0-9.]{0,63}$")
_PART_SUFFIX = ".part"
# .<final name>.<crc32 of the whole file, 8 hex>-<random>.part; older temporary files carry only
# the random part and cannot be proven complete.
_PART_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<crc>[0-9a-f]{8})-)?[0-9a-f]+\.part$")


def safe_component(uid: str) -> str:
    """A UID as a path component; anything that is not a plain UID is refused."""
    if not _UID.match(uid) or ".." in uid:
        raise ValueError(f"not a valid UID for a file name: {uid!r}")
    return uid


@dataclass(frozen=True)
class StoredFile:
    """A file :meth:`InstanceStore.write_file` made durable."""

    size: int
    crc32: int

    @property
    def tag(self) -> str:
        """A version tag of the file's content: CRC-32 and size (the index's ``digest``).

        It tells a changed file from the one a cache was built from; whether two copies
        are identical is decided by comparing their bytes (``node.ingest``)."""
        return f"{self.crc32:08x}-{self.size}"


@dataclass
class PartialRecovery:
    """What :meth:`InstanceStore.recover_partial_files` did with the temporary files it found."""

    promoted: list[Path] = field(default_factory=list)
    """Complete files now under their final name (or filed as a recovered copy)."""
    removed: int = 0
    """Incomplete files deleted (never acknowledged)."""


def file_tag(data: bytes) -> str:
    """:attr:`StoredFile.tag` of a file with these bytes."""
    return StoredFile(len(data), zlib.crc32(data)).tag


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _crc_matches(path: Path, expected: str) -> bool:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}" == expected


def _same_content(first: Path, second: Path) -> bool:
    return first.stat().st_size == second.stat().st_size and first.read_bytes() == second.read_bytes()


class InstanceStore:
    """Files of the stored instances.

    Parameters
    ----------
    root:
        ``[storage] path``.
    fsync:
        Whether to fsync files and directories (on in production; tests of
        logic that do not check durability may turn it off).
    min_free_bytes:
        Writes are refused with :class:`~node.errors.OutOfResources` when the
        file system has less free space than this.
    """

    def __init__(self, root: Path, *, fsync: bool = True, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.instances_dir = self.root / "store"
        self.duplicates_dir = self.root / "duplicates"
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.duplicates_dir.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where the instance lives (whether or not it is there yet)."""
        return (
            self.instances_dir
            / safe_component(study_uid)
            / safe_component(series_uid)
            / f"{safe_component(sop_uid)}.dcm"
        )

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, needed: int) -> None:
        """Refuse a write that would take the disk below the configured minimum."""
        if self.min_free_bytes and self.free_bytes() - needed < self.min_free_bytes:
            raise OutOfResources(
                "the node's storage is below its configured minimum free space; try again later "
                "or ask the node's operator to free space",
                detail=f"storage at {self.root} has less than the configured minimum free space "
                       f"({self.min_free_bytes / 1e9:.2f} GB, [storage] min_free_gb); free space "
                       "or lower the threshold",
            )

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        missing = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        directory.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for created in reversed(missing):
                _fsync_dir(created.parent)
        self._known_dirs.add(directory)

    def write(self, target: Path, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` to ``target`` atomically and durably; returns the byte count
        (see :meth:`write_file`)."""
        return self.write_file(target, chunks).size

    def write_file(self, target: Path, chunks: Iterable[bytes]) -> StoredFile:
        """Write ``chunks`` to ``target`` atomically and durably; returns its size and CRC-32.

        When this returns, the bytes are flushed to disk and the file is under its final
        name; after a power loss that undid the rename, start-up recovery restores that
        name from the complete temporary file (module docstring).

        Raises
        ------
        OutOfResources
            The disk is full or below the configured minimum, or the storage volume
            refused the write (an I/O error, a read-only file system, a file where a
            folder should be): the message names the cause.
        """
        try:
            self._ensure_dir(target.parent)
        except OSError as exc:
            raise self._write_failure(exc) from exc
        parts = list(chunks)
        crc = 0
        for chunk in parts:
            crc = zlib.crc32(chunk, crc)
        temp = target.with_name(
            f".{target.name}.{crc:08x}-{secrets.token_hex(4)}{_PART_SUFFIX}")
        size = 0
        try:
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                # Retention (possibly another process) removed the folder after it emptied it.
                self._known_dirs.discard(target.parent)
                self._ensure_dir(target.parent)
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for chunk in parts:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    size += len(chunk)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise OutOfResources(
                    "the node's storage is full; try again later or ask the node's operator to "
                    "free space",
                    detail=f"no space left on {self.root} while writing an instance; free space on "
                           "the storage volume",
                ) from exc
            raise self._write_failure(exc) from exc
        return StoredFile(size, crc)

    def _write_failure(self, exc: OSError) -> OutOfResources:
        reason = exc.strerror or type(exc).__name__
        where = exc.filename or self.root
        return OutOfResources(
            f"storage write failed ({reason}); ask the node's operator to check its storage volume",
            detail=f"storage write failed ({reason}) at {where}; check the storage volume under "
                   f"{self.root} (mounted read-write, no I/O errors, no files where folders belong)",
        )

    def prune_empty_dirs(self, removed_files: Iterable[Path]) -> int:
        """Remove the folders that ``removed_files`` left empty, up to ``store/`` and ``duplicates/``.

        A folder that is not empty (or is being written into again) stays. Returns how
        many folders were removed. A concurrent write into a removed folder recreates it
        (:meth:`write`).
        """
        tops = {self.instances_dir, self.duplicates_dir}
        pending = {Path(path).parent for path in removed_files}
        removed = 0
        while pending:
            directory = max(pending, key=lambda p: len(p.parts))  # deepest first
            pending.discard(directory)
            if directory in tops or not directory.is_relative_to(self.root):
                continue
            try:
                directory.rmdir()
            except OSError:  # not empty, already gone, or not ours to remove
                continue
            self._known_dirs.discard(directory)
            removed += 1
            pending.add(directory.parent)
        return removed

    def recover_partial_files(self, *, replace_existing: bool = False) -> PartialRecovery:
        """Settle the temporary files a crash or power loss left behind.

        A temporary file whose content matches the CRC-32 in its name is complete: it is
        renamed to its final name (its rename may have been acknowledged and then lost with
        a power loss). When a different file already has that name, the complete one
        replaces it if ``replace_existing`` (the ``overwrite`` duplicate policy) and is
        otherwise filed under ``duplicates/`` as ``<name>.recovered-<crc>.dcm``, so
        nothing received is lost. Identical copies and incomplete files are deleted.
        """
        result = PartialRecovery()
        for temp in sorted(self.root.rglob(f".*{_PART_SUFFIX}")):
            match = _PART_NAME.match(temp.name)
            expected = match.group("crc") if match else None
            if match is None or expected is None or not _crc_matches(temp, expected):
                temp.unlink(missing_ok=True)
                result.removed += 1
                continue
            target = temp.with_name(match.group("name"))
            if target.exists() and not replace_existing:
                if _same_content(temp, target):
                    temp.unlink()
                    continue
                target = self.duplicates_dir / f"{Path(target.name).stem}.recovered-{expected}.dcm"
            if self.fsync:
                _fsync_file(temp)
            os.replace(temp, target)
            if self.fsync:
                _fsync_dir(target.parent)
            result.promoted.append(target)
        return result

    def remove_partial_files(self) -> int:
        """Settle temporary files (see :meth:`recover_partial_files`); returns how many
        incomplete ones were deleted."""
        return self.recover_partial_files().removed

    def iter_instance_files(self) -> Iterator[Path]:
        """Every stored instance file (not duplicates, not partial files)."""
        for path in self.instances_dir.rglob("*.dcm"):
            if not path.name.startswith("."):
                yield path

    def disk_usage(self) -> int:
        """Bytes used by the stored instances."""
        return sum(p.stat().st_size for p in self.iter_instance_files())
