"""Model files and batched slice inference, shared by training (validation), evaluation and prediction."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import numpy as np
import torch

from brats_seg.errors import UserError
from brats_seg.models.unet import UNet, UNetConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A trained model and what is needed to use it: target regions, slice preprocessing, threshold."""

    model: UNet
    regions: tuple[str, ...]
    slice_params: dict
    threshold: float = 0.5


def pick_device(requested: str) -> torch.device:
    """``cpu``, ``cuda`` (fails without a GPU) or ``auto`` (GPU when present, else CPU with a warning)."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise UserError("the device is 'cuda' but no CUDA GPU is available; set it to 'auto' to fall back "
                        "to the CPU, or to 'cpu'.")
    _warn_cpu()
    return torch.device("cpu")


@functools.cache
def _warn_cpu() -> None:
    log.warning("no CUDA GPU available: running on the CPU")  # once per process


def save_model(path: str | Path, model: UNet, regions: tuple[str, ...], slice_params: dict,
               extra: dict | None = None) -> Path:
    """Write the model file: weights, U-Net config, target regions, slice preprocessing (and ``extra``).

    Only what made the weights goes in (no run id, no time), so the same training gives the same bytes and
    DVC can tell that a run reproduced. Loads with ``weights_only=True``.
    """
    from brats_seg.checkpoint import save_checkpoint

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint(path, {"state_dict": state, "config": dataclasses.asdict(model.config),
                                  "regions": list(regions), "slice": slice_params, **(extra or {})})


def load_model(path: str | Path, device: torch.device | str = "cpu") -> ModelBundle:
    """A model file written by :func:`save_model`; anything else is refused with one sentence."""
    from brats_seg.checkpoint import load_weights_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; train one first (dvc repro train).")
    data = load_weights_file(path)
    if not isinstance(data, dict) or not {"state_dict", "config", "regions", "slice"} <= set(data):
        raise UserError(f"{path} is a torch file but not a brats-seg model (it lacks state_dict, config, regions "
                        f"or slice); pass a model written by the train stage (models/unet.pt).")
    try:
        model = UNet(UNetConfig(**data["config"]))
        model.load_state_dict(data["state_dict"])
    except (TypeError, RuntimeError) as exc:
        raise UserError(f"{path} does not hold weights that fit its U-Net config ({str(exc)[:100]}); retrain "
                        f"the model (dvc repro train).") from None
    model.to(device, memory_format=torch.channels_last).eval()
    return ModelBundle(model, tuple(data["regions"]), dict(data["slice"]), float(data.get("threshold", 0.5)))


# Slices per forward pass: big batches keep a GPU busy; on CPUs small ones stay in cache (measured with
# benchmarks/predict_throughput.py: 128 x 128 slices, base 32, 2 cores: 8 per batch 2.5x faster than 256).
GPU_BATCH, CPU_BATCH = 256, 8


@torch.no_grad()
def predict_slices(model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch_size: int | None = None,
                   amp: bool = True, sigmoid: bool = True) -> torch.Tensor:
    """Sigmoid probabilities ``[N, R, H, W]`` (float16, on the model's device) for images ``[N, C, H, W]``;
    with ``sigmoid=False`` the logits instead (float32). ``batch_size`` defaults to what suits the device."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    batch_size = batch_size or (GPU_BATCH if cuda else CPU_BATCH)
    was_training = model.training
    model.eval()
    data = torch.as_tensor(images)
    out = []
    fmt = torch.channels_last  # faster on CPUs too (oneDNN), whatever the model's own layout
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and cuda):
        for start in range(0, len(data), batch_size):
            x = data[start:start + batch_size].to(device, non_blocking=True).float().contiguous(memory_format=fmt)
            logits = model(x).float()
            out.append(torch.sigmoid(logits).half() if sigmoid else logits)
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=device, dtype=torch.float16 if sigmoid else torch.float32)
