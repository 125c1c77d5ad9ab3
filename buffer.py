"""Train expert trajectories (SPEC section 3) and write them as a PTM-ST buffer.

    python buffer.py                                  # built-in synthetic dataset, CPU-sized
    python buffer.py --dataset flickr --image_encoder nfnet --text_encoder bert --image_trainable \
        --num_experts 20 --train_epochs 10 --buffer_path buffer

Processes sharing a --buffer_path (torchrun ranks, several shells) train disjoint experts; a rerun
after a kill trains only the experts still missing. --num_experts is the total wanted.
"""
import distill_utils.startup  # noqa: F401  (first: Ctrl-C while torch loads is one line, no traceback)
import os
import sys
import time

import torch

from distill_utils import cli_args, speed
from distill_utils.datasets.loading import load_split, load_train, prepare
from distill_utils.files.claims import claim_next, live_claims
from common.errors import UserError, cli_main
from distill_utils.method.experts import train_expert
from common.io import ensure_writable_dir
from distill_utils.files.run_log import RunLog
from distill_utils.files.buffers import FORMAT, buffer_dir, describe_file, pair_paths, save_pair, write_manifest
from networks.dual_encoder import NetConfig, NetworkFactory
from networks.text_encoders import weights_digest

POLL_S = 10.0  # how often a process that has nothing left to claim looks whether the others have finished


def make_parser():
    p = cli_args.Parser(description=__doc__)
    cli_args.add_data_args(p)
    cli_args.add_network_args(p)
    g = p.add_argument_group("experts")
    g.add_argument("--num_experts", type=int, default=5, help="experts wanted in the buffer directory (default: 5)")
    g.add_argument("--train_epochs", type=int, default=10, help="epochs per expert (default: 10)")
    g.add_argument("--buffer_path", default="buffer", help="root of the buffers (default: buffer)")
    g.add_argument("--lr_teacher_img", type=float, default=0.1, help="expert SGD lr, img params (default: 0.1)")
    g.add_argument("--lr_teacher_txt", type=float, default=0.1, help="expert SGD lr, txt params (default: 0.1)")
    g.add_argument("--mom", type=float, default=0.0, help="expert SGD momentum (default: 0)")
    g.add_argument("--l2", type=float, default=0.0, help="expert SGD weight decay (default: 0)")
    g.add_argument("--batch_train", type=int, default=128, help="real pairs per expert batch (default: 128)")
    g.add_argument("--eval_freq", type=int, default=5, help="report test retrieval every N epochs (default: 5)")
    cli_args.add_loss_arg(p, "InfoNCE")
    cli_args.add_runtime_args(p)
    speed.add_speed_args(p)
    return p


def manifest_for(args, net):
    data = {"data_seed": args.data_seed, "synthetic_train_images": args.synthetic_train_images} \
        if args.dataset == "synthetic" else {}
    return {"format": FORMAT, "kind": "normal", "dataset": args.dataset, "image_encoder": args.image_encoder,
            "text_encoder": args.text_encoder, "image_size": args.image_size, "image_trainable": args.image_trainable,
            "out_embedding": args.out_embedding, "loss_type": args.loss_type, "train_epochs": args.train_epochs,
            "timestamps": args.train_epochs + 1, "img_params": net.img_layout.describe(),
            "txt_params": net.txt_layout.describe(), "lr_teacher_img": args.lr_teacher_img,
            "lr_teacher_txt": args.lr_teacher_txt, "mom": args.mom, "l2": args.l2, "batch_train": args.batch_train,
            "image_pretrained": args.image_pretrained, "image_checkpoint": args.image_checkpoint,
            "text_encoder_weights": weights_digest(args.text_encoder), **data,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}


def expert_done(save_dir):
    return lambda n: os.path.exists(pair_paths(save_dir, n)[0])  # the img file is written last


def next_expert(save_dir, num_experts):
    """Claim the next expert to train; waits while others train the last ones. None when none is left."""
    said = False
    while True:
        claim, held = claim_next(save_dir, num_experts, expert_done(save_dir))
        if claim is not None or not held:
            return claim
        if not said:
            print(f"waiting for experts {held} that other processes are training", flush=True)
            said = True
        time.sleep(POLL_S)


def check_complete(save_dir, num_experts, timestamps):
    """Every expert file exists and loads with the recorded number of timestamps."""
    for n in range(num_experts):
        for path in pair_paths(save_dir, n):
            _, length, _ = describe_file(path)
            if length != timestamps:
                raise UserError(f"buffer file {path}: {length} timestamps per expert, this buffer's experts have "
                                f"{timestamps}; move it away and rerun to retrain expert {n}")


def local_device(args):
    """Under torchrun, each rank takes its own GPU."""
    rank = os.environ.get("LOCAL_RANK")
    if rank is not None and args.device.type == "cuda" and args.device.index is None:
        args.device = torch.device("cuda", int(rank))


@cli_main
def main(argv=None):
    args = cli_args.finalize(make_parser().parse_args(argv))
    cli_args.positive(args, "num_experts", "train_epochs", "batch_train", "eval_freq", "lr_teacher_img", "lr_teacher_txt")
    cli_args.non_negative(args, "mom", "l2")
    local_device(args)
    speed.deterministic(args.device)
    save_dir = ensure_writable_dir(buffer_dir(args.buffer_path, args.dataset, args.image_encoder, args.text_encoder,
                                              args.loss_type), "--buffer_path")
    prepare(args)
    train, test = load_train(args), load_split(args, "test")
    factory = NetworkFactory(NetConfig(args.image_encoder, args.image_size, train.text_features.shape[1],
                                       args.image_trainable, args.out_embedding, args.image_pretrained, args.image_checkpoint,
                                       amp=args.amp, channels_last=args.channels_last))
    manifest = manifest_for(args, factory.build(seed=0, device="cpu"))  # a network that cannot be built fails here
    log = RunLog(save_dir, cli_args.config_of(args), args.wandb, name=f"buffer_{args.dataset}")
    first = True
    while (claim := next_expert(save_dir, args.num_experts)) is not None:
        with claim:
            n = claim.n
            if first:
                write_manifest(save_dir, manifest, live_others=bool(live_claims(save_dir, exclude=[n])))
            net = factory.build(seed=args.seed * 100003 + n, device=args.device)
            img, txt = train_expert(net, train, test, args, args.seed * 100003 + n, log, expert_id=n,
                                    eval_untrained=first)
            save_pair(save_dir, n, [img], [txt])
        print(f"saved expert {n} -> {save_dir}", flush=True)
        first = False
    log.close()
    write_manifest(save_dir, manifest)  # also when every expert was already there: the settings must agree
    check_complete(save_dir, args.num_experts, args.train_epochs + 1)
    print(f"buffer complete: {args.num_experts} experts in {save_dir}")


if __name__ == "__main__":
    main()
