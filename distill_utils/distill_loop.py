"""One phase of PTM-ST distillation (SPEC section 5), with saves, periodic evaluation and resumable
checkpoints. distill_ptm-st.py runs the phases in order."""
import math
import os
import resource
import time
from dataclasses import dataclass
from functools import partial

import torch
from tqdm import trange

from distill_utils import parallel, segments
from distill_utils.method.amp_guard import AmpGuard, describe as describe_amp_check
from distill_utils.method.conditioning import condition
from common.errors import UserError, one_line
from distill_utils.evaluation.protocol import EvalProtocol, SubsetSource, evaluate_sequence, headline
from common.io import load_torch, save_torch
from distill_utils.method.matching import MATCHING
from distill_utils.evaluation.retrieval import format_metrics
from distill_utils.phases import Phase
from distill_utils.method.student import Student
from distill_utils.files.subset_file import save_subset
from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from distill_utils.files.buffers import ExpertStream, check_manifest, check_pairs
from networks.text_encoders import weights_digest
from distill_utils.files.pictures import save_captions, save_image_grid

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunContext:
    args: object
    run_dir: str
    train: object      # TrainData
    test: object       # RetrievalData
    factory: object    # NetworkFactory
    log: object        # RunLog
    last_save: str = None

    @property
    def device(self):
        return self.args.device


def phase_seed(seed, phase_index):
    return seed * 1009 + phase_index


def check_buffer(phase, net, args):
    """Refuse a buffer made for another network or with other text-encoder weights, or any of its files too
    short for the phase's start epochs; shapes are read without loading the tensors."""
    where = f"--buffer_path {phase.buffer_path}"
    length, path = check_pairs(phase.buffer_path, net.img_layout, net.txt_layout)
    last_needed = phase.max_start_epoch - 1 + args.expert_epochs
    if last_needed >= length:
        raise UserError(f"--max_start_epoch {phase.max_start_epoch} + --expert_epochs {args.expert_epochs} needs "
                        f"timestamp {last_needed}, but {where} ({os.path.basename(path)}) records {length} "
                        f"(0..{length - 1})")
    check_manifest(phase.buffer_path, {**{key: getattr(args, key) for key in
                                          ("image_encoder", "text_encoder", "image_trainable", "image_size")},
                                       "text_encoder_weights": weights_digest(args.text_encoder)}, where)


def preflight(ctx, phases):
    """Check every phase's buffer files against the network before any phase starts: fail in seconds, not hours."""
    net = ctx.factory.build(seed=0, device="cpu")
    for phase in phases:
        if phase.num_queries > len(ctx.train):
            raise UserError(f"--num_queries {phase.num_queries} (phase {phase.index}): the {ctx.args.dataset} train "
                            f"set has only {len(ctx.train)} pairs")
        check_buffer(phase, net, ctx.args)


def subset_config(ctx, phase, iteration):
    a = ctx.args
    return {"dataset": a.dataset, "image_encoder": a.image_encoder, "text_encoder": a.text_encoder,
            "text_encoder_weights": weights_digest(a.text_encoder), "image_size": a.image_size, "image_trainable": a.image_trainable, "out_embedding": a.out_embedding,
            "text_dim": int(ctx.train.text_features.shape[1]), "phase": phase.index, "iteration": iteration,
            **phase.as_dict(), "syn_steps": a.syn_steps, "expert_epochs": a.expert_epochs, "sim_type": a.sim_type,
            "experts_per_it": a.experts_per_it, "loss_type": a.loss_type, "matching": a.matching,
            "phase_conditioning": a.phase_conditioning, "ema_decay": a.ema_decay, "name": a.name, "seed": a.seed}


def eval_protocol(args):
    return EvalProtocol(num_eval=args.num_eval, epoch_eval_train=args.epoch_eval_train, batch_train=args.batch_train,
                        loss_type=args.loss_type, eval_mode=args.eval_mode, protocol=args.protocol)


