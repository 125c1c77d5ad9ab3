"""An expert's trained image encoder as a local checkpoint (prepare_data.py encoder): the "pretrained" frozen encoder
of symmetric projection trajectory matching on the built-in levels, loaded like any other through
--image_checkpoint."""
import os
from typing import Optional

from common.errors import UserError
from common.io import save_torch
from distill_utils.files.buffers import BufferDir, load_experts


def export_encoder(normal_dir: str, out: str, expert: int = 0, epoch: Optional[int] = None) -> str:
    """Write {parameter name: tensor} of expert `expert`'s image encoder at timestamp `epoch` (default: the last)
    of a full-encoder buffer to `out`; returns a line saying what was written."""
    where = f"--normal_dir {normal_dir}"
    buf = BufferDir(normal_dir, "--normal_dir")
    manifest = buf.read_manifest()
    if manifest is None:
        raise UserError(f"{where}: no manifest.json, so the encoder's parameter names are unknown")
    if not manifest.get("image_trainable"):
        raise UserError(f"{where}: its experts trained an image head on a frozen encoder (image_trainable false); "
                        "export from experts that trained the whole encoder")
    pairs = buf.pairs()
    per_file = [len(load_experts(img, mmap=True)) for _, img, _ in pairs]
    if expert >= sum(per_file):
        raise UserError(f"--expert {expert}: {where} holds {sum(per_file)} experts")
    n = 0
    while expert >= per_file[n]:
        expert -= per_file[n]
        n += 1
    trajectory = load_experts(pairs[n][1])[expert]
    epoch = len(trajectory) - 1 if epoch is None else epoch
    if epoch >= len(trajectory):
        raise UserError(f"--epoch {epoch}: the expert has timestamps 0..{len(trajectory) - 1}")
    names = [name for name, _ in manifest["img_params"]]
    state = {name: t.clone() for name, t in zip(names, trajectory[epoch])}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_torch(state, out)
    return (f"wrote {out}: {manifest['image_encoder']} after epoch {epoch} of {os.path.basename(pairs[n][1])} expert "
            f"{expert} ({sum(t.numel() for t in state.values()):,} parameters); pass --image_checkpoint {out}")
