"""What else is bright on a post-contrast brain T1: the structures a meningioma detector must not call.

A real post-contrast T1 always shows enhancing dural venous sinuses (superior
sagittal, straight, transverse), cortical veins, arteries and the choroid
plexus of the lateral ventricles, and bright fat in the scalp and in the skull's
marrow right outside the dura; many brains sent to a meningioma analyzer
have no tumour at all, and others have other enhancing pathology: metastases
(small, round, at the grey/white junction, ring-enhancing when large) or a
glioma-like intra-axial mass (deep white matter, irregular ring enhancement
around necrosis, wide edema). Each function returns partial-volume fractions and
signal levels relative to white matter (1.0) that :mod:`analyzers.phantoms.t1c`
paints into its image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from analyzers.phantoms.anatomy import Anatomy
from analyzers.phantoms.lesions import Ellipsoid, intra_axial_ellipsoid, random_rotation
from analyzers.phantoms.model import PhantomError
from analyzers.phantoms.vessels import HEAD_VESSELS, cortical_veins, vessel_fraction

__all__ = [
    "MIMIC_CODES",
    "NEGATIVE_LABELS",
    "EnhancingStructures",
    "choroid_plexus",
    "fat_and_marrow",
    "glioma",
    "metastases",
    "venous_and_arterial",
]

#: Labels of post-contrast T1 cases without a meningioma.
NEGATIVE_LABELS = ("healthy", "metastases", "glioma")

#: Values of the ``mimic_labels`` truth map.
MIMIC_CODES = {"vessel": 1, "choroid_plexus": 2, "metastasis": 3, "glioma": 4, "fat": 5}

# Choroid plexus glomus in the atria of the lateral ventricles (MNI RAS mm), found in the template's CSF.
_CHOROID_MNI = (np.array([-26.0, -42.0, 11.0]), np.array([26.0, -42.0, 11.0]))


@dataclass
class EnhancingStructures:
    """Fractions and levels of everything a case paints besides the meningioma.

    ``lesion_fraction``/``lesion_level`` are intra-axial lesions that displace
    tissue; ``vessel_fraction``/``vessel_level`` are painted over the tissue;
    ``edema`` lowers white matter; ``labels`` holds :data:`MIMIC_CODES`.
    """

    shape: tuple[int, int, int]
    lesion_fraction: np.ndarray = field(init=False)
    lesion_level: np.ndarray = field(init=False)
    vessel_fraction: np.ndarray = field(init=False)
    vessel_level: np.ndarray = field(init=False)
    edema: np.ndarray = field(init=False)
    labels: np.ndarray = field(init=False)
    lesions: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lesion_fraction = np.zeros(self.shape, dtype=np.float32)
        self.lesion_level = np.zeros(self.shape, dtype=np.float32)
        self.vessel_fraction = np.zeros(self.shape, dtype=np.float32)
        self.vessel_level = np.zeros(self.shape, dtype=np.float32)
        self.edema = np.zeros(self.shape, dtype=bool)
        self.labels = np.zeros(self.shape, dtype=np.uint8)

    def add_vessel(self, fraction: np.ndarray, level: float | np.ndarray, kind: str) -> None:
        """Paint a vessel-like structure (where it is denser than what is there already)."""
        new = fraction > self.vessel_fraction
        self.vessel_level = np.where(new, level, self.vessel_level).astype(np.float32)
        self.vessel_fraction = np.maximum(self.vessel_fraction, fraction)
        self.labels[(fraction >= 0.5) & (self.labels == 0)] = MIMIC_CODES[kind]

    def add_lesion(self, fraction: np.ndarray, level: np.ndarray, kind: str) -> None:
        """Add an intra-axial lesion (displaces tissue)."""
        new = fraction > self.lesion_fraction
        self.lesion_level = np.where(new, level, self.lesion_level).astype(np.float32)
        self.lesion_fraction = np.maximum(self.lesion_fraction, fraction)
        self.labels[fraction >= 0.5] = MIMIC_CODES[kind]


def venous_and_arterial(
    anatomy: Anatomy, rng: np.random.Generator, structures: EnhancingStructures, veins: int = 10
) -> None:
    """Enhancing sinuses (bright, 2.5-3.5 mm radius), cortical veins and arteries."""
    grid, pose = anatomy.grid, anatomy.pose
    sinus = vessel_fraction(grid, pose, [(line, float(rng.uniform(2.5, 3.5))) for line in HEAD_VESSELS[3:7]])
    arteries = vessel_fraction(grid, pose, [(line, 1.2) for line in (*HEAD_VESSELS[:3], *HEAD_VESSELS[7:])])
    venous = vessel_fraction(grid, pose, [(v, float(rng.uniform(0.6, 1.4))) for v in cortical_veins(rng, veins)])
    for fraction in (sinus, arteries, venous):
        fraction[anatomy.outside_mm > 6.0] = 0.0
    structures.add_vessel(sinus, float(rng.uniform(1.45, 1.65)), "vessel")
    structures.add_vessel(arteries, float(rng.uniform(1.25, 1.5)), "vessel")
    structures.add_vessel(venous, float(rng.uniform(1.3, 1.6)), "vessel")


def choroid_plexus(anatomy: Anatomy, rng: np.random.Generator, structures: EnhancingStructures) -> None:
    """The enhancing glomus of both lateral ventricles' choroid plexus, kept inside ventricular CSF."""
    grid, pose = anatomy.grid, anatomy.pose
    coords = grid.patient_coordinates()
    ventricle = anatomy.csf > 0.4
    level = float(rng.uniform(1.3, 1.5))
    for centre_mni in _CHOROID_MNI:
        ellipsoid = Ellipsoid(
            centre=pose.mni_to_patient(centre_mni),
            radii=np.array([3.0, 6.5, 4.0]) * pose.scale * rng.uniform(0.8, 1.2, size=3),
            rotation=np.eye(3),
        )
        fraction = ellipsoid.fraction(grid, coords, edge_mm=1.0)
        fraction[~ventricle] *= 0.3
        structures.add_vessel(fraction, level, "choroid_plexus")


