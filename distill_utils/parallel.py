"""Data parallelism under torchrun (torch.distributed): one process per rank, each on its own device.

Launched by `torchrun --nproc_per_node R script.py ...`, `init` joins the process group from torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL on CUDA, each rank on cuda:<LOCAL_RANK>;
gloo on the CPU. Without torchrun (or with one rank) nothing is initialised and every helper here is the
identity, so one process runs exactly as before. Rank 0 alone writes files and logs (`is_main`); the
other ranks print nothing to stdout.

Work is split in contiguous blocks (`share`): rank r of R takes items [r n / R, (r + 1) n / R), so the
blocks concatenated in rank order are the items in order, and `gather` gives back results in that order.
"""
import atexit
import contextlib
import hashlib
import os
import sys
from typing import Iterable, Iterator, List, Optional

import torch
import torch.distributed as dist

from common.errors import UserError


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_ranks() -> int:
    """The number of ranks torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: cuda:<LOCAL_RANK> for --device auto/cuda under torchrun, else `device`."""
    if launched_ranks() == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise UserError(f"--device {device}: under torchrun each rank takes cuda:<LOCAL_RANK>; pass --device cuda "
                        "(or auto), and choose the GPUs with CUDA_VISIBLE_DEVICES")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise UserError(f"torchrun rank with LOCAL_RANK {local}: this host has {torch.cuda.device_count()} GPUs; "
                        "start at most that many processes per node (--nproc_per_node)")
    return torch.device("cuda", local)


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (a no-op for one process); returns this rank's device."""
    device = rank_device(device)
    if launched_ranks() == 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(teardown)
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # one console: rank 0's (errors still reach stderr)
    return device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def share(n: int, r: Optional[int] = None, size: Optional[int] = None) -> range:
    """The indices of `n` items that rank `r` of `size` (default: this rank of this run) works on."""
    r, size = rank() if r is None else r, world_size() if size is None else size
    return range(r * n // size, (r + 1) * n // size)


def gather(items: Iterable) -> list:
    """This rank's results of its `share`, joined over all ranks in rank (= item) order; every rank gets all."""
    if world_size() == 1:
        return list(items)
    parts = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def sum_to_all(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """Sum each tensor over the ranks, in place, with one reduction to rank 0 and one broadcast from it: every
    rank gets the very same values (bit for bit), whatever the backend's reduction order."""
    if world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.reduce(flat, dst=0, op=dist.ReduceOp.SUM)
    dist.broadcast(flat, src=0)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))
    return tensors


def digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_same(tensors: List[torch.Tensor], what: str) -> None:
    """Stop when the ranks' copies of `tensors` are not equal bit for bit (they apply the same updates)."""
    if world_size() == 1:
        return
    if len(set(gather([digest(tensors)]))) > 1:
        raise UserError(f"torchrun ranks hold different copies of {what}: their kernels are not deterministic "
                        "(mixed GPU types or library versions?); stopped before the checkpoint")


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every rank."""
    if world_size() == 1:
        return bool(flag)
    return all(gather([bool(flag)]))


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it may create shared files: a dataset, a feature cache), then the others."""
    if not is_main():
        dist.barrier()
    yield
    if is_main() and world_size() > 1:
        dist.barrier()
