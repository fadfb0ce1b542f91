"""A seeded, deterministic synthetic BraTS cohort.

Each case looks like a skull-stripped BraTS 2020 case: four int16 modalities (FLAIR, T1, T1ce, T2) and a
uint8 label map on one grid (default 240 x 240 x 155 voxels at 1 mm, LPS affine). The brain is an
irregular ellipsoid with white matter, grey matter (cortex and deep nuclei) and ventricles, tissue
texture, Gaussian noise and a smooth multiplicative bias field; background is exactly 0. A tumour sits at
a random place: an irregular blob with a necrotic core (label 1), an enhancing rim (4) and surrounding
oedema (2). Contrasts follow real MRI: oedema bright on FLAIR and T2, the rim bright on T1ce, the core
dark on T1 and bright on T2, CSF dark on FLAIR and bright on T2. Some cases have no tumour.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy import ndimage

from brats_seg.data.labels import ENHANCING, NECROTIC, OEDEMA
from brats_seg.data.sources import BRATS_SHAPE

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")

# Mean intensity (fraction of the modality's scale) per tissue class, per modality (flair, t1, t1ce, t2).
_TISSUE = ("background", "wm", "gm", "csf", "oedema", "enhancing", "necrosis")
_CONTRAST = np.array([
    [0.00, 0.00, 0.00, 0.00],   # background
    [0.42, 0.78, 0.72, 0.33],   # white matter
    [0.55, 0.56, 0.55, 0.52],   # grey matter
    [0.10, 0.20, 0.18, 0.98],   # CSF
    [0.88, 0.46, 0.46, 0.82],   # oedema: bright on FLAIR and T2
    [0.70, 0.52, 0.97, 0.62],   # enhancing rim: bright on T1ce
    [0.50, 0.17, 0.22, 0.90],   # necrotic core: dark on T1, bright on T2
], dtype=np.float32)
_SCALE = np.array([1500.0, 1000.0, 1200.0, 2000.0], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class SyntheticCase:
    """One generated case. ``images[m]`` is int16 ``(X, Y, Z)``; ``seg`` is uint8 ``(X, Y, Z)``."""

    case_id: str
    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray


def lps_affine(shape: tuple[int, int, int], spacing: float = 1.0) -> np.ndarray:
    """The BraTS voxel-to-world affine: x runs to the left, y to the back, z up (LPS), ``spacing`` mm."""
    return np.array([[-spacing, 0, 0, 0], [0, -spacing, 0, (shape[1] - 1) * spacing],
                     [0, 0, spacing, 0], [0, 0, 0, 1]], dtype=np.float64)


def case_id_for(index: int) -> str:
    """Case id in BraTS 2020 style, e.g. ``BraTS20_Synthetic_007``."""
    return f"BraTS20_Synthetic_{index:03d}"


def tumour_free_indices(n_cases: int, fraction: float, seed: int) -> set[int]:
    """Which case indices (1-based) have no tumour: ``round(n_cases * fraction)`` of them, seeded."""
    count = int(round(n_cases * fraction))
    order = np.random.default_rng([seed, 7919]).permutation(n_cases)
    return {int(i) + 1 for i in order[:count]}


def make_case(index: int, seed: int = 0, shape: tuple[int, int, int] = BRATS_SHAPE,
              tumour: bool = True) -> SyntheticCase:
    """Generate case ``index`` of the cohort ``seed``; the same arguments give the same arrays."""
    rng = np.random.default_rng([seed, index])
    shape = tuple(int(s) for s in shape)
    brain, r = _brain(rng, shape)
    tissue = _tissue(rng, shape, brain, r)
    seg = np.zeros(shape, dtype=np.uint8)
    if tumour:
        seg = _tumour(rng, shape, brain)
        tissue[seg == OEDEMA] = _TISSUE.index("oedema")
        tissue[seg == ENHANCING] = _TISSUE.index("enhancing")
        tissue[seg == NECROTIC] = _TISSUE.index("necrosis")
    bias = 1.0 + 0.15 * _smooth_field(rng, shape, (3, 3, 3))
    texture = 0.05 * _smooth_field(rng, shape, tuple(max(2, s // 6) for s in shape))
    images = {}
    for m, name in enumerate(MODALITIES):
        mean = _CONTRAST[tissue, m]
        img = mean * (1.0 + texture) * bias
        img = ndimage.gaussian_filter(img, sigma=0.7, truncate=2.0)
        img += rng.normal(0.0, 0.025, size=shape).astype(np.float32)
        img = np.clip(img * _SCALE[m], 1.0, 32000.0)
        img[~brain] = 0.0
        images[name] = img.astype(np.int16)
    return SyntheticCase(case_id_for(index), images, seg, lps_affine(shape))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: tuple[int, ...]) -> np.ndarray:
    """Smooth random field of ``shape`` with values roughly in [-1, 1] (trilinear upsampled noise)."""
    noise = torch.from_numpy(rng.uniform(-1.0, 1.0, size=coarse).astype(np.float32))
    field = torch.nn.functional.interpolate(noise[None, None], size=shape, mode="trilinear",
                                            align_corners=True)
    return field[0, 0].numpy()


def _grid(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised ellipsoidal radius of every voxel: 1.0 on the ellipsoid's surface."""
    axes = [((np.arange(n, dtype=np.float32) - c) / a) ** 2 for n, c, a in zip(shape, centre, radii)]
    return np.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])