def save_point(ctx, syn, phase, done, frozen):
    """Save the EMA subset, its picture and captions; evaluate D_1..D_{p-1} and it (as --eval_mode says)."""
    subset = syn.subset(subset_config(ctx, phase, done))
    stem = f"{phase.index}_{done}"
    path = os.path.join(ctx.run_dir, f"distilled_{stem}.pt")
    if parallel.is_main():  # the evaluation below runs on every rank, each training its share of the students
        save_subset(subset, path)
        save_image_grid(subset.image, os.path.join(ctx.run_dir, f"images_{stem}.png"))
        save_captions(subset.text, ctx.train.text_features, ctx.train.pairs.captions,
                      os.path.join(ctx.run_dir, f"captions_{stem}.txt"))
    ctx.last_save = path
    if ctx.args.num_eval > 0:
        sources = [SubsetSource(s, f"D{k + 1}") for k, s in enumerate(frozen)] + [SubsetSource(subset, f"D{phase.index + 1}")]
        report = evaluate_sequence(sources, ctx.factory, ctx.test, eval_protocol(ctx.args), ctx.args.seed,
                                   ctx.device, desc=f"eval p{phase.index} it{done}")
        m = headline(report)
        ctx.log.log({"event": "eval", "phase": phase.index, "iteration": done, "file": path,
                     **{f"eval_{k}": v for k, v in m.items()},
                     **{f"eval_std_{k}": v for k, v in report[report["reported"]]["std"].items()},
                     **{f"eval_best_{k}": v for k, v in report["best"]["mean"].items()}},
                    echo=f"phase {phase.index} it {done}: EMA subset, {ctx.args.eval_mode}, "
                         f"{'authors protocol, best on test' if report['reported'] == 'best' else 'final epoch'}, "
                         f"{len(report['seeds'])} runs | "
                         f"{format_metrics(m)}")


def _check_finite(result, syn, phase, it, ctx, after_update=False):
    """Stop before a non-finite loss, gradient or updated subset reaches a save or a checkpoint."""
    if after_update:
        bad = not all(torch.isfinite(t).all() for t in (*syn.tensors(), *syn.ema.shadow))
        what = "the synthetic set became non-finite after its update"
    else:
        grads_ok = all(t.grad is None or torch.isfinite(t.grad).all() for t in syn.tensors())
        bad = not (math.isfinite(result.loss) and grads_ok)
        what = f"matching loss or gradient became {result.loss if grads_ok else 'non-finite'}"
    if bad:
        raise UserError(f"{what} in phase {phase.index} at iteration {it + 1} (the optimisation diverged; the buffer "
                        f"values used were finite); stopped, the last good save is {ctx.last_save or 'none'} "
                        "(lower --lr_img/--lr_txt/--lr_sim/--lr_lr or set --clamp_lr)")


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_checkpoint(ctx, phase, done, syn, stream, generator, guard):
    parallel.check_same(syn.tensors() + syn.ema.shadow, f"the synthetic set (phase {phase.index}, iteration {done})")
    if not parallel.is_main():
        return
    save_torch({"phase": phase.index, "iteration": done, "syn": syn.state_dict(), "experts": stream.state_dict(),
                "amp_guard": guard.state_dict(),
                "generator": generator.get_state(), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None,
                "last_save": ctx.last_save}, os.path.join(ctx.run_dir, CHECKPOINT))


CHECKPOINT_KEYS = {"phase": int, "iteration": int, "syn": dict, "experts": dict, "generator": torch.Tensor,
                   "rng": torch.Tensor}


def read_checkpoint(run_dir):
    """The checkpoint of a run directory (None if there is none), refused in one line if it is not one of ours."""
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(path):
        return None
    ckpt = load_torch(path, what="checkpoint")
    if not (isinstance(ckpt, dict) and all(isinstance(ckpt.get(k), t) for k, t in CHECKPOINT_KEYS.items())
            and isinstance(ckpt["syn"].get("tensors"), list) and all(torch.is_tensor(v) for v in ckpt["syn"]["tensors"])
            and all(isinstance(ckpt["experts"].get(k), int) for k in ("pass_idx", "file_pos", "expert_pos"))):
        raise UserError(f"checkpoint {path}: not a checkpoint of this program (expected phase, iteration, syn, experts "
                        "and RNG states); move it away to restart the run")
    if not all(torch.isfinite(v).all() for v in ckpt["syn"]["tensors"]):
        raise UserError(f"checkpoint {path}: holds NaN or inf values; move it away to restart the run")
    return ckpt


