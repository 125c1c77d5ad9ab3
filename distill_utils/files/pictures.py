"""What a save shows a person: a PNG grid of the synthetic images and the nearest real caption of each
synthetic text."""
from typing import List

import torch
import torch.nn.functional as F
import torchvision

from distill_utils.datasets.images import denormalize
from common.io import atomic_path


def save_image_grid(images: torch.Tensor, path: str, max_images: int = 100, nrow: int = 10) -> None:
    images = denormalize(images[:max_images].detach().float().cpu())
    if images.shape[-1] < 64:  # small images are hard to see
        images = F.interpolate(images, scale_factor=max(1, 64 // images.shape[-1]), mode="nearest")
    with atomic_path(path) as tmp:
        torchvision.utils.save_image(torchvision.utils.make_grid(images, nrow=nrow, padding=2), tmp, format="png")


def nearest_captions(syn_text: torch.Tensor, real_text: torch.Tensor, captions: List[str]) -> List[str]:
    """For each synthetic text feature: (nearest real caption by cosine, the cosine)."""
    sims = F.normalize(syn_text.detach().float().cpu(), dim=1) @ F.normalize(real_text.float(), dim=1).t()
    best, idx = sims.max(1)
    return [(captions[i], b) for i, b in zip(idx.tolist(), best.tolist())]


def save_captions(syn_text: torch.Tensor, real_text: torch.Tensor, captions: List[str], path: str) -> None:
    lines = [f"{k}\t{cos:.3f}\t{cap}" for k, (cap, cos) in enumerate(nearest_captions(syn_text, real_text, captions))]
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("index\tcosine\tnearest real caption\n" + "\n".join(lines) + "\n")