def _brain(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    dims = np.array(shape, dtype=np.float32)
    centre = dims / 2 + rng.uniform(-0.02, 0.02, 3) * dims
    radii = dims * np.array([0.30, 0.36, 0.38]) * rng.uniform(0.92, 1.05, 3)
    r = _grid(shape, centre, radii)
    r = r * (1.0 + 0.06 * _smooth_field(rng, shape, (5, 5, 4)))
    return r < 1.0, r


def _tissue(rng: np.random.Generator, shape: tuple[int, ...], brain: np.ndarray, r: np.ndarray) -> np.ndarray:
    tissue = np.zeros(shape, dtype=np.int64)
    tissue[brain] = _TISSUE.index("wm")
    folds = _smooth_field(rng, shape, tuple(max(3, s // 12) for s in shape))
    cortex = brain & (r > 0.80 + 0.08 * folds)
    nuclei = brain & (r < 0.55) & (_smooth_field(rng, shape, (6, 6, 5)) > 0.55)
    tissue[cortex | nuclei] = _TISSUE.index("gm")
    dims = np.array(shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        centre = dims / 2 + np.array([side * 0.05, 0.02, 0.03]) * dims
        vent = _grid(shape, centre, dims * np.array([0.03, 0.10, 0.06]) * rng.uniform(0.8, 1.2, 3)) < 1.0
        tissue[vent & brain] = _TISSUE.index("csf")
    tissue[brain & (r > 0.97)] = _TISSUE.index("csf")
    return tissue


def _tumour(rng: np.random.Generator, shape: tuple[int, ...], brain: np.ndarray) -> np.ndarray:
    """Label map with an irregular tumour: necrosis (1) inside an enhancing rim (4) inside oedema (2)."""
    dims = np.array(shape, dtype=np.float32)
    scale = float(min(dims[:2])) / 240.0
    radius = rng.uniform(16.0, 34.0) * max(scale, 0.12)
    z_aspect = (dims[2] / dims[0]) / (BRATS_SHAPE[2] / BRATS_SHAPE[0])  # thinner volumes, flatter tumours
    radii = radius * rng.uniform(0.75, 1.25, 3) * np.array([1.0, 1.0, z_aspect])
    inside = np.argwhere(brain)
    centre = inside[rng.integers(len(inside))].astype(np.float32)
    centre = dims / 2 + 0.55 * (centre - dims / 2)  # keep the tumour well within the brain
    d = _grid(shape, centre, radii)
    d = d * (1.0 + 0.30 * _smooth_field(rng, shape, tuple(max(3, s // 10) for s in shape)))
    core = rng.uniform(0.30, 0.55)
    rim = core + rng.uniform(0.10, 0.20)
    necrotic_core = rng.random() > 0.2
    seg = np.zeros(shape, dtype=np.uint8)
    seg[d < 1.0] = OEDEMA
    seg[d < rim] = ENHANCING
    if necrotic_core:
        seg[d < core] = NECROTIC
    seg[~brain] = 0
    return seg
