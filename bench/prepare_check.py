"""prepare_data.py at the file count of Flickr30k: the conversion and the `check` that runs before the recipe.

    python -m bench.prepare_check --out results/prepare_check      # 31,014 images x 5 captions (Karpathy's Flickr30k)
    python -m bench.prepare_check --images 500 --out /tmp/pc        # smoke test

Writes --images small JPEG files (80x60: the file count is Flickr30k's, not the bytes) and a Karpathy split file
with Karpathy's proportions (29,000 / 1,014 / 1,000 of 31,014) and 5 captions each, then times, in fresh
processes as a user runs them (wall and CPU seconds: on a shared machine the CPU seconds are the steadier
figure): `prepare_data.py flickr` (every image's header read, the folder linked, the
annotation files written) and `prepare_data.py check --dataset flickr` with the MiniLM text encoder that ships
as a package (offline). Writes OUT/prepare_check.md and prints it.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from PIL import Image


def write_dataset(tmp, n):
    images = os.path.join(tmp, "flickr30k-images")
    os.makedirs(images)
    for k in range(n):
        Image.new("RGB", (80, 60), ((k * 7) % 256, (k * 13) % 256, (k * 29) % 256)).save(
            os.path.join(images, f"{k:010d}.jpg"), "JPEG", quality=90)
    val, test = round(n * 1014 / 31014), round(n * 1000 / 31014)
    split = lambda k: "train" if k < n - val - test else ("val" if k < n - test else "test")
    records = [{"filename": f"{k:010d}.jpg", "split": split(k),
                "sentences": [{"raw": f"A person number {k} doing thing {j} in a place ."} for j in range(5)]}
               for k in range(n)]
    path = os.path.join(tmp, "dataset_flickr30k.json")
    with open(path, "w") as f:
        json.dump({"dataset": "flickr30k", "images": records}, f)
    return path, images


def run(argv):
    """(wall seconds, CPU seconds, output) of prepare_data.py in a fresh process."""
    t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "prepare_data.py", *argv], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    if proc.returncode not in (0, 2):
        raise RuntimeError(proc.stderr[-2000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.perf_counter() - t, cpu, proc.stdout + (proc.stderr.strip().splitlines() or [""])[-1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=31014, help="image files (default: 31,014, Karpathy's Flickr30k)")
    p.add_argument("--out", required=True, help="directory for prepare_check.md")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        split_file, images = write_dataset(tmp, args.images)
        root = os.path.join(tmp, "root")
        prepare_s, prepare_cpu, prepare_out = run(["flickr", "--karpathy", split_file, "--images", images, "--out", root])
        annotations = sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root) if f.endswith(".json"))
        check_s, check_cpu, check_out = run(["check", "--dataset", "flickr", "--image_root", root, "--ann_root", root,
                                  "--text_encoder", "minilm", "--feature_cache", os.path.join(tmp, "cache"),
                                  "--buffer_path", os.path.join(tmp, "buffer")])
    lines = [f"prepare_data.py at Flickr30k's file count: {args.images:,} JPEG files (80x60) x 5 captions, "
             f"{os.cpu_count()} CPUs. `python -m bench.prepare_check {' '.join(sys.argv[1:] if argv is None else argv)}`",
             "", "| command (a fresh process each) | wall seconds | CPU seconds |", "|---|---|---|",
             f"| prepare_data.py flickr --karpathy ... --images ... --out ROOT | {prepare_s:.1f} | {prepare_cpu:.1f} |",
             f"| prepare_data.py check --dataset flickr ... (text encoder minilm, offline) | {check_s:.1f} | "
             f"{check_cpu:.1f} |",
             "", f"The annotation files it wrote: {annotations / 1e6:.1f} MB.",
             "", "```", prepare_out.strip(), "", check_out.strip(), "```"]
    publish(args.out, "prepare_check.md", lines)


def publish(out_dir, name, lines):
    """Write a benchmark's report to OUT/name and print it."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
