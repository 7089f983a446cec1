"""Multi-process training with ``torch.distributed``: set-up from torchrun's environment, and the
few collective steps the trainer needs.

    torchrun --nproc_per_node 2 -m multibox train --config cpu_digits train.batch_size=4

Every process trains a replica wrapped in ``DistributedDataParallel`` (gloo on CPUs, NCCL on
GPUs, one GPU per process): each takes its own share of every global batch of ``batch_size x
world`` images, gradients are averaged, and the losses' positive-anchor counts are averaged
over the processes too (:func:`multibox.losses.positive_normalizer`), so that N processes with batches of ``b``
take the steps of one process with batches of ``N b``. Rank 0 writes the logs and
checkpoints; evaluation is split over the processes and the detections gathered on rank 0.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

__all__ = ["Distributed", "setup"]

# A process that dies leaves the others waiting in a collective: torchrun stops them, and
# without it this bounds the wait.
TIMEOUT = datetime.timedelta(minutes=5)


class Distributed:
    """This process's place in the run: ``rank`` of ``world`` (1 and 0 for a single process)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that logs, evaluates and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, value):
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if not self.enabled:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value):
        """Rank 0's ``value`` on every process."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), if any.

    Returns the process's place and its device: on CUDA, GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Distributed(rank, world, local_rank), device
