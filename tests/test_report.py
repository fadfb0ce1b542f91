"""The self-contained run report: built from real pipeline reports, logged to MLflow, rendered offline in
headless Chromium with no failed request and every image decoded."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brats_seg.base_params import BaseParams
from brats_seg.evaluation.evaluate import score_case, summarise_cases
from brats_seg.registry import tracking
from brats_seg.reporting.plots import plot_overlay, plot_training_curve
from brats_seg.runners.report import report_stage
from tests.support.cohorts import PROJECT_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCORED = ("BraTS20_Hit_001", "BraTS20_Missed_002", "BraTS20_Half_003")


@pytest.fixture
def built(tmp_path, monkeypatch) -> tuple[BaseParams, str]:
    """Every input of the report stage, written by the project's own code, and the report built from them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = BaseParams()
    Path(base.validation_reports).mkdir(parents=True)
    Path(base.validation_metrics).write_text(json.dumps({"cases": 5, "ok": 4, "quarantined": 1, "unlabelled": 0}))
    pd.DataFrame({"case_id": ["BraTS20_Bad_009"], "reasons": ["labels outside {0, 1, 2, 4}: 255"]}).to_csv(
        Path(base.validation_reports) / "quarantine.csv", index=False)
    plot_training_curve([{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_dice": 0.2 * e}
                         for e in (1, 2, 3)], base.train_curve_png)
    seg = np.zeros((12, 12, 6), np.uint8)
    seg[3:7, 3:7, 2:4] = 2
    rows = (score_case("BraTS20_Hit_001", {"wt": seg > 0}, seg, (1.0, 1.0, 1.0))
            + score_case("BraTS20_Missed_002", {"wt": seg > 5}, seg, (1.0, 1.0, 1.0))
            + score_case("BraTS20_Half_003", {"wt": np.roll(seg > 0, 2, 0)}, seg, (1.0, 1.0, 1.0)))
    frame = pd.DataFrame(rows)
    frame.to_csv(base.eval_cases, index=False)
    summary = summarise_cases(frame, {"wt": {"dice_mean": 0.5, "dice_pooled": 0.5}})
    Path(base.eval_report).write_text(json.dumps(summary))
    image = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    for name in ("best", "median", "worst"):
        plot_overlay(image, image > 1, image > 0.8, name, Path(base.overlays_dir) / f"{name}.png")
    Path(base.slices_dir).mkdir(parents=True)
    Path(base.slices_dir, "meta.json").write_text(json.dumps({"source": "synthetic", "patients": {"train": 2}}))
    pd.DataFrame({"case_id": ["BraTS20_Train_004", "BraTS20_Val_005", *SCORED],
                  "patient_id": ["BraTS20_Train_004", "BraTS20_Val_005", *SCORED],
                  "split": ["train", "val", "test", "test", "test"]}).to_parquet(f"{base.slices_dir}/cases.parquet")
    with tracking.start_run(base.experiment) as run:
        run.log_params({"train": {"lr": 0.001, "epochs": 3, "base": 8, "depth": 2, "target": "regions",
                                  "threshold": "auto"},
                        "slice": {"size": 32, "modalities": ["flair", "t1"]}, "seed": 42})
        run.set_tags({"git_commit": "abc123", "git_dirty": "false", "code_digest": "c0de", "dvc_raw_md5": "r4w",
                      "threshold": "0.6", "postprocess": "WT >= 10 mm3, TC keeps all, ET keeps all"})
    Path(base.registered_report).write_text(json.dumps({"name": "brats-unet", "version": "1", "alias": "challenger",
                                                        "run_id": run.run_id}))
    report_stage(base)
    return base, run.run_id


def test_the_report_is_one_file_with_every_section_and_nothing_to_fetch(built):
    base, run_id = built
    page = Path(base.report).read_text()
    for text in ("BraTS20_Bad_009", "labels outside {0, 1, 2, 4}: 255", "BraTS20_Missed_002", run_id,
                 "brats-unet v1", "abc123", "train.lr", "r4w", "lower is better", "higher is better",
                 # what a reader must know first: synthetic data, a gate decided by 3 patients, a quarantined case
                 "trained and tested on synthetic cases (2 training patients)", "Only 3 test patients decide the gate",
                 "1 of 5 cases were quarantined", "brats-unet v1 is not in the registry at",
                 # the split table names every patient; volumes in ml (4 x 4 x 2 voxels of 1 mm: 0.032 ml)
                 "BraTS20_Train_004", "BraTS20_Val_005", "reference (ml)", '<td class="num" data-v="0.032">0.03</td>',
                 "patient&#x27;s right on the left",
                 # what the model is, in words, and the gate's rules
                 "a 2D U-Net (base 8, depth 2) on 32 x 32 axial slices of flair, t1, segmenting WT, TC, ET",
                 "<code>promote.min_dice</code> = 0.7", "Nothing is promoted by this report",
                 # what the train stage chose on the validation patients, which the params alone do not say
                 "0.6 (chosen on the validation patients)", "WT &gt;= 10 mm3, TC keeps all, ET keeps all"):
        assert text in page, text
    gate_data = json.loads(re.search(r'<script type="application/json" id="gate-data">(.*?)</script>', page)[1])
    assert gate_data["decision"] == "unregistered" and gate_data["metric"] == "wt_dice"
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) == 4  # curve and three overlays
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no script, style or image from elsewhere
    assert "<link" not in page
    logged = list(Path("mlflow/artifacts").rglob("index.html"))
    assert len(logged) == 1 and logged[0].read_text() == page


