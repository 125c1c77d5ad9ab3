"""Multilabel contrastive losses with soft targets (LoRS/PTM-ST): logits [B, B] against a target matrix [B, B]."""
from typing import Callable

import torch
import torch.nn.functional as F

LOSS_TYPES = ("WBCE", "InfoNCE", "BCE", "KL", "MSE", "CWCL")


def _soft_ce(logits, targets):
    return -(targets * torch.log_softmax(logits, 1)).sum(1).mean()


def _cwcl(logits, targets):
    per_row = (targets * torch.log_softmax(logits, 1)).sum(1) / (targets.sum(1) + 1e-6)
    return -per_row.mean()


def _kl(logits, targets):
    # as in LoRS: targets sharpened by a softmax at temperature 0.1; mean over all elements, spelled out
    # because torch will change reduction="mean" to mean "batchmean"
    return F.kl_div(torch.log_softmax(logits, 1), torch.softmax(targets * 10, 1), reduction="none").mean()


def _symmetric(fn):
    return lambda logits, targets: 0.5 * (fn(logits, targets) + fn(logits.t(), targets.t()))


def wbce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE averaged separately over positives (target > 0.5) and negatives, then averaged: balances the one
    positive per row against B-1 negatives."""
    loss = -targets * F.logsigmoid(logits) - (1 - targets) * F.logsigmoid(-logits)
    pos = (targets > 0.5).to(loss.dtype)
    neg = 1 - pos
    return 0.5 * ((loss * pos).sum() / (pos.sum() + 1e-6) + (loss * neg).sum() / (neg.sum() + 1e-6))


LOSSES = {
    "WBCE": wbce,
    "InfoNCE": _symmetric(_soft_ce),
    "BCE": lambda logits, targets: F.binary_cross_entropy_with_logits(logits, targets),
    "KL": _symmetric(_kl),
    "MSE": lambda logits, targets: F.mse_loss(torch.sigmoid(logits), targets),
    "CWCL": _symmetric(_cwcl),
}


def contrastive_loss(loss_type: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return LOSSES[loss_type]
