"""What a benchmark reports beside its timings: the machine, the peak memory of what it runs, a CUDA out-of-memory
error told from other errors (bench.paper_scale)."""
import platform

import torch


def machine(device):
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


class Memory:
    """Peak memory of what runs between reset() and peak_gb(): CUDA allocator peak, or the process's peak RSS
    (VmHWM, reset to the current resident set; a fresh process per setting keeps earlier settings out of it)."""

    def __init__(self, device):
        self.device = device

    def reset(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set

    def current_gb(self):
        """What is in use now: CUDA allocated memory, or the process's resident set (VmRSS)."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**30
        return _status_kb("VmRSS:") / 2**20

    def peak_gb(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return _status_kb("VmHWM:") / 2**20


def _status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(err):
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
