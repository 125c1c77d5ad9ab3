"""Evaluate distilled subsets (SPEC section 6), or a baseline, under one protocol.

Trains --num_eval fresh students on the subsets in the given order (each with its learned lrs and
its similarity matrix as soft targets), then reports test retrieval as mean ± std over the runs.

    python evaluate.py --config recipes/synthetic_demo.yaml --ckpt_path runs/synthetic/synthetic_demo/distilled_0_final.pt \
        runs/synthetic/synthetic_demo/distilled_1_final.pt
    python evaluate.py --image_trainable --baseline random --num_pairs 100
    python evaluate.py --dataset flickr --image_encoder nfnet --text_encoder bert --image_trainable \
        --ckpt_path distilled_0.pt distilled_1.pt --baseline random --out results.json

--eval_mode sequential|cumulative|union says how several files are used; --protocol authors
reproduces the authors' phased evaluation (best test score over all evaluation points, labelled).
With both --ckpt_path and --baseline, both are evaluated with the same seeds; the random and
prototype baselines then default to the files' total number of pairs. Baselines train with
identity targets: random/prototype at the teacher lrs (as the spec says), the full set at
0.01 by default, since 0.1 with the protocol's momentum 0.9 makes WBCE collapse on the full
synthetic set for 2 runs out of 3 (see --full_lr). Under torchrun (`torchrun --nproc_per_node R
evaluate.py ...`) the --num_eval students are divided over the ranks, with the same mean and std.
"""
import distill_utils.startup  # noqa: F401  (first: Ctrl-C while torch loads is one line, no traceback)
import os
import sys

from distill_utils import cli_args, footprint, parallel, settings, speed
from distill_utils.preflight import check_start
from distill_utils.config import DataConfig, EvalProtocol, NetworkSpec, from_flags
from distill_utils.evaluation.coresets import pair_embeddings, prototype_indices, random_indices
from distill_utils.datasets.loading import load_split, load_train, prepare
from distill_utils.datasets.annotations import load_train_pairs
from common.errors import UserError, cli_main
from distill_utils.evaluation.sources import RealPairSource, SubsetSource
from distill_utils.evaluation.summary import format_table
from distill_utils.evaluation.training import evaluate_sequence
from common.io import ensure_writable_dir, save_json
from distill_utils.files.run_log import RunLog
from distill_utils.files.subset_file import check_subset, load_subset
from distill_utils.files.buffers import BufferDir
from networks.dual_encoder import NetworkFactory


def make_parser():
    return settings.parser(settings.EVALUATE, __doc__)


def check_args(args):
    if not args.ckpt_path and not args.baseline:
        raise UserError("nothing to evaluate: give --ckpt_path FILE [FILE ...] and/or --baseline")
    cli_args.positive(args, "num_eval")  # 0 students evaluate nothing
    if args.num_pairs is not None and args.baseline not in ("random", "prototype"):
        raise UserError("--num_pairs applies to --baseline random or prototype only")
    if args.baseline in ("random", "prototype") and args.num_pairs is None and not args.ckpt_path:
        raise UserError(f"--baseline {args.baseline} needs --num_pairs N (or --ckpt_path files to match in size)")
    if args.full_lr is not None and args.baseline != "full":
        raise UserError("--full_lr applies to --baseline full only")
    if args.buffer_path and args.baseline != "prototype":
        raise UserError("--buffer_path applies to --baseline prototype only")
    if args.out and parallel.is_main():  # checked before the work, so the results are never lost at the end
        if os.path.isdir(args.out):
            raise UserError(f"--out {args.out}: is a directory, expected the path of a JSON file to write")
        ensure_writable_dir(os.path.dirname(os.path.abspath(args.out)), "--out", clean=False)  # maybe not ours


