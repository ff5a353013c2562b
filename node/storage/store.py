"""The instance files: one DICOM Part 10 file per SOP instance, written atomically.

Layout under ``[storage] path``::

    store/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    duplicates/<SOPInstanceUID>.<digest>.dcm   differing copies kept by the keep_first policy
    tmp files: .<name>.<random>.part beside their target, removed at start-up

A file becomes visible under its final name only after its bytes and its
directory entry are on disk (write to a temporary name, fsync, rename, fsync the
directory), so a crash at any moment leaves either the whole file or none.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from node.errors import OutOfResources

__all__ = ["InstanceStore", "safe_component"]

_UID = re.compile(r"^[0-9][0-9.]{0,63}$")
_PART_SUFFIX = ".part"


def safe_component(uid: str) -> str:
    """A UID as a path component; anything that is not a plain UID is refused."""
    if not _UID.match(uid) or ".." in uid:
        raise ValueError(f"not a valid UID for a file name: {uid!r}")
    return uid


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
                f"storage at {self.root} has less than the configured minimum free space "
                f"({self.min_free_bytes / 1e9:.2f} GB, [storage] min_free_gb); free space "
                "or lower the threshold"
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
        """Write ``chunks`` to ``target`` atomically and durably; returns the byte count.

        Raises
        ------
        OutOfResources
            The disk is full or below the configured minimum.
        """
        self._ensure_dir(target.parent)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{_PART_SUFFIX}")
        size = 0
        try:
            with open(temp, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    size += len(chunk)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            os.replace(temp, target)
            if self.fsync:
                _fsync_dir(target.parent)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise OutOfResources(
                    f"no space left on {self.root} while writing an instance; free space on "
                    "the storage volume"
                ) from exc
            raise
        return size

    def remove_partial_files(self) -> int:
        """Delete temporary files left by a crash mid-write (never acknowledged); returns count."""
        removed = 0
        for path in self.root.rglob(f".*{_PART_SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def iter_instance_files(self) -> Iterator[Path]:
        """Every stored instance file (not duplicates, not partial files)."""
        for path in self.instances_dir.rglob("*.dcm"):
            if not path.name.startswith("."):
                yield path

    def disk_usage(self) -> int:
        """Bytes used by the stored instances."""
        return sum(p.stat().st_size for p in self.iter_instance_files())
