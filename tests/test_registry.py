"""Register and promote against a real sqlite MLflow store in a temporary directory: the gate on one split,
the champion re-scored on a challenger's new test split (checked against the evaluate stage's own code on
slices made with the champion's preprocessing), the refusals, and the case-level audit."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brats_seg.base_params import BaseParams
from brats_seg.cli import main as cli
from brats_seg.data.dataset import load_split
from brats_seg.data.inspect import inspect_case
from brats_seg.data.labels import region_mask
from brats_seg.data.slicing import run_slice
from brats_seg.data.spec import SliceParams
from brats_seg.errors import ConfigError, UserError
from brats_seg.evaluation.evaluate import evaluate_cases
from brats_seg.inference.bundle import save_model
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet
from brats_seg.orchestration.provenance import code_manifest, eval_code_digest
from brats_seg.registry import registered_model, tracking, versions
from brats_seg.registry.audit import history
from brats_seg.registry.lineage import case_lineage
from brats_seg.registry.params import PromoteParams
from brats_seg.registry.promotion import promote
from brats_seg.registry.resolve import resolve_model
from tests.support.cohorts import COHORT_SEED, write_synthetic_cohort

NAME = "brats-unet-test"
PARAMS = PromoteParams(min_improvement=0.01, min_dice=0.5)
TINY_SLICE = {"size": 16, "margin": 0, "modalities": ["flair"]}


def _register(dice: float, split: str = "split-a", slice_params: dict | None = None,
              splits: pd.DataFrame | None = None, model: UNet | None = None, content: str = "content-a",
              eval_code: str | None = None, regions: tuple[str, ...] = ("wt",), tags: dict | None = None) -> str:
    """A new version of NAME: ``model`` (default: a tiny untrained U-Net for ``slice_params``), with its run's
    split tables when given, tested on split ``split`` whose images and labels have digest ``content`` by
    scoring code ``eval_code`` (default: this checkout's); its run records this checkout's code files."""
    slice_params = slice_params or TINY_SLICE
    model = model or UNet(ModelConfig(in_channels=len(slice_params["modalities"]), out_channels=len(regions), base=4,
                                     depth=1)).eval()
    size = slice_params["size"]
    example = np.zeros((1, len(slice_params["modalities"]), size, size), np.float32)
    with tracking.start_run("registry-test") as run:
        run.log_metrics({"test_wt_dice_mean": dice})
        run.set_tags({"code_files": json.dumps(code_manifest())})
        if splits is not None:
            run.log_split_tables(splits)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    model_file = save_model(Path(tempfile.mkdtemp(dir=".")) / "unet.pt", model, regions, slice_params)
    graph = registered_model.export_onnx(model, example)
    record = versions.register_model(run.run_id, graph, model_file, NAME, example, out,
                                     {"regions": list(regions), "slice": slice_params, "threshold": 0.5},
                                     {"test_wt_dice_mean": str(dice), "split_digest": split,
                                      "test_content_digest": content, "regions": ",".join(regions),
                                      "eval_code_digest": eval_code or eval_code_digest(), **(tags or {})},
                                     "challenger")
    return record["version"]


def _champion() -> str | None:
    found = versions.model_version(NAME, alias="champion")
    return None if found is None else found["version"]


def _tags(version: str) -> dict:
    return versions.model_version(NAME, version=version)["tags"]


def test_first_champion_better_promoted_worse_refused_on_one_split(store):
    low = _register(0.40)
    decision = promote(NAME, PARAMS)
    assert not decision["promoted"] and "below the floor" in decision["reason"] and _champion() is None

    first = _register(0.80)
    assert promote(NAME, PARAMS)["promoted"] and _champion() == first

    better = _register(0.85)
    record = promote(NAME, PARAMS)
    assert record["promoted"] and _champion() == better
    assert record["champion_dice"] == pytest.approx(0.80) and record["previous_champion"] == first
    assert record["test_split"] == "split-a" and not record["champion_rescored"]

    slightly = _register(0.855)  # higher, but by less than min_improvement
    assert not promote(NAME, PARAMS)["promoted"] and _champion() == better

    worse = _register(0.70)
    record = promote(NAME, PARAMS)
    assert not record["promoted"] and "does not beat champion" in record["reason"] and _champion() == better

    tags = _tags(worse)
    assert tags["promotion_decision"] == "kept" and tags["promotion_compared_with"] == better
    assert tags["promotion_challenger_dice"] == "0.700000" and tags["promotion_champion_dice"] == "0.850000"
    assert tags["promotion_test_split"] == "split-a" and tags["promotion_champion_rescored"] == "false"
    assert tags["promotion_test_patients"] == "unknown"  # these runs logged no split tables
    assert _tags(better)["promotion_decision"] == "promoted"
    again = promote(NAME, PARAMS, version=better)  # nothing to decide: its record stays as it was
    assert not again["promoted"] and again["reason"] == f"version {better} is already the champion"
    assert again["champion_dice"] == pytest.approx(0.80) and again["previous_champion"] == first
    assert _tags(better)["promotion_decision"] == "promoted" and _tags(better)["promotion_champion_dice"] == "0.800000"
    assert low and slightly  # every candidate was registered as its own version


def _lesion_tags(wt: float, tc: float, et: float, config: str = "gli") -> dict:
    return {"test_wt_lesion_dice_mean": str(wt), "test_tc_lesion_dice_mean": str(tc),
            "test_et_lesion_dice_mean": str(et), "lesionwise_config": config}


REGIONS3 = ("wt", "tc", "et")


def test_the_gate_compares_the_metric_the_user_names_and_records_it(store):
    first = _register(0.90, regions=REGIONS3, tags=_lesion_tags(0.8, 0.6, 0.4))
    record = promote(NAME, PARAMS)  # auto: the mean lesion-wise Dice of WT, TC and ET, (0.8 + 0.6 + 0.4) / 3
    assert record["promoted"] and record["challenger_dice"] == pytest.approx(0.6) and record["metric"] == "lesion_dice"
    assert "mean lesion-wise Dice of WT, TC, ET 0.6000 >= floor 0.5" in record["reason"]
    assert _tags(first)["promotion_metric"] == "lesion_dice"

    better_wt = _register(0.95, regions=REGIONS3, tags=_lesion_tags(0.8, 0.5, 0.4))  # WT Dice up, lesion mean down
    record = promote(NAME, PARAMS)
    assert not record["promoted"] and record["champion_dice"] == pytest.approx(0.6) and _champion() == first
    assert record["challenger_dice"] == pytest.approx(1.7 / 3)
    record = promote(NAME, dataclasses.replace(PARAMS, metric="wt_dice"), version=better_wt)
    assert record["promoted"] and record["metric"] == "wt_dice" and "test WT Dice 0.9500 beats" in record["reason"]
    assert _tags(better_wt)["promotion_metric"] == "wt_dice" and _champion() == better_wt

    other_rules = _register(0.95, regions=REGIONS3, tags=_lesion_tags(0.9, 0.9, 0.9, config="mets"))
    with pytest.raises(UserError, match="the workspace has no slices"):  # other lesion rules: re-scored, not compared
        promote(NAME, PARAMS, version=other_rules)
    assert _champion() == better_wt


def test_a_whole_tumour_champion_is_compared_on_what_both_segment_or_refused_by_name(store):
    wt_only = _register(0.80)
    assert promote(NAME, PARAMS)["promoted"] and _champion() == wt_only
    regions = _register(0.85, regions=REGIONS3, tags=_lesion_tags(0.9, 0.9, 0.9))
    record = promote(NAME, PARAMS)  # auto for a model of regions: a mean over TC and ET the champion lacks
    assert not record["promoted"] and _champion() == wt_only
    assert "does not segment TC, ET" in record["reason"] and "promote.metric" in record["reason"]
    record = promote(NAME, dataclasses.replace(PARAMS, metric="wt_dice"), version=regions)
    assert record["promoted"] and record["champion_dice"] == pytest.approx(0.80) and _champion() == regions
    with pytest.raises(ConfigError, match="promote.metric"):
        PromoteParams(metric="hd95")


def test_another_split_without_a_workspace_is_one_sentence_and_force_still_promotes(store):
    _register(0.80)
    promote(NAME, PARAMS)
    other = _register(0.99, split="split-b")
    with pytest.raises(UserError, match=r"cannot re-score champion v1: the workspace has no slices .*dvc repro slice"):
        promote(NAME, PARAMS)
    assert _champion() == "1" and "promotion_decision" not in _tags(other)
    assert promote(NAME, PARAMS, version=other, force=True)["promoted"] and _champion() == other


def test_registered_model_loads_with_its_metadata_and_batches(store):
    version = _register(0.9)
    bundle = resolve_model(f"models:/{NAME}/{version}", "cpu")
    assert bundle.regions == ("wt",) and bundle.slice_params["size"] == 16
    assert bundle.model(torch.zeros(3, 1, 16, 16)).shape == (3, 1, 16, 16)
    info = versions.model_version(NAME, alias="challenger")
    assert info["version"] == version and info["tags"]["split_digest"] == "split-a"


def test_every_decision_is_a_record_of_its_own_never_overwritten(store, capsys):
    import getpass
    import socket

    v1 = _register(0.80)
    assert promote(NAME, PARAMS)["promoted"]
    v2 = _register(0.75)
    assert not promote(NAME, PARAMS)["promoted"]
    v3 = _register(0.95)
    assert promote(NAME, PARAMS, version=v3, force=True)["promoted"]
    assert not promote(NAME, PARAMS, version=v1)["promoted"]  # the old champion, judged again: kept
    records = history(NAME)
    assert [(r["version"], r["decision"]) for r in records] == [(v1, "promoted"), (v2, "kept"), (v3, "forced"),
                                                                (v1, "kept")]
    assert _tags(v1)["promotion_decision"] == "kept"  # the version's tag says its latest decision...
    assert history(NAME, v1)[0]["decision"] == "promoted"  # ...and the trail still says it was promoted
    assert records[1]["challenger_dice"] == "0.750000" and records[1]["champion_dice"] == "0.800000"
    assert records[1]["compared_with"] == v1 and records[1]["user"] == getpass.getuser()
    assert records[1]["host"] == socket.gethostname() and records[0]["time"] <= records[3]["time"]

    code, out, _ = _cli(["audit", "--model", NAME], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    assert f"{NAME} v{v1}  promoted  by {getpass.getuser()}@{socket.gethostname()}  test WT Dice 0.800000" in lines[0]
    assert f"{NAME} v{v2}  kept      by" in lines[1] and f"vs champion v{v1} 0.800000 on" in lines[1]
    code, out, _ = _cli(["audit", "--model", NAME, "--version", v1, "--json"], capsys)
    assert [r["decision"] for r in json.loads(out)] == ["promoted", "kept"]
    code, out, _ = _cli(["lineage", f"models:/{NAME}/{v1}"], capsys)
    assert [line.split()[2] for line in out.splitlines() if line.startswith("decision ")] == ["promoted", "kept"]
    code, out, _ = _cli(["versions", "--model", NAME], capsys)
    rows = out.splitlines()
    assert code == 0 and [r.split()[1] for r in rows] == [f"v{v1}", f"v{v2}", f"v{v3}"]
    assert rows[2].split()[2:4] == ["@challenger", "@champion"] and rows[0].split()[2] == "-"
    assert "test WT Dice 0.800 " in rows[0] and "latest decision kept " in rows[0]  # its latest decision, not its first
    regions = rows[0].split()[3].split(",")  # the lesion-wise number says what it is: a region's, or their mean
    assert (" mean lesion-wise Dice " if len(regions) > 1 else f" {regions[0].upper()} lesion-wise Dice ") in rows[0]
    assert rows[0].endswith("(unet)")  # registered before the model tag: the U-Net every such version is


def test_no_challenger_is_one_sentence(store):
    with pytest.raises(UserError, match="model nothing-here has no .challenger. alias in the registry"):
        promote("nothing-here", PARAMS)


# --- a challenger tested on a new split: the champion re-scored in the workspace ---------------------------

WORKSPACE_SLICE = SliceParams(size=32, margin=4, workers=1)


@pytest.fixture
def workspace(store) -> dict:
    """Seven tiny synthetic cases sliced by the real slice stage code under data/ (the default base paths)."""
    ids = write_synthetic_cohort(store / "data" / "raw", 7, tumour_free=(7,))
    manifest = pd.DataFrame([inspect_case(store / "data" / "raw" / c) for c in ids])  # as validate writes it
    meta = run_slice(WORKSPACE_SLICE, store / "data" / "raw", manifest, store / "data" / "slices",
                     seed=COHORT_SEED)  # seven cases that fill train, val and test
    cases = pd.read_parquet(store / "data" / "slices" / "cases.parquet")
    test = sorted(cases.loc[cases["split"] == "test", "case_id"])
    return {"digest": meta["split_digest"], "content": meta["content_digests"]["test"], "cases": cases, "test": test}


def _table(train: list[str], val: list[str] = (), test: list[str] = ()) -> pd.DataFrame:
    rows = [(c, c, s) for s, ids in (("train", train), ("val", val), ("test", test)) for c in ids]
    return pd.DataFrame(rows, columns=["case_id", "patient_id", "split"])


def _slices(slice_params: SliceParams) -> Path:
    """The workspace's raw cases sliced with ``slice_params`` (same seed: same split) in a folder of their own."""
    out = Path(f"slices-{slice_params.size}-{'-'.join(slice_params.modalities)}")
    if not out.is_dir():
        ids = sorted(p.name for p in Path("data/raw").iterdir())
        run_slice(slice_params, "data/raw", pd.DataFrame({"case_id": ids}), out, seed=COHORT_SEED)
    return out


def _fit(slice_params: SliceParams, seed: int, steps: int = 60) -> UNet:
    """A tiny U-Net fitted briefly to the train split cut with ``slice_params``: its whole-tumour
    probabilities follow the images, so that a wrong preprocessing or threshold changes its Dice."""
    data = load_split(_slices(slice_params), "train")
    x = torch.from_numpy(data.images.astype(np.float32))
    y = torch.from_numpy(region_mask(data.labels).astype(np.float32))[:, None]
    torch.manual_seed(seed)
    model = UNet(ModelConfig(in_channels=x.shape[1], base=4, depth=1))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    balance = (y.numel() - y.sum()) / y.sum().clamp(min=1)  # tumour is rare: weigh it up
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y, pos_weight=balance).backward()
        optimiser.step()
    return model.eval()


