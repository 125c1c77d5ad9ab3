"""One phase of PTM-ST distillation (SPEC section 5), with saves, periodic evaluation and resumable
checkpoints. distill_ptm-st.py runs the phases in order.

`distill_phase` is the method: draw an expert segment, match, step (with the EMA copy). Everything an
iteration leaves behind (log records, saves, evaluations, checkpoints) goes through `PhaseRun`, the one
place that writes, into the run directory that files/run_dir.py owns."""
import math
import resource
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional, Union

import torch
from tqdm import trange

from common.errors import UserError
from distill_utils import parallel, segments
from distill_utils.config import DistillConfig, EvalProtocol
from distill_utils.datasets.loading import TrainData
from distill_utils.evaluation.sources import SubsetSource
from distill_utils.evaluation.summary import headline
from distill_utils.evaluation.training import evaluate_sequence
from distill_utils.evaluation.retrieval import format_metrics
from distill_utils.files.buffers import BufferDir
from distill_utils.files.expert_stream import ExpertStream
from distill_utils.files.run_dir import RunDir
from distill_utils.method.amp_guard import AmpGuard, describe as describe_amp_check
from distill_utils.method.conditioning import condition
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from distill_utils.files.subset_file import DistilledSubset
from distill_utils.method.matching import MATCHING, MatchResult
from distill_utils.method.student import RetrievalData, Student
from distill_utils.phases import Phase
from distill_utils.preflight import need_timestamps
from distill_utils.rng import phase_seed
from networks.dual_encoder import DualEncoder, NetworkFactory


@dataclass
class RunContext:
    cfg: DistillConfig
    run_dir: RunDir
    train: TrainData
    test: RetrievalData
    factory: NetworkFactory
    protocol: EvalProtocol   # the in-run evaluation; num_eval 0 saves without evaluating
    identity: dict           # NetworkSpec.identity() and text_dim: what every saved subset records
    device: torch.device
    val: Optional[RetrievalData] = None  # the val split, for --select_on val


_REPORTED = {"best": "authors protocol, best on test", "final": "final epoch", "val_selected": "selected on val"}


def check_buffer(phase: Phase, net: DualEncoder, identity: dict, expert_epochs: int) -> BufferDir:
    """Refuse a buffer made for another network or with other text-encoder weights, or any of its files too
    short for the phase's start epochs; shapes are read without loading the tensors."""
    buf = BufferDir(phase.buffer_path)
    where = f"--buffer_path {phase.buffer_path}"
    length, path = buf.check_network(net)
    need_timestamps(phase, expert_epochs, length, where, path)
    buf.check_identity(identity, where)
    return buf


def preflight(ctx: RunContext, phases: List[Phase]) -> None:
    """Check every phase's buffer files against the network before any phase starts: fail in seconds, not hours."""
    net = ctx.factory.build(seed=0, device="cpu")
    for phase in phases:
        if phase.num_queries > len(ctx.train):
            raise UserError(f"--num_queries {phase.num_queries} (phase {phase.index}): the {ctx.identity['dataset']} "
                            f"train set has only {len(ctx.train)} pairs")
        check_buffer(phase, net, ctx.identity, ctx.cfg.expert_epochs)