def _restore(ckpt, syn, stream, generator, ctx, phase):
    """Continue from a checkpoint; one that does not fit this phase's subset is refused, never half-loaded."""
    where = f"checkpoint {os.path.join(ctx.run_dir, CHECKPOINT)}"
    saved = ckpt["syn"]["tensors"]
    if [tuple(t.shape) for t in saved] != [tuple(t.shape) for t in syn.tensors()] or \
            not 0 <= ckpt["iteration"] <= phase.iterations:
        raise UserError(f"{where}: does not fit phase {phase.index} of this run (iteration {ckpt['iteration']} of "
                        f"{phase.iterations}, {len(saved)} tensors); move it away to restart the run")
    try:
        syn.load_state_dict(ckpt["syn"])
        stream.load_state_dict(ckpt["experts"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt.get("cuda_rng") is not None and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"], ctx.device)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise UserError(f"{where}: damaged ({one_line(err)[:160]}); move it away to restart the run") from None
    ctx.last_save = ckpt.get("last_save")
    return ckpt["iteration"]


def distill_phase(ctx: RunContext, phase: Phase, frozen, resume=None):
    """Run phase `phase` (or its remainder, from checkpoint `resume`); returns its EMA subset."""
    a, device = ctx.args, ctx.device
    seed = phase_seed(a.seed, phase.index)
    torch.manual_seed(seed)  # dropout masks of the student
    generator = torch.Generator().manual_seed(seed)  # real-pair init, start epochs, minibatches
    net = ctx.factory.build(seed=seed, device=device).train()
    student = Student(net, a.loss_type)
    guard = AmpGuard(student, a.amp, a.amp_tolerance, a.amp_check_it, state=resume and resume.get("amp_guard"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # phase_done reports this phase's peak
    stream = ExpertStream(phase.buffer_path, seed)
    check_buffer(phase, net, a)
    opt = SynOptim(a.lr_img, a.lr_txt, a.lr_sim, a.lr_lr, momentum=0.5, ema_decay=a.ema_decay, clamp_lr=a.clamp_lr)
    syn = SyntheticSet.from_real(ctx.train, phase.num_queries, a.sim_type, phase.sim_rank, a.alpha,
                                 a.lr_teacher_img, a.lr_teacher_txt, opt, generator, device)
    begin = _restore(resume, syn, stream, generator, ctx, phase) if resume else 0
    match = MATCHING[a.matching]
    if a.matching == "adjoint":  # where it keeps the student points: memory and time, never the result
        match = partial(match, store=a.adjoint_store)
    view = condition(syn, frozen, a.phase_conditioning)  # what the student's steps see
    seconds, steps_timed = 0.0, 0
    bar = trange(begin, phase.iterations, initial=begin, total=phase.iterations, desc=f"phase {phase.index}")
    for it in bar:
        tick = time.perf_counter()
        drawn = segments.draw(a.experts_per_it, stream, phase, generator, a, len(view), device)
        result, checks = segments.match_segments(drawn, guard, match, view, seed, it)
        for check in checks:
            ctx.log.log({"phase": phase.index, **check}, echo=f"phase {phase.index}: {describe_amp_check(check)}")
        _check_finite(result, syn, phase, it, ctx)
        syn.step()
        _check_finite(result, syn, phase, it, ctx, after_update=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, steps_timed = seconds + time.perf_counter() - tick, steps_timed + 1
        done = it + 1
        bar.set_postfix(loss=f"{result.loss:.4f}", lr_img=f"{syn.lr_img.item():.3g}")
        t = [seg.start_epoch for seg in drawn]
        ctx.log.log({"phase": phase.index, "iteration": done, "start_epoch": t[0] if len(t) == 1 else t,
                     "loss": result.loss, "loss_img": result.loss_img, "loss_txt": result.loss_txt,
                     "syn_lr_img": syn.lr_img.item(), "syn_lr_txt": syn.lr_txt.item()})
        saved = done % a.eval_it == 0 or done == phase.iterations
        if saved:
            save_point(ctx, syn, phase, done, frozen)
        if saved or done % a.checkpoint_it == 0:
            write_checkpoint(ctx, phase, done, syn, stream, generator, guard)
    config = subset_config(ctx, phase, phase.iterations)
    final = syn.subset(config)
    if parallel.is_main():
        save_subset(final, os.path.join(ctx.run_dir, f"distilled_{phase.index}_final.pt"))
    if a.ema_decay > 0 and parallel.is_main():  # the EMA never feeds back, so this is exactly what a run without EMA ends with
        save_subset(syn.subset(config | {"ema_decay": 0.0}, ema=False),
                    os.path.join(ctx.run_dir, f"distilled_{phase.index}_final_raw.pt"))
    if steps_timed:
        ctx.log.log({"event": "phase_done", "phase": phase.index, "seconds_per_iteration": seconds / steps_timed,
                     "peak_memory_mb": peak_memory_mb(device)},
                    echo=f"phase {phase.index} done: {seconds / steps_timed:.3f} s/iteration, "
                         f"peak memory {peak_memory_mb(device):.0f} MB")
    return final
