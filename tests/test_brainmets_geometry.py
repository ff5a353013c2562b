"""Lesion measurements and the SPACE → MPRAGE rigid registration on a small phantom."""

from __future__ import annotations

import numpy as np
import pytest

from analyzers.brainmets.instances import InstanceError, extract_lesions
from analyzers.brainmets.registration import register_rigid, sitk_image, transfer_labels
from analyzers.phantoms.brainmets import simulate_brainmets


def _ijk_affine(grid_affine_zyx: np.ndarray) -> np.ndarray:
    """Phantom grid affines index (z, y, x); the series convention is (column, row, slice)."""
    aff = np.eye(4)
    aff[:3, :3] = grid_affine_zyx[:3, :3][:, ::-1]
    aff[:3, 3] = grid_affine_zyx[:3, 3]
    return aff


@pytest.fixture(scope="module")
def case():  # type: ignore[no-untyped-def]
    return simulate_brainmets(3, 0, metastases=3, spacing_mm=2.0, mprage_tilt_deg=8.0, veins=4)


def test_sphere_measurements() -> None:
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    aff[:3, 3] = (10.0, -20.0, 30.0)
    z, y, x = np.indices((12, 60, 60))
    # ball of radius 10 mm centred at voxel (x=30, y=30, z=6)
    ball = ((x - 30) * 0.5) ** 2 + ((y - 30) * 0.5) ** 2 + ((z - 6) * 2.0) ** 2 <= 100
    mask = ball.copy()
    mask[0, 0, 0] = mask[0, 0, 1] = True  # a 2-voxel speck: dropped by the default filter
    result = extract_lesions(mask, aff)
    assert result.dropped == 1 and len(result.lesions) == 1
    lesion = result.lesions[0]
    assert lesion.volume_ml == pytest.approx(ball.sum() * 0.5 * 0.5 * 2.0 / 1000)
    assert lesion.volume_ml == pytest.approx(4 / 3 * np.pi * 1.0, rel=0.05)
    assert lesion.longest_diameter_mm == pytest.approx(20.0, abs=1.0)
    np.testing.assert_allclose(lesion.centroid_lps, (10 + 15.0, -20 + 15.0, 30 + 12.0), atol=1e-6)
    assert len(extract_lesions(mask, aff, min_voxels=1).lesions) == 2
    with pytest.raises(InstanceError):
        extract_lesions(mask, np.zeros((4, 4)))


def test_phantom_lesion_centroids(case) -> None:  # type: ignore[no-untyped-def]
    labels = case.truth_maps["space_lesion_labels"]
    aff = _ijk_affine(case.truth_maps["space_affine_lps"])
    found = extract_lesions(labels > 0, aff, min_voxels=1)
    for truth in case.truth["lesions"]:
        nearest = min(np.linalg.norm(np.subtract(les.centroid_lps, truth["centre_lps"])) for les in found.lesions)
        assert nearest < 2.0


def test_registration_recovers_known_motion(case) -> None:  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    space, mprage = case.series
    space_aff = _ijk_affine(case.truth_maps["space_affine_lps"])
    mprage_aff = _ijk_affine(case.truth_maps["mprage_affine_lps"])
    fixed = sitk_image(mprage.pixels[0].astype(np.float32), mprage_aff)
    moving = sitk_image(space.pixels[0].astype(np.float32), space_aff)
    transform = register_rigid(fixed, moving)
    motion = case.truth["mprage_from_space_lps"]
    # points of the brain (SPACE coordinates), within 60 mm of the volume centre
    rng = np.random.default_rng(0)
    centre = space_aff[:3, :3] @ ((np.array(space.pixels.shape[1:][::-1]) - 1) / 2) + space_aff[:3, 3]
    points = centre + rng.uniform(-60, 60, size=(200, 3))
    errors = []
    for p in points:
        q = motion[:3, :3] @ p + motion[:3, 3]  # same anatomy, MPRAGE patient coordinates
        errors.append(np.linalg.norm(np.asarray(transform.TransformPoint(tuple(q))) - p))
    assert max(errors) < 1.0, f"max registration error {max(errors):.2f} mm"
    moved = transfer_labels(
        sitk_image(case.truth_maps["space_lesion_labels"].astype(np.uint8), space_aff), fixed, transform
    )
    carried = sitk.GetArrayFromImage(moved) > 0
    truth = case.truth_maps["mprage_lesion_labels"] > 0
    dice = 2 * (carried & truth).sum() / (carried.sum() + truth.sum())
    assert dice > 0.7
