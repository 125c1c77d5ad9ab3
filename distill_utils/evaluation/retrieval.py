"""Retrieval recall@K, vectorised.

A query's rank is the number of wrong candidates scoring at least as high as its best correct
candidate: ties count against the query, so a constant model scores 0, never 100.
IR (image retrieval): text query -> its one image. TR (text retrieval): image query -> any of its captions.
"""
from typing import Dict

import torch

KS = (1, 5, 10)


def ranks(scores: torch.Tensor, positives: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """scores [Q, C]; positives bool [Q, C] (at least one per row) -> LongTensor [Q] of 0-based ranks."""
    out = []
    for s, pos in zip(torch.split(scores, chunk), torch.split(positives, chunk)):
        best = torch.where(pos, s, torch.full_like(s, -torch.inf)).amax(1, keepdim=True)
        out.append(((s >= best) & ~pos).sum(1))
    return torch.cat(out)


def positives_matrix(txt2img: torch.Tensor, num_images: int) -> torch.Tensor:
    """bool [num_images, num_texts]: image i is the source of text t."""
    pos = torch.zeros(num_images, len(txt2img), dtype=torch.bool)
    pos[txt2img, torch.arange(len(txt2img))] = True
    return pos


def retrieval_metrics(sims_i2t: torch.Tensor, txt2img: torch.Tensor) -> Dict[str, float]:
    """sims_i2t [n_images, n_texts] -> dict of txt_r1/5/10, img_r1/5/10, their means and r_mean (percent)."""
    sims_i2t = sims_i2t.float().cpu()
    pos = positives_matrix(txt2img.cpu(), sims_i2t.shape[0])
    tr_ranks = ranks(sims_i2t, pos)
    ir_ranks = ranks(sims_i2t.t(), pos.t())
    result = {}
    for prefix, r in (("txt", tr_ranks), ("img", ir_ranks)):
        for k in KS:
            result[f"{prefix}_r{k}"] = 100.0 * (r < k).double().mean().item()
        result[f"{prefix}_r_mean"] = sum(result[f"{prefix}_r{k}"] for k in KS) / len(KS)
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    return result


def format_metrics(m: Dict[str, float]) -> str:
    return (f"IR@1/5/10 {m['img_r1']:.1f}/{m['img_r5']:.1f}/{m['img_r10']:.1f}  "
            f"TR@1/5/10 {m['txt_r1']:.1f}/{m['txt_r5']:.1f}/{m['txt_r10']:.1f}  mean {m['r_mean']:.2f}")
