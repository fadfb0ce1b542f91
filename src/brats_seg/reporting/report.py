"""One self-contained run report: ``reports/index.html``.

A single HTML file with inline styles, inline images (base64 PNG) and a few lines of inline script (sorting
the per-case table), so that it opens offline in any browser, where hospitals run this. It shows the
validation summary and quarantine table, the training curves, per-case test metrics, the overlays of the
best, median and worst cases with tumour, and the model's lineage. Everything comes from the pipeline's own
reports; nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d6d9de;padding-bottom:4px}
.sub{color:#5b6472;margin:0 0 16px}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d6d9de;border-radius:6px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:20px}.card span{color:#5b6472;font-size:12px}
table{border-collapse:collapse;background:#fff;width:100%;font-size:13px}
th,td{border:1px solid #d6d9de;padding:4px 8px;text-align:left}th{background:#eceef2;cursor:pointer;user-select:none}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.one_empty td{background:#fff4e5}
figure{display:inline-block;vertical-align:top;width:330px;margin:0 12px 12px 0;background:#fff;
border:1px solid #d6d9de;padding:6px}figure img{display:block;width:100%}figure.wide{width:calc(100% - 14px)}
figcaption{font-size:12px;color:#5b6472;margin-top:4px}
img.curve{max-width:100%;background:#fff;border:1px solid #d6d9de}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;background:#fff;border:1px solid #d6d9de;
padding:10px}
dt{color:#5b6472}dd{margin:0;font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.note{color:#5b6472;font-size:12px}
.warn{background:#fff4e5;border:1px solid #f0b35a;border-radius:6px;padding:8px 14px;margin:12px 0}
.warn li{margin:2px 0}.verdict{font-size:16px;margin:6px 0}.verdict b{font-size:18px}
details{background:#fff;border:1px solid #d6d9de;padding:6px 10px;margin-top:8px}
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.dir !== 'asc'; th.dataset.dir = up ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return up ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def image_tag(path: str | Path, alt: str, css: str = "") -> str:
    """An ``<img>`` holding the PNG at ``path`` inline (base64), or a note when it is missing."""
    path = Path(path)
    if not path.is_file():
        return f'<p class="note">({html.escape(alt)}: {html.escape(str(path))} not written)</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    cls = f' class="{css}"' if css else ""
    return f'<img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: object, decimals: int | None = None) -> str:
    if isinstance(value, float):
        digits = decimals if decimals is not None else 3 if abs(value) < 10 else 1
        shown = "n/a" if math.isnan(value) else f"{value:.{digits}f}"
        return f'<td class="num" data-v="{value}">{shown}</td>'
    if isinstance(value, int):
        return f'<td class="num" data-v="{value}">{value}</td>'
    text = html.escape(str(value))
    return f'<td data-v="{text}">{text}</td>'


def table(frame: pd.DataFrame, sortable: bool = False, row_class: str | None = None,
          decimals: dict[str, int] | None = None) -> str:
    """An HTML table of ``frame`` (numbers right-aligned, with ``decimals`` digits in the columns it names, else 3
    below 10 and 1 above; sortable by clicking a header when asked)."""
    decimals = decimals or {}
    if frame.empty:
        return '<p class="note">none</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.to_dict("records"):
        cls = f' class="{html.escape(str(record.get(row_class, "")))}"' if row_class else ""
        rows.append(f"<tr{cls}>" + "".join(_cell(v, decimals.get(k)) for k, v in record.items()) + "</tr>")
    kind = ' class="sortable"' if sortable else ""
    return f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def cards(items: dict[str, object]) -> str:
    return '<div class="cards">' + "".join(
        f"<div class=\"card\"><b>{html.escape(str(v))}</b><span>{html.escape(k)}</span></div>"
        for k, v in items.items()) + "</div>"


def definition_list(items: dict[str, object]) -> str:
    pairs = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items())
    return f"<dl>{pairs}</dl>"


def validation_section(metrics: dict, quarantine: pd.DataFrame) -> str:
    summary = cards({"cases": metrics.get("cases"), "ok": metrics.get("ok"), "quarantined": metrics.get("quarantined"),
                     "unlabelled (kept apart)": metrics.get("unlabelled", 0)})
    return (f"<h2>Validation</h2>{summary}<h3>Quarantined cases</h3>"
            f"{table(quarantine.rename(columns={'case_id': 'case', 'reasons': 'reasons'}))}")


def region_table(summary: dict) -> pd.DataFrame:
    """One row per region of eval.json: per-patient means (medians for HD95) of the legacy and lesion-wise
    metrics, and how many cases had exactly one of prediction and reference empty."""
    rows = []
    order = ("wt", "tc", "et")  # outside in, as BraTS lists them (eval.json's keys are sorted)
    for region in sorted((r for r, s in summary.items() if isinstance(s, dict)), key=lambda r: order.index(r)
                         if r in order else len(order)):
        stats = summary[region]
        if isinstance(stats, dict):
            rows.append({"region": region.upper(), "Dice": stats.get("dice_mean", math.nan),
                         "lesion-wise Dice": stats.get("lesion_dice_mean", math.nan),
                         "precision": stats.get("precision_mean", math.nan),
                         "recall": stats.get("recall_mean", math.nan),
                         "HD95 median (mm)": stats.get("hd95_median", math.nan),
                         "lesion-wise HD95 median (mm)": stats.get("lesion_hd95_median", math.nan),
                         "one empty": stats.get("cases_one_empty", 0), "both empty": stats.get("cases_both_empty", 0)})
    return pd.DataFrame(rows)


# The per-case table's headers as the region table writes them.
CASE_HEADERS = {"case_id": "case", "dice": "Dice", "lesion_dice": "lesion-wise Dice", "iou": "IoU", "hd95": "HD95 (mm)",
                "lesion_hd95": "lesion-wise HD95 (mm)", "ref_voxels": "reference (voxels)",
                "pred_voxels": "predicted (voxels)", "ref_ml": "reference (ml)", "pred_ml": "predicted (ml)",
                "pred_lesions": "lesions predicted", "ref_lesions": "lesions in reference",
                "far_fp_ml": "false positives > 10 mm away (ml)", "empty_rule": "empty rule"}


def evaluation_section(summary: dict, cases: pd.DataFrame) -> str:
    wt = summary.get("wt", {})
    top = cards({"test cases": summary.get("n_cases"),
                 "WT Dice (mean per case)": f"{wt.get('dice_mean', math.nan):.3f}",
                 "WT HD95 median (mm)": f"{wt.get('hd95_median', math.nan):.1f}",
                 "missed or spurious tumour": wt.get("cases_one_empty", 0),
                 "no tumour, none predicted": wt.get("cases_both_empty", 0)})
    top += f"<h3>Per region</h3>{table(region_table(summary).round(3))}"
    volumes = ("ref_ml", "pred_ml") if "ref_ml" in cases.columns else ("ref_voxels", "pred_voxels")
    columns = [c for c in ("case_id", "region", "dice", "lesion_dice", "iou", "precision", "recall", "hd95",
                           "lesion_hd95", *volumes, "pred_lesions", "ref_lesions", "far_fp_ml", "empty_rule")
               if c in cases.columns]
    shown = cases[columns].fillna({"empty_rule": ""}).sort_values(["region", "dice"]) if len(cases) else cases
    shown = shown.rename(columns=CASE_HEADERS)
    note = ('<p class="note">Per patient on its own grid (docs/design.md). Click a header to sort. Rows in orange: '
            "exactly one of prediction and reference is empty (HD95 = 373.13 mm by the BraTS rule). Where errors come "
            "from: lesions (connected components) predicted and in the reference, and the volume predicted more than "
            "10 mm outside the reference's bounding box.</p>")
    volumes = {"reference (ml)": 2, "predicted (ml)": 2, "false positives > 10 mm away (ml)": 2}
    return f"<h2>Test metrics</h2>{top}{note}{table(shown, sortable=True, row_class='empty rule', decimals=volumes)}"


def overlay_section(overlays_dir: str | Path) -> str:
    figures = []
    for name in ("best", "median", "worst"):
        caption = (f"{name} test case with tumour by mean Dice over the regions, three axial slices through it, at "
                   f"the quartiles of its tumour (radiological view: the patient's right "
                   f"on the left, R/L/A/P at the edges): reference and prediction as label maps (red: necrotic core, "
                   f"green: oedema, yellow: enhancing), then each region's errors (teal: agree, magenta: missed, "
                   f"orange: false positive)")
        figures.append(f"<figure class=\"wide\">{image_tag(Path(overlays_dir) / f'{name}.png', caption)}"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "<h2>Overlays</h2>" + "".join(figures)


def warnings_section(warnings: list[str]) -> str:
    """What a reader must know before trusting any number below (synthetic data, few test patients, ...)."""
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f'<div class="warn"><b>Read this first</b><ul>{items}</ul></div>'


SHOWN_IDS = 30  # patient ids in the split table itself; a longer list folds out below it


def split_section(cases: pd.DataFrame) -> str:
    """Who is in which split: patients and cases per split, and every patient id (cases.parquet's rows)."""
    if cases.empty:
        return '<h2>Splits</h2><p class="note">(no cases.parquet: the slice stage has not run)</p>'
    rows, lists = [], []
    for split in ("train", "val", "test"):
        part = cases[cases["split"] == split]
        patients = sorted(part["patient_id"].unique())
        shown = ", ".join(patients[:SHOWN_IDS]) + (f" and {len(patients) - SHOWN_IDS} more" if len(patients) > SHOWN_IDS
                                                  else "")
        rows.append({"split": split, "patients": len(patients), "cases": len(part), "patient ids": shown or "none"})
        if len(patients) > SHOWN_IDS:
            lists.append(f"<details><summary>every {split} patient ({len(patients)})</summary>"
                         f"<p class=\"note\">{html.escape(', '.join(patients))}</p></details>")
    note = ('<p class="note">By a hash of each patient id and base.seed: adding or removing cases moves nobody '
            "else (docs/design.md).</p>")
    return f"<h2>Splits</h2>{note}{table(pd.DataFrame(rows))}{''.join(lists)}"


def gate_section(gate: dict, comparison: pd.DataFrame) -> str:
    """The promotion gate at report time: the decision, its numbers and reason, and champion versus challenger
    on the same test patients (``comparison``: one row per patient and compared score). Both also go into the page
    as JSON (``#gate-data``; raw text inside ``<script>``, so ``</`` is escaped), for scripts that read it."""
    kept = f"champion v{gate['champion']}" if gate["champion"] else "no champion"
    verdict = {"promote": f"the gate would promote v{gate['challenger']} to champion",
               "keep": f"the gate would keep {kept}",
               "champion": f"v{gate['challenger']} is the champion",
               "unregistered": f"v{gate['challenger']} is not in the registry"}[gate["decision"]]
    numbers = {f"v{gate['challenger']} (this run)": _number(gate.get("challenger_value"))}
    if gate.get("champion"):
        numbers[f"champion v{gate['champion']}"] = _number(gate.get("champion_value"))
    numbers["test patients"] = gate.get("test_patients") or "?"
    data = json.dumps({**gate, "patients": comparison.to_dict("records")}, sort_keys=True).replace("</", "<\\/")
    rules = (f"The rules: the challenger's value must reach <code>promote.min_dice</code> = {gate.get('min_dice')} and "
             f"beat the champion's, on the same test patients, by more than 0 and at least "
             f"<code>promote.min_improvement</code> = {gate.get('min_improvement')}.")
    body = (f'<p class="verdict">At report time ({html.escape(gate["at"])}), <b>{html.escape(verdict)}</b>, by '
            f"{html.escape(gate['metric_name'])} (<code>promote.metric</code>: {html.escape(gate['metric'])}).</p>"
            f"{cards(numbers)}<p>{html.escape(_sentence(gate['reason']))}</p><p>{rules}</p>"
            f'<p class="note">Nothing is promoted by this report: <code>brats-seg promote</code> applies the gate (the '
            f"demo and the scheduled flow run it right after the pipeline, a <code>dvc exp run</code> does not), "
            f"and <code>brats-seg audit</code> lists every decision it made.</p>")
    if not comparison.empty:
        body += f"<h3>Champion versus challenger, per test patient</h3>{table(comparison, sortable=True)}"
    return (f'<h2>Promotion gate</h2>{body}<script type="application/json" id="gate-data">{data}</script>')


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _number(value: object) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"


def render_report(sections: dict[str, str], title: str, subtitle: str) -> str:
    """The whole page: ``sections`` are HTML fragments in order."""
    body = "".join(sections.values())
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{STYLE}</style></head>"
            f"<body><main><h1>{html.escape(title)}</h1><p class=\"sub\">{html.escape(subtitle)}</p>{body}</main>"
            f"<script>{SORT_SCRIPT}</script></body></html>\n")


def lineage_section(lineage: dict) -> str:
    params = lineage.get("params", {})
    shown = {k: v for k, v in sorted(params.items()) if k.startswith(("train.", "slice.", "seed"))}
    return ("<h2>Lineage</h2>" + definition_list({k: v for k, v in lineage.items() if k != "params"})
            + "<h3>Parameters</h3>" + definition_list(shown))


def curve_section(curve_png: str | Path) -> str:
    note = ('<p class="note">Left: loss (soft Dice + <code>train.bce_weight</code> x BCE per region, lower is '
            "better) on the training and validation sets. Right: validation Dice per case in slice space (higher is "
            "better).</p>")
    return f"<h2>Training</h2>{note}{image_tag(curve_png, 'training curves', 'curve')}"

