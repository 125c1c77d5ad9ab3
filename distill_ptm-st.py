"""PTM-ST: phased distillation with shortcut trajectories (SPEC section 5, Algorithm 1).

    for p = 1..P:                                   # --subset_num phases, run in order
        init X_p, Y_p from N_p random real pairs, S_p = I, lrs = teacher lrs
        for i = 1..I_p:
            take the next expert and a start epoch T in [T-_p, T+_p)   # --buffer_path of phase p
            train a student syn_steps SGD steps on (X_p, Y_p, S_p) from theta_T
            L = ||theta_student - theta_{T+dT}||^2 / ||theta_T - theta_{T+dT}||^2   (img + txt)
            update X_p, Y_p, S_p, lrs; EMA copy <- decay * EMA + (1 - decay) * current
        D_p <- the EMA copy, frozen                 # evaluations of phase p train on D_1..D_{p-1}, then D_p

    bash sh/distill.sh                              # two phases on the built-in synthetic dataset (CPU)
    python distill_ptm-st.py --dataset flickr --image_trainable --buffer_path \
        buffer/flickr/nfnet_bert/InfoNCE/convexified_0_6 buffer/flickr/nfnet_bert/InfoNCE/convexified_0_8 \
        --min_start_epoch 0 1 --max_start_epoch 2 3 --num_queries 200 299 --Iteration 2000 2000 --subset_num 2
    torchrun --nproc_per_node 4 distill_ptm-st.py --experts_per_it 4 ...   # 4 expert segments per iteration,
                                                    # one per GPU, gradients averaged (distill_utils/segments.py)

Writes runs/<dataset>/<name>/: config.json, metrics.jsonl, distilled_<p>_<it>.pt (the EMA subset in the
published format plus the phase config), images_<p>_<it>.png, captions_<p>_<it>.txt,
distilled_<p>_final.pt, distilled_<p>_final_raw.pt (the subset without EMA: what --ema_decay 0 gives)
and a checkpoint; --resume continues a killed run and ends exactly where an uninterrupted one would.
"""
import distill_utils.startup  # noqa: F401  (first: Ctrl-C while torch loads is one line, no traceback)
import datetime
import json
import os

from distill_utils import cli_args, parallel, segments, speed
from distill_utils.datasets.loading import load_split, load_train, prepare
from distill_utils.method.conditioning import CONDITIONING
from distill_utils.distill_loop import RunContext, distill_phase, preflight, read_checkpoint
from common.errors import UserError, cli_main
from distill_utils.evaluation.protocol import add_mode_args
from common.io import atomic_path, ensure_writable_dir, load_json_object, save_json
from distill_utils.method.matching import MATCHING, STORES
from distill_utils.phases import parse_phases
from distill_utils.files.run_log import RunLog, read_records
from distill_utils.files.subset_file import load_subset
from networks.dual_encoder import NetConfig, NetworkFactory

# Options that may change when a run is resumed: they do not alter its result.
RESUMABLE_CHANGES = {"resume", "device", "wandb", "workers", "feature_cache", "adjoint_store"}


