import random

import torch

from distill_utils.evaluation.retrieval import retrieval_metrics


def brute_force(sims, txt2img):
    """Rank by sorting: wrong candidates first among ties (ties count against the query)."""
    n_img, n_txt = sims.shape
    img2txt = [[t for t in range(n_txt) if txt2img[t] == i] for i in range(n_img)]
    tr, ir = [], []
    for i in range(n_img):
        order = sorted(range(n_txt), key=lambda t: (-sims[i, t].item(), t in img2txt[i]))
        tr.append(min(order.index(t) for t in img2txt[i]))
    for t in range(n_txt):
        order = sorted(range(n_img), key=lambda i: (-sims[i, t].item(), i == txt2img[t]))
        ir.append(order.index(txt2img[t]))
    out = {}
    for prefix, ranks in (("txt", tr), ("img", ir)):
        for k in (1, 5, 10):
            out[f"{prefix}_r{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
    return out


def test_metrics_match_brute_force_with_ties():
    rng = random.Random(0)
    for trial in range(5):
        n_img = 12 + trial
        caps = [rng.randint(1, 5) for _ in range(n_img)]  # uneven captions per image
        txt2img = torch.tensor([i for i, c in enumerate(caps) for _ in range(c)])
        sims = torch.randint(0, 4, (n_img, len(txt2img))).float()  # few values: many ties
        got, want = retrieval_metrics(sims, txt2img), brute_force(sims, txt2img)
        for key, value in want.items():
            assert abs(got[key] - value) < 1e-9, (trial, key, got[key], value)


def test_constant_scores_give_zero_and_perfect_scores_give_hundred():
    txt2img = torch.arange(20).repeat_interleave(2)
    assert retrieval_metrics(torch.zeros(20, 40), txt2img)["r_mean"] == 0.0
    perfect = (txt2img[None, :] == torch.arange(20)[:, None]).float()
    m = retrieval_metrics(perfect, txt2img)
    assert m["img_r1"] == m["txt_r1"] == m["r_mean"] == 100.0
