"""One phase of PTM-ST distillation (SPEC section 5), with saves, periodic evaluation and resumable
checkpoints. distill_ptm-st.py runs the phases in order."""
import os
import resource
import time
from dataclasses import dataclass

import torch
from tqdm import trange

from .conditioning import condition
from .errors import UserError
from .evaluation import EvalProtocol, SubsetSource, evaluate_sequence, headline
from .io import load_torch, save_torch
from .matching import MATCHING, minibatch_schedule
from .metrics import format_metrics
from .phases import Phase
from .student import Student
from .subsets import save_subset
from .syn_set import SynOptim, SyntheticSet
from .trajectories import ExpertStream, check_manifest, check_shapes, shapes_of
from .visualize import save_captions, save_image_grid

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


def check_buffer(stream, phase, net, args):
    """Refuse a buffer made for another network, or too short for the phase's start epochs."""
    img_traj, txt_traj, path = stream.peek_first()
    where = f"--buffer_path {phase.buffer_path} ({os.path.basename(path)})"
    check_shapes(shapes_of(img_traj[0]), net.img_layout, "img", where)
    check_shapes(shapes_of(txt_traj[0]), net.txt_layout, "txt", where)
    check_manifest(phase.buffer_path, {key: getattr(args, key) for key in
                                       ("image_encoder", "text_encoder", "image_trainable", "image_size")}, where)
    last_needed = phase.max_start_epoch - 1 + args.expert_epochs
    if last_needed >= min(len(img_traj), len(txt_traj)):
        raise UserError(f"--max_start_epoch {phase.max_start_epoch} + --expert_epochs {args.expert_epochs} needs "
                        f"timestamp {last_needed}, but {where} records {len(img_traj)} (0..{len(img_traj) - 1})")


def preflight(ctx, phases):
    """Check every phase's buffer against the network before any phase starts: fail in seconds, not hours."""
    net = ctx.factory.build(seed=0, device="cpu")
    for phase in phases:
        check_buffer(ExpertStream(phase.buffer_path, 0), phase, net, ctx.args)


def expert_segment(stream, phase, generator, expert_epochs, device):
    """Next expert: theta at a start epoch T drawn from [min, max) and at T + expert_epochs (flat, img and txt)."""
    img_traj, txt_traj, _ = stream.next()
    t = int(torch.randint(phase.min_start_epoch, phase.max_start_epoch, (1,), generator=generator))
    flat = lambda stamp: torch.cat([p.reshape(-1) for p in stamp]).to(device)
    start = (flat(img_traj[t]), flat(txt_traj[t]))
    target = (flat(img_traj[t + expert_epochs]), flat(txt_traj[t + expert_epochs]))
    return start, target, t


def subset_config(ctx, phase, iteration):
    a = ctx.args
    return {"dataset": a.dataset, "image_encoder": a.image_encoder, "text_encoder": a.text_encoder,
            "image_size": a.image_size, "image_trainable": a.image_trainable, "out_embedding": a.out_embedding,
            "text_dim": int(ctx.train.text_features.shape[1]), "phase": phase.index, "iteration": iteration,
            **phase.as_dict(), "syn_steps": a.syn_steps, "expert_epochs": a.expert_epochs, "sim_type": a.sim_type,
            "loss_type": a.loss_type, "matching": a.matching, "phase_conditioning": a.phase_conditioning,
            "ema_decay": a.ema_decay, "name": a.name, "seed": a.seed}


def eval_protocol(args):
    return EvalProtocol(num_eval=args.num_eval, epoch_eval_train=args.epoch_eval_train, batch_train=args.batch_train,
                        loss_type=args.loss_type, eval_mode=args.eval_mode, protocol=args.protocol)


def save_point(ctx, syn, phase, done, frozen):
    """Save the EMA subset, its picture and captions; evaluate D_1..D_{p-1} and it (as --eval_mode says)."""
    subset = syn.subset(subset_config(ctx, phase, done))
    stem = f"{phase.index}_{done}"
    path = os.path.join(ctx.run_dir, f"distilled_{stem}.pt")
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


