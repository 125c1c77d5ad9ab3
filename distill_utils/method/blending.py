"""Representation blending (--blend ALPHA; RepBlend, arXiv 2505.14705, in the form of its released code): the
distillation student's loss on a minibatch of B synthetic pairs sees blended pairs instead of the pairs themselves.

Each student step draws lambda ~ Beta(ALPHA, ALPHA) and a permutation pi of the minibatch, and blends the inputs of
the modules that train, in both modalities with the same lambda and pi:

    image side   x_i -> lambda x_i + (1 - lambda) x_pi(i)   (the frozen encoder's features with symmetric heads;
                                                           the images themselves when the image encoder trains)
    text side    t_i -> lambda t_i + (1 - lambda) t_pi(i)   (the text features, the text head's input)

Blended pair i is one pair (its image and its text are the same blend), so it keeps pair i's row of the targets S.
Within each modality the student sees mixtures of the synthetic samples rather than the samples alone, which is
how RepBlend weakens the cross-modal supervision that makes the distilled samples of a modality collapse onto each
other. Only the distillation's student blends; experts and evaluation students train on pairs as they are. The draws
come from the global CPU generator, which the matching's replays restore, so pass 2 (and the adjoint's reverse
sweep) sees the blends of pass 1.
"""
from typing import Tuple

import torch
from torch import Tensor


def draw(alpha: float, n: int) -> Tuple[float, Tensor]:
    """(lambda, permutation of range(n)) from the global CPU generator; lambda ~ Beta(alpha, alpha)."""
    return float(torch.distributions.Beta(alpha, alpha).sample()), torch.randperm(n)


def mix(x: Tensor, lam: float, perm: Tensor) -> Tensor:
    """Row i -> lam x_i + (1 - lam) x_perm(i)."""
    return lam * x + (1.0 - lam) * x[perm.to(x.device)]
