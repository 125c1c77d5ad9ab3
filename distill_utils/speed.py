"""Speed levers (--amp, --channels_last) and the CUDA determinism flags the exact replay and resume need.

Mixed precision runs the network's forward under torch.autocast (the Student does it, see student.py);
the contrastive loss and everything outside the network stay float32. Default off: then nothing here
touches the computation.
"""
import contextlib
import os

import torch

from common.errors import UserError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_speed_args(p, distill=False):
    g = p.add_argument_group("speed")
    g.add_argument("--amp", default="off", choices=list(AMP_DTYPES),
                   help="mixed precision (torch.autocast) for the student networks: experts, evaluation students"
                        + (" and, while their synthetic-data gradient stays within --amp_tolerance of float32, the "
                           "distillation passes" if distill else "") + " (default: off)")
    g.add_argument("--channels_last", action="store_true",
                   help="feed images to the image encoder in channels-last memory format (a speed lever for "
                        "convolutional encoders, measured in docs/results.md)")
    if distill:
        g.add_argument("--amp_tolerance", type=float, default=0.05,
                       help="--amp: largest relative error of the synthetic-data gradient against float32 on the same "
                            "iteration; above it the rest of the run uses float32 (default: 0.05)")
        g.add_argument("--amp_check_it", type=int, default=100,
                       help="--amp: compare against float32 every N iterations, starting with the first (default: 100)")


def check_speed_args(args):
    for name in ("amp_tolerance", "amp_check_it"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:  # also refuses NaN
            raise UserError(f"--{name} {value}: expected a positive number")


def autocast(device, amp):
    """The autocast context of `amp` on `device` (a no-op context for 'off')."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])


def deterministic(device):
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
