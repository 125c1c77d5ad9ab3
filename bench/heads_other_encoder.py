"""A control for the symmetric-heads rows of the ablation (docs/results.md, issue 22): the frozen encoder pretrained
on *other* data of the same kind instead of the level's own train split, as ImageNet is other data for Flickr30k.

    python -m bench.heads_other_encoder --workdir results/bench      # after python -m bench.ablation ... (the rows)

One full-encoder expert is trained on another draw of the built-in generator (--data_seed 1: other images and
captions, the same shapes, colours and grammar), its encoder exported, and then exactly the ablation's steps of the
"PTM+ST+EMA, symmetric heads" row and of its random-pairs and full-set baselines are rerun on that encoder (the
bench's own command lines with the encoder and the buffer roots swapped). Rows go to
bench/results/heads_other_encoder.jsonl (test and val mean recall of each evaluation).
"""
import argparse
import json
import os

from bench.ablation import collect
from bench.ablation.__main__ import parse_args as bench_args
from bench.ablation.plan import ENCODER, EXPERTS, LEVELS
from bench.ablation.runner import Bench

LEVEL, N, ROW = "synthetic", 50, "PTM+ST+EMA, symmetric heads"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "heads_other_encoder.jsonl")


def swap(args, bench):
    """The bench's arguments with the other encoder, its head buffers and its run and evaluation paths."""
    w, sep = bench.work, os.sep
    exact = {bench.encoder(LEVEL): os.path.join(w, "encoders", f"{LEVEL}_{ENCODER}_other.pt"),
             os.path.join(w, "buffer_heads"): os.path.join(w, "buffer_heads_other"), "heads_N50": "heads_other_N50"}
    inside = {os.path.join(w, "buffer_heads") + sep: os.path.join(w, "buffer_heads_other") + sep,
              f"{sep}heads_N50{sep}": f"{sep}heads_other_N50{sep}",
              os.path.join("eval", LEVEL) + sep: os.path.join("eval", LEVEL, "other_encoder") + sep}
    out = []
    for a in args:
        if callable(a):  # --resume, decided at launch: for the other run's directory
            run_dir = os.path.join(w, "runs", LEVEL, "heads_other_N50")
            a = lambda: ["--resume"] if os.path.isfile(os.path.join(run_dir, "config.json")) else []
        elif isinstance(a, str):
            a = exact.get(a, a)
            for old, new in inside.items():
                a = a.replace(old, new)
        out.append(a)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="results/bench")
    a = p.parse_args(argv)
    bench = Bench(bench_args(["--workdir", a.workdir, "--levels", LEVEL, "--sizes", str(N), "--jobs", "1",
                              "--rows", ROW]))
    w = bench.work
    data = ["--dataset", LEVEL, "--ann_root", os.path.join(w, "data", f"{LEVEL}_seed1"), "--data_seed", "1",
            "--feature_cache", os.path.join(w, "cache"), "--device", "cpu"]
    other_full = os.path.join(w, "buffer_other")
    bench.run(f"{LEVEL}_other_expert", "buffer.py", *EXPERTS, *data, "--num_experts", "1", "--buffer_path",
              other_full, "--train_epochs", str(LEVELS[LEVEL]["epochs"]),
              done=os.path.join(other_full, LEVEL, f"{ENCODER}_minilm", "InfoNCE", "normal", "img_replay_buffer_0.pt"))
    encoder = os.path.join(w, "encoders", f"{LEVEL}_{ENCODER}_other.pt")
    bench.run(f"{LEVEL}_other_encoder", "prepare_data.py", "encoder", "--normal_dir",
              os.path.join(other_full, LEVEL, f"{ENCODER}_minilm", "InfoNCE", "normal"), "--out", encoder, done=encoder)
    heads_root = os.path.join(w, "buffer_heads_other")
    normal = os.path.join(heads_root, LEVEL, f"{ENCODER}_minilm", "InfoNCE", "normal")
    job = swap(bench.expert_jobs(LEVEL, heads=True)[0], bench)
    bench.run(f"{LEVEL}_other_heads_experts", *job[1:-1], done=os.path.join(normal, "img_replay_buffer_1.pt"))
    for start, end in LEVELS[LEVEL]["windows"]:
        out = os.path.join(heads_root, LEVEL, f"{ENCODER}_minilm", "InfoNCE", f"convexified_{start}_{end}")
        bench.run(f"{LEVEL}_other_heads_convexify_{start}_{end}", "convexify.py", "--start", str(start), "--end",
                  str(end), "--normal_dir", normal, done=out)
    distill = swap(bench.distill_job(LEVEL, "heads", N), bench)
    distill[-1] = os.path.join(w, "runs", LEVEL, "heads_other_N50", "distilled_1_final.pt")
    bench.run(f"{LEVEL}_other_distill_heads", *distill[1:-1], done=distill[-1])
    jobs = [job for job in bench.evaluation_jobs(LEVEL, N) if "heads" in job[0]]
    jobs = [swap(job, bench) for job in jobs]
    for job in jobs:
        os.makedirs(os.path.dirname(job[-1]), exist_ok=True)
        bench.run(f"{job[0]}_other_encoder", *job[1:-1], done=job[-1])
    rows = []
    for job in jobs:
        with open(job[-1]) as f:
            report = next(iter(json.load(f)["results"].values()))
        rows.append({"eval": os.path.basename(job[-1])[:-len(".json")], "encoder": "other (data_seed 1)",
                     "mean": report["final"]["mean"]["r_mean"], "std": report["final"]["std"]["r_mean"],
                     "val": collect.val_of(report)})
    with open(OUT, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    for r in rows:
        print(f"{r['eval']}: {r['mean']:.1f} ± {r['std']:.1f} (val {r['val']:.1f})")


if __name__ == "__main__":
    main()
