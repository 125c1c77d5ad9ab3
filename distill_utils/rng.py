"""Randomness in one place: the seeds every part of a run derives from --seed, and the global RNG
state saved and restored (so a step can be replayed, or a run resumed, with the same draws)."""
import contextlib
from typing import Iterator, Optional, Tuple, Union

import torch

Device = Union[str, torch.device]


def expert_seed(seed: int, n: int) -> int:
    """Expert n of buffer.py: its network init, dropout masks and epoch orders."""
    return seed * 100003 + n


def pass_order_seed(seed: int, pass_idx: int) -> int:
    """The order in which a distillation visits the buffer files on its pass `pass_idx` over them."""
    return seed * 7919 + pass_idx


def phase_seed(seed: int, phase_index: int) -> int:
    """Distillation phase `phase_index`: the student's dropout, real-pair init, start epochs and minibatches."""
    return seed * 1009 + phase_index


def segment_seed(seed: int, iteration: int, k: int) -> int:
    """Expert segment k of distillation iteration `iteration` (--experts_per_it > 1): its student's dropout,
    wherever it is matched."""
    return ((seed * 1_000_003 + iteration) * 65_537 + k) % 2**63


def eval_run_seed(seed: int, k: int) -> int:
    """Evaluation run k: its network init, batch order and dropout."""
    return (seed * 1_000_003 + k) % (2**63)


def rng_state(device: Device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(CPU state, state of `device` if it is a CUDA device else None) of the global generators."""
    device = torch.device(device)
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state: Tuple[torch.Tensor, Optional[torch.Tensor]], device: Device) -> None:
    """Restore what rng_state(device) returned (a None CUDA part, or a CPU device, leaves CUDA alone)."""
    device = torch.device(device)
    torch.set_rng_state(state[0])
    if state[1] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def seeded(seed: int, device: Device) -> Iterator[None]:
    """Draws inside the block come from `seed`, on the CPU and on `device` (only that CUDA device, whichever is
    current); afterwards the global RNG is as it was before the block."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield
