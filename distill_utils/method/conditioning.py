"""Distillation conditioned on earlier phases (--phase_conditioning cumulative).

In phase p > 1 the student's steps see the frozen subsets D_1..D_{p-1} together with the learnable
D_p, so D_p is distilled to complement what a student trained on all of them already knows.
`ConditionedSet` wraps the phase's SyntheticSet behind the interface the matching functions use
(learnable_set.LearnableSet: `batch`, `len`, `image`, `text`, `sim_params`, `student_lr_img`, `student_lr_txt`,
`tensors`): indices 0..M-1 are the frozen pairs, M..M+N-1 the pairs of D_p. The frozen pixels, features and
similarity blocks are constants, and `image`, `text`, `sim_params`, `tensors()` are D_p's own, so every
matching mode works unchanged and only D_p receives gradients; nothing in it grows with the steps.

S over the joined set is block-diagonal: a pair of D_i against a pair of D_j (i != j) has target 0,
a negative, as any two distinct pairs are in the identity every subset starts from, and as the
cumulative and union evaluations train on them (evaluation/sources.join_sources).

One student lr per step, D_p's learned one, applies to the whole minibatch: the contrastive loss
couples the pairs of a batch, so per-pair lrs are not defined, and these mixed steps are exactly
what a student trained cumulatively takes in phase p (with D_p's lrs, as join_sources does).
"""
from typing import List, Sequence, Tuple

import torch

from distill_utils.files.subset_file import DistilledSubset
from distill_utils.method.learnable_set import LearnableSet, SyntheticSet

CONDITIONING = ("none", "cumulative")


class ConditionedSet:
    """A LearnableSet: the frozen subsets' pairs, then the learnable ones of `syn`."""

    def __init__(self, syn: SyntheticSet, frozen: Sequence[DistilledSubset]):
        self.syn = syn
        device = syn.image.device
        self.frozen_image = torch.cat([f.image for f in frozen]).to(device)
        self.frozen_text = torch.cat([f.text for f in frozen]).to(device)
        self.frozen_sim = torch.block_diag(*[f.similarity for f in frozen]).to(device)
        self.frozen = len(self.frozen_image)

    # the learnable side is the wrapped set's
    image = property(lambda self: self.syn.image)
    text = property(lambda self: self.syn.text)
    sim_params = property(lambda self: self.syn.sim_params)
    student_lr_img = property(lambda self: self.syn.student_lr_img)
    student_lr_txt = property(lambda self: self.syn.student_lr_txt)

    def tensors(self) -> List[torch.Tensor]:
        return self.syn.tensors()

    def zero_grad(self) -> None:
        self.syn.zero_grad()

    def __len__(self) -> int:
        return self.frozen + len(self.syn)

    def batch(self, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixels, text features, S sub-matrix) of minibatch `idx` over [frozen pairs, D_p], in idx's order."""
        old = (idx < self.frozen).nonzero().squeeze(1)
        new = (idx >= self.frozen).nonzero().squeeze(1)
        i_old = idx[old]
        x_new, y_new, s_new = self.syn.batch(idx[new] - self.frozen)
        back = torch.argsort(torch.cat([old, new]))  # from [old, new] order back to idx's order
        x = torch.cat([self.frozen_image[i_old], x_new])[back]
        y = torch.cat([self.frozen_text[i_old], y_new])[back]
        s = torch.block_diag(self.frozen_sim[i_old[:, None], i_old], s_new)[back[:, None], back]
        return x, y, s


def condition(syn: SyntheticSet, frozen: Sequence[DistilledSubset], mode: str) -> LearnableSet:
    """What the phase's student trains on: the set itself, or it joined to the frozen earlier subsets."""
    if mode == "none" or not frozen:
        return syn
    return ConditionedSet(syn, frozen)
