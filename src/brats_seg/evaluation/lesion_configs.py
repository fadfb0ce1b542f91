"""The official BraTS lesion-wise configurations (``brats_evaluation/configs/config_*.yaml`` of the package named in
:data:`PACKAGE`): what differs between challenges. :mod:`brats_seg.evaluation.lesionwise` computes the metrics.

Without scipy, numpy or torch: params checks read :data:`CONFIGS` in every stage and `brats-seg` command.
"""

from __future__ import annotations

import dataclasses

from brats_seg.errors import UserError

PACKAGE = "brats-evaluation 0.0.10 (panoptica 2.1.7)"
_MATCH_THRESHOLD = 1e-6  # MaxBipartiteMatching(matching_metric=DSC, matching_threshold=0.000001), >=


@dataclasses.dataclass(frozen=True)
class LesionConfig:
    """One official configuration: what differs between challenges.

    ``regions``: (official region name, label ids in ``labels``' convention) in the YAML's order;
    ``project_regions``: (project region key, official region name) that
    :func:`brats_seg.evaluation.lesionwise.score_canonical` scores;
    ``large_lesion_mm3``: mets only, reference lesions below it leave the lesion-wise means (None: none leave).
    """

    name: str
    labels: str
    regions: tuple[tuple[str, tuple[int, ...]], ...]
    project_regions: tuple[tuple[str, str], ...] = (("wt", "wt"), ("tc", "tc"), ("et", "et"))
    large_lesion_mm3: float | None = None
    connectivity: int = 26
    matching_threshold: float = _MATCH_THRESHOLD


_WT_TC_ET = (("et", (3,)), ("tc", (1, 3)), ("wt", (1, 2, 3)))
CONFIGS: dict[str, LesionConfig] = {c.name: c for c in (
    LesionConfig("gli", "BraTS 2023-2025 glioma: 1 NETC, 2 SNFH, 3 ET, 4 RC",
                 (("snfh", (2,)), ("et", (3,)), ("netc", (1,)), ("rc", (4,)), ("tc", (1, 3)), ("wt", (1, 2, 3)))),
    LesionConfig("mets", "BraTS metastases: 1 NETC, 2 SNFH, 3 ET, 4 RC",
                 (("et", (3,)), ("rc", (4,)), ("tc", (1, 3)), ("wt", (1, 2, 3))), large_lesion_mm3=20.0),
    LesionConfig("ped", "BraTS paediatric: 1 ET, 2 NET, 3 CC, 4 ED",
                 (("et", (1,)), ("netc", (2,)), ("cc", (3,)), ("ed", (4,)), ("tc", (1, 2, 3)), ("wt", (1, 2, 3, 4)))),
    LesionConfig("MenRT", "BraTS meningioma radiotherapy: 1 GTV", (("gtv", (1,)),), project_regions=(("wt", "gtv"),)),
    LesionConfig("MenPre", "BraTS meningioma pre-operative: 1 NETC, 2 SNFH, 3 ET", _WT_TC_ET),
    LesionConfig("GoAT", "BraTS generalizability across tumors: 1 NETC, 2 SNFH, 3 ET", _WT_TC_ET),
)}


def get_config(name: str) -> LesionConfig:
    """The official configuration ``name`` (case as the package spells it), or a UserError naming the valid ones."""
    if name not in CONFIGS:
        raise UserError(f"{name!r} is not a BraTS lesion-wise config; use one of {', '.join(CONFIGS)} (the configs "
                        f"of {PACKAGE}).")
    return CONFIGS[name]