def baseline_sources(args, data, factory, expected, num_pairs):
    """([RealPairSource], the chosen pair indices or None) for --baseline."""
    total = len(load_train_pairs(args.dataset, args.ann_root, args.image_root))  # checked before any feature work
    if args.baseline != "full" and num_pairs > total:
        raise UserError(f"--num_pairs {num_pairs}: the {args.dataset} train set has only {total} pairs")
    train = load_train(data)
    if args.baseline == "full":
        damp = 1 - EvalProtocol.momentum  # momentum 0.9 makes each step ~10x longer
        lr_img, lr_txt = ((args.full_lr, args.full_lr) if args.full_lr else
                          (round(args.lr_teacher_img * damp, 12), round(args.lr_teacher_txt * damp, 12)))
        return [RealPairSource(train, None, lr_img, lr_txt, "full", args.full_epochs)], None
    if args.baseline == "random":
        indices = random_indices(num_pairs, len(train), args.seed)
    else:
        buf = BufferDir(args.buffer_path) if args.buffer_path else \
            BufferDir.of_network("buffer", args.dataset, args.image_encoder, args.text_encoder, "InfoNCE")
        net = factory.build(seed=args.seed, device=args.device)
        img, txt = buf.final_expert(net, expected)
        embeddings = pair_embeddings(net, img, txt, train, args.device)
        indices = prototype_indices(embeddings, num_pairs, args.seed)
    source = RealPairSource(train, indices, args.lr_teacher_img, args.lr_teacher_txt, f"{args.baseline}[{num_pairs}]")
    return [source], indices.tolist()


def methods_to_run(args, subsets, data, factory, expected):
    """({method: [sources in training order]}, {baseline: selected indices})."""
    methods, selections = {}, {}
    if subsets:
        methods["distilled"] = [SubsetSource(s, name=os.path.basename(path)) for path, s in subsets]
    if args.baseline:
        num_pairs = args.num_pairs or sum(len(s) for _, s in subsets)
        methods[args.baseline], selections[args.baseline] = baseline_sources(args, data, factory, expected, num_pairs)
    return methods, selections


@cli_main
def main(argv=None):
    args = settings.parse_args(make_parser(), argv)
    args.device = parallel.init(args.device)
    check_args(args)
    speed.apply_levers(args)
    data, spec, protocol = from_flags(DataConfig, args), from_flags(NetworkSpec, args), from_flags(EvalProtocol, args)
    subsets = [(path, load_subset(path)) for path in args.ckpt_path]  # unreadable files fail before any work
    with parallel.main_first():  # the dataset and feature cache, made once
        prepare(data)
    splits = ("test",) + (("val",) if args.select_on == "val" else ()) + (("train",) if args.baseline else ())
    check_start(data, splits, args.device, footprint.eval_needs(spec, protocol))
    test = load_split(data, "test")
    val = load_split(data, "val") if args.select_on == "val" else None
    text_dim = test.text_features.shape[1]
    expected = {**spec.identity(), "text_dim": text_dim}
    notes = [note for path, s in subsets for note in check_subset(s, path, expected)]
    factory = NetworkFactory(spec.net_config(text_dim))
    methods, selections = methods_to_run(args, subsets, data, factory, expected)
    config = cli_args.config_of(args)
    log = RunLog(None, config, args.wandb, name=f"eval_{args.dataset}")
    for note in notes:
        print(f"note: {note}")
    print(f"network: {args.image_encoder} (image_trainable={args.image_trainable}) + {args.text_encoder} text features "
          f"({text_dim}-d), image size {args.image_size}, loss {args.loss_type}, device {args.device}", flush=True)
    results = {}
    for name, sources in methods.items():
        results[name] = evaluate_sequence(sources, factory, test, protocol, args.seed, args.device, val, log, desc=name)
        phases = " -> ".join(f"{p['name']} ({p['pairs']} pairs, {p['epochs']} ep)" for p in results[name]["phases"])
        print(format_table(results[name], title=f"\n{name}: {phases}"), flush=True)
    log.close()
    if args.out and parallel.is_main():
        command = " ".join(["python", "evaluate.py", *(sys.argv[1:] if argv is None else argv)])
        save_json({"command": command, "config": config, "notes": notes, "selections": selections,
                   "results": results}, args.out)
        print(f"results -> {args.out}")
    return results


if __name__ == "__main__":
    main()
