"""brats_seg.evaluation.lesionwise: hand-computed multi-lesion cases, and number-by-number equality with the
official package.

The official package (brats-evaluation 0.0.10 on panoptica 2.1.7) cannot live in the project's environment (it
wants pandas<3, numpy<2.3, rich<14), so the slow tests build it once in an environment of its own, cached under
``${XDG_CACHE_HOME:-~/.cache}/brats-seg/``, run it on NIfTI files in a subprocess and compare its JSON with ours.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brats_seg.cli import main
from brats_seg.data.labels import from_canonical
from brats_seg.data.synthetic import lps_affine, make_case
from brats_seg.errors import UserError
from brats_seg.evaluation.lesion_configs import CONFIGS, get_config
from brats_seg.evaluation.lesionwise import HD95_PENALTY_MM, LESION_DICE, region_metrics, score_canonical
from brats_seg.evaluation.scoring import score_files
from brats_seg.io.tables import json_safe
from tests.support.projects import require

SHAPE = (64, 64, 48)
OFFICIAL_PINS = ("brats-evaluation==0.0.10", "panoptica==2.1.7", "numpy==2.2.6", "scipy==1.17.1", "pandas==2.3.3",
                 "connected-components-3d==3.29.0", "SimpleITK==2.5.7", "nibabel==5.4.2")
OFFICIAL_MARKER = "brats-seg-official-eval.txt"  # written last: the pins, once they all installed and import
DISTANCE_KEYS = {"sq_hd95", "sq_hd95_std", "sq_nsd", "sq_nsd_std", "global_bin_hd95", "global_bin_nsd",
                 "lesionwise_hd95_mean", "lesionwise_hd95_std", "lesionwise_nsd_mean", "lesionwise_nsd_std"}
RANKING_KEYS = {f"lesionwise_{m}_{s}" for m in ("dsc", "hd95", "nsd") for s in ("mean", "std")}
# Keys the official result leaves out when they divide by zero (no predicted / no reference lesion); NaN here.
UNDEFINED_KEYS = {"prec", "rec"}


# --- hand-computed cases -------------------------------------------------------------------------------------------

def _hand_masks() -> tuple[np.ndarray, np.ndarray]:
    """WT masks (pred, ref): lesion A found (ref 10..19 on every axis, prediction the same cube moved by 2 in x),
    B missed (6^3 = 216 voxels), C a false positive (4^3 = 64), D a missed 2^3 = 8 voxel (8 mm^3) reference lesion."""
    pred, ref = np.zeros(SHAPE, dtype=bool), np.zeros(SHAPE, dtype=bool)
    ref[10:20, 10:20, 10:20] = True      # A: 1000 voxels
    pred[12:22, 10:20, 10:20] = True     # A': 1000 voxels, 8 x 10 x 10 = 800 shared
    ref[40:46, 40:46, 30:36] = True      # B
    pred[50:54, 10:14, 5:9] = True       # C
    ref[30:32, 50:52, 40:42] = True      # D
    return pred, ref


def test_found_missed_false_and_small_lesions_gli():
    pred, ref = _hand_masks()
    got = region_metrics(pred, ref, (1.0, 1.0, 1.0), CONFIGS["gli"])
    # reference lesions A, B, D; predicted lesions A', C; only A-A' overlap: Dice 2 * 800 / (1000 + 1000) = 0.8
    assert (got["n_ref_instances"], got["n_pred_instances"]) == (3, 2)
    assert (got["tp"], got["fp"], got["fn"]) == (1, 1, 2)  # gli drops no lesion for its size: D is a miss
    assert got["sq_dsc"] == pytest.approx(0.8)
    assert got["rq"] == pytest.approx(1 / (1 + 0.5 * 1 + 0.5 * 2))  # 0.4
    assert got["pq_dsc"] == pytest.approx(0.8 * 0.4)
    assert got["prec"] == pytest.approx(1 / 2) and got["rec"] == pytest.approx(1 / 3)
    # gli's leaderboard lesion-wise Dice is sq_dsc: the matched lesions only
    assert got[LESION_DICE] == pytest.approx(0.8)
    # A's surfaces are at most 2 mm apart (the x = 10 face from x = 12), and more than 5 % of the pooled surface
    # distances are 2 (the 10 x 10 faces at x = 10 and x = 21 alone are 200 of 976): HD95 = 2 mm
    assert got["sq_hd95"] == pytest.approx(2.0)
    assert got["instance_voxel_count_ref"] == 1000.0
    # global: 800 shared voxels, 1000 + 216 + 8 reference, 1000 + 64 predicted
    assert got["global_bin_dsc"] == pytest.approx(2 * 800 / (1224 + 1064))


def test_mets_leaves_small_reference_lesions_out_and_counts_misses_and_false_positives_as_zero():
    pred, ref = _hand_masks()
    got = region_metrics(pred, ref, (1.0, 1.0, 1.0), CONFIGS["mets"])
    assert (got["tp"], got["fp"], got["fn"]) == (1, 1, 2)  # the detection counts keep every lesion
    # lesions of at least 20 mm^3: A (Dice 0.8) and B (missed: 0); D (8 mm^3) is left out; C (false positive): 0
    assert got[LESION_DICE] == pytest.approx((0.8 + 0 + 0) / 3)
    assert got["lesionwise_dsc_std"] == pytest.approx(np.std([0.8, 0.0, 0.0]))
    assert got["lesionwise_hd95_mean"] == pytest.approx((2.0 + HD95_PENALTY_MM + HD95_PENALTY_MM) / 3)
    assert got["sq_dsc"] == pytest.approx(0.8)  # panoptica's own sq_dsc is the same as under gli
    # on a 2 x 2 x 2 mm grid D is 64 mm^3 and counts: (0.8 + 0 + 0 + 0) / 4
    coarse = region_metrics(pred, ref, (2.0, 2.0, 2.0), CONFIGS["mets"], distances=False)
    assert coarse[LESION_DICE] == pytest.approx(0.8 / 4)


def test_empty_masks_follow_the_configs_edge_cases():
    pred, ref = _hand_masks()
    empty = np.zeros(SHAPE, dtype=bool)
    both = region_metrics(empty, empty, (1.0, 1.0, 1.0), CONFIGS["gli"])
    assert math.isnan(both[LESION_DICE]) and math.isnan(both["global_bin_dsc"]) and math.isnan(both["rq"])
    missed = region_metrics(empty, ref, (1.0, 1.0, 1.0), CONFIGS["gli"])
    assert (missed["tp"], missed["fn"], missed[LESION_DICE]) == (0, 3, 0.0)
    assert missed["sq_hd95"] == math.inf and math.isnan(missed["prec"])
    false_only = region_metrics(pred, empty, (1.0, 1.0, 1.0), CONFIGS["gli"])
    assert (false_only["fp"], false_only[LESION_DICE], false_only["global_bin_hd95"]) == (2, 0.0, math.inf)
    # mets: no reference lesion, so no lesion-wise mean at all
    assert math.isnan(region_metrics(pred, empty, (1.0, 1.0, 1.0), CONFIGS["mets"])[LESION_DICE])


def test_two_predictions_on_one_lesion_match_the_better_one_only():
    ref = np.zeros(SHAPE, dtype=bool)
    ref[10:30, 10:20, 10:20] = True                      # 2000 voxels
    pred = np.zeros(SHAPE, dtype=bool)
    pred[10:25, 10:20, 10:20] = True                     # 1500 shared: Dice 3000 / 3500
    pred[27:30, 10:20, 10:20] = True                     # 300 shared: Dice 600 / 2300
    got = region_metrics(pred, ref, (1.0, 1.0, 1.0), CONFIGS["gli"], distances=False)
    assert (got["tp"], got["fp"], got["fn"]) == (1, 1, 0)
    assert got["sq_dsc"] == pytest.approx(3000 / 3500)


def _competing_masks() -> tuple[np.ndarray, np.ndarray]:
    """Slabs of 10 x 10 voxels along x: reference R1 x 5..14 (1000 voxels), R2 x 16..23 (800); prediction
    P2 x 5..6 (200, inside R1), P1 x 8..19 (1200: 700 in R1, 400 in R2)."""
    pred, ref = np.zeros(SHAPE, dtype=bool), np.zeros(SHAPE, dtype=bool)
    ref[5:15, 10:20, 10:20] = ref[16:24, 10:20, 10:20] = True
    pred[5:7, 10:20, 10:20] = pred[8:20, 10:20, 10:20] = True
    return pred, ref


def test_matching_maximises_the_summed_dice_not_the_best_pair():
    pred, ref = _competing_masks()
    got = region_metrics(pred, ref, (1.0, 1.0, 1.0), CONFIGS["gli"], distances=False)
    # Dice: P1-R1 1400 / 2200 = 0.636 is the best pair, but P1-R2 800 / 2000 = 0.4 plus P2-R1 400 / 1200 = 0.333
    # sum to more, so both lesions match (a greedy best-pair-first matching would find one)
    assert (got["tp"], got["fp"], got["fn"]) == (2, 0, 0)
    assert got["sq_dsc"] == pytest.approx((0.4 + 400 / 1200) / 2)
    assert got["sq_dsc_std"] == pytest.approx(abs(0.4 - 400 / 1200) / 2)


def test_lesions_are_26_connected():
    ref = np.zeros(SHAPE, dtype=bool)
    ref[30:34, 30:34, 30:34] = ref[34:38, 34:38, 34:38] = True  # two cubes meeting at one corner: one lesion
    pred = ref.copy()
    pred[40:44, 40:44, 40:44] = True                            # touches the second cube along an edge only
    pred[44:48, 40:44, 44:48] = True
    got = region_metrics(pred, ref, (1.0, 1.0, 1.0), CONFIGS["gli"], distances=False)
    assert (got["n_ref_instances"], got["n_pred_instances"], got["tp"]) == (1, 2, 1)


def test_distances_false_gives_the_same_dice_without_distance_keys():
    pred, ref = _hand_masks()
    full = region_metrics(pred, ref, (1.0, 1.0, 1.0), CONFIGS["mets"])
    fast = region_metrics(pred, ref, (1.0, 1.0, 1.0), CONFIGS["mets"], distances=False)
    assert set(full) - set(fast) == DISTANCE_KEYS
    assert fast == {k: v for k, v in full.items() if k not in DISTANCE_KEYS}


def test_unknown_config_is_one_sentence(tmp_path, capsys):
    with pytest.raises(UserError) as err:
        get_config("GLI")
    message = str(err.value)
    assert message.count(". ") == 0 and message.endswith(".")
    for name in ("gli", "mets", "ped", "MenRT", "MenPre", "GoAT"):
        assert name in message
    labels = np.zeros(SHAPE, dtype=np.uint8)
    with pytest.raises(UserError):
        score_canonical(labels, labels, (1.0, 1.0, 1.0), config="brats")
    ref = _save(tmp_path / "ref.nii.gz", labels, np.eye(4))
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--ref", ref, "--pred", ref, "--lesionwise", "glioma"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "error: " + message.replace("'GLI'", "'glioma'")


def test_score_cli_adds_lesionwise_metrics_and_keeps_its_keys(tmp_path, capsys):
    case = make_case(1, 0, SHAPE)
    pred_labels = np.roll(case.seg, 2, axis=1)
    ref = _save(tmp_path / "ref.nii.gz", case.seg, case.affine)
    pred = _save(tmp_path / "pred.nii.gz", pred_labels, case.affine)
    main(["score", "--ref", ref, "--pred", pred])
    plain = json.loads(capsys.readouterr().out)
    main(["score", "--ref", ref, "--pred", pred, "--lesionwise", "gli"])
    scores = json.loads(capsys.readouterr().out)
    assert scores["lesionwise_config"] == "gli"
    assert scores["lesionwise_regions"] == {"wt": "wt", "tc": "tc", "et": "et"}
    expected = score_canonical(pred_labels, case.seg, (1.0, 1.0, 1.0), "gli")
    wt_dice = scores["wt"]["lesionwise"][LESION_DICE]
    for region in ("wt", "tc", "et"):
        lesionwise = scores[region].pop("lesionwise")
        assert lesionwise == json_safe(expected[region])
        assert {"tp", "fp", "fn", "sq_dsc", "pq_dsc", "sq_hd95", "sq_nsd", "global_bin_dsc", LESION_DICE} <= set(
            lesionwise)
        # the project's numbers beside them: every lesion counted (the gate's), from the official ones
        tp, missed = lesionwise["tp"], lesionwise["fp"] + lesionwise["fn"]
        assert scores[region].pop("lesion_dice") == pytest.approx(lesionwise["sq_dsc"] * tp / (tp + missed))
        assert scores[region].pop("lesion_pq") == lesionwise["pq_dsc"]
        assert scores[region].pop("lesion_hd95") == pytest.approx(
            (lesionwise["sq_hd95"] * tp + 373.0 * missed) / (tp + missed))
    assert {k: v for k, v in scores.items() if not k.startswith("lesionwise")} == plain
    mask = _save(tmp_path / "mask.nii.gz", (pred_labels > 0).astype(np.uint8), case.affine)
    main(["score", "--ref", ref, "--pred", mask, "--labels", "binary", "--lesionwise", "MenRT"])
    binary = json.loads(capsys.readouterr().out)
    assert set(binary) == {"labels", "wt", "lesionwise_config", "lesionwise_regions"}
    assert binary["lesionwise_regions"] == {"wt": "gtv"}
    assert binary["wt"]["lesionwise"][LESION_DICE] == wt_dice and "lesion_dice" in binary["wt"]


# --- equality with the official package ----------------------------------------------------------------------------

OFFICIAL_SCRIPT = r'''
import contextlib, io, json, sys, warnings
warnings.simplefilter("ignore")
import pandas as pd
from panoptica import Panoptica_Evaluator
from brats_evaluation import config_path, evaluate_single_exam, metrics_parser
from brats_evaluation.evaluation import BUNDLED_CONFIGS

job_path, out_path = sys.argv[1], sys.argv[2]
job = json.load(open(job_path))
out = {"configs": {}, "results": {}}
with contextlib.redirect_stdout(io.StringIO()):
    for name in BUNDLED_CONFIGS:
        ev = Panoptica_Evaluator.load_from_config(str(config_path(name)))
        groups = ev._Panoptica_Evaluator__segmentation_class_groups
        matcher = ev._Panoptica_Evaluator__instance_matcher
        out["configs"][name] = {
            "regions": [[g, sorted(int(v) for v in group.value_labels)] for g, group in groups.items()],
            "matcher": [type(matcher).__name__, matcher._matching_metric.name, matcher._matching_threshold,
                        matcher._strict_threshold]}
    for config in job["configs"]:
        ev = Panoptica_Evaluator.load_from_config(str(config_path(config)))
        metrics = [evaluate_single_exam(pred, ref, case, ev) for case, pred, ref in job["cases"]]
        summary, table = f"{job['folder']}/{config}.json", f"{job['folder']}/{config}.csv"
        with open(summary, "w") as f:
            json.dump({"metrics": metrics, "missings": []}, f)
        # the parser's own command line, so that its defaults (mets: --vol_threshold, --overlap_threshold) apply
        sys.argv = ["brats-parse-metrics", "mets" if config == "mets" else "seg", "--json_path", summary,
                    "--output_csv_path", table]
        metrics_parser.main()
        rows = pd.read_csv(table).to_dict("records")
        out["results"][config] = {"panoptica": {m["subject_name"]: m for m in metrics},
                                  "parsed": {r["subject_id"]: r for r in rows}}
with open(out_path, "w") as f:
    json.dump(out, f)
'''


def _official_env_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = "\n".join((sys.version.split()[0], *OFFICIAL_PINS))
    return cache / "brats-seg" / f"official-eval-0.0.10-panoptica-2.1.7-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _env_ready(env: Path) -> bool:
    marker = env / OFFICIAL_MARKER
    return marker.is_file() and marker.read_text().split() == list(OFFICIAL_PINS)


def _build_official_env(env: Path) -> None:
    """pip-install the pins into a temporary folder beside ``env`` and rename it into place once complete, so that
    a half-built environment is never used. Only ``bin/python`` is run from it (the scripts name the old path)."""
    env.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=env.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, capture_output=True, timeout=300)
        python = str(building / "bin" / "python")
        # --no-compile: the one process that runs it imports a fraction of these packages (plotly alone is 188 MB);
        # compiling them all cost 9 of the build's 37 CPU s
        pip = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile", "-q",
                              *OFFICIAL_PINS], capture_output=True, text=True, timeout=1800)
        if pip.returncode != 0:
            last = (pip.stderr.strip().splitlines() or ["no output"])[-1]
            require(False, f"the official BraTS evaluation package could not be installed from PyPI ({last}); "
                    f"these tests need {' '.join(OFFICIAL_PINS[:2])} in {env}")
        subprocess.run([python, "-c", "import brats_evaluation, panoptica, SimpleITK, cc3d"], check=True,
                       capture_output=True, timeout=300)
        (building / OFFICIAL_MARKER).write_text("\n".join(OFFICIAL_PINS) + "\n")
        if env.exists() and not _env_ready(env):
            shutil.rmtree(env)  # a folder without the marker is not ours to trust
        try:
            building.rename(env)
        except OSError:
            if not _env_ready(env):  # another run finished first: keep its environment
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


@pytest.fixture(scope="session")
def official_python() -> Path:
    env = _official_env_dir()
    if not _env_ready(env):
        _build_official_env(env)
    return env / "bin" / "python"


def _save(path: Path, labels: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(path))
    return str(path)


def _hand_labels() -> tuple[np.ndarray, np.ndarray]:
    """Canonical label maps around :func:`_hand_masks`: oedema lesions, A with an enhancing core and necrosis."""
    pred_mask, ref_mask = _hand_masks()
    pred, ref = pred_mask.astype(np.uint8) * 2, ref_mask.astype(np.uint8) * 2
    ref[13:17, 13:17, 13:17], ref[14:16, 14:16, 14:16] = 4, 1
    pred[15:19, 13:17, 13:17], pred[16:18, 14:16, 14:16] = 4, 1
    ref[42:44, 42:44, 32:34], pred[51:53, 11:13, 6:8] = 4, 4  # enhancing in B (missed) and C (false positive)
    return pred, ref


def _multi_labels() -> tuple[np.ndarray, np.ndarray]:
    """Competing lesions (:func:`_competing_masks`), a lesion of two corner-touching cubes with enhancing cores,
    and a found 12-voxel lesion (under mets' 20 mm^3)."""
    pred_mask, ref_mask = _competing_masks()
    pred, ref = pred_mask.astype(np.uint8) * 2, ref_mask.astype(np.uint8) * 2
    for labels, d in ((ref, 0), (pred, 1)):
        labels[30 + d:34 + d, 30:34, 30:34] = labels[34 + d:38 + d, 34:38, 34:38] = 2
        labels[31 + d:33 + d, 31:33, 31:33] = labels[35 + d:37 + d, 35:37, 35:37] = 4
        labels[50 + d:52 + d, 50:53, 40:43] = 2
    pred[11:13, 12:14, 12:14] = 4  # an enhancing lesion in P1 over R1's core
    ref[10:14, 12:14, 12:14] = 4
    return pred, ref


def _official_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(prediction, reference) canonical label maps, 1 mm grid: multi-lesion, shifted, split, empty edge cases."""
    seg = {i: make_case(i, 0, SHAPE).seg for i in (1, 2, 3, 4, 5)}
    empty = np.zeros(SHAPE, dtype=np.uint8)
    split = seg[4].copy()
    z = int(np.argwhere(split > 0)[:, 2].mean())
    split[:, :, z - 1:z + 1] = 0                         # one tumour predicted as two pieces
    split[50:56, 5:10, 40:45] = 2                        # and a false-positive lesion with an enhancing core
    split[52:54, 6:8, 41:43] = 4
    grown = np.where(ndimage.binary_dilation(seg[3] > 0, iterations=2) & (seg[3] == 0), 2, seg[3])
    return {"hand": _hand_labels(), "multi": _multi_labels(), "shifted": (np.roll(seg[1], 3, axis=0), seg[1]),
            "split": (split, seg[4]),
            "grown": (grown.astype(np.uint8), seg[3]), "other": (seg[5], seg[1]), "empty_ref": (seg[2], empty),
            "empty_pred": (empty, seg[3]), "both_empty": (empty, empty)}


def _predicted_by_a_model_of_regions(folder: Path) -> tuple[str, str]:
    """``brats-seg predict``'s own label map file (BraTS 2023 ids, named ``<case_id>.nii.gz``) from a U-Net of WT,
    TC and ET whose head is fixed (all three everywhere it looks: enhancing tumour), and the case's reference."""
    import torch

    from brats_seg.data.layouts import write_case
    from brats_seg.inference.bundle import save_model
    from brats_seg.models.config import ModelConfig
    from brats_seg.models.unet import UNet

    net = UNet(ModelConfig(in_channels=4, out_channels=3, base=4, depth=2)).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([9.0, 9.0, 9.0]))
    model = save_model(folder / "regions.pt", net, ("wt", "tc", "et"), {"size": 32, "margin": 2, "modalities": [
        "flair", "t1", "t1ce", "t2"]}, extra={"cohort": {"source": "local", "label_convention": "brats2023"}})
    case = make_case(6, 0, SHAPE)
    write_case(folder / "in", case.case_id, case.images, None, case.affine)
    main(["predict", str(folder / "in"), "--model", str(model), "--out", str(folder / "predicted"), "--device", "cpu"])
    pred = folder / "predicted" / f"{case.case_id}.nii.gz"
    return str(pred), _save(folder / "predicted_ref.nii.gz", from_canonical(case.seg, "brats2023"), case.affine)


