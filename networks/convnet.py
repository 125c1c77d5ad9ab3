"""A small ConvNet for CPU work (instance/group norm, never batch norm, so per-sample gradients stay clean)."""
import re
from typing import Optional

import torch
import torch.nn as nn

from .fused import norm_relu_pool, relu_pool

_NAME = re.compile(r"^convnet((?:_(?:w\d+|d\d+|e\d+|in|gn|nonorm))*)$")


class GroupNorm(nn.Module):
    """nn.GroupNorm written with plain ops (same parameters). PyTorch's fused group-norm backward switches
    to another formula under create_graph; this one does not, so the memory-constant matching can replay
    a student step bit for bit."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        g = x.reshape(n, self.groups, -1)
        centred = g - g.mean(-1, keepdim=True)
        y = (centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps)).reshape(x.shape)
        return y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


class ConvNet(nn.Module):
    """[conv3x3 -> norm -> ReLU -> avgpool2] x depth, flattened (keeps where things are), then a linear embedding."""

    def __init__(self, width: int = 64, depth: int = 3, norm: str = "in", embed_dim: int = 512, image_size: int = 32):
        super().__init__()
        if min(width, depth, embed_dim) < 1:
            raise ValueError(f"width, depth and embedding must be at least 1, got w{width} d{depth} e{embed_dim}")
        if norm == "gn" and width % 4:
            raise ValueError(f"group norm needs a width divisible by 4, got w{width}")
        layers, channels, side = [], 3, image_size
        for _ in range(depth):
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            if norm == "in":
                layers.append(GroupNorm(width, width))
            elif norm == "gn":
                layers.append(GroupNorm(4, width))
            layers += [nn.ReLU(), nn.AvgPool2d(2)]
            channels, side = width, side // 2
        if side < 1:
            raise ValueError(f"image size {image_size} too small for depth {depth}")
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width * side * side, embed_dim)
        self.num_features = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(x).flatten(1))

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        """self.features, with each norm -> ReLU -> pool run as one Function (networks/fused.py): the same
        function as the Sequential, at a fraction of its cost when differentiated twice."""
        layers = list(self.features)
        while layers:
            conv, layers = layers[0], layers[1:]
            x = conv(x)
            if isinstance(layers[0], GroupNorm):
                x = norm_relu_pool(x, layers[0].weight, layers[0].bias, layers[0].groups, layers[0].eps)
                layers = layers[3:]
            else:
                x, layers = relu_pool(x), layers[2:]
        return x


def parse_convnet(name: str) -> Optional[dict]:
    """'convnet[_w64][_d3][_e512][_in|_gn|_nonorm]' -> ConvNet kwargs, or None if not a convnet name."""
    m = _NAME.match(name)
    if not m:
        return None
    kwargs = {}
    for part in filter(None, m.group(1).split("_")):
        if part[0] in "wde" and part[1:].isdigit():
            kwargs[{"w": "width", "d": "depth", "e": "embed_dim"}[part[0]]] = int(part[1:])
        else:
            kwargs["norm"] = {"in": "in", "gn": "gn", "nonorm": "none"}[part]
    return kwargs
