import math

import torch
import torch.nn.functional as F

from distill_utils.method.losses import LOSS_TYPES, contrastive_loss


def test_infonce_with_identity_targets_is_clip_loss():
    logits = torch.randn(6, 6)
    target = torch.arange(6)
    want = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    assert torch.allclose(contrastive_loss("InfoNCE")(logits, torch.eye(6)), want)


def test_wbce_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.2], [0.0, 0.9]])
    bce = lambda x, t: -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))
    pos = (bce(2.0, 1.0) + bce(3.0, 0.9)) / 2
    neg = (bce(-1.0, 0.2) + bce(0.5, 0.0)) / 2
    assert abs(contrastive_loss("WBCE")(logits, targets).item() - (pos + neg) / 2) < 1e-5


def test_every_loss_is_finite_and_twice_differentiable():
    for name in LOSS_TYPES:
        logits = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
        targets = (torch.eye(5, dtype=torch.float64) * 0.8 + 0.05).requires_grad_(True)
        loss = contrastive_loss(name)(logits, targets)
        (g,) = torch.autograd.grad(loss, logits, create_graph=True)
        (gt,) = torch.autograd.grad(g.sum(), targets, allow_unused=True)
        assert torch.isfinite(loss) and torch.isfinite(g).all(), name