def _reference_dice(version: str, slice_params: SliceParams) -> float:
    """The champion scored by the evaluate stage's own code on slices cut with its own preprocessing."""
    out = _slices(slice_params)
    bundle = resolve_model(f"models:/{NAME}/{version}", "cpu")
    frame, _ = evaluate_cases(bundle, out, "data/raw", "test")
    return float(frame.loc[frame["region"] == "wt", "dice"].mean())


@pytest.mark.parametrize("champion_slice", [
    SliceParams(size=16, margin=2, modalities=("flair", "t2"), workers=1),  # unlike the workspace's
    WORKSPACE_SLICE,
], ids=["own-preprocessing", "same-preprocessing"])
def test_the_champion_is_rescored_on_the_challengers_test_patients(workspace, champion_slice):
    old_train = [c for c in workspace["cases"]["case_id"] if c not in workspace["test"]]
    stored = {"size": champion_slice.size, "margin": champion_slice.margin,
              "modalities": list(champion_slice.modalities)}
    champion = _register(0.95, split="old-split", slice_params=stored, splits=_table(old_train),
                         model=_fit(champion_slice, seed=1))
    assert promote(NAME, PARAMS, force=True)["promoted"]
    expected = _reference_dice(champion, champion_slice)
    assert 0.05 < expected < 0.95  # a real score of a model that learnt something, unlike the recorded one

    challenger = _register(round(expected + 0.05, 6), split=workspace["digest"], slice_params=stored,
                           splits=workspace["cases"][["case_id", "patient_id", "split"]], content=workspace["content"])
    record = promote(NAME, PromoteParams(min_improvement=0.01, min_dice=0.0), base=BaseParams())
    assert record["champion_rescored"] and record["champion_dice"] == pytest.approx(expected, abs=1e-9)
    assert record["promoted"] and _champion() == challenger, record["reason"]
    tags = _tags(challenger)
    assert tags["promotion_test_patients"] == str(len(workspace["test"]))
    assert tags["promotion_test_split"] == workspace["digest"] and tags["promotion_champion_rescored"] == "true"
    assert tags["promotion_champion_dice"] == f"{expected:.6f}" and tags["promotion_compared_with"] == champion
    assert f"on the same {len(workspace['test'])} test patients" in tags["promotion_reason"]


