"""Figures: the training curve and overlays of predictions on MRI (matplotlib, no display needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training_curve(history: list[dict], path: str | Path) -> Path:
    """Loss (train, validation) and validation Dice per epoch, as a PNG; one set of lines per ensemble member
    (rows with a ``fold``, train.folds), each validated on its own fold."""
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.5))
    folds = sorted({h["fold"] for h in history if "fold" in h}) or [None]
    for fold in folds:
        rows = [h for h in history if h.get("fold") == fold]
        epochs, name = [h["epoch"] for h in rows], "" if fold is None else f" (fold {fold})"
        ax_loss.plot(epochs, [h["train_loss"] for h in rows], label=f"train{name}")
        ax_loss.plot(epochs, [h["val_loss"] for h in rows], label=f"validation{name}", linestyle="--")
        ax_dice.plot(epochs, [h["val_dice"] for h in rows], label=f"validation{name}")
    ax_loss.set(xlabel="epoch", ylabel="loss (Dice + BCE; lower is better)", title="loss")
    ax_loss.legend(fontsize=7)
    ax_dice.set(xlabel="epoch", ylabel="Dice per case, slice space (higher is better)", title="validation Dice",
                ylim=(0, 1))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


OVERLAY_COLOURS = {"agree": (0.1, 0.85, 0.2), "missed": (0.15, 0.45, 1.0), "false_positive": (1.0, 0.2, 0.2)}


def plot_overlay(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, title: str, path: str | Path) -> Path:
    """One axial slice ``[H, W]`` with the tumour filled in: green where prediction and reference agree,
    blue where the reference has tumour the prediction missed (false negatives), red where the prediction
    marks tumour the reference does not have (false positives)."""
    ref, pred = ref.astype(bool), pred.astype(bool)
    rgba = np.zeros((*image.shape, 4), dtype=np.float32)
    for mask, name in ((ref & pred, "agree"), (ref & ~pred, "missed"), (pred & ~ref, "false_positive")):
        rgba[mask] = (*OVERLAY_COLOURS[name], 0.55)
    fig, ax = plt.subplots(figsize=(4, 4.4))
    ax.imshow(image, cmap="gray")
    ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in OVERLAY_COLOURS.values()]
    fig.legend(handles, ["agree", "missed (FN)", "false positive (FP)"], loc="lower center", ncol=3, fontsize=7,
               frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


# BraTS's usual colours: necrotic core red, oedema green, enhancing tumour yellow; the errors of each region in
# colours none of them uses.
LABEL_COLOURS = {"NCR": (0.9, 0.1, 0.1), "ED": (0.1, 0.8, 0.2), "ET": (1.0, 0.85, 0.0)}
ERROR_COLOURS = {"agree": (0.0, 0.75, 0.8), "missed": (1.0, 0.0, 1.0), "false_positive": (1.0, 0.5, 0.0)}


@dataclasses.dataclass(frozen=True)
class SliceView:
    """One axial slice to draw: the image ``[H, W]`` as shown, the reference's and the prediction's nested region
    masks (region name -> boolean ``[H, W]``), its name (e.g. ``z=77``) and the patient directions at the image's
    left, right, top and bottom edges (e.g. ``("R", "L", "A", "P")``; empty strings when unknown)."""

    image: np.ndarray
    ref: dict[str, np.ndarray]
    pred: dict[str, np.ndarray]
    name: str
    marks: tuple[str, str, str, str] = ("", "", "", "")


def plot_case_overlay(views: list[SliceView], title: str, path: str | Path) -> Path:
    """One row per slice: the reference and the prediction as label maps in three colours (NCR, ED, ET; one colour
    for a WT-only model), then one panel per region with agreement, false negatives and false positives; each
    panel carries the patient's directions at its edges."""
    regions = list(views[0].pred)
    ncols = 2 + len(regions)
    fig, grid = plt.subplots(len(views), ncols, figsize=(2.4 * ncols, 2.55 * len(views) + 0.5), squeeze=False,
                             layout="constrained")
    for axes, view in zip(grid, views):
        _draw_row(axes, view, regions)
    fig.suptitle(title, fontsize=10)
    shown = {**(dict(LABEL_COLOURS) if len(regions) > 1 else {"tumour": LABEL_COLOURS["ED"]}),
             "agree": ERROR_COLOURS["agree"], "missed (FN)": ERROR_COLOURS["missed"],
             "false positive (FP)": ERROR_COLOURS["false_positive"]}
    fig.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in shown.values()], list(shown), loc="outside lower center",
               ncol=len(shown), fontsize=7, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def _draw_row(axes: np.ndarray, view: SliceView, regions: list[str]) -> None:
    image = view.image
    for ax, masks, name in ((axes[0], view.ref, f"{view.name}: reference"), (axes[1], view.pred, "prediction")):
        ax.imshow(image, cmap="gray")
        ax.imshow(_label_rgba(masks, image.shape), interpolation="nearest")
        ax.set_title(name, fontsize=8)
    for ax, region in zip(axes[2:], regions):
        r, p = view.ref[region].astype(bool), view.pred[region].astype(bool)
        rgba = np.zeros((*image.shape, 4), dtype=np.float32)
        for mask, colour in ((r & p, "agree"), (r & ~p, "missed"), (p & ~r, "false_positive")):
            rgba[mask] = (*ERROR_COLOURS[colour], 0.6)
        ax.imshow(image, cmap="gray")
        ax.imshow(rgba, interpolation="nearest")
        ax.set_title(f"{region.upper()}: FN {int((r & ~p).sum())} / FP {int((p & ~r).sum())} px", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        left, right, top, bottom = view.marks
        for text, x, y, ha, va in ((left, 0.02, 0.5, "left", "center"), (right, 0.98, 0.5, "right", "center"),
                                   (top, 0.5, 0.98, "center", "top"), (bottom, 0.5, 0.02, "center", "bottom")):
            if text:
                ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=8,
                        fontweight="bold")


def _label_rgba(masks: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Nested region masks as a label map's colours: WT oedema, then TC necrotic core, then ET enhancing."""
    rgba = np.zeros((*shape, 4), dtype=np.float32)
    for region, colour in (("wt", "ED"), ("tc", "NCR"), ("et", "ET")):
        if region in masks:
            rgba[masks[region].astype(bool)] = (*LABEL_COLOURS[colour], 0.55)
    return rgba
