"""Process-group set-up for one or many processes (torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, ...).

Under Ray Train the group already exists when the loop starts (Ray made it, and sets the same variables): it is used
as it is and left for Ray to destroy."""
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this process made the process group (torchrun), so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_preference: str) -> Ranks:
    """Join the process group when started by torchrun (nccl on CUDA, gloo on CPU); else a single process."""
    made_by_caller = dist.is_initialized()
    if not made_by_caller and (not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1):
        return Ranks(0, 1, 0, pick_device(device_preference))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not made_by_caller:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=not made_by_caller)


def teardown(ranks: Ranks) -> None:
    if ranks.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if ranks.world_size == 1:
        return flag
    value = torch.tensor([float(flag)], device=ranks.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj, ranks: Ranks) -> list:
    """``obj`` of every rank, in rank order (on every rank)."""
    if ranks.world_size == 1:
        return [obj]
    out = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ranks: Ranks) -> None:
    if ranks.world_size > 1:
        dist.barrier()


def torchrun_command(module: str, nproc_per_node: int, args: list[str]) -> list[str]:
    """Re-launch ``python -m module args`` under torchrun on this machine alone (single node, free rendezvous
    port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
            "-m", module, *args]
