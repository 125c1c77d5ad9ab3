"""What a run will need before it starts: disk for the expert files buffer.py and convexify.py write (computed from
the network's parameter count) and GPU memory (an estimate scaled from the paper-size measurements)."""
import os
import shutil

import torch

from common.errors import UserError
from distill_utils.files import buffers
from networks.names import canonical

FLOAT32_BYTES = 4
# Peak GPU memory (torch.cuda.max_memory_allocated) measured on one H200 at the paper's size: nfnet_l0 trained
# whole at 224 px, 768-d text features, float32 (docs/paper_scale.md, `python -m bench.paper_scale`).
# kind: (bytes in float32, bytes with --amp bf16 + --channels_last, the batch it was measured at, the student
# steps it was measured at or None when it does not grow)
MEASURED_ENCODER, MEASURED_PX = "nfnet_l0", 224
MEASURED = {
    "expert epoch": (15.76e9, 8.44e9, 128, None),          # buffer.py, batches of --batch_train 128
    "evaluation student": (15.75e9, 8.44e9, 128, None),    # evaluate.py and in-run evaluation, --batch_train 128
    "distillation": (12.11e9, 7.30e9, 40, None),           # --matching constant/adjoint, --mini_batch_size 40, any steps
    "distillation (unrolled)": (80.25e9, 42.95e9, 40, 8),  # --matching unrolled: linear in --syn_steps
}


def expert_bytes(net, timestamps):
    """Bytes of one expert's img and txt files: its trainable parameters at every timestamp, in float32."""
    return (net.img_layout.numel + net.txt_layout.numel) * FLOAT32_BYTES * timestamps


def gpu_estimate(kind, image_encoder, image_size, batch, steps=None, amp=False):
    """Bytes of GPU memory for `kind` (a key of MEASURED), float32 or under autocast (`amp`): the measurement
    scaled linearly with the batch, the pixels per image and (unrolled) the steps, since activations dominate
    it. None for an image encoder that was not measured."""
    if canonical(image_encoder) != MEASURED_ENCODER:
        return None
    float32, autocast, measured_batch, measured_steps = MEASURED[kind]
    peak = autocast if amp else float32
    scale = batch / measured_batch * (image_size / MEASURED_PX) ** 2
    return peak * scale * (steps / measured_steps if measured_steps else 1)


def human_bytes(n):
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_gpu(device, needs):
    """Refuse a run whose largest estimate ({what: bytes or None}) exceeds the device's free memory. Returns a
    line saying what was compared (or why nothing was)."""
    known = {what: n for what, n in needs.items() if n is not None}
    if not known:
        return f"GPU memory: not estimated ({', '.join(needs)}: no measurement for this image encoder)"
    what, need = max(known.items(), key=lambda kv: kv[1])
    estimate = f"{what} needs about {human_bytes(need)} (an estimate scaled from the {MEASURED_ENCODER} {MEASURED_PX}px " \
               "measurements of docs/paper_scale.md)"
    if device.type != "cuda":
        return f"GPU memory: {estimate}; not compared on {device}"
    free, total = torch.cuda.mem_get_info(device)
    if need > free:
        raise UserError(f"GPU memory: {estimate}, but {device} has {human_bytes(free)} free of {human_bytes(total)}: lower --batch_train "
                        "/ --mini_batch_size / --image_size, or use a larger GPU")
    return f"GPU memory: {estimate}; {device} has {human_bytes(free)} free of {human_bytes(total)}"


def free_bytes(path):
    """Free bytes on the filesystem that holds `path` (or would hold it: its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def check_disk(path, need, what, flag):
    """Refuse to start writing `need` bytes under `path` when its disk has less free."""
    free = free_bytes(path)
    if need > free:
        raise UserError(f"{flag} {path}: {what} need {human_bytes(need)}, the disk has {human_bytes(free)} free")
    return f"disk: {what} need {human_bytes(need)}; {human_bytes(free)} free under {path}"


def expert_needs(spec, expert):
    """GPU estimates of buffer.py (config.NetworkSpec, config.ExpertConfig)."""
    return {"expert epoch": gpu_estimate("expert epoch", spec.image_encoder, spec.image_size, expert.batch_train,
                                         amp=spec.amp != "off")}


def eval_needs(spec, protocol):
    """GPU estimates of evaluate.py (EvalProtocol)."""
    return {"evaluation student": gpu_estimate("evaluation student", spec.image_encoder, spec.image_size,
                                               protocol.batch_train, amp=spec.amp != "off")}


def distill_needs(spec, cfg, protocol):
    """GPU estimates of distill_ptm-st.py (config.DistillConfig), its in-run evaluation included."""
    kind = "distillation (unrolled)" if cfg.matching == "unrolled" else "distillation"
    needs = {kind: gpu_estimate(kind, spec.image_encoder, spec.image_size, cfg.mini_batch_size, cfg.syn_steps,
                                spec.amp != "off")}
    return needs | (eval_needs(spec, protocol) if protocol.num_eval > 0 else {})


def shortcut_bytes(pairs, start, end):
    """Bytes convexify.py writes for the buffer `pairs` ([(n, img, txt)]): each file's share of its timestamps."""
    total = 0
    for _, img, txt in pairs:
        length = buffers.describe_file(img)[1]
        total += (os.path.getsize(img) + os.path.getsize(txt)) * min(end - start, length) // length
    return total
