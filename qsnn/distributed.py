"""The device a run uses (:func:`check_device`), and where a process stands in a run
over several processes (``torchrun``): one place for training (data parallelism) and
simulation (the test set in shards).

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`setup` joins the process group (gloo on
the CPU, nccl for CUDA) unless the caller has; alone it returns a one-process
:class:`Dist`, and everything downstream works unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from qsnn.errors import QsnnError


@dataclass
class Dist:
    """This process's place in a (possibly one-process) distributed run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process joined the group, so it also leaves it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device_name: str = "cpu") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if str(device_name).startswith("cuda") else "gloo")
        owns = True
    return Dist(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        owns_group=owns,
    )


def finish(where: Dist, failed: bool = False) -> None:
    """Leave the group this process joined: after every rank is done (gloo aborts a
    process whose peer hangs up while it still reads), or at once when this one ``failed``
    (its peers then fail on the broken connection instead of waiting at a barrier)."""
    if where.owns_group:
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def check_device(name):
    """A torch device qsnn runs on (cpu, cuda or cuda:N, and only a GPU that torch can
    see), as a torch.device; anything else is a QsnnError naming it."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise QsnnError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise QsnnError(f"unsupported device {name!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QsnnError(f"device {name!r} was asked but torch sees no CUDA GPU; use cpu")
    return device
