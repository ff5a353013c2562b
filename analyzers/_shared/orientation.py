"""The voxels of a series in the array orientation a model was trained on, and back.

A convolutional network (nnU-Net, the meningioma ResNet, the spine CNN) sees an
array, not patient coordinates: trained on axial slices whose columns run to
the patient's left and rows to the back, it sees a rotated head in a prone
(HFP), decubitus or sagittal acquisition of the same patient. :func:`reorient`
re-indexes a volume's voxels (permutation and flips of the array axes, chosen by
nibabel's :func:`~nibabel.orientations.io_orientation` as the closest to the
target; no interpolation) so that the model sees what it was trained on;
:meth:`Reoriented.back` puts a result computed there (a label map, a mask) back
on the series' own grid, voxel for voxel.

Orientations are given as, per array axis (column, row, slice), the patient
axis it should run along (0 = x, 1 = y, 2 = z of LPS) and its direction (+1/-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analyzers._shared.volume import Volume

__all__ = ["AXIAL", "SAGITTAL", "Reoriented", "reorient"]

#: Columns to the patient's left (+x), rows to the back (+y), slices upwards (+z): the phantoms' axial grid.
AXIAL = ((0, 1), (1, 1), (2, 1))
#: Columns to the back (+y), rows downwards (-z, head to feet), slices to the right (-x): sagittal.
SAGITTAL = ((1, 1), (2, -1), (0, -1))


@dataclass(frozen=True)
class Reoriented:
    """A volume's voxels re-indexed into a target orientation.

    Attributes
    ----------
    data:
        ``(z, y, x)`` or ``(t, z, y, x)`` in the target orientation.
    affine:
        (column, row, slice) index -> LPS mm of the re-indexed grid.
    source_orientation, target_orientation:
        nibabel orientations (``io_orientation``) of the source grid and of the target.
    source_shape:
        ``(z, y, x)`` of the source grid.
    """

    data: np.ndarray
    affine: np.ndarray
    source_orientation: np.ndarray
    target_orientation: np.ndarray
    source_shape: tuple[int, int, int]

    @property
    def shape3d(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape[-3:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """``(dz, dy, dx)`` of the re-indexed grid."""
        sizes = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(sizes[2]), float(sizes[1]), float(sizes[0])

    def forward(self, array: np.ndarray) -> np.ndarray:
        """A ``(z, y, x)`` array of the source grid in the target orientation."""
        source = np.asarray(array)
        if source.shape != self.source_shape:
            raise ValueError(f"array shape {source.shape} is not the source grid {self.source_shape}")
        return _moved(source, self.source_orientation, self.target_orientation)

    def back(self, array: np.ndarray) -> np.ndarray:
        """A ``(z, y, x)`` array of the target grid back on the source grid (exact)."""
        target = np.asarray(array)
        if target.shape != self.shape3d:
            raise ValueError(f"array shape {target.shape} is not the re-indexed grid {self.shape3d}")
        return _moved(target, self.target_orientation, self.source_orientation)

    def onto(self, array: np.ndarray, affine: np.ndarray, atol_mm: float = 0.01) -> np.ndarray:
        """A ``(z, y, x)`` array given on another indexing of the source's voxels (``affine``: its
        (column, row, slice) index -> LPS mm), in the target orientation.

        Raises
        ------
        ValueError
            That grid does not hold the same voxels (its re-indexed shape or affine differs).
        """
        from nibabel.orientations import io_orientation

        source = np.asarray(array)
        current = io_orientation(affine)
        moved = _moved(source, current, self.target_orientation)
        moved_affine = _moved_affine(affine, current, self.target_orientation, source.shape)
        if moved.shape != self.shape3d:
            raise ValueError(f"re-indexed shape {moved.shape} is not {self.shape3d}")
        if not np.allclose(moved_affine, self.affine, atol=atol_mm):
            raise ValueError("its voxels lie elsewhere in the patient than the series' voxels")
        return moved

    def to_sitk(self, array: np.ndarray | None = None, time_point: int = 0) -> Any:
        """SimpleITK image of the re-indexed data (or of ``array`` on the re-indexed grid)."""
        import SimpleITK as sitk

        values = (self.data if self.data.ndim == 3 else self.data[time_point]) if array is None else array
        if np.asarray(values).shape != self.shape3d:
            raise ValueError(f"array shape {np.asarray(values).shape} is not {self.shape3d}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(values))
        sizes = np.linalg.norm(self.affine[:3, :3], axis=0)
        image.SetSpacing(tuple(float(s) for s in sizes))
        image.SetOrigin(tuple(float(v) for v in self.affine[:3, 3]))
        image.SetDirection(tuple(float(v) for v in (self.affine[:3, :3] / sizes).ravel()))
        return image


def _moved(array: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A ``(z, y, x)`` array re-indexed from orientation ``start`` to ``end``."""
    from nibabel.orientations import apply_orientation, ornt_transform

    # nibabel's arrays are indexed (column, row, slice); ours (slice, row, column).
    moved = apply_orientation(array.transpose(2, 1, 0), ornt_transform(start, end))
    return np.ascontiguousarray(np.asarray(moved).transpose(2, 1, 0))


def _moved_affine(affine: np.ndarray, start: np.ndarray, end: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The affine of a ``(z, y, x)`` grid of ``shape`` re-indexed from orientation ``start`` to ``end``."""
    from nibabel.orientations import inv_ornt_aff, ornt_transform

    return np.asarray(affine @ inv_ornt_aff(ornt_transform(start, end), tuple(shape)[::-1]))


def reorient(volume: Volume, target: tuple[tuple[int, int], ...] = AXIAL) -> Reoriented:
    """``volume``'s voxels re-indexed so its array axes run as close to ``target`` as they can.

    Exact (a permutation and flips of the array, no resampling); for an oblique
    series each array axis goes to the patient axis it is closest to.
    """
    from nibabel.orientations import io_orientation

    current = io_orientation(volume.affine)
    wanted = np.array(target, dtype=np.float64)
    if volume.is_dynamic:
        data = np.stack([_moved(frame, current, wanted) for frame in volume.data])
    else:
        data = _moved(volume.data, current, wanted)
    affine = _moved_affine(volume.affine, current, wanted, volume.shape3d)
    return Reoriented(data=data, affine=affine, source_orientation=current, target_orientation=wanted,
                      source_shape=volume.shape3d)
