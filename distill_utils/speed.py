"""Speed levers and the kernel flags of a run.

--amp runs the student networks' forward under torch.autocast (the Student does it, see student.py); the
contrastive loss and everything outside the network stay float32. --tf32 and --nondeterministic loosen CUDA's
kernels: TensorFloat-32 products in matmuls and convolutions; cuDNN algorithms picked by timing and kernels that
may sum in any order. By default none is on, and CUDA runs deterministic float32 kernels: then the pass-2 replay
is bit for bit and --resume ends where an uninterrupted run does. In distillation every lever is guarded
(method/amp_guard.py): its synthetic-data gradient is compared with the strict float32 one every --amp_check_it
iterations and the run falls back above --amp_tolerance. --threads sets the CPU threads.
"""
import contextlib
import os

import torch

from common.errors import UserError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_speed_args(p, distill=False):
    g = p.add_argument_group("speed")
    guarded = ("; guarded in distillation (--amp_tolerance)" if distill else "")
    g.add_argument("--amp", default="off", choices=list(AMP_DTYPES),
                   help="mixed precision (torch.autocast) for the student networks: experts, evaluation students"
                        + (" and, while their synthetic-data gradient stays within --amp_tolerance of float32, the "
                           "distillation passes" if distill else "") + " (default: off)")
    g.add_argument("--channels_last", action="store_true",
                   help="feed images to the image encoder in channels-last memory format (a speed lever for "
                        "convolutional encoders, measured in docs/paper_scale.md)")
    g.add_argument("--tf32", action="store_true",
                   help="CUDA: TensorFloat-32 products in matmuls and cuDNN convolutions" + guarded + " (default: off)")
    g.add_argument("--nondeterministic", action="store_true",
                   help="CUDA: cuDNN picks its algorithms by timing (cudnn.benchmark) and kernels may sum in any order; "
                        "the replay of constant matching and --resume are then no longer bit for bit" + guarded +
                        " (default: off, deterministic kernels)")
    g.add_argument("--threads", type=int, help="CPU threads of the computation (default: torch's, one per core)")
    if distill:
        g.add_argument("--amp_tolerance", type=float, default=0.05,
                       help="--amp, --tf32, --nondeterministic: largest relative error of the synthetic-data gradient "
                            "against strict float32 on the same iteration; above it the rest of the run uses strict "
                            "float32 (default: 0.05)")
        g.add_argument("--amp_check_it", type=int, default=100,
                       help="compare the levers' gradient against strict float32 every N iterations, starting with the "
                            "first (default: 100)")


def check_speed_args(args):
    for name in ("amp_tolerance", "amp_check_it", "threads"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:  # also refuses NaN
            raise UserError(f"--{name} {value}: expected a positive number")
    for name in ("tf32", "nondeterministic"):
        if getattr(args, name, False) and torch.device(args.device).type != "cuda":
            raise UserError(f"--{name}: a CUDA kernel setting, and this run is on {args.device}")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def autocast(device, amp):
    """The autocast context of `amp` on `device` (a no-op context for 'off')."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])


def kernels(device, tf32=False, nondeterministic=False):
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


def deterministic(device):
    """The strict kernels (see `kernels`); returns the flags set."""
    return kernels(device)


@contextlib.contextmanager
def strict_kernels(device):
    """Strict kernels inside the block, the run's own flags restored after it (the levers' guard)."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    kernels(device)
    try:
        yield
    finally:
        tf32, _, det, bench, algos = saved
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = det, bench
        torch.use_deterministic_algorithms(algos, warn_only=True)
