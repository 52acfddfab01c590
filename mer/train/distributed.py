"""torch.distributed for fold sharding: under ``torchrun`` every rank trains its share of the folds
(round robin), writes its own fold files into the shared run directory, and rank 0 merges after a barrier.

    torchrun --nproc_per_node=2 -m mer train --data synth --out runs/x      # one machine, 2 processes
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --nproc_per_node=8 -m mer train ...  # 2 machines
                                                                  (the run directory on a shared file system)

Backend: gloo (training runs on the CPU; the collectives only exchange small status objects);
MER_DIST_BACKEND overrides. Without the torchrun
environment (RANK/WORLD_SIZE unset) everything is a single process and these helpers do nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local, False)
    backend = os.environ.get("MER_DIST_BACKEND") or "gloo"
    # folds can take long: the barrier before the merge must not time out while other ranks train
    hours = float(os.environ.get("MER_DIST_TIMEOUT_HOURS", "48"))
    dist.init_process_group(backend, timeout=timedelta(hours=hours))
    return DistContext(rank, world, local, True)


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def gather(ctx: DistContext, obj) -> list:
    """Every rank's ``obj`` (a picklable object), on every rank."""
    if not ctx.active:
        return [obj]
    import torch.distributed as dist

    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def teardown(ctx: DistContext) -> None:
    if ctx.initialised_here:
        import torch.distributed as dist

        dist.destroy_process_group()