def test_a_champion_trained_on_a_test_patient_is_refused_naming_it(workspace):
    leaked = workspace["test"][0]
    others = [c for c in workspace["cases"]["case_id"] if c not in workspace["test"]]
    champion = _register(0.6, split="old-split", splits=_table([*others, leaked]))
    promote(NAME, PARAMS, force=True)
    challenger = _register(0.9, split=workspace["digest"], content=workspace["content"])
    record = promote(NAME, PARAMS, base=BaseParams())
    assert not record["promoted"] and _champion() == champion
    assert record["reason"] == (f"refused to compare: champion v{champion} was trained or validated on 1 of the "
                                f"challenger's {len(workspace['test'])} test patients ({leaked}), so it cannot be "
                                f"scored fairly on them; keep the champion, or promote with --force")
    assert _tags(challenger)["promotion_decision"] == "kept"
    assert [(r["version"], r["decision"]) for r in history(NAME)] == [(champion, "forced"), (challenger, "refused")]


def test_a_champion_without_split_tables_or_unloadable_is_refused(workspace):
    _register(0.6, split="old-split")  # logged no split tables
    promote(NAME, PARAMS, force=True)
    _register(0.9, split=workspace["digest"], content=workspace["content"])
    record = promote(NAME, PARAMS, base=BaseParams())
    assert not record["promoted"] and "recorded no split tables" in record["reason"]

    broken = _register(0.6, split="old-split", splits=_table(["nobody"]))
    promote(NAME, PARAMS, version=broken, force=True)
    model_id = versions.model_version(NAME, version=broken)["source"].rsplit("/", 1)[-1]  # models:/m-...
    (folder,) = [p.parent for p in Path("mlflow/artifacts").rglob("MLmodel") if model_id in str(p)]
    shutil.rmtree(folder)  # the weights are gone: the champion cannot be loaded
    _register(0.9, split=workspace["digest"], content=workspace["content"])
    record = promote(NAME, PARAMS, base=BaseParams())
    assert not record["promoted"] and _champion() == broken
    assert record["reason"].startswith(f"refused to compare: champion v{broken} cannot be loaded to re-score it")


