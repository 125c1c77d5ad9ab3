"""Image encoders: the CPU ConvNet or any timm model by name, pretrained from timm or a local file."""
import os
from typing import Optional, Tuple

import torch
import torch.nn as nn

from common.errors import UserError
from common.io import load_torch
from .convnet import ConvNet, parse_convnet
from .hub import hub_reachable

ALIASES = {"nfnet": "nfnet_l0"}


def is_convnet(name: str) -> bool:
    return parse_convnet(name) is not None


def _read_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own error types
            raise UserError(f"--image_checkpoint {path}: unreadable safetensors file ({err})") from None
    state = load_torch(path, what="--image_checkpoint")
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"--image_checkpoint {path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a local state dict; classifier weights may be absent or extra, nothing else may."""
    if not os.path.isfile(path):
        raise UserError(f"--image_checkpoint {path}: no such file")
    state = _read_state_dict(path)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state]
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if missing or wrong:
        what = f"missing {missing[:3]}" if missing else f"shape mismatch at {wrong[:3]}"
        raise UserError(f"--image_checkpoint {path}: does not fit the image encoder ({what})")
    model.load_state_dict(state)


class SiLU(nn.Module):
    """x * sigmoid(x) with plain ops. PyTorch's fused SiLU backward switches to another formula under
    create_graph, so the memory-constant matching's pass 2 would not replay pass 1 bit for bit (as GroupNorm
    in convnet.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def replay_safe(model: nn.Module) -> nn.Module:
    """Swap the activations whose backward changes under create_graph (nn.SiLU, NFNet's) for plain-op ones
    (timm's own SiLU/Swish classes too, whichever a timm version builds)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child).__name__ in ("SiLU", "Swish") and not isinstance(child, SiLU):
                setattr(module, name, SiLU())
    return model


def build_image_encoder(name: str, image_size: int, pretrained: Optional[bool] = None,
                        checkpoint: Optional[str] = None) -> Tuple[nn.Module, int]:
    """(module, output dim). pretrained=None means: timm weights for timm models, none for the ConvNet."""
    conv = parse_convnet(name)
    if conv is not None:
        if pretrained:
            raise UserError(f"--image_pretrained: {name} has no pretrained weights (use --image_checkpoint PATH)")
        try:
            model = ConvNet(image_size=image_size, **conv)
        except ValueError as err:
            raise UserError(f"--image_encoder {name}: {err}") from None
    else:
        import timm
        timm_name = ALIASES.get(name, name)
        if not timm.is_model(timm_name):
            raise UserError(f"--image_encoder {name}: not a timm model or 'convnet[_wW][_dD][_eE][_in|_gn|_nonorm]'")
        download = pretrained is not False and checkpoint is None
        if download and not (timm.models.get_pretrained_cfg(timm_name) and hub_reachable()):
            raise UserError(f"--image_pretrained: cannot fetch timm weights for {timm_name} (hub unreachable or "
                            "none published); pass --image_checkpoint PATH or --no-image_pretrained")
        try:
            model = timm.create_model(timm_name, pretrained=download, num_classes=0, global_pool="avg")
        except (RuntimeError, OSError) as err:
            raise UserError(f"--image_pretrained: loading {timm_name} failed ({str(err).splitlines()[0][:160]})") from None
        replay_safe(model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model, model.num_features