def fat_and_marrow(anatomy: Anatomy, rng: np.random.Generator, structures: EnhancingStructures) -> None:
    """Subcutaneous fat and the fatty marrow of the skull's diploe: bright on T1, just outside the dura.

    Fat fills the outer scalp (8-11 mm outside the brain) at 1.3-1.6 times white
    matter; the diploe (the middle of the skull, 3.5-6 mm outside) holds patchy
    marrow at 1.1-1.45, thicker in some places than others, as in adults.
    """
    grid = anatomy.grid
    outside = anatomy.outside_mm
    texture = ndimage.gaussian_filter(rng.normal(size=grid.shape).astype(np.float32), 4.0 / np.asarray(grid.spacing))
    texture /= max(float(texture.std()), 1e-6)
    fat = ((outside > 8.0) & (outside <= 11.0)).astype(np.float32)
    structures.add_vessel(fat, float(rng.uniform(1.3, 1.6)), "fat")
    marrow = ((outside > 3.5) & (outside <= 6.0)).astype(np.float32) * np.clip(0.6 + 0.5 * texture, 0.0, 1.0)
    structures.add_vessel(marrow, (float(rng.uniform(1.1, 1.45)) * (1 + 0.05 * texture)).astype(np.float32), "fat")


def _depth_mm(anatomy: Anatomy) -> np.ndarray:
    """Distance (mm) of each brain voxel from the brain surface."""
    return np.asarray(ndimage.distance_transform_edt(anatomy.brain, sampling=anatomy.grid.spacing))


