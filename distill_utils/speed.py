"""Speed levers (declared in settings.py) and the kernel flags of a run.

--amp runs the student networks' forward under torch.autocast (the Student does it, see student.py); the
contrastive loss and everything outside the network stay float32. --tf32 and --nondeterministic loosen CUDA's
kernels: TensorFloat-32 products in matmuls and convolutions; cuDNN algorithms picked by timing and kernels that
may sum in any order. By default none is on, and CUDA runs deterministic float32 kernels: then the pass-2 replay
is bit for bit and --resume ends where an uninterrupted run does. In distillation every lever is guarded
(method/amp_guard.py): its synthetic-data gradient is compared with the strict float32 one every --amp_check_it
iterations and the run falls back above --amp_tolerance. --threads sets the CPU threads.
"""
import argparse
import contextlib
import os
from typing import ContextManager, Iterator, Union

import torch

from common.errors import UserError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def apply_levers(args: argparse.Namespace) -> dict:
    """Refuse a CUDA kernel lever off CUDA, set the threads and the kernel flags; returns the flags as a record."""
    for name in ("tf32", "nondeterministic"):
        if getattr(args, name, False) and torch.device(args.device).type != "cuda":
            raise UserError(f"--{name}: a CUDA kernel setting, and this run is on {args.device}")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return kernels(args.device, args.tf32, args.nondeterministic)


def autocast(device: Union[str, torch.device], amp: str) -> ContextManager:
    """The autocast context of `amp` on `device` (a no-op context for 'off')."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])


def kernels(device: Union[str, torch.device], tf32: bool = False, nondeterministic: bool = False) -> dict:
    """Set the kernel flags of `device` for the run; returns them as a record. Strict (the default): deterministic
    cuDNN/cuBLAS kernels, no TF32 (the pass-2 replay and --resume need them); cuBLAS's fixed workspace must be set
    before its first call."""
    if torch.device(device).type != "cuda":
        return {"device": str(device), "threads": torch.get_num_threads()}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.deterministic = not nondeterministic
    torch.backends.cudnn.benchmark = nondeterministic
    torch.use_deterministic_algorithms(not nondeterministic, warn_only=True)
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
            "cudnn_deterministic": not nondeterministic, "cudnn_benchmark": nondeterministic,
            "deterministic_algorithms": not nondeterministic,
            "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"],
            "cudnn_allow_tf32": tf32, "matmul_allow_tf32": tf32}


def deterministic(device: Union[str, torch.device]) -> dict:
    """The strict kernels (see `kernels`); returns the flags set."""
    return kernels(device)


@contextlib.contextmanager
def strict_kernels(device: Union[str, torch.device]) -> Iterator[None]:
    """Strict kernels inside the block, the run's own flags restored after it (the levers' guard)."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled())
    kernels(device)
    try:
        yield
    finally:
        tf32, det, bench, algos = saved
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = det, bench
        torch.use_deterministic_algorithms(algos, warn_only=True)
