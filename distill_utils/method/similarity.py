"""Learned soft similarity matrices S over the N synthetic pairs, indexable by a minibatch.

full:    S itself, initialised to the identity.
lowrank: S = diag(a) + alpha / r * L R^T with a = 1, L ~ N(0, 1), R = 0 at start (LoRS).
The parameter lists are exactly the published `similarity_params`.
"""
import torch


class FullSimilarity:
    kind = "full"

    def __init__(self, n, device="cpu"):
        self.params = [torch.eye(n, device=device)]

    def batch(self, params, idx):
        """The [B, B] sub-matrix for minibatch `idx` (differentiable in params)."""
        return params[0][idx[:, None], idx]

    def matrix(self, params):
        return params[0]


class LowRankSimilarity:
    kind = "lowrank"

    def __init__(self, n, rank, alpha=1.0, device="cpu", generator=None):
        self.rank, self.alpha = rank, alpha
        self.params = [torch.ones(n, device=device),
                       torch.randn(n, rank, generator=generator).to(device),
                       torch.zeros(n, rank, device=device)]

    def batch(self, params, idx):
        return lowrank_matrix(*(p[idx] for p in params), self.alpha)

    def matrix(self, params):
        return lowrank_matrix(*params, self.alpha)


def lowrank_matrix(a, left, right, alpha=1.0):
    """diag(a) + alpha / r * L R^T, r = the rank (columns of L)."""
    return torch.diag(a) + left @ right.t() * (alpha / left.shape[1])


def make_similarity(kind, n, rank=None, alpha=1.0, device="cpu", generator=None):
    if kind == "full":
        return FullSimilarity(n, device)
    return LowRankSimilarity(n, rank, alpha, device, generator)