def matching_step(cfg: DistillConfig) -> Callable:
    """The matching step of --matching (looked up at call time, so tests can wrap it)."""
    match = MATCHING[cfg.matching]
    store = {"constant": cfg.constant_store, "adjoint": cfg.adjoint_store}.get(cfg.matching)
    if store:  # what it keeps or recomputes: memory and time, never the result
        match = partial(match, store=store)
    return match


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class PhaseRun:
    """What one phase leaves in the run directory: iteration records, the EMA subset every cfg.eval_it
    iterations (saved, drawn, evaluated), checkpoints every cfg.checkpoint_it, the final subsets."""

    def __init__(self, ctx: RunContext, phase: Phase, frozen: List[DistilledSubset], syn: SyntheticSet,
                 stream: ExpertStream, generator: torch.Generator, guard: AmpGuard):
        self.ctx, self.phase, self.frozen = ctx, phase, frozen
        self.syn, self.stream, self.generator, self.guard = syn, stream, generator, guard
        self.seconds, self.steps_timed = 0.0, 0

    def subset_config(self, iteration: int) -> dict:
        """What a saved subset records: the network's identity, the phase and how it was distilled."""
        ctx, phase = self.ctx, self.phase
        return {**ctx.identity, "phase": phase.index, "iteration": iteration, **phase.as_dict(),
                **ctx.cfg.recorded(), "name": ctx.run_dir.name, "seed": ctx.cfg.seed}

    def before_step(self, result: MatchResult, checks: list, it: int) -> None:
        """Log the --amp checks; stop before a non-finite loss or gradient reaches the subset."""
        for check in checks:
            self.ctx.run_dir.log({"phase": self.phase.index, **check},
                             echo=f"phase {self.phase.index}: {describe_amp_check(check)}")
        self._check_finite(result, it)

    def after_iteration(self, done: int, result: MatchResult, start_epoch: Union[int, List[int]], tick: float) -> None:
        """Iteration `done` (1-based) has stepped: check it, time it (from `tick`), log, save, checkpoint."""
        ctx, phase, syn, device = self.ctx, self.phase, self.syn, self.ctx.device
        self._check_finite(result, done - 1, after_update=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds, self.steps_timed = self.seconds + time.perf_counter() - tick, self.steps_timed + 1
        ctx.run_dir.log({"phase": phase.index, "iteration": done, "start_epoch": start_epoch, "loss": result.loss,
                     "loss_img": result.loss_img, "loss_txt": result.loss_txt, "syn_lr_img": syn.student_lr_img.item(),
                     "syn_lr_txt": syn.student_lr_txt.item()})
        saved = done % ctx.cfg.eval_it == 0 or done == phase.iterations
        if saved:
            subset = syn.subset(self.subset_config(done))
            self.evaluate(subset, ctx.run_dir.save_subset(subset, f"{phase.index}_{done}", ctx.train), done)
        if saved or done % ctx.cfg.checkpoint_it == 0:
            parallel.check_same(syn.tensors() + syn.ema.shadow,
                                f"the synthetic set (phase {phase.index}, iteration {done})")
            ctx.run_dir.write_checkpoint(phase.index, done, {
                "syn": syn.state_dict(), "experts": self.stream.state_dict(), "amp_guard": self.guard.state_dict(),
                "generator": self.generator.get_state()}, device)

    def evaluate(self, subset: DistilledSubset, path: str, done: int) -> None:
        """Train fresh students on D_1..D_{p-1} and `subset` (as --eval_mode says); log the numbers."""
        ctx, phase = self.ctx, self.phase
        if ctx.protocol.num_eval <= 0:
            return
        sources = [SubsetSource(s, f"D{k + 1}") for k, s in enumerate(self.frozen)] + \
            [SubsetSource(subset, f"D{phase.index + 1}")]
        report = evaluate_sequence(sources, ctx.factory, ctx.test, ctx.protocol, ctx.cfg.seed, ctx.device, ctx.val,
                                   desc=f"eval p{phase.index} it{done}")
        m = headline(report)
        ctx.run_dir.log({"event": "eval", "phase": phase.index, "iteration": done, "file": path,
                     **{f"eval_{k}": v for k, v in m.items()},
                     **{f"eval_std_{k}": v for k, v in report[report["reported"]]["std"].items()},
                     **{f"eval_best_{k}": v for k, v in report["best"]["mean"].items()}},
                    echo=f"phase {phase.index} it {done}: EMA subset, {ctx.protocol.eval_mode}, "
                         f"{_REPORTED[report['reported']]}, "
                         f"{len(report['seeds'])} runs | "
                         f"{format_metrics(m)}")

    def finish(self) -> DistilledSubset:
        """Save the final EMA subset (and, with EMA, the subset without it); log the phase's speed. Returns the
        EMA subset."""
        ctx, phase, syn, device = self.ctx, self.phase, self.syn, self.ctx.device
        config = self.subset_config(phase.iterations)
        final = syn.subset(config)
        # the EMA never feeds back, so the raw subset is exactly what a run without EMA ends with
        raw = syn.subset(config | {"ema_decay": 0.0}, ema=False) if ctx.cfg.ema_decay > 0 else None
        ctx.run_dir.save_final(phase.index, final, raw)
        if self.steps_timed:
            per_it = self.seconds / self.steps_timed
            ctx.run_dir.log({"event": "phase_done", "phase": phase.index, "seconds_per_iteration": per_it,
                         "peak_memory_mb": peak_memory_mb(device)},
                        echo=f"phase {phase.index} done: {per_it:.3f} s/iteration, "
                             f"peak memory {peak_memory_mb(device):.0f} MB")
        return final

    def _check_finite(self, result, it, after_update=False):
        """Stop before a non-finite loss, gradient or updated subset reaches a save or a checkpoint."""
        syn = self.syn
        if after_update:
            bad = not all(torch.isfinite(t).all() for t in (*syn.tensors(), *syn.ema.shadow))
            what = "the synthetic set became non-finite after its update"
        else:
            grads_ok = all(t.grad is None or torch.isfinite(t.grad).all() for t in syn.tensors())
            bad = not (math.isfinite(result.loss) and grads_ok)
            what = f"matching loss or gradient became {result.loss if grads_ok else 'non-finite'}"
        if bad:
            raise UserError(f"{what} in phase {self.phase.index} at iteration {it + 1} (the optimisation diverged; "
                            f"the buffer values used were finite); stopped, the last good save is "
                            f"{self.ctx.run_dir.last_save or 'none'} (lower --lr_img/--lr_txt/--lr_sim/--lr_lr or set "
                            "--clamp_lr)")


def distill_phase(ctx: RunContext, phase: Phase, frozen: List[DistilledSubset], resume: Optional[dict] = None
                  ) -> DistilledSubset:
    """Run phase `phase` (or its remainder, from checkpoint `resume`); returns its EMA subset."""
    c, device = ctx.cfg, ctx.device
    seed = phase_seed(c.seed, phase.index)
    torch.manual_seed(seed)  # dropout masks of the student
    generator = torch.Generator().manual_seed(seed)  # real-pair init, start epochs, minibatches
    net = ctx.factory.build(seed=seed, device=device).train()
    guard = AmpGuard(Student(net, c.loss_type, blend=c.blend), c.amp, c.amp_tolerance, c.amp_check_it,
                     state=resume and resume.get("amp_guard"), tf32=c.tf32, nondeterministic=c.nondeterministic)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # phase_done reports this phase's peak
    stream = ExpertStream(BufferDir(phase.buffer_path), seed)
    check_buffer(phase, net, ctx.identity, c.expert_epochs)
    opt = SynOptim(c.lr_img, c.lr_txt, c.lr_sim, c.lr_lr, momentum=0.5, ema_decay=c.ema_decay, clamp_lr=c.clamp_lr)
    syn = SyntheticSet.from_real(ctx.train, phase.num_queries, c.sim_type, phase.sim_rank, c.alpha,
                                 c.lr_teacher_img, c.lr_teacher_txt, opt, generator, device)
    begin = ctx.run_dir.restore(resume, phase, syn, stream, generator, device) if resume else 0
    match = matching_step(c)
    view = condition(syn, frozen, c.phase_conditioning)  # what the student's steps see
    run = PhaseRun(ctx, phase, frozen, syn, stream, generator, guard)
    bar = trange(begin, phase.iterations, initial=begin, total=phase.iterations, desc=f"phase {phase.index}")
    for it in bar:
        tick = time.perf_counter()
        drawn = segments.draw(c.experts_per_it, stream, phase, generator, c, len(view), device)
        result, checks = segments.match_segments(drawn, guard, match, view, seed, it)  # sets the subset's .grad
        run.before_step(result, checks, it)
        syn.step()  # SGD on X, Y, S and the lrs, then the EMA copy
        t = [seg.start_epoch for seg in drawn]
        run.after_iteration(it + 1, result, t[0] if len(t) == 1 else t, tick)
        bar.set_postfix(loss=f"{result.loss:.4f}", syn_lr_img=f"{syn.student_lr_img.item():.3g}")
    return run.finish()
