"""Issue 21's criteria for a built-in level that resembles the paper's ratios, measured and printed:

    python -m bench.level_check --root results/bench/data/synthetic_paper   # after python -m bench.ablation

- 500 pairs at most 3% of the train split;
- at least ten times more distinct caption contents (scenes named, whatever the wording) than 500;
- the experts' test mean recall still rising after epoch 6 of 10 (the curve the ablation stored);
- 500 random real pairs at most 0.35 of the full train set's mean recall (the ablation's rows at N = 500).
The curve and the rows come from the results store (bench/results/ablation.jsonl), the rest from the dataset.
"""
import argparse
import json
import os

from bench.ablation import store
from distill_utils.datasets.annotations import LAYOUTS
from distill_utils.datasets.scene_words import content
from distill_utils.datasets.captions import pre_caption

BUDGET = 500


def criteria(root, records, level):
    """[(criterion, measured, passed or None when not measured yet)]."""
    with open(os.path.join(root, LAYOUTS[level].train)) as f:
        captions = [e["caption"] for e in json.load(f)]
    contents = len({content(c) for c in captions})
    cut = sum(pre_caption(c) != pre_caption(c, 10**6) for c in captions)  # over the loaders' 30-word cap
    out = [(f"{BUDGET} pairs <= 3% of the train split", f"{BUDGET} / {len(captions)} = "
            f"{100 * BUDGET / len(captions):.2f}%", BUDGET <= 0.03 * len(captions)),
           (f"distinct caption contents >= {10 * BUDGET}", f"{contents} distinct contents (what a caption names, whatever its wording) among {len(captions)} captions "
            f"({cut} of them cut to 30 words when loaded)", contents >= 10 * BUDGET)]
    curve = next((r for r in records if r["kind"] == "curve" and r["level"] == level), None)
    if curve:
        recall = {int(e): v for e, v in curve["recall"].items()}
        late = [e for e in sorted(recall) if e > 6 and recall[e] > max(v for k, v in recall.items() if k <= 6)]
        out.append(("experts' test recall still rises after epoch 6",
                    ", ".join(f"{e}: {v:.1f}" for e, v in sorted(recall.items())) +
                    f" ({curve['experts']} experts); above every epoch <= 6 at: {late or 'none'}", bool(late)))
    else:
        out.append(("experts' test recall still rises after epoch 6", "not measured", None))
    rows = store.rows(records, level, BUDGET, "main")
    random = next((r for r in rows if r["label"] == "random real pairs"), None)
    full = next((r for r in rows if r["label"].startswith("full train set")), None)
    if random and full:
        ratio = random["mean"]["r_mean"] / full["mean"]["r_mean"]
        out.append((f"{BUDGET} random pairs <= 0.35 of the full set", f"{random['mean']['r_mean']:.1f} / "
                    f"{full['mean']['r_mean']:.1f} = {ratio:.3f}", ratio <= 0.35))
    else:
        out.append((f"{BUDGET} random pairs <= 0.35 of the full set", "not measured", None))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.level_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="results/bench/data/synthetic_paper", help="the level's generated dataset")
    p.add_argument("--level", default="synthetic_paper", help="its --dataset name")
    p.add_argument("--store", default=store.PATH, help="the ablation's results store")
    a = p.parse_args(argv)
    if not os.path.isdir(a.root):
        raise SystemExit(f"--root {a.root}: no such directory (python -m bench.ablation generates it)")
    for name, measured, passed in criteria(a.root, store.read(a.store), a.level):
        print(f"{'pass' if passed else 'FAIL' if passed is False else '----'}  {name}: {measured}")


if __name__ == "__main__":
    main()
