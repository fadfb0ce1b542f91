"""The registered model's own code, stored as source text with every model version ("models from code").

MLflow runs this file to load ``models:/brats-unet@champion``, so an application needs mlflow and torch
and nothing of brats-seg: this file imports only torch, numpy and mlflow, and the U-Net below is a copy of
:class:`brats_seg.models.unet.UNet` frozen with the model (same parameter names, same outputs; the tests
check both). The weights are the train stage's model file, read with ``torch.load(weights_only=True)``:
loading never unpickles Python objects, and a crafted file is refused with one sentence.

``predict`` takes preprocessed slices float32 ``[N, C, H, W]`` (C = the metadata's ``slice.modalities``)
and returns sigmoid probabilities float32 ``[N, R, H, W]`` (R = the metadata's ``regions``). Load-time
options (``mlflow.pyfunc.load_model(uri, model_config={...})``): ``device`` ("auto", "cpu", "cuda") and
``batch_size``.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import torch
from torch import nn

import mlflow

WEIGHTS = "weights"  # the key of the model file among the model's artifacts
DEFAULTS = {"device": "auto", "batch_size": 64}


class RefusedWeights(ValueError):
    """The weights artifact is not a brats-seg model file that loads without running code."""


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


def _block(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"), _norm(norm, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none"), _norm(norm, cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` poolings and widths ``base * 2**level``: input ``[N, in_channels, H, W]``,
    logits ``[N, out_channels, H, W]`` (H and W divisible by ``2 ** depth``)."""

    def __init__(self, in_channels: int = 4, out_channels: int = 1, base: int = 32, depth: int = 4,
                 norm: str = "batch") -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoders.append(_block(cin, w, norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(widths[-2], widths[-1], norm)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_in, w_out in zip(reversed(widths[1:]), reversed(widths[:-1])):
            self.upsamples.append(nn.ConvTranspose2d(w_in, w_out, 2, stride=2))
            self.decoders.append(_block(2 * w_out, w_out, norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def read_weights(path: str) -> dict[str, Any]:
    """The model file at ``path`` as plain values and tensors (``torch.load(weights_only=True)``); raises
    :class:`RefusedWeights` for anything else, before any of its code could run."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        why = ("it holds Python objects other than tensors and plain values, which could run code"
               if "unsupported global" in str(exc).lower() else "it is not a torch weights file")
        raise RefusedWeights(f"{path} was refused: {why}; load a model version registered by brats-seg.") from None
    except Exception as exc:  # noqa: BLE001 - whatever the decoder trips on, the file is not usable
        raise RefusedWeights(f"{path} was refused: it is not a complete torch weights file "
                             f"({type(exc).__name__}); load a model version registered by brats-seg.") from None
    if not isinstance(data, dict) or not {"state_dict", "config"} <= set(data):
        raise RefusedWeights(f"{path} was refused: it is a torch file but not a brats-seg model (no state_dict "
                             f"or config); load a model version registered by brats-seg.")
    return data


def build_unet(data: dict[str, Any]) -> UNet:
    """The U-Net of a model file's ``config`` with its ``state_dict`` loaded (strictly), in eval mode."""
    try:
        net = UNet(**data["config"])
        net.load_state_dict(data["state_dict"])
    except (TypeError, RuntimeError) as exc:
        raise RefusedWeights(f"the weights do not fit their U-Net config ({str(exc)[:100]}); load a model version "
                             f"registered by brats-seg.") from None
    return net.eval()


def pick_device(requested: str) -> torch.device:
    """``auto`` (a CUDA GPU when present, else the CPU), ``cpu`` or ``cuda``."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@torch.no_grad()
def probabilities(net: nn.Module, slices: np.ndarray, batch_size: int) -> np.ndarray:
    """Sigmoid probabilities float32 ``[N, R, H, W]`` of ``net`` for slices ``[N, C, H, W]``, in batches."""
    device = next(net.parameters()).device
    data = torch.as_tensor(np.asarray(slices, dtype=np.float32))
    if data.ndim != 4:
        raise ValueError(f"expected preprocessed slices [N, C, H, W], got an array of shape {tuple(data.shape)}")
    out = [torch.sigmoid(net(data[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, len(data), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, net.head.out_channels, *data.shape[2:]), np.float32)


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: U-Net weights from the ``weights`` artifact, sigmoid probabilities out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = {**DEFAULTS, **(context.model_config or {})}
        self.batch_size = int(config["batch_size"])
        self.net = build_unet(read_weights(context.artifacts[WEIGHTS])).to(pick_device(str(config["device"])))

    def predict(self, context: mlflow.pyfunc.PythonModelContext | None, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Probabilities float32 ``[N, R, H, W]`` for preprocessed slices float32 ``[N, C, H, W]``."""
        return probabilities(self.net, model_input, self.batch_size)


mlflow.models.set_model(SegmentationModel())
