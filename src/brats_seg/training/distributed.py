"""Training on several processes with torch.distributed (DistributedDataParallel), started by torchrun.

``train.nproc`` is the number of training processes. `python -m stages.train` (and so `dvc repro` and the
flows) starts itself again under torchrun on this host when ``nproc`` > 1 (:func:`launch`); a run already
started by torchrun (``torchrun --nproc-per-node N -m stages.train``, or several hosts with ``--nnodes``) is
used as it is, and must have ``nproc`` processes in all. Processes talk over NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from brats_seg.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its host."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, the model, reports and MLflow records."""
        return self.rank == 0

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over all processes, differentiable (the backward pass sums the gradients)."""
        return tensor if self.world == 1 else _Total.apply(tensor)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of ``tensor`` over all processes (not differentiable)."""
        if self.world > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            tensor /= self.world
        return tensor

    def max(self, value: int) -> int:
        """Largest ``value`` over all processes."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


class _Total(torch.autograd.Function):
    """All-reduce (sum) whose backward pass is also an all-reduce (sum): every process ends up with the
    gradient of the sum of all processes' losses with respect to its own input."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001, ARG004 - autograd's API
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001, ARG004 - autograd's API
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the torch.distributed
    environment)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launch(module: str, nproc: int, argv: list[str]) -> int:
    """Run ``python -m module argv`` as ``nproc`` processes on this host under torchrun; their exit code.

    Each process gets ``cores / nproc`` CPU threads unless OMP_NUM_THREADS says otherwise. A process that
    fails has already said why on stderr, so torchrun's own failure report is left out.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module", module,
                                         *argv])
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)  # its agent's lines; failures are said below
    log.info("training on %d processes (torchrun --standalone --nproc-per-node %d)", nproc, nproc)
    try:
        run(args)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        rank0 = dict(failures).get(0)
        if rank0 is None or rank0.exitcode != 2:  # rank 0 did not say why (exit code 2: it printed a user error)
            for rank, failure in failures:
                log.error("training process %d failed (%s); its own output above says why",
                          rank, f"exit code {failure.exitcode}" if failure.exitcode >= 0
                          else f"signal {-failure.exitcode}")
        return next((f.exitcode for _, f in failures if f.exitcode > 0), 1)
    return 0


@contextmanager
def process_group(nproc: int, device: str) -> Iterator[Ranks]:
    """Join the run's process group (NCCL on CUDA, gloo on CPU) for the block; a lone process has none.
    ``device`` is a ``train.device`` value (auto, cuda or cpu); each process uses its local GPU.

    Raises UserError when the processes torchrun started are not ``nproc`` in all.
    """
    from brats_seg.inference.bundle import pick_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != nproc:
        raise UserError(f"this run has {world} training process(es) but train.nproc is {nproc}; set "
                        f"train.nproc: {world} in params.yaml, or start {nproc} process(es) in all.")
    if world == 1:
        yield Ranks(device=pick_device(device))
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    _quiet_other_ranks(rank)
    ranks = Ranks(rank, world, local_rank, pick_device(device))
    if ranks.device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if ranks.device.type == "cuda" else "gloo")
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def _quiet_other_ranks(rank: int) -> None:
    """Every process runs the same code and meets the same warnings: rank 0 says them once; the others log
    errors only."""
    if rank != 0:
        logging.getLogger("brats_seg").setLevel(logging.ERROR)
