"""The registered model: the trained U-Net as an ONNX graph, a model that carries no code.

``models:/brats-unet@champion`` is logged with MLflow's ``onnx`` flavor: loading it runs the graph in
onnxruntime, and nothing stored with the version is Python that a loader would execute. Whoever can write the
artifact store (a bucket, a shared folder) can still swap a file, so the SHA-256 of every file of the version
is recorded in the registry at registration (:func:`brats_seg.registry.versions.register_model`) and checked by every
loader before use (:func:`brats_seg.registry.versions.fetch_registered_model`, and the README's snippet for
applications).

The graph takes preprocessed slices float32 ``[N, C, H, W]`` (input ``slices``; C = the metadata's ``channels``:
per ``slice.modalities``, 2 * ``slice.context`` + 1 slices; H = W = ``slice.size``) and returns sigmoid
probabilities float32 ``[N, R, H, W]`` (output ``probabilities``; R = the metadata's ``regions``); N is free. The
train stage's model file rides along as an extra file, read by brats-seg alone and only with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

INPUT, OUTPUT = "slices", "probabilities"
OPSET = 17


class _Probabilities(nn.Module):
    """The network with its sigmoid: what an application thresholds; with ``mirrors``, the mean of the
    probabilities of each flipped input flipped back (test-time mirroring, in the graph itself)."""

    def __init__(self, net: nn.Module, mirrors: tuple[tuple[int, ...], ...] = ((),)) -> None:
        super().__init__()
        self.net, self.mirrors = net, mirrors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in self.mirrors:
            p = torch.sigmoid(self.net(torch.flip(x, dims))).flip(dims) if dims else torch.sigmoid(self.net(x))
            total = p if total is None else total + p
        return total / len(self.mirrors)


def probability_module(net: nn.Module, tta: bool = False) -> nn.Module:
    """``net`` with its sigmoid, averaged over the mirrorings with ``tta``, in eval mode: what the graph computes."""
    from brats_seg.inference.bundle import MIRRORS

    return _Probabilities(net, MIRRORS if tta else ((),)).eval()


def export_onnx(net: nn.Module, example: np.ndarray, tta: bool = False) -> bytes:
    """The serialised ONNX graph of ``net`` in eval mode with a sigmoid on its logits (averaged over the
    mirrorings of :data:`brats_seg.inference.bundle.MIRRORS` with ``tta``), for inputs shaped like ``example`` float32
    ``[N, C, H, W]`` with any N. ``net`` is left in the mode it was in."""
    was_training = net.training
    wrapped = probability_module(net, tta)
    buffer = io.BytesIO()
    # the TorchScript-based exporter: the U-Net's ops map one to one, and it needs no onnxscript
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (torch.as_tensor(example, dtype=torch.float32),), buffer, dynamo=False,
                          input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                          dynamic_axes={INPUT: {0: "n"}, OUTPUT: {0: "n"}})
    net.train(was_training)
    return buffer.getvalue()


def run_onnx(graph: bytes, slices: np.ndarray) -> np.ndarray:
    """Probabilities float32 ``[N, R, H, W]`` of an exported graph for ``slices`` float32 ``[N, C, H, W]``, in
    onnxruntime on the CPU (what an application that loads the registered version runs)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(slices, dtype=np.float32)})[0]
