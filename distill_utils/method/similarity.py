"""Learned soft similarity matrices S over the N synthetic pairs, indexable by a minibatch.

full:    S itself, initialised to the identity.
lowrank: S = diag(a) + alpha / r * L R^T with a = 1, L ~ N(0, 1), R = 0 at start (LoRS).
The parameter lists are exactly the published `similarity_params`.
"""
from typing import List, Optional, Union

import torch


class FullSimilarity:
    kind = "full"

    def __init__(self, n: int, device: Union[str, torch.device] = "cpu"):
        self.params = [torch.eye(n, device=device)]

    def batch(self, params: List[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """The [B, B] sub-matrix for minibatch `idx` (differentiable in params)."""
        return params[0][idx[:, None], idx]

    def matrix(self, params: List[torch.Tensor]) -> torch.Tensor:
        return params[0]


class LowRankSimilarity:
    kind = "lowrank"

    def __init__(self, n: int, rank: int, alpha: float = 1.0, device: Union[str, torch.device] = "cpu",
                 generator: Optional[torch.Generator] = None):
        self.rank, self.alpha = rank, alpha
        self.params = [torch.ones(n, device=device),
                       torch.randn(n, rank, generator=generator).to(device),
                       torch.zeros(n, rank, device=device)]

    def batch(self, params: List[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        return lowrank_matrix(*(p[idx] for p in params), self.alpha)

    def matrix(self, params: List[torch.Tensor]) -> torch.Tensor:
        return lowrank_matrix(*params, self.alpha)


def lowrank_matrix(a: torch.Tensor, left: torch.Tensor, right: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """diag(a) + alpha / r * L R^T, r = the rank (columns of L)."""
    return torch.diag(a) + left @ right.t() * (alpha / left.shape[1])


def make_similarity(kind: str, n: int, rank: Optional[int] = None, alpha: float = 1.0,
                    device: Union[str, torch.device] = "cpu", generator: Optional[torch.Generator] = None
                    ) -> "Similarity":
    if kind == "full":
        return FullSimilarity(n, device)
    return LowRankSimilarity(n, rank, alpha, device, generator)


Similarity = Union[FullSimilarity, LowRankSimilarity]