def test_a_workspace_holding_another_split_is_one_sentence(workspace):
    _register(0.6, split="old-split", splits=_table(["nobody"]))
    promote(NAME, PARAMS, force=True)
    _register(0.9, split="third-split")
    with pytest.raises(UserError, match=rf"the workspace's slices \(data/slices, split {workspace['digest'][:12]}\) "
                                        r"are not the split that challenger v2 was tested on \(third-split\)"):
        promote(NAME, PARAMS, base=BaseParams())


def test_a_renamed_copy_of_a_champions_training_case_is_refused_naming_both(workspace):
    """The champion trained on a case whose images reappear in the challenger's test split under a new id (and a
    new patient id): the patient check alone would let it through."""
    copied = workspace["cases"].set_index("case_id").loc[workspace["test"][-1]]
    others = workspace["cases"][~workspace["cases"]["case_id"].isin(workspace["test"])]
    before = pd.concat([others[["case_id", "patient_id", "split", "image_sha256"]],
                        pd.DataFrame([{"case_id": "BraTS20_Old_042", "patient_id": "BraTS20_Old_042", "split": "train",
                                       "image_sha256": copied["image_sha256"]}])])
    champion = _register(0.6, split="old-split", splits=before.assign(split="train"))
    promote(NAME, PARAMS, force=True)
    _register(0.9, split=workspace["digest"], content=workspace["content"])
    record = promote(NAME, PARAMS, base=BaseParams())
    assert not record["promoted"] and _champion() == champion
    assert record["reason"] == (f"refused to compare: champion v{champion} was trained or validated on the images of "
                                f"1 of the challenger's test cases under other ids: {workspace['test'][-1]} "
                                f"(the images of BraTS20_Old_042); it cannot be scored fairly on them; keep the "
                                f"champion, or promote with --force")