@pytest.fixture(scope="module")
def official(official_python, tmp_path_factory) -> dict:
    """The official package's results for :func:`_official_cases` (and the hand case on a 1 x 2 x 3 mm grid),
    under gli and mets, with our files: ``{"files": {case: (pred, ref)}, "configs": ..., "results": ...}``."""
    folder = tmp_path_factory.mktemp("official")
    cases = {**_official_cases(), "anisotropic": _hand_labels()}
    files = {}
    for name, (pred, ref) in cases.items():
        affine = np.diag([1.0, 2.0, 3.0, 1.0]) if name == "anisotropic" else lps_affine(SHAPE)
        files[name] = tuple(_save(folder / f"{name}_{role}.nii.gz", from_canonical(labels, "brats2023"), affine)
                            for role, labels in (("pred", pred), ("ref", ref)))
    files["predicted"] = _predicted_by_a_model_of_regions(folder)
    job = {"configs": ["gli", "mets"], "folder": str(folder),
           "cases": [[name, pred, ref] for name, (pred, ref) in files.items()]}
    (folder / "job.json").write_text(json.dumps(job))
    (folder / "official.py").write_text(OFFICIAL_SCRIPT)
    run = subprocess.run([str(official_python), str(folder / "official.py"), str(folder / "job.json"),
                          str(folder / "out.json")], capture_output=True, text=True, timeout=600, cwd=folder)
    assert run.returncode == 0, run.stderr[-3000:]
    return {"files": files, **json.loads((folder / "out.json").read_text())}


