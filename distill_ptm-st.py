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

from distill_utils import cli_args, parallel, segments, speed
from distill_utils.config import DataConfig, DistillConfig, EvalProtocol, NetworkSpec, from_flags
from distill_utils.datasets.loading import load_split, load_train, prepare
from distill_utils.distill_loop import RunContext, distill_phase, preflight
from distill_utils.files.run_dir import RunDir
from distill_utils.method.conditioning import CONDITIONING
from distill_utils.method.matching import MATCHING, STORES
from distill_utils.phases import LIST_FLAGS, parse_phases
from common.errors import UserError, cli_main
from networks.dual_encoder import NetworkFactory


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
    cli_args.add_mode_args(g)
    g.add_argument("--checkpoint_it", type=int, default=25, help="write a resumable checkpoint every N iterations (default: 25)")
    g.add_argument("--name", help="run name (default: ptm-st_<date>_<time>)")
    g.add_argument("--runs_dir", default="runs", help="root of the run directories (default: runs)")
    g.add_argument("--resume", action="store_true", help="continue runs/<dataset>/<name> from its checkpoint")
    cli_args.add_runtime_args(p)
    speed.add_speed_args(p, distill=True)
    return p


def check_args(args):
    cli_args.positive(args, "subset_num", "syn_steps", "expert_epochs", "experts_per_it", "mini_batch_size",
                      "lr_img", "lr_txt", "lr_teacher_img", "lr_teacher_txt", "eval_it", "epoch_eval_train",
                      "batch_train", "checkpoint_it")
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
    lists = {flag: getattr(args, flag) for flag in (*LIST_FLAGS, "sim_rank")}
    return parse_phases(lists, args.subset_num, args.mini_batch_size, args.sim_type)


@cli_main
def main(argv=None):
    args = cli_args.finalize(make_parser().parse_args(argv))
    args.device = parallel.init(args.device)
    phases = check_args(args)
    speed.check_speed_args(args)
    runtime = speed.deterministic(args.device)
    data, spec, cfg = from_flags(DataConfig, args), from_flags(NetworkSpec, args), from_flags(DistillConfig, args)
    run_dir = RunDir.open(args.runs_dir, args.dataset, args.name, cli_args.config_of(args), args.resume,
                          defaults=vars(make_parser().parse_args([])))
    with parallel.main_first():  # the dataset and feature cache, made once
        prepare(data)
    train, test = load_train(data), load_split(data, "test")
    text_dim = train.text_features.shape[1]
    ctx = RunContext(cfg, run_dir, train, test, NetworkFactory(spec.net_config(text_dim)), from_flags(EvalProtocol, args),
                     {**spec.identity(), "text_dim": int(text_dim)}, args.device)
    ckpt = run_dir.read_checkpoint(len(phases))
    preflight(ctx, phases)
    run_dir.start(ckpt, args.wandb)
    run_dir.log({"event": "runtime", **runtime, "amp": args.amp, "channels_last": args.channels_last,
                 "ranks": parallel.world_size()})
    frozen = []  # D_1 .. D_{p-1}: the finished phases' EMA subsets
    for phase in phases:
        if ckpt and phase.index < ckpt["phase"]:
            frozen.append(run_dir.load_final(phase.index))
            continue
        resume = ckpt if ckpt and phase.index == ckpt["phase"] else None
        frozen.append(distill_phase(ctx, phase, frozen, resume))
    run_dir.close()
    print(f"done: {len(frozen)} subsets ({' + '.join(str(len(d)) for d in frozen)} pairs) in {run_dir.path}")


if __name__ == "__main__":
    main()
