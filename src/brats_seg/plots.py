"""Figures: the training curve and overlays of predictions on MRI (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training_curve(history: list[dict], path: str | Path) -> Path:
    """Loss (train, validation) and validation Dice per epoch, as a PNG."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="soft Dice loss", title="loss")
    ax_loss.legend()
    ax_dice.plot(epochs, [h["val_dice"] for h in history], color="tab:green")
    ax_dice.set(xlabel="epoch", ylabel="Dice (per case, slice space)", title="validation Dice", ylim=(0, 1))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_overlay(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, title: str, path: str | Path) -> Path:
    """One axial slice ``[H, W]`` with the reference (green) and predicted (red) contours."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image, cmap="gray")
    if ref.any():
        ax.contour(ref.astype(float), levels=[0.5], colors="lime", linewidths=1)
    if pred.any():
        ax.contour(pred.astype(float), levels=[0.5], colors="red", linewidths=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