def _same(ours: float, theirs: float) -> bool:
    if isinstance(theirs, float) and math.isnan(theirs):
        return isinstance(ours, float) and math.isnan(ours)
    return ours == theirs or math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-6)


def _differences(ours: dict[str, float], theirs: dict[str, float]) -> list[str]:
    """Every official key and value that ours does not reproduce (official per-lesion rows aside)."""
    theirs = {k: v for k, v in theirs.items() if k != "reference_instances"}
    wrong = [f"{k}: ours {ours.get(k)!r}, official {v!r}" for k, v in theirs.items() if k not in ours
             or not _same(ours[k], v)]
    wrong += [f"{k}: ours {ours[k]!r}, official has no key" for k in set(ours) - set(theirs) - RANKING_KEYS
              if k not in UNDEFINED_KEYS or not math.isnan(ours[k])]
    return wrong


@pytest.mark.slow
def test_configs_are_the_official_ones(official):
    theirs = official["configs"]
    assert sorted(theirs) == sorted(CONFIGS)
    for name, config in CONFIGS.items():
        assert theirs[name]["regions"] == [[r, sorted(labels)] for r, labels in config.regions], name
        assert theirs[name]["matcher"] == ["MaxBipartiteMatching", "DSC", config.matching_threshold, False], name
        assert {official for _, official in config.project_regions} <= {r for r, _ in config.regions}, name