def make_parser():
    p = cli_args.Parser(description=__doc__)
    cli_args.add_data_args(p)
    cli_args.add_network_args(p)
    g = p.add_argument_group("phases (one value per phase)")
    g.add_argument("--subset_num", type=int, default=2, help="number of phases P (default: 2)")
    g.add_argument("--buffer_path", nargs="+", help="expert buffer directory of each phase (normal/ or convexified_S_E/)")
    g.add_argument("--min_start_epoch", type=int, nargs="+", help="lowest start epoch T of each phase")
    g.add_argument("--max_start_epoch", type=int, nargs="+", help="start epochs are drawn from [min, max)")
    g.add_argument("--num_queries", type=int, nargs="+", help="synthetic pairs N_p of each phase")
    g.add_argument("--Iteration", type=int, nargs="+", help="distillation iterations I_p of each phase")
    g.add_argument("--sim_rank", type=int, nargs="+", help="rank of S in each phase (--sim_type lowrank only)")
    g = p.add_argument_group("distillation")
    g.add_argument("--syn_steps", type=int, default=8, help="student SGD steps per iteration (default: 8)")
    g.add_argument("--expert_epochs", type=int, default=1, help="target = expert epoch T + this (default: 1)")
    g.add_argument("--experts_per_it", type=int, default=1,
                   help="expert segments (expert, start epoch) matched per iteration, their gradients averaged; "
                        "under torchrun split over the ranks, at least one each (default: 1)")
    g.add_argument("--mini_batch_size", type=int, default=40, help="synthetic pairs per student step (default: 40)")
    g.add_argument("--lr_img", type=float, default=1000, help="lr of the synthetic pixels (default: 1000)")
    g.add_argument("--lr_txt", type=float, default=1000, help="lr of the synthetic text features (default: 1000)")
    g.add_argument("--lr_sim", type=float, default=10.0, help="lr of the similarity parameters (default: 10)")
    g.add_argument("--lr_lr", type=float, default=0.01, help="lr of the two student lrs (default: 0.01)")
    g.add_argument("--lr_teacher_img", type=float, default=0.1, help="initial student lr, img params (default: 0.1)")
    g.add_argument("--lr_teacher_txt", type=float, default=0.1, help="initial student lr, txt params (default: 0.1)")
    g.add_argument("--clamp_lr", type=float, default=0.0,
                   help="lower bound of the learned student lrs (default: 0, a learning rate never turns negative)")
    g.add_argument("--sim_type", default="full", choices=["full", "lowrank"], help="similarity matrix (default: full)")
    g.add_argument("--alpha", type=float, default=1.0, help="lowrank: S = diag(a) + alpha/r L R^T (default: 1)")
    g.add_argument("--ema_decay", type=float, default=0.99, help="EMA decay of the saved subset; 0 = no EMA (default: 0.99)")
    g.add_argument("--matching", default="constant", choices=sorted(MATCHING),
                   help="constant: the authors' two-pass gradient (student points held constant, an approximation), "
                        "memory independent of --syn_steps; adjoint: the exact gradient by a reverse sweep, about "
                        "the time of constant, the student's points kept as --adjoint_store says; unrolled: exact "
                        "back-propagation through all steps, memory linear in steps (default: constant)")
    g.add_argument("--adjoint_store", default="cpu", choices=STORES,
                   help="--matching adjoint: where the student points are kept. cpu: host memory (accelerator memory "
                        "does not grow with --syn_steps); device: on the accelerator (no copies, --syn_steps x the "
                        "parameters more); recompute: every ceil(sqrt(syn_steps))-th point kept, the others "
                        "recomputed (least memory, more time). Same gradient bit for bit (default: cpu)")
    g.add_argument("--phase_conditioning", default="none", choices=CONDITIONING,
                   help="none: each phase distills its subset alone; cumulative: in phase p > 1 the student's "
                        "steps see the frozen D_1..D_{p-1} with the learnable D_p (block-diagonal S, D_p's lrs), "
                        "so D_p complements them; pair it with --eval_mode cumulative (default: none)")
    cli_args.add_loss_arg(p, "WBCE")
    g = p.add_argument_group("evaluation and saving")
    g.add_argument("--eval_it", type=int, default=50, help="save (and evaluate) every N iterations and at each phase end (default: 50)")
    g.add_argument("--num_eval", type=int, default=5, help="students per evaluation; 0 = save without evaluating (default: 5)")
    g.add_argument("--epoch_eval_train", type=int, default=100, help="student epochs per subset (default: 100)")
    g.add_argument("--batch_train", type=int, default=128, help="student batch size in evaluation (default: 128)")
    add_mode_args(g)
    g.add_argument("--checkpoint_it", type=int, default=25, help="write a resumable checkpoint every N iterations (default: 25)")
    g.add_argument("--name", help="run name (default: ptm-st_<date>_<time>)")
    g.add_argument("--runs_dir", default="runs", help="root of the run directories (default: runs)")
    g.add_argument("--resume", action="store_true", help="continue runs/<dataset>/<name> from its checkpoint")
    cli_args.add_runtime_args(p)
    speed.add_speed_args(p, distill=True)
    return p


def check_args(args):
    cli_args.positive(args, "subset_num", "syn_steps", "expert_epochs", "experts_per_it", "mini_batch_size",
                      "lr_img", "lr_txt", "lr_teacher_img", "lr_teacher_txt", "eval_it", "epoch_eval_train", "batch_train", "checkpoint_it")
    cli_args.non_negative(args, "lr_sim", "lr_lr", "num_eval", "clamp_lr", "alpha")
    segments.check_experts_per_it(args.experts_per_it, parallel.launched_ranks())
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema_decay {args.ema_decay}: expected 0 <= decay < 1")
    if args.sim_type == "full" and args.sim_rank is not None:
        raise UserError("--sim_rank applies to --sim_type lowrank only")
    if args.resume and not args.name:
        raise UserError("--resume needs the --name of the run to continue")
    if args.name is None:
        args.name = datetime.datetime.now().strftime("ptm-st_%Y%m%d_%H%M%S")
    cli_args.check_run_name(args.name)
    cli_args.not_a_file(args.runs_dir, "--runs_dir")
    return parse_phases(args)


