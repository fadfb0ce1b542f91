"""Feeding training batches: the training set on the device (when it fits), or streamed from the shards in
batches read one ahead on a thread; both hand out the same rows in the same order."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from brats_seg.data.dataset import ShardedSplit, SliceSet
from brats_seg.data.labels import REGIONS

log = logging.getLogger(__name__)


class DeviceData:
    """Training images and labels on the device (or pinned host memory when they don't fit)."""

    def __init__(self, data: SliceSet, regions: tuple[str, ...], device: torch.device) -> None:
        self.regions, self.device = regions, device
        images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if images.nbytes + labels.nbytes < 0.5 * free:
                images, labels = images.to(device), labels.to(device)
            else:
                log.info("training set (%.1f GB) kept in pinned host memory", images.nbytes / 1e9)
                images, labels = images.pin_memory(), labels.pin_memory()
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.images.device)
        x = self.images[idx].to(self.device, non_blocking=True).float()
        y = region_targets(self.labels[idx].to(self.device, non_blocking=True), self.regions)
        return x, y

    def batches(self, order: torch.Tensor, starts: list[int], size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """The batches ``order[start:start + size]`` for each start, in turn."""
        for start in starts:
            yield self.batch(order[start:start + size])


class StreamData:
    """Training batches read from the shards as they are needed, one batch ahead in a background thread
    (into pinned memory on CUDA); the same batches as :class:`DeviceData` for the same order."""

    def __init__(self, data: ShardedSplit, regions: tuple[str, ...], device: torch.device) -> None:
        self.data, self.regions, self.device = data, regions, device

    def __len__(self) -> int:
        return len(self.data)

    def _read(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = (torch.from_numpy(a) for a in self.data.take(idx))
        if self.device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def batches(self, order: torch.Tensor, starts: list[int], size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        order = order.cpu().numpy()
        with ThreadPoolExecutor(1, thread_name_prefix="brats-seg-batches") as reader:
            ahead = [reader.submit(self._read, order[start:start + size]) for start in starts[:1]]
            for i in range(len(starts)):
                images, labels = ahead.pop().result()
                if i + 1 < len(starts):
                    ahead.append(reader.submit(self._read, order[starts[i + 1]:starts[i + 1] + size]))
                x = images.to(self.device, non_blocking=True).float()
                yield x, region_targets(labels.to(self.device, non_blocking=True), self.regions)


_LUTS: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}


def region_targets(labels: torch.Tensor, regions: tuple[str, ...] = ("wt",)) -> torch.Tensor:
    """Binary targets ``[N, R, H, W]`` (float, on ``labels``' device) from uint8 label maps ``[N, H, W]``.

    One gather through a label -> regions lookup table built once per device: no host-to-device copy and
    no synchronisation inside a training step.
    """
    key = (str(labels.device), tuple(regions))
    lut = _LUTS.get(key)
    if lut is None:
        table = np.zeros((256, len(regions)), dtype=np.float32)
        for r, region in enumerate(regions):
            table[list(REGIONS[region]), r] = 1.0
        lut = _LUTS[key] = torch.from_numpy(table).to(labels.device)
    return lut[labels.long()].permute(0, 3, 1, 2)
