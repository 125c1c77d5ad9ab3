"""The contrastive losses against a by-hand computation in plain Python on a 3x3 example, and their first and
second derivatives (which trajectory matching back-propagates through) against finite differences."""
import math

import pytest
import torch
import torch.nn.functional as F

from distill_utils.method.losses import LOSS_TYPES, contrastive_loss

LOGITS = [[2.0, -1.0, 0.3], [0.5, 3.0, -0.7], [-1.2, 0.4, 1.5]]
TARGETS = [[0.9, 0.2, 0.0], [0.1, 0.8, 0.3], [0.0, 0.4, 0.7]]  # not symmetric: the transposed half matters


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def transpose(m):
    return [list(col) for col in zip(*m)]


def cells(logits, targets):
    return [(x, t) for lx, lt in zip(logits, targets) for x, t in zip(lx, lt)]


def bce(x, t):
    return -(t * math.log(sigmoid(x)) + (1 - t) * math.log(1 - sigmoid(x)))


def soft_ce(logits, targets):
    return sum(-sum(t * math.log(q) for t, q in zip(lt, softmax(lx))) for lx, lt in zip(logits, targets)) / len(logits)


def cwcl(logits, targets):
    rows = [-sum(t * math.log(q) for t, q in zip(lt, softmax(lx))) / (sum(lt) + 1e-6) for lx, lt in zip(logits, targets)]
    return sum(rows) / len(rows)


def kl(logits, targets):
    """Mean over all elements of p (log p - log q), p = softmax(10 t) of a target row, q = softmax of the logit row."""
    terms = [p * (math.log(p) - math.log(q)) for lx, lt in zip(logits, targets)
             for p, q in zip(softmax([10 * t for t in lt]), softmax(lx))]
    return sum(terms) / len(terms)


def symmetric(fn):
    return lambda logits, targets: 0.5 * (fn(logits, targets) + fn(transpose(logits), transpose(targets)))


def wbce(logits, targets):
    pos = [bce(x, t) for x, t in cells(logits, targets) if t > 0.5]
    neg = [bce(x, t) for x, t in cells(logits, targets) if t <= 0.5]
    return 0.5 * (sum(pos) / (len(pos) + 1e-6) + sum(neg) / (len(neg) + 1e-6))


BY_HAND = {
    "WBCE": wbce,
    "InfoNCE": symmetric(soft_ce),
    "BCE": lambda logits, targets: sum(bce(x, t) for x, t in cells(logits, targets)) / 9,
    "KL": symmetric(kl),
    "MSE": lambda logits, targets: sum((sigmoid(x) - t) ** 2 for x, t in cells(logits, targets)) / 9,
    "CWCL": symmetric(cwcl),
}


@pytest.mark.parametrize("name", LOSS_TYPES)
def test_loss_value_by_hand(name):
    got = contrastive_loss(name)(torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(TARGETS, dtype=torch.float64))
    assert got.item() == pytest.approx(BY_HAND[name](LOGITS, TARGETS), rel=1e-9, abs=1e-12)


def test_infonce_with_identity_targets_is_clip_loss():
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    target = torch.arange(6)
    want = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    assert torch.allclose(contrastive_loss("InfoNCE")(logits, torch.eye(6)), want)


@pytest.mark.parametrize("name", LOSS_TYPES)
def test_first_and_second_derivatives_match_finite_differences(name):
    """Matching differentiates the loss's gradient in the logits again, in the logits and in the soft targets
    (the learned similarity): gradgradcheck compares those second derivatives with finite differences."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    # targets kept away from WBCE's 0.5 threshold, where its positive/negative split jumps
    targets = (torch.eye(4, dtype=torch.float64) * 0.7 + torch.rand(4, 4, generator=g, dtype=torch.float64) * 0.2
               + 0.05).requires_grad_(True)
    loss = contrastive_loss(name)
    assert torch.autograd.gradcheck(loss, (logits, targets))
    assert torch.autograd.gradgradcheck(loss, (logits, targets))