def open_run_dir(args):
    """runs/<dataset>/<name>/; a resumed run must have been started with the same settings. Nothing is written
    here: config.json only once the run can start (write_config), so a failed start blocks nothing."""
    run_dir = os.path.join(args.runs_dir, args.dataset, args.name)
    config = cli_args.config_of(args)
    config_path = os.path.join(run_dir, "config.json")
    if args.resume and not os.path.isfile(config_path):
        if not os.path.isdir(run_dir) or [f for f in os.listdir(run_dir) if not f.startswith(".")]:
            raise UserError(f"--resume: {run_dir} holds no run to continue (no config.json)")
        print(f"--resume: {run_dir} was stopped before its run started; starting it")
        args.resume = False  # a kill during start-up left an empty directory: nothing to continue
    if args.resume:
        # an option the run's config.json lacks was added since: the run ran with its default
        saved = {**vars(make_parser().parse_args([])), **load_json_object(config_path, what="run config")}
        changed = [k for k in config if k not in RESUMABLE_CHANGES and saved.get(k) != config[k]]
        if changed:
            k = changed[0]
            raise UserError(f"--resume: --{k} was {saved.get(k)!r} in {run_dir}, now {config[k]!r}; resume with the same settings")
    elif os.path.exists(config_path):
        raise UserError(f"--name {args.name}: {run_dir} exists; pass --resume to continue it or choose another --name")
    if parallel.is_main():
        ensure_writable_dir(run_dir, "--runs_dir")
    return run_dir


def write_config(args, run_dir):
    if not args.resume and parallel.is_main():
        save_json(cli_args.config_of(args), os.path.join(run_dir, "config.json"))


def truncate_log(path, phase, iteration):
    """Drop the records written after the checkpoint (all of them without one) and any line a kill tore:
    the resumed run writes them again."""
    if not os.path.isfile(path) or not parallel.is_main():
        return
    keep = [r for r in read_records(path) if (r.get("phase", -1), r.get("iteration", -1)) <= (phase, iteration)]
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)


@cli_main
def main(argv=None):
    args = cli_args.finalize(make_parser().parse_args(argv))
    args.device = parallel.init(args.device)
    phases = check_args(args)
    speed.check_speed_args(args)
    runtime = speed.deterministic(args.device)
    run_dir = open_run_dir(args)
    with parallel.main_first():  # the dataset and feature cache, made once
        prepare(args)
    train, test = load_train(args), load_split(args, "test")
    factory = NetworkFactory(NetConfig(args.image_encoder, args.image_size, train.text_features.shape[1],
                                       args.image_trainable, args.out_embedding, args.image_pretrained, args.image_checkpoint,
                                       amp=args.amp, channels_last=args.channels_last))
    ckpt = read_checkpoint(run_dir) if args.resume else None
    if ckpt and not 0 <= ckpt["phase"] < len(phases):
        raise UserError(f"--resume: {run_dir}/checkpoint.pt is in phase {ckpt['phase']}, this run has phases "
                        f"0..{len(phases) - 1}; move it away to restart the run")
    ctx = RunContext(args, run_dir, train, test, factory, log=None)
    preflight(ctx, phases)
    write_config(args, run_dir)  # the run can start: from here on the directory is this run's
    if args.resume:
        truncate_log(os.path.join(run_dir, "metrics.jsonl"), *((ckpt["phase"], ckpt["iteration"]) if ckpt else (-1, -1)))
    ctx.log = RunLog(run_dir, cli_args.config_of(args), args.wandb, name=args.name)
    ctx.log.log({"event": "runtime", **runtime, "amp": args.amp, "channels_last": args.channels_last,
                 "ranks": parallel.world_size()})
    frozen = []  # D_1 .. D_{p-1}: the finished phases' EMA subsets
    for phase in phases:
        if ckpt and phase.index < ckpt["phase"]:
            frozen.append(load_subset(os.path.join(run_dir, f"distilled_{phase.index}_final.pt")))
            continue
        resume = ckpt if ckpt and phase.index == ckpt["phase"] else None
        frozen.append(distill_phase(ctx, phase, frozen, resume))
    ctx.log.close()
    print(f"done: {len(frozen)} subsets ({' + '.join(str(len(d)) for d in frozen)} pairs) in {run_dir}")


if __name__ == "__main__":
    main()
