"""Representation blending (--blend ALPHA; RepBlend, arXiv 2505.14705, as read here): the distillation student's
loss on a minibatch of B synthetic pairs sees blended pairs instead of the pairs themselves.

With a coefficient lambda ~ Beta(ALPHA, ALPHA), folded to lambda >= 1/2 (each blended pair stays mostly itself), a
permutation pi of the minibatch and M = lambda I + (1 - lambda) P_pi (row i of P_pi picks pair pi(i)):

    image representations  Z_img -> M Z_img      (the image side's output before the L2 normalisation)
    text representations   Z_txt -> M Z_txt      (the same M: pair i is blended with pair pi(i) in both modalities)
    soft targets           S     -> M S M^T      (the target of a blended pair is the same blend of the targets)

and the contrastive loss is taken between the blended representations and the blended targets. A blended image is
no longer the exact partner of one text, so the cross-modal supervision of each step is weaker and the pairs are
pushed apart less within each modality. Only the distillation's student blends; experts and evaluation students
train on pairs as they are. The draws come from the global CPU generator, which the matching's replays restore,
so pass 2 (and the adjoint's reverse sweep) sees the blends of pass 1. RepBlend's released code differs: it blends
the heads' inputs, keeps the targets unblended and does not fold lambda (docs/results.md).
"""
from typing import Tuple

import torch
from torch import Tensor


def draw(alpha: float, n: int) -> Tuple[float, Tensor]:
    """(lambda, permutation of range(n)) from the global CPU generator; lambda ~ Beta(alpha, alpha) folded to >= 1/2."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return max(lam, 1.0 - lam), torch.randperm(n)


def blend_matrix(lam: float, perm: Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """M = lam I + (1 - lam) P_perm, [n, n]."""
    n = len(perm)
    eye = torch.eye(n, device=device, dtype=dtype)
    return lam * eye + (1.0 - lam) * eye[perm.to(device)]


def blend(z_img: Tensor, z_txt: Tensor, targets: Tensor, lam: float, perm: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(M z_img, M z_txt, M targets M^T) for M = blend_matrix(lam, perm)."""
    m = blend_matrix(lam, perm, z_img.device, targets.dtype)
    return m.to(z_img.dtype) @ z_img, m.to(z_txt.dtype) @ z_txt, m @ targets @ m.t()