@pytest.mark.parametrize("differs", ["labels-or-images", "evaluation-code"])
def test_recorded_scores_on_one_split_compare_only_with_the_same_content_and_scoring_code(workspace, differs):
    """Both versions tested on the same case ids, but the champion's score was made on other labels or images, or by
    other scoring code: the champion is re-scored in the workspace instead of trusting its recorded number."""
    others = [c for c in workspace["cases"]["case_id"] if c not in workspace["test"]]
    stored = {"size": WORKSPACE_SLICE.size, "margin": WORKSPACE_SLICE.margin,
              "modalities": list(WORKSPACE_SLICE.modalities)}
    old = {"content": "labels-before-correction"} if differs == "labels-or-images" else {"eval_code": "old-scoring"}
    champion = _register(0.99, split=workspace["digest"], slice_params=stored, splits=_table(others),
                         model=_fit(WORKSPACE_SLICE, seed=1), **{"content": workspace["content"], **old})
    promote(NAME, PARAMS, force=True)
    expected = _reference_dice(champion, WORKSPACE_SLICE)
    _register(round(expected + 0.05, 6), split=workspace["digest"], slice_params=stored, content=workspace["content"])
    record = promote(NAME, PromoteParams(min_improvement=0.01, min_dice=0.0), base=BaseParams())
    assert record["champion_rescored"] and record["champion_dice"] == pytest.approx(expected, abs=1e-9)
    assert record["promoted"], record["reason"]  # against its recorded 0.99 it would have been kept


