"""Distilled subsets on disk: the published format (`image`, `text`, `similarity_params`,
`similarity_mat`, `syn_lr_img`, `syn_lr_txt`) plus, in ours, a `config` dict describing the phase
and the network it was distilled for; `check_subset` refuses a file an evaluation network cannot train on."""
import math
from dataclasses import dataclass, field
from typing import List

import torch

from common.errors import UserError
from common.io import load_torch, save_torch
from distill_utils.method.similarity import lowrank_matrix
from networks.names import same_model

REQUIRED = ("image", "text", "syn_lr_img", "syn_lr_txt")


@dataclass
class DistilledSubset:
    image: torch.Tensor       # [N, 3, H, W], normalised pixels
    text: torch.Tensor        # [N, D], text-encoder features
    similarity: torch.Tensor  # [N, N], soft targets
    student_lr_img: float     # the learned student lrs (the file's syn_lr_img, syn_lr_txt)
    student_lr_txt: float
    similarity_params: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.image)


def _as_tensor(value, path, key):
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    if isinstance(value, list):
        try:
            return torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError):
            pass
    if not torch.is_tensor(value):
        raise UserError(f"distilled file {path}: '{key}' is not a tensor")
    return value.float()


def _as_lr(value, path, key):
    lr = _as_tensor(value, path, key)
    if lr.numel() != 1:
        raise UserError(f"distilled file {path}: '{key}' must be one number, found a tensor of shape {tuple(lr.shape)}")
    return float(lr.reshape(()))


def _matrix_from_params(params, path, n):
    if len(params) == 1 and tuple(params[0].shape) == (n, n):
        return params[0]
    if len(params) == 3:  # low rank, LoRS default alpha = 1
        a, left, right = params
        if a.shape == (n,) and left.dim() == 2 and left.shape[0] == n and right.shape == left.shape and left.shape[1]:
            return lowrank_matrix(a, left, right)
    raise UserError(f"distilled file {path}: 'similarity_params' must hold one [N, N] tensor (full) or a [N], L [N, r] "
                    f"and R [N, r] (lowrank), N = {n}; found shapes {[tuple(p.shape) for p in params]}")


def load_subset(path: str) -> DistilledSubset:
    obj = load_torch(path, what="distilled file")
    if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(obj, dict) or k not in obj]
        raise UserError(f"distilled file {path}: missing {', '.join(missing)} (not a distilled subset)")
    config, raw_params = obj.get("config") or {}, obj.get("similarity_params") or []
    if not isinstance(config, dict):
        raise UserError(f"distilled file {path}: 'config' must be a dict, found a {type(config).__name__}")
    if not isinstance(raw_params, (list, tuple)):
        raise UserError(f"distilled file {path}: 'similarity_params' must be a list of tensors")
    image, text = _as_tensor(obj["image"], path, "image"), _as_tensor(obj["text"], path, "text")
    n = len(image) if image.dim() else 0
    if n < 1 or image.dim() != 4 or image.shape[1] != 3 or text.dim() != 2 or len(text) != n:
        raise UserError(f"distilled file {path}: inconsistent shapes image {tuple(image.shape)}, text "
                        f"{tuple(text.shape)} (want [N,3,H,W] and [N,D] with N >= 1)")
    params = [_as_tensor(p, path, "similarity_params") for p in raw_params]
    if "similarity_mat" in obj and obj["similarity_mat"] is not None:
        sim = _as_tensor(obj["similarity_mat"], path, "similarity_mat")
    elif params:
        sim = _matrix_from_params(params, path, n)
    else:
        sim = torch.eye(n)
    if tuple(sim.shape) != (n, n):
        raise UserError(f"distilled file {path}: similarity is {tuple(sim.shape)}, want [N, N] with N = {n}")
    return DistilledSubset(image, text, sim, _as_lr(obj["syn_lr_img"], path, "syn_lr_img"),
                           _as_lr(obj["syn_lr_txt"], path, "syn_lr_txt"), params, dict(config))


def save_subset(subset: DistilledSubset, path: str) -> None:
    save_torch({"image": subset.image.detach().cpu(), "text": subset.text.detach().cpu(),
                "similarity_params": [p.detach().cpu() for p in subset.similarity_params],
                "similarity_mat": subset.similarity.detach().cpu(),
                "syn_lr_img": torch.tensor(float(subset.student_lr_img)),
                "syn_lr_txt": torch.tensor(float(subset.student_lr_txt)),
                "config": subset.config}, path)


def check_subset(subset: DistilledSubset, path: str, expected: dict) -> List[str]:
    """Refuse a distilled file the evaluation network cannot train on; returns notes worth printing.

    `expected`: dataset, image_encoder, text_encoder, image_size, image_trainable, text_dim of the
    evaluation. Image size and text dimension are checked on the tensors; with a `config` (our format)
    also dataset and text encoder. A different image encoder is cross-architecture evaluation: allowed.
    """
    where = f"distilled file {path}"
    for key, t in (("image", subset.image), ("text", subset.text), ("similarity", subset.similarity)):
        if not torch.isfinite(t).all():
            raise UserError(f"{where}: '{key}' holds NaN or inf values")
    if not all(math.isfinite(lr) and lr >= 0 for lr in (subset.student_lr_img, subset.student_lr_txt)):
        raise UserError(f"{where}: learned lrs must be finite and >= 0, found {subset.student_lr_img}, "
                        f"{subset.student_lr_txt}")
    size = expected["image_size"]
    if tuple(subset.image.shape[-2:]) != (size, size):
        raise UserError(f"{where}: images are {subset.image.shape[-2]}x{subset.image.shape[-1]}, "
                        f"the evaluation network takes {size}x{size} (--image_size)")
    if subset.text.shape[1] != expected["text_dim"]:
        raise UserError(f"{where}: text features are {subset.text.shape[1]}-d, --text_encoder "
                        f"{expected['text_encoder']} gives {expected['text_dim']}-d")
    cfg = subset.config
    if not cfg:
        return [f"{path}: no config (published format): checked image size and text dimension only"]
    ours, theirs = expected.get("text_encoder_weights"), cfg.get("text_encoder_weights")
    if ours and theirs and ours != theirs:
        raise UserError(f"{where}: distilled with other text-encoder weights than --text_encoder "
                        f"{expected['text_encoder']} (the features would not match)")
    if "text_encoder" in cfg and not same_model(cfg["text_encoder"], expected["text_encoder"]):
        raise UserError(f"{where}: distilled with text encoder {cfg['text_encoder']!r}, this evaluation uses "
                        f"{expected['text_encoder']!r} (--text_encoder)")
    if "dataset" in cfg and cfg["dataset"] != expected["dataset"]:
        raise UserError(f"{where}: distilled from dataset {cfg['dataset']!r}, "
                        f"this evaluation is on {expected['dataset']!r}")
    notes = []
    if "image_encoder" in cfg and not same_model(cfg["image_encoder"], expected["image_encoder"]):
        notes.append(f"{path}: cross-architecture evaluation: distilled with image encoder {cfg['image_encoder']!r}, "
                     f"evaluated with {expected['image_encoder']!r}")
    if "image_trainable" in cfg and bool(cfg["image_trainable"]) != expected["image_trainable"]:
        notes.append(f"{path}: distilled with image_trainable={cfg['image_trainable']}, evaluated with "
                     f"image_trainable={expected['image_trainable']}")
    return notes
