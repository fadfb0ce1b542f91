"""The train stage's search for the probability threshold and post-processing (``train.threshold: auto``), next to
the code it replaced, in one process, on the same cases: the choice must be the same, the time is what changed.

  - project: region masks by one comparison per label id (brats_seg.data.labels.region_mask), the reference label
    map held in C order like the masks (as brats_seg.evaluation.evaluate reads it), the lesion-wise crop from one
    projection per axis (brats_seg.evaluation.metrics.bounding_box);
  - baseline: ``np.isin`` on the label map in the Fortran order nibabel reads it in, and the crop from
    ``ndimage.find_objects`` (what brats-seg did before).

    python benchmarks/threshold_search.py                 # 3 full-size synthetic validation cases
    python benchmarks/threshold_search.py --cases 6 --json out.json

Cases are full-size synthetic BraTS cases (240 x 240 x 155); each region's probabilities are its reference mask
blurred and perturbed, so that every threshold from 0.3 to 0.8 gives other masks.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: it reads its settings at import

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from brats_seg.data import labels  # noqa: E402
from brats_seg.data.synthetic import make_case  # noqa: E402
from brats_seg.evaluation import choose_postprocess, lesionwise  # noqa: E402
from brats_seg.evaluation.choose_postprocess import MAIN_FRACTIONS, THRESHOLDS, choose_threshold  # noqa: E402
from brats_seg.evaluation.evaluate import lesion_score  # noqa: E402

SPACING = (1.0, 1.0, 1.0)


def probabilities(seg: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Per region: the reference mask blurred (4 voxels) plus smooth noise, in [0, 1], float32, C order."""
    rng = np.random.default_rng(seed)
    out = {}
    for region in ("wt", "tc", "et"):
        noise = ndimage.gaussian_filter(rng.standard_normal(seg.shape).astype(np.float32), 6) * 4
        blurred = ndimage.gaussian_filter(labels.region_mask(seg, region).astype(np.float32), 4)
        out[region] = np.clip(blurred + 0.3 * noise, 0, 1).astype(np.float32)
    return out


def baseline_region_mask(label_map: np.ndarray, region: str = "wt") -> np.ndarray:
    return np.isin(label_map, labels.REGIONS[region])


def baseline_crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    box = ndimage.find_objects((pred | ref).astype(np.uint8))
    if not box:
        return pred, ref
    cut = tuple(slice(max(s.start - lesionwise._CROP_PAD, 0), s.stop + lesionwise._CROP_PAD) for s in box[0])
    return pred[cut], ref[cut]


@contextmanager
def baseline():
    """The replaced functions in place of the project's, where the search looks them up."""
    saved = choose_postprocess.region_mask, lesionwise._crop
    choose_postprocess.region_mask, lesionwise._crop = baseline_region_mask, baseline_crop
    try:
        yield
    finally:
        choose_postprocess.region_mask, lesionwise._crop = saved


def search(cases: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> tuple[dict, float]:
    """The choice (as JSON-ready numbers) and the seconds it took."""
    def cases_at(threshold: float) -> list:
        return [({r: p > threshold for r, p in probs.items()}, seg, SPACING) for probs, seg in cases]

    start = time.perf_counter()
    choice = choose_threshold(cases_at, lesion_score("gli"), THRESHOLDS, regions=("wt", "tc", "et"),
                              main_fractions=MAIN_FRACTIONS)
    return choice.to_dict(), time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3, help="validation cases (default 3)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    made = [make_case(i, seed=7) for i in range(args.cases)]
    project = [(probabilities(c.seg, i), np.ascontiguousarray(c.seg)) for i, c in enumerate(made)]
    fortran = [(probs, np.asfortranarray(seg)) for probs, seg in project]  # as nibabel reads a label map
    ours, ours_s = search(project)
    with baseline():
        theirs, theirs_s = search(fortran)
    assert ours == theirs, "the project's search chose otherwise than the baseline's"
    result = {"cases": args.cases, "shape": list(made[0].seg.shape), "project_s": round(ours_s, 2),
              "baseline_s": round(theirs_s, 2), "speedup": round(theirs_s / ours_s, 2),
              "threshold": ours["threshold"], "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    print(f"threshold and post-processing search, {args.cases} validation cases of {made[0].seg.shape}, "
          f"{len(THRESHOLDS)} thresholds: project {ours_s:.1f} s, baseline {theirs_s:.1f} s, "
          f"{theirs_s / ours_s:.2f}x (the same choice: threshold {ours['threshold']:g})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