def _chromium_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if CHROMIUM is None or sync_playwright is None:
        reason = "headless Chromium (Debian package chromium) and playwright are needed for the browser test"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; make test installs them")
        pytest.skip(reason)
    return sync_playwright


def test_the_report_renders_offline_in_chromium_with_every_image_decoded(built):
    sync_playwright = _chromium_or_skip()
    base, _ = built
    failed, external = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
        page = context.new_page()
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.on("request", lambda request: external.append(request.url)
                if not request.url.startswith(("file:", "data:")) else None)
        page.goto(Path(base.report).resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        header = page.locator("table.sortable th", has_text="dice").first
        first_cells = "rows => rows.map(r => r.cells[0].textContent)"
        header.click()
        ascending = page.eval_on_selector_all("table.sortable tbody tr", first_cells)
        header.click()
        descending = page.eval_on_selector_all("table.sortable tbody tr", first_cells)
        shot = PROJECT_ROOT / "reports" / "report-screenshot.png"  # kept for CI's artifacts
        shot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not failed and not external, (failed, external)
    assert len(images) == 4 and all(ok and w > 0 and h > 0 for ok, w, h in images), images
    assert ascending[0] == "BraTS20_Missed_002" and ascending[-1] == "BraTS20_Hit_001"
    assert descending == ascending[::-1]
    assert shot.stat().st_size > 10_000


def test_the_report_stage_is_declared_with_its_inputs():
    import yaml

    stage = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["report"]
    assert {"${base.eval_cases}", "${base.registered_report}", "${base.overlays_dir}"} <= set(stage["deps"])
    assert stage["outs"] == ["${base.report}"]  # cached: it embeds pictures of patients' slices (DVC, not git)
    assert dataclasses.asdict(BaseParams())["report"] == "reports/index.html"


def test_dvc_plots_render_offline_with_the_projects_template(tmp_path):
    """`dvc plots show` with .dvc/config's template: the CSV plots draw with no request leaving the machine."""
    sync_playwright = _chromium_or_skip()
    from tests.support.projects import init_git_dvc, run_cmd

    repo = tmp_path / "plots"
    repo.mkdir()
    init_git_dvc(repo)
    shutil.copy(PROJECT_ROOT / ".dvc" / "offline-plots.html", repo / ".dvc" / "offline-plots.html")
    shutil.copy(PROJECT_ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "dvc.yaml").write_text("plots:\n  - curve.csv:\n      x: epoch\n      y: val_dice\n")
    (repo / "curve.csv").write_text("epoch,val_dice\n1,0.2\n2,0.5\n3,0.6\n")
    run_cmd(["dvc", "plots", "show", "-o", "out"], repo)
    page = (repo / "out" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                     "--disable-background-networking"])
        context = browser.new_context(offline=True)
        view = context.new_page()
        view.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        view.goto((repo / "out" / "index.html").as_uri())
        view.wait_for_selector("canvas, svg.marks", timeout=20_000)  # vega drew the plot
        browser.close()
    assert not requests, requests


def test_the_subtitle_names_an_ensemble_and_a_context():
    from brats_seg.runners.report import model_summary

    registered = {"name": "brats-unet", "version": "3", "run_id": "r"}
    params = {"train.model": "resunet", "train.base": "16", "train.depth": "3", "slice.size": "96",
              "slice.modalities": "['flair', 't2']", "train.target": "regions", "train.epochs": "20", "train.lr": "0.1"}
    assert "a 2D residual U-Net (base 16, depth 3) on 96 x 96 axial slices of flair, t2," in model_summary(
        registered, {**params, "train.folds": "0", "slice.context": "0"})
    assert ("an ensemble of 5 2D residual U-Nets (base 16, depth 3), one per fold of the training patients, on 96 x 96 "
            "axial slices (with the slice above and below as context) of flair, t2,") in model_summary(
        registered, {**params, "train.folds": "5", "slice.context": "1"})