def metastases(
    anatomy: Anatomy, rng: np.random.Generator, structures: EnhancingStructures, count: int | None = None
) -> None:
    """1-6 metastases at the grey/white junction, 3-25 mm, ring-enhancing with edema above 10 mm."""
    grid = anatomy.grid
    coords = grid.patient_coordinates()
    count = int(rng.integers(1, 7)) if count is None else count
    junction = (anatomy.gm > 0.25) & (anatomy.wm > 0.25)
    placed: list[tuple[np.ndarray, float]] = []
    texture = rng.normal(size=grid.shape).astype(np.float32)
    texture = ndimage.gaussian_filter(texture, 1.0 / np.asarray(grid.spacing))
    texture /= max(float(texture.std()), 1e-6)
    for index in range(count):
        diameter = float(np.exp(rng.uniform(np.log(3.0), np.log(25.0))))
        try:
            ellipsoid = intra_axial_ellipsoid(anatomy, rng, diameter / 2, placed, coords, tissue=junction)
        except PhantomError:
            continue
        placed.append((ellipsoid.centre, diameter / 2))
        fraction = ellipsoid.fraction(grid, coords)
        fraction[anatomy.outside_mm > 0.0] = 0.0  # intra-axial: a cortical metastasis stops at the pia
        level = float(rng.uniform(1.35, 1.65)) * (1 + 0.05 * texture)
        necrotic = diameter > 10 and rng.random() < 0.8
        if necrotic:
            d = ellipsoid.normalised_distance(coords)
            level = np.where(d < rng.uniform(0.45, 0.7), 0.4, level)
            reach = 1.0 + float(rng.uniform(4, 15)) / (diameter / 2)
            structures.edema |= (d > 1.0) & (d < reach) & (anatomy.wm + anatomy.gm > 0.4)
        structures.add_lesion(fraction, level.astype(np.float32), "metastasis")
        structures.lesions.append(
            {"id": index + 1, "kind": "metastasis", "diameter_mm": round(diameter, 2),
             "centre_lps": ellipsoid.centre.round(2), "necrotic": bool(necrotic)}
        )
    structures.edema &= structures.lesion_fraction < 0.5


def glioma(anatomy: Anatomy, rng: np.random.Generator, structures: EnhancingStructures) -> None:
    """A glioma-like intra-axial mass: deep white matter, irregular rim enhancement, necrosis, edema."""
    grid = anatomy.grid
    coords = grid.patient_coordinates()
    radius = float(rng.uniform(12.0, 24.0))
    deep = (anatomy.wm > 0.6) & (_depth_mm(anatomy) > 0.8 * radius)
    if not deep.any():
        deep = anatomy.wm > 0.6
    main = intra_axial_ellipsoid(anatomy, rng, radius, [], coords, tissue=deep)
    fraction = main.fraction(grid, coords)
    for _ in range(int(rng.integers(2, 5))):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        lobe = Ellipsoid(
            centre=main.centre + direction * radius * float(rng.uniform(0.6, 0.9)),
            radii=radius * float(rng.uniform(0.35, 0.6)) * rng.uniform(0.8, 1.2, size=3),
            rotation=random_rotation(rng),
        )
        fraction = np.maximum(fraction, lobe.fraction(grid, coords))
    fraction[anatomy.outside_mm > 0.0] = 0.0
    inside = fraction >= 0.5
    # Rim: the outer 3-6 mm of the mass enhances nodularly; the rest is necrotic.
    rim_mm = float(rng.uniform(3.0, 6.0))
    depth_inside = np.asarray(ndimage.distance_transform_edt(inside, sampling=grid.spacing))
    texture = ndimage.gaussian_filter(rng.normal(size=grid.shape).astype(np.float32), 1.5 / np.asarray(grid.spacing))
    texture /= max(float(texture.std()), 1e-6)
    rim_level = float(rng.uniform(1.3, 1.55)) * (1 + 0.08 * texture)
    level = np.where(depth_inside > rim_mm * (1 + 0.3 * texture), 0.42, rim_level).astype(np.float32)
    edema_mm = float(rng.uniform(10.0, 25.0))
    outside_mass = np.asarray(ndimage.distance_transform_edt(~inside, sampling=grid.spacing))
    structures.edema |= (outside_mass > 0) & (outside_mass < edema_mm * (1 + 0.3 * texture)) & (
        anatomy.wm + anatomy.gm > 0.4
    )
    structures.add_lesion(fraction, level, "glioma")
    structures.edema &= structures.lesion_fraction < 0.5
    structures.lesions.append(
        {"id": 1, "kind": "glioma", "radius_mm": round(radius, 2), "centre_lps": main.centre.round(2),
         "volume_ml": round(float(fraction.sum() * np.prod(grid.spacing) / 1000.0), 3)}
    )
