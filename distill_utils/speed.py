"""Speed levers (--amp, --channels_last; declared in settings.py) and the CUDA determinism flags the exact replay
and resume need.

Mixed precision runs the network's forward under torch.autocast (the Student does it, see student.py);
the contrastive loss and everything outside the network stay float32. Default off: then nothing here
touches the computation.
"""
import contextlib
import os
from typing import ContextManager, Union

import torch

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: Union[str, torch.device], amp: str) -> ContextManager:
    """The autocast context of `amp` on `device` (a no-op context for 'off')."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])


def deterministic(device: Union[str, torch.device]) -> dict:
    """Make CUDA kernels repeat bit for bit (the pass-2 replay and --resume need it); returns the flags set.

    cuDNN: deterministic algorithms, no benchmarking (which would pick kernels by timing); cuBLAS: a fixed
    workspace (must be set before the first cuBLAS call); ops with a deterministic variant use it.
    """
    if torch.device(device).type != "cuda":
        return {"device": str(device)}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
            "cudnn_deterministic": True, "cudnn_benchmark": False, "deterministic_algorithms": True,
            "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"],
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
