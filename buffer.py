"""Train expert trajectories (SPEC section 3) and write them as a PTM-ST buffer.

    python buffer.py                                  # built-in synthetic dataset, CPU-sized
    python buffer.py --config recipes/synthetic_demo.yaml   # the demo's experts
    python buffer.py --dataset flickr --image_encoder nfnet --text_encoder bert --image_trainable \
        --num_experts 20 --train_epochs 10 --buffer_path buffer

Processes sharing a --buffer_path (torchrun ranks, several shells) train disjoint experts; a rerun
after a kill trains only the experts still missing. --num_experts is the total wanted.
"""
import distill_utils.startup  # noqa: F401  (first: Ctrl-C while torch loads is one line, no traceback)
import os
import sys

import torch

from distill_utils import cli_args, footprint, settings, speed
from distill_utils.preflight import check_start
from distill_utils.config import DataConfig, ExpertConfig, NetworkSpec, from_flags
from distill_utils.datasets.loading import load_split, load_train, prepare
from common.errors import cli_main
from distill_utils.method.experts import train_expert
from common.io import ensure_writable_dir
from distill_utils.files.run_log import RunLog
from distill_utils.files.buffers import FORMAT, BufferDir
from distill_utils.rng import expert_seed
from networks.dual_encoder import NetworkFactory


def make_parser():
    return settings.parser(settings.BUFFER, __doc__)


def manifest_for(spec, expert, data, net, config=None):
    extra = {"data_seed": data.data_seed, "synthetic_train_images": data.synthetic_train_images} \
        if data.dataset == "synthetic" else {}
    return {"format": FORMAT, "kind": "normal", **spec.identity(), **expert.recorded(),
            "timestamps": expert.train_epochs + 1, "img_params": net.img_layout.describe(),
            "txt_params": net.txt_layout.describe(), "image_pretrained": spec.image_pretrained,
            "image_checkpoint": spec.image_checkpoint, **extra,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "settings": config}


def local_device(args):
    """Under torchrun, each rank takes its own GPU."""
    rank = os.environ.get("LOCAL_RANK")
    if rank is not None and args.device.type == "cuda" and args.device.index is None:
        args.device = torch.device("cuda", int(rank))


@cli_main
def main(argv=None):
    args = settings.parse_args(make_parser(), argv)
    local_device(args)
    speed.apply_levers(args)
    data, spec, expert = from_flags(DataConfig, args), from_flags(NetworkSpec, args), from_flags(ExpertConfig, args)
    buf = BufferDir.of_network(args.buffer_path, args.dataset, args.image_encoder, args.text_encoder, args.loss_type)
    ensure_writable_dir(buf.path, "--buffer_path")
    prepare(data)
    check_start(data, ("train", "test"), args.device, footprint.expert_needs(spec, expert))
    train, test = load_train(data), load_split(data, "test")
    factory = NetworkFactory(spec.net_config(train.text_features.shape[1]))
    config = cli_args.config_of(args)  # the resolved settings, recorded in the manifest
    net = factory.build(seed=0, device="cpu")  # a network that cannot be built fails here
    manifest = manifest_for(spec, expert, data, net, config)
    missing = sum(not buf.expert_done(n) for n in range(args.num_experts))
    footprint.check_disk(buf.path, missing * footprint.expert_bytes(net, args.train_epochs + 1),
                         f"{missing} expert file pair(s)", "--buffer_path")
    log = RunLog(buf.path, config, args.wandb, name=f"buffer_{args.dataset}")
    first = True
    while (claim := buf.next_expert(args.num_experts)) is not None:
        with claim:
            n = claim.n
            if first:
                buf.write_manifest(manifest, holding=n)
            net = factory.build(seed=expert_seed(args.seed, n), device=args.device)
            img, txt = train_expert(net, train, test, expert, args.device, expert_seed(args.seed, n), log, expert_id=n,
                                    eval_untrained=first)
            buf.save_pair(n, [img], [txt])
        print(f"saved expert {n} -> {buf}", flush=True)
        first = False
    log.close()
    buf.write_manifest(manifest)  # also when every expert was already there: the settings must agree
    buf.check_complete(args.num_experts, args.train_epochs + 1)
    print(f"buffer complete: {args.num_experts} experts in {buf}")


if __name__ == "__main__":
    main()