def test_a_challenger_scored_by_other_evaluation_code_is_scored_again_too(workspace):
    others = [c for c in workspace["cases"]["case_id"] if c not in workspace["test"]]
    stored = {"size": WORKSPACE_SLICE.size, "margin": WORKSPACE_SLICE.margin,
              "modalities": list(WORKSPACE_SLICE.modalities)}
    _register(0.5, split="old-split", slice_params=stored, splits=_table(others), model=_fit(WORKSPACE_SLICE, seed=1))
    promote(NAME, PARAMS, force=True)
    challenger = _register(0.99, split=workspace["digest"], slice_params=stored, content=workspace["content"],
                           model=_fit(WORKSPACE_SLICE, seed=2), eval_code="old-scoring")
    record = promote(NAME, PromoteParams(min_improvement=0.0, min_dice=0.0), base=BaseParams())
    assert record["challenger_dice"] == pytest.approx(_reference_dice(challenger, WORKSPACE_SLICE), abs=1e-9)
    assert record["challenger_dice"] != 0.99


def test_a_champion_preprocessed_by_other_code_is_refused_naming_the_file(workspace):
    others = [c for c in workspace["cases"]["case_id"] if c not in workspace["test"]]
    champion = _register(0.6, split="old-split", splits=_table(others))
    run_id = versions.model_version(NAME, version=champion)["run_id"]
    files = json.loads(tracking.get_run(run_id)["tags"]["code_files"])
    files["src/brats_seg/data/preprocess.py"] = "0" * 16  # as if the preprocessing changed since it was trained
    tracking.mlflow.MlflowClient(tracking.tracking_uri()).set_tag(run_id, "code_files", json.dumps(files))
    promote(NAME, PARAMS, force=True)
    _register(0.9, split=workspace["digest"], content=workspace["content"])
    record = promote(NAME, PARAMS, base=BaseParams())
    assert not record["promoted"] and _champion() == champion
    assert record["reason"] == (f"refused to compare: champion v{champion} was trained on slices made by other "
                                f"preprocessing code than this workspace's (src/brats_seg/data/preprocess.py differs), "
                                f"so re-scoring it here would not use its own preprocessing; keep the champion, or "
                                f"promote with --force")


