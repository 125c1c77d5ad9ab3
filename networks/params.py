"""Flat parameter vectors <-> named tensors, in `module.parameters()` order (the buffer format)."""
import math
from typing import Dict, List, Sequence

import torch


class ParamLayout:
    """Names and shapes of a module's parameters; converts between a flat vector, a list and a name->tensor dict."""

    def __init__(self, module: torch.nn.Module):
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.numel = sum(self.sizes)

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def split(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Views of `flat`, one per parameter (a timestamp of a trajectory)."""
        return [chunk.view(shape) for chunk, shape in zip(torch.split(flat, self.sizes), self.shapes)]

    def unflatten(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{name: view of flat}: differentiable, for torch.func.functional_call."""
        return dict(zip(self.names, self.split(flat)))

    def describe(self) -> list:
        return [[n, list(s)] for n, s in zip(self.names, self.shapes)]