@pytest.mark.slow
@pytest.mark.parametrize("config", ["gli", "mets"])
def test_equal_to_the_official_package(official, config):
    results, compared = official["results"][config], 0
    for case, (pred, ref) in official["files"].items():
        if case == "anisotropic":
            continue
        theirs = results["panoptica"][case]
        assert "error" not in theirs, theirs
        ours = score_files(ref, pred, labels="brats2023", lesionwise=config)
        parsed = results["parsed"][case]
        for region, official_region in ours["lesionwise_regions"].items():
            mine = ours[region]["lesionwise"]
            assert _differences(mine, theirs[official_region]) == [], (case, region)
            for key in RANKING_KEYS:  # brats-parse-metrics' columns, the leaderboard's numbers
                column = parsed[f"{key}_{official_region}"]
                assert _same(mine[key], column), (case, region, key, mine[key], column)
            compared += 1
    assert compared == 10 * 3  # the nine cases above and the label map `brats-seg predict` wrote


@pytest.mark.slow
def test_official_package_applies_spacing_in_reverse_axis_order(official):
    """On a 1 x 2 x 3 mm grid the package's distances use the spacing (3, 2, 1): SimpleITK's (z, y, x) array with
    its (x, y, z) spacing. Ours reproduce it given the reversed spacing; with the true spacing HD95 differs."""
    theirs = official["results"]["gli"]["panoptica"]["anisotropic"]["wt"]
    pred, ref = (v > 0 for v in _hand_labels())
    assert _differences(region_metrics(pred, ref, (3.0, 2.0, 1.0), CONFIGS["gli"]), theirs) == []
    true = region_metrics(pred, ref, (1.0, 2.0, 3.0), CONFIGS["gli"])
    assert theirs["sq_hd95"] == pytest.approx(6.0)  # A is moved 2 voxels along x, taken as 3 mm voxels
    assert true["sq_hd95"] != pytest.approx(theirs["sq_hd95"])
    # volumes are the same either way: lesion D is 8 voxels of 6 mm^3, large enough for mets here: 0.8 / 4
    parsed = official["results"]["mets"]["parsed"]["anisotropic"]
    assert parsed[f"{LESION_DICE}_wt"] == pytest.approx(0.8 / 4)
    assert region_metrics(pred, ref, (1.0, 2.0, 3.0), CONFIGS["mets"])[LESION_DICE] == pytest.approx(0.8 / 4)
