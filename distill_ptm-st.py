"""PTM-ST: phased distillation with shortcut trajectories (SPEC section 5, Algorithm 1).

    for p = 1..P:                                   # --subset_num phases, run in order
        init X_p, Y_p from N_p random real pairs, S_p = I, lrs = teacher lrs
        for i = 1..I_p:
            take the next expert and a start epoch T in [T-_p, T+_p)   # --buffer_path of phase p
            train a student syn_steps SGD steps on (X_p, Y_p, S_p) from theta_T
            L = ||theta_student - theta_{T+dT}||^2 / ||theta_T - theta_{T+dT}||^2   (img + txt)
            update X_p, Y_p, S_p, lrs; EMA copy <- decay * EMA + (1 - decay) * current
        D_p <- the EMA copy, frozen                 # evaluations of phase p train on D_1..D_{p-1}, then D_p

    python distill_ptm-st.py --config recipes/synthetic_demo.yaml    # the demo's two phases (CPU, minutes)
    python distill_ptm-st.py --config recipes/flickr_500.yaml          # the paper's Flickr recipe (GPU)
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

from distill_utils import cli_args, footprint, parallel, segments, settings, speed
from distill_utils.preflight import check_start
from distill_utils.config import DataConfig, DistillConfig, EvalProtocol, NetworkSpec, from_flags
from distill_utils.datasets.loading import load_split, load_train, prepare
from distill_utils.distill_loop import RunContext, distill_phase, preflight
from distill_utils.files.run_dir import RunDir
from distill_utils.phases import LIST_FLAGS, parse_phases
from common.errors import UserError, cli_main
from networks.dual_encoder import NetworkFactory


def make_parser():
    return settings.parser(settings.DISTILL, __doc__)


def check_args(args):
    segments.check_experts_per_it(args.experts_per_it, parallel.launched_ranks())
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
    args = settings.parse_args(make_parser(), argv)
    args.device = parallel.init(args.device)
    phases = check_args(args)
    runtime = speed.apply_levers(args)
    data, spec, cfg = from_flags(DataConfig, args), from_flags(NetworkSpec, args), from_flags(DistillConfig, args)
    run_dir = RunDir.open(args.runs_dir, args.dataset, args.name, cli_args.config_of(args), args.resume,
                          defaults=vars(make_parser().parse_args([])))
    with parallel.main_first():  # the dataset and feature cache, made once
        prepare(data)
    protocol = from_flags(EvalProtocol, args)
    splits = ("train", "test", "val") if protocol.select_on == "val" and protocol.num_eval > 0 else ("train", "test")
    check_start(data, splits, args.device, footprint.distill_needs(spec, cfg, protocol), phases, cfg.expert_epochs)
    train, test = load_train(data), load_split(data, "test")
    val = load_split(data, "val") if protocol.select_on == "val" and protocol.num_eval > 0 else None
    text_dim = train.text_features.shape[1]
    ctx = RunContext(cfg, run_dir, train, test, NetworkFactory(spec.net_config(text_dim)), protocol,
                     {**spec.identity(), "text_dim": int(text_dim)}, args.device, val)
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