def test_a_workspace_whose_test_cases_changed_under_the_same_ids_is_one_sentence(workspace):
    _register(0.6, split="old-split", splits=_table(["nobody"]))
    promote(NAME, PARAMS, force=True)
    _register(0.9, split=workspace["digest"], content="before-the-labels-were-corrected")
    with pytest.raises(UserError, match=r"the workspace's test cases hold other images or labels \(content "
                                        rf"{workspace['content'][:12]}\) than those challenger v2 was tested on"):
        promote(NAME, PARAMS, base=BaseParams())


# --- the case-level audit --------------------------------------------------------------------------------

def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        cli(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_split_tables_round_trip_through_the_tracking_store(store):
    table = pd.DataFrame({"case_id": ["BraTS-GLI-00001-000", "BraTS-GLI-00001-001", "B", "C"],
                          "patient_id": ["BraTS-GLI-00001", "BraTS-GLI-00001", "B", "C"],
                          "split": ["test", "test", "train", "val"], "image_sha256": ["a1", "a2", "b", "c"]})
    with tracking.start_run("registry-test") as run:
        digests = run.log_split_tables(table)
    back = versions.split_tables(run.run_id)
    assert back.sort_values("case_id", ignore_index=True).equals(table.sort_values("case_id", ignore_index=True))
    inputs = tracking.get_run(run.run_id)["inputs"]
    assert sorted(inputs) == sorted(d[:36] for d in digests.values())
    with tracking.start_run("registry-test") as bare:
        pass
    assert versions.split_tables(bare.run_id) is None


def test_lineage_case_lists_every_version_whose_splits_held_the_patient(store, capsys):
    gli = ["BraTS-GLI-00001-000", "BraTS-GLI-00001-001"]
    first = pd.DataFrame({"case_id": [*gli, "B"], "patient_id": ["BraTS-GLI-00001"] * 2 + ["B"],
                          "split": ["test", "test", "train"]})
    second = pd.DataFrame({"case_id": ["BraTS-GLI-00001-000", "B", "C"], "patient_id": ["BraTS-GLI-00001", "B", "C"],
                           "split": ["train", "val", "test"]})
    v1, v2 = _register(0.8, splits=first), _register(0.9, splits=second)
    v3 = _register(0.7)  # an older run: no split tables
    promote(NAME, PARAMS, version=v1, force=True)

    found = case_lineage("BraTS-GLI-00001-001")  # the other time point counts: same patient
    assert [(f["version"], f["split"], f["case_ids"]) for f in found["found"]] == [
        (v1, "test", gli), (v2, "train", ["BraTS-GLI-00001-000"])]
    assert [u["version"] for u in found["unrecorded"]] == [v3] and found["versions_searched"] == 3
    assert case_lineage("BraTS-GLI-00001")["found"] == found["found"]  # the patient id itself

    code, out, _ = _cli(["lineage", "--case", "B"], capsys)
    assert code == 0 and out.splitlines()[:3] == [
        "B is in the splits of 2 of 3 registered model versions:",
        f"  {NAME} v{v1} @champion: train (patient B: B; run {versions.model_version(NAME, version=v1)['run_id']})",
        f"  {NAME} v{v2}: val (patient B: B; run {versions.model_version(NAME, version=v2)['run_id']})"]
    code, out, _ = _cli(["lineage", "--case", "Z"], capsys)
    assert code == 0 and out.startswith(f"no registered model version in {tracking.tracking_uri()} had Z in its "
                                        f"train, val or test split (3 versions searched).")
    assert f"v{v3}: its training run recorded no split tables" in out
    code, _, err = _cli(["lineage"], capsys)
    assert code == 2 and err == ("error: brats-seg lineage needs a MODEL_URI (e.g. models:/brats-unet@champion) "
                                 "or --case ID.\n")


def test_lineage_case_finds_renamed_copies_of_its_images(store, capsys):
    first = pd.DataFrame({"case_id": ["Old_042", "B"], "patient_id": ["Old_042", "B"], "split": ["train", "val"],
                          "image_sha256": ["img-42", "img-b"]})
    second = pd.DataFrame({"case_id": ["New_001", "C"], "patient_id": ["New_001", "C"], "split": ["test", "train"],
                           "image_sha256": ["img-42", "img-c"]})
    v1, v2 = _register(0.8, splits=first), _register(0.9, splits=second)
    found = case_lineage("New_001")  # its images are known from v2's table: v1 trained on them as Old_042
    assert [(f["version"], f["split"], f["case_ids"], f["same_images_only"]) for f in found["found"]] == [
        (v1, "train", ["Old_042"], True), (v2, "test", ["New_001"], False)]
    assert [f["version"] for f in case_lineage("Fresh_7", {"img-b"})["found"]] == [v1]  # digests from a manifest
    assert case_lineage("Fresh_7")["found"] == []
    code, out, _ = _cli(["lineage", "--case", "New_001"], capsys)
    assert code == 0 and "train (patient Old_042: Old_042, the images of New_001 under another id; run" in out


def test_split_tables_logged_through_a_tracking_server_keep_their_rows(store):
    """A server's proxied artifact URIs (mlflow-artifacts:) are no MLflow dataset source: the input is logged
    anyway, and its artifact tag still leads to the rows."""
    table = pd.DataFrame({"case_id": ["A"], "patient_id": ["A"], "split": ["test"]})
    with tracking.start_run("registry-test") as run:
        tracking.mlflow.log_text(table.to_csv(index=False), "splits/test.csv")
        tracking._log_table_input(table, "mlflow-artifacts:/0/x/artifacts/splits/test.csv", "test-split", "0" * 64,
                                  "testing", {tracking.ARTIFACT_TAG: "splits/test.csv"})
    back = versions.split_tables(run.run_id)
    assert back.astype(str).equals(table.assign(image_sha256="").astype(str))  # no image digest recorded: empty


def test_a_param_added_after_training_is_no_drift_at_its_default_and_is_one_otherwise():
    """A model trained before slice.context and train.folds existed recorded neither; it was made as their defaults
    make a model, so only a value other than the default is drift."""
    import dataclasses

    from brats_seg.data.spec import SliceParams
    from brats_seg.registry.lineage import _params_drift
    from brats_seg.training.params import TrainParams, model_params

    settings = {k: v for k, v in dataclasses.asdict(SliceParams()).items() if k != "workers"}
    logged = tracking.param_strings(model_params(TrainParams(), settings, 42))
    older = {k: v for k, v in logged.items() if k not in ("slice.context", "slice.normalise", "train.folds")}
    params = {"base": {"seed": 42}, "slice": {}, "train": {}}
    assert _params_drift({"params": older}, params) == []
    params["slice"]["context"] = 1
    assert _params_drift({"params": older}, params) == [
        "params.yaml slice.context: the model was trained with (not recorded), params.yaml now says 1"]
    params["slice"]["context"], params["train"]["epochs"] = 0, 3
    assert _params_drift({"params": older}, params) == [
        "params.yaml train.epochs: the model was trained with 20, params.yaml now says 3"]
