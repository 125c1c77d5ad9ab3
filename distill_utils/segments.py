"""--experts_per_it K: each distillation iteration matches K expert segments and averages their gradients;
under torchrun the K segments are split over the ranks.

A segment is (expert, start epoch T, the student's minibatches). Every rank draws all K segments, in
order, from the phase's expert stream and generator, so what is drawn depends on the seed and K only,
never on the number of ranks; a rank loads and matches only its share (parallel.share), one segment
after the other, so its memory is that of one matching step whatever K (with --matching constant or
adjoint, it does not grow with --syn_steps either). The gradients
are summed over the rank's segments, over the ranks (parallel.sum_to_all: every rank gets the same sum),
and divided by K; every rank then applies the same update. With K > 1, segment k of an iteration draws
its student's dropout masks from its own seed, wherever it runs; with K = 1 an iteration is exactly the
single matching step it always was, RNG included.

Under --amp every segment starts from the precision the iteration started with, and a failed check
switches the run to float32 from the next iteration on, on every rank.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch

from common.errors import UserError
from distill_utils import parallel
from distill_utils.config import DistillConfig
from distill_utils.files.expert_stream import ExpertStream
from distill_utils.method.amp_guard import AmpGuard
from distill_utils.method.learnable_set import LearnableSet
from distill_utils.method.matching import MatchResult, minibatch_schedule
from distill_utils.phases import Phase
from distill_utils.rng import seeded, segment_seed


@dataclass
class Segment:
    index: int            # k in 0..K-1
    start_epoch: int      # T
    schedule: list        # the student's minibatch indices
    start: tuple = None   # (img, txt) flat parameters at T; None on a rank that does not match this segment
    target: tuple = None  # the same at T + expert_epochs


def check_experts_per_it(k: int, ranks: int) -> None:
    if k < ranks:
        raise UserError(f"--experts_per_it {k}: torchrun started {ranks} ranks and each matches at least one "
                        f"segment per iteration; pass --experts_per_it {ranks} or more (or fewer ranks)")


def _start_epoch(phase, generator):
    return int(torch.randint(phase.min_start_epoch, phase.max_start_epoch, (1,), generator=generator))


def expert_segment(stream: ExpertStream, phase: Phase, generator: torch.Generator, expert_epochs: int,
                   device: torch.device) -> Tuple[tuple, tuple, int]:
    """Next expert: theta at a start epoch T drawn from [min, max) and at T + expert_epochs (flat, img and txt;
    half-precision buffers are cast to float32)."""
    img_traj, txt_traj, path = stream.next()
    t = _start_epoch(phase, generator)
    flat = lambda stamp: torch.cat([p.reshape(-1) for p in stamp]).to(device=device, dtype=torch.float32)
    start = (flat(img_traj[t]), flat(txt_traj[t]))
    target = (flat(img_traj[t + expert_epochs]), flat(txt_traj[t + expert_epochs]))
    if not all(torch.isfinite(v).all() for v in (*start, *target)):
        raise UserError(f"buffer file {path} (or its txt twin): an expert holds NaN or inf at timestamp {t} or "
                        f"{t + expert_epochs}; the buffer is damaged, not the optimisation")
    return start, target, t


def draw(k_total: int, stream: ExpertStream, phase: Phase, generator: torch.Generator, cfg: DistillConfig,
         n_pairs: int, device: torch.device) -> List[Segment]:
    """The iteration's K segments in the order one process draws them; only this rank's share is loaded.
    cfg: the DistillConfig (expert_epochs, mini_batch_size, syn_steps)."""
    mine, segments = parallel.share(k_total), []
    for k in range(k_total):
        if k in mine:
            start, target, t = expert_segment(stream, phase, generator, cfg.expert_epochs, device)
        else:
            stream.skip()
            start, target, t = None, None, _start_epoch(phase, generator)
        schedule = minibatch_schedule(n_pairs, cfg.mini_batch_size, cfg.syn_steps, generator)
        segments.append(Segment(k, t, schedule, start, target))
    return segments


def match_segments(segments: List[Segment], guard: AmpGuard, match: Callable, syn: LearnableSet, seed: int,
                   iteration: int) -> Tuple[MatchResult, list]:
    """Match this rank's segments one after the other and set syn's .grad to the mean gradient over all K
    segments; returns (MatchResult of the mean losses, the amp check records of all segments)."""
    k_total, device, active = len(segments), syn.image.device, guard.active
    total, losses, checks, kept = None, torch.zeros(3, dtype=torch.float64), [], []
    for seg in (s for s in segments if s.start is not None):
        guard.active = active
        rng = seeded(segment_seed(seed, iteration, seg.index), device) if k_total > 1 else contextlib.nullcontext()
        with rng:
            result, check = guard.match(match, syn, seg.start, seg.target, seg.schedule, iteration)
        kept.append(guard.active)
        if check:
            checks.append(check | ({"segment": seg.index} if k_total > 1 else {}))
        grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in syn.tensors()]
        total = grads if total is None else [a.add_(g) for a, g in zip(total, grads)]
        losses += torch.tensor([result.loss, result.loss_img, result.loss_txt], dtype=torch.float64)
        syn.zero_grad()
    parallel.sum_to_all(total)
    parallel.sum_to_all([losses])
    for t, g in zip(syn.tensors(), total):
        t.grad = g.div_(k_total)
    if guard.enabled:
        guard.active = parallel.all_true(all(kept))
        checks = parallel.gather(checks)
    loss, loss_img, loss_txt = (losses / k_total).tolist()
    return MatchResult(loss, loss_img, loss_txt, None, None), checks