def _check_finite(result, syn, phase, it, ctx):
    grads_ok = all(t.grad is None or torch.isfinite(t.grad).all() for t in syn.tensors())
    if not (torch.isfinite(torch.tensor(result.loss)) and grads_ok):
        raise UserError(f"matching loss or gradient became {result.loss if grads_ok else 'non-finite'} in phase "
                        f"{phase.index} at iteration {it + 1}; stopped, the last good save is "
                        f"{ctx.last_save or 'none'} (lower --lr_img/--lr_txt/--lr_sim/--lr_lr or set --clamp_lr)")


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_checkpoint(ctx, phase, done, syn, stream, generator):
    save_torch({"phase": phase.index, "iteration": done, "syn": syn.state_dict(), "experts": stream.state_dict(),
                "generator": generator.get_state(), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None,
                "last_save": ctx.last_save}, os.path.join(ctx.run_dir, CHECKPOINT))


def read_checkpoint(run_dir):
    path = os.path.join(run_dir, CHECKPOINT)
    return load_torch(path, what="checkpoint") if os.path.isfile(path) else None


def _restore(ckpt, syn, stream, generator, ctx):
    syn.load_state_dict(ckpt["syn"])
    stream.load_state_dict(ckpt["experts"])
    generator.set_state(ckpt["generator"])
    torch.set_rng_state(ckpt["rng"])
    if ckpt["cuda_rng"] is not None and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["cuda_rng"], ctx.device)
    ctx.last_save = ckpt["last_save"]
    return ckpt["iteration"]


def distill_phase(ctx: RunContext, phase: Phase, frozen, resume=None):
    """Run phase `phase` (or its remainder, from checkpoint `resume`); returns its EMA subset."""
    a, device = ctx.args, ctx.device
    seed = phase_seed(a.seed, phase.index)
    torch.manual_seed(seed)  # dropout masks of the student
    generator = torch.Generator().manual_seed(seed)  # real-pair init, start epochs, minibatches
    net = ctx.factory.build(seed=seed, device=device).train()
    student = Student(net, a.loss_type)
    stream = ExpertStream(phase.buffer_path, seed)
    check_buffer(stream, phase, net, a)
    opt = SynOptim(a.lr_img, a.lr_txt, a.lr_sim, a.lr_lr, momentum=0.5, ema_decay=a.ema_decay, clamp_lr=a.clamp_lr)
    syn = SyntheticSet.from_real(ctx.train, phase.num_queries, a.sim_type, phase.sim_rank, a.alpha,
                                 a.lr_teacher_img, a.lr_teacher_txt, opt, generator, device)
    begin = _restore(resume, syn, stream, generator, ctx) if resume else 0
    match = MATCHING[a.matching]
    view = condition(syn, frozen, a.phase_conditioning)  # what the student's steps see
    seconds, steps_timed = 0.0, 0
    bar = trange(begin, phase.iterations, initial=begin, total=phase.iterations, desc=f"phase {phase.index}")
    for it in bar:
        tick = time.perf_counter()
        start, target, t = expert_segment(stream, phase, generator, a.expert_epochs, device)
        schedule = minibatch_schedule(len(view), a.mini_batch_size, a.syn_steps, generator)
        result = match(student, view, start, target, schedule)
        _check_finite(result, syn, phase, it, ctx)
        syn.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, steps_timed = seconds + time.perf_counter() - tick, steps_timed + 1
        done = it + 1
        bar.set_postfix(loss=f"{result.loss:.4f}", lr_img=f"{syn.lr_img.item():.3g}")
        ctx.log.log({"phase": phase.index, "iteration": done, "start_epoch": t, "loss": result.loss,
                     "loss_img": result.loss_img, "loss_txt": result.loss_txt, "syn_lr_img": syn.lr_img.item(),
                     "syn_lr_txt": syn.lr_txt.item()})
        saved = done % a.eval_it == 0 or done == phase.iterations
        if saved:
            save_point(ctx, syn, phase, done, frozen)
        if saved or done % a.checkpoint_it == 0:
            write_checkpoint(ctx, phase, done, syn, stream, generator)
    config = subset_config(ctx, phase, phase.iterations)
    final = syn.subset(config)
    save_subset(final, os.path.join(ctx.run_dir, f"distilled_{phase.index}_final.pt"))
    if a.ema_decay > 0:  # the EMA never feeds back, so this is exactly what a run without EMA ends with
        save_subset(syn.subset(config | {"ema_decay": 0.0}, ema=False),
                    os.path.join(ctx.run_dir, f"distilled_{phase.index}_final_raw.pt"))
    if steps_timed:
        ctx.log.log({"event": "phase_done", "phase": phase.index, "seconds_per_iteration": seconds / steps_timed,
                     "peak_memory_mb": peak_memory_mb(device)},
                    echo=f"phase {phase.index} done: {seconds / steps_timed:.3f} s/iteration, "
                         f"peak memory {peak_memory_mb(device):.0f} MB")
    return final
