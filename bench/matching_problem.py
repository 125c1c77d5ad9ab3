"""The matching problem bench.paper_scale and bench.heads_scale time: a random network, random synthetic pairs and
an expert segment around the network's own initial parameters."""
import torch

from distill_utils.method.learnable_set import SynOptim, SyntheticSet
from distill_utils.method.similarity import make_similarity
from networks.dual_encoder import NetConfig, NetworkFactory


def add_problem_flags(p, num_queries: int, mini_batch_size: int) -> None:
    """The flags matching_problem reads (and --mini_batch_size), with the paper's network and widths as defaults."""
    p.add_argument("--image_encoder", default="nfnet_l0", help="timm model, randomly initialised (default: nfnet_l0)")
    p.add_argument("--image_size", type=int, default=224, help="image side (default: 224)")
    p.add_argument("--text_dim", type=int, default=768, help="text feature width (default: 768, BERT-base)")
    p.add_argument("--num_queries", type=int, default=num_queries,
                   help=f"synthetic pairs (default: {num_queries}; the paper's Flickr-500 phase 1: 200)")
    p.add_argument("--mini_batch_size", type=int, default=mini_batch_size,
                   help=f"pairs per student step (default: {mini_batch_size}; the paper's: 40)")


def matching_problem(a, device, trainable=True, out_embedding=768):
    """(net, synthetic set, start, target): a random network of a.image_encoder (the whole encoder trained, or
    heads on it frozen), a.num_queries random pairs at a.image_size / a.text_dim and an expert segment around the
    network's own initial parameters."""
    torch.manual_seed(0)
    config = NetConfig(a.image_encoder, a.image_size, a.text_dim, trainable, out_embedding, image_pretrained=False)
    net = NetworkFactory(config).build(seed=0, device=device).train()
    g = torch.Generator().manual_seed(0)
    n, side = a.num_queries, a.image_size
    syn = SyntheticSet(torch.randn(n, 3, side, side, generator=g).to(device),
                       torch.randn(n, a.text_dim, generator=g).to(device),
                       make_similarity("full", n, device=device), 0.1, 0.1, SynOptim(1000, 1000, 10, 0.01))
    start = tuple(p.to(device) for p in net.initial_params())
    target = tuple(p + 0.01 * torch.randn(p.shape, generator=g).to(device) for p in start)
    return net, syn, start, target
