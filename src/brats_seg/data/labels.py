"""BraTS label ids and tumour regions. The only module that knows the numbers.

Canonical labels (BraTS 2020): 0 background, 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour.
Regions: whole tumour WT = {1, 2, 4}, tumour core TC = {1, 4}, enhancing tumour ET = {4}.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

BACKGROUND, NECROTIC, OEDEMA, ENHANCING = 0, 1, 2, 4
CANONICAL_LABELS: frozenset[int] = frozenset({BACKGROUND, NECROTIC, OEDEMA, ENHANCING})
TUMOUR_LABELS: tuple[int, ...] = (NECROTIC, OEDEMA, ENHANCING)
REGIONS: dict[str, tuple[int, ...]] = {
    "wt": (NECROTIC, OEDEMA, ENHANCING),
    "tc": (NECROTIC, ENHANCING),
    "et": (ENHANCING,),
}
Convention = Literal["brats2020", "brats2023", "msd"]

# Source label -> canonical label, per naming convention (identity where absent).
_REMAPS: dict[str, dict[int, int]] = {
    "brats2020": {},
    "brats2023": {3: ENHANCING},
    "msd": {1: OEDEMA, 2: NECROTIC, 3: ENHANCING},
}
# Label sets each convention may contain before remapping.
SOURCE_LABELS: dict[str, frozenset[int]] = {
    "brats2020": CANONICAL_LABELS,
    "brats2023": frozenset({0, 1, 2, 3}),
    "msd": frozenset({0, 1, 2, 3}),
}


def to_canonical(seg: np.ndarray, convention: str) -> np.ndarray:
    """Map a label volume from ``convention`` to canonical BraTS 2020 labels.

    ``seg`` may be any numeric dtype (BraTS 2023 ships float32). Values are rounded; the result is uint8.
    Labels the convention does not know are kept as they are so that validation can report them.
    """
    if convention not in _REMAPS:
        raise ValueError(f"unknown label convention {convention!r}")
    labels = np.rint(seg).astype(np.int32) if seg.dtype.kind == "f" else seg.astype(np.int32)
    labels = np.clip(labels, 0, 255)
    remap = _REMAPS[convention]
    if not remap:
        return labels.astype(np.uint8)
    lut = np.arange(256, dtype=np.uint8)
    for src, dst in remap.items():
        lut[src] = dst
    return lut[labels]


def region_mask(labels: np.ndarray, region: str = "wt") -> np.ndarray:
    """Boolean mask of ``region`` ('wt', 'tc' or 'et') for a canonical label array of any shape."""
    try:
        ids = REGIONS[region]
    except KeyError:
        raise ValueError(f"unknown region {region!r}; use one of {', '.join(REGIONS)}") from None
    return np.isin(labels, ids)


def region_stack(labels: np.ndarray, regions: tuple[str, ...] = ("wt", "tc", "et")) -> np.ndarray:
    """Stack region masks along a new axis 1 (``[N, H, W] -> [N, R, H, W]``) as uint8."""
    return np.stack([region_mask(labels, r) for r in regions], axis=1).astype(np.uint8)


_LUTS: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}


def region_targets(labels: torch.Tensor, regions: tuple[str, ...] = ("wt",)) -> torch.Tensor:
    """Binary targets ``[N, R, H, W]`` (float, on ``labels``' device) from uint8 label maps ``[N, H, W]``.

    One gather through a label -> regions lookup table built once per device: no host-to-device copy and
    no synchronisation inside a training step.
    """
    key = (str(labels.device), tuple(regions))
    lut = _LUTS.get(key)
    if lut is None:
        table = np.zeros((256, len(regions)), dtype=np.float32)
        for r, region in enumerate(regions):
            table[list(REGIONS[region]), r] = 1.0
        lut = _LUTS[key] = torch.from_numpy(table).to(labels.device)
    return lut[labels.long()].permute(0, 3, 1, 2)
