"""Turn a buffer of expert trajectories into shortcut trajectories (SPEC section 4).

    python convexify.py --start 0 --end 6 --normal_dir buffer/flickr/nfnet_bert/InfoNCE/normal
    # -> buffer/flickr/nfnet_bert/InfoNCE/convexified_0_6/, same file names, end - start timestamps per expert

Works on published buffers (no manifest.json) as well. Files are converted one at a time into a hidden
sibling directory that is renamed into place at the end, so a failure leaves no output directory.
"""
import distill_utils.startup  # noqa: F401  (first: Ctrl-C while torch loads is one line, no traceback)
import os
import shlex
import sys

import torch
from tqdm import tqdm

from distill_utils import footprint, settings
from common.errors import UserError, cli_main
from common.io import atomic_path, ensure_writable_dir, save_json, save_torch
from distill_utils.method.shortcut import shortcut_trajectory
from distill_utils.files.buffers import FORMAT, MANIFEST, BufferDir, check_experts, load_experts


def make_parser():
    return settings.parser(settings.CONVEXIFY, __doc__)


def check_file(experts, path, end, lengths=None):
    """Refuse a file whose experts differ in length or shapes (buffers.check_experts), or are too short for the
    window, or unlike its img twin."""
    count, length, _ = check_experts(experts, path)
    if end > length:
        raise UserError(f"--end {end} is beyond the {length} timestamps recorded in {path}")
    if lengths is not None and lengths != (count, length):
        raise UserError(f"buffer file {path}: {count} experts of {length} timestamps, but its img twin has "
                        f"{lengths[0]} of {lengths[1]}")
    return count, length


def convert_file(src, dst, start, end, lengths=None):
    """Convert one buffer file, dropping each input expert once converted; returns (experts, timestamps)."""
    experts = load_experts(src)
    found = check_file(experts, src, end, lengths)
    out = []
    for e in range(len(experts)):
        out.append(shortcut_trajectory(experts[e], start, end))
        if not all(torch.isfinite(p).all() for stamp in out[-1] for p in stamp):
            raise UserError(f"buffer file {src}: expert {e} holds NaN or inf in timestamps [{start}, {end}); "
                            "nothing is written")
        experts[e] = None
    save_torch(out, dst)
    return found


def manifest_for(normal, start, end, argv):
    """The source manifest (published buffers have none) with what this conversion changed."""
    source = {k: v for k, v in (normal.read_manifest() or {}).items() if k != "files"}  # digests of other files
    manifest = source | {"format": FORMAT, "kind": "convexified", "source_dir": os.path.abspath(normal.path),
                         "window": [start, end], "timestamps": end - start,
                         "command": f"{os.path.basename(sys.executable)} convexify.py {shlex.join(argv)}"}
    if "command" in source:
        manifest["source_command"] = source["command"]
    return manifest


def convexify(pairs, manifest, out_dir, start, end):
    """Convert every pair into a hidden sibling of out_dir, then rename it into place."""
    with atomic_path(out_dir) as tmp:  # a killed run's leftovers are cleared by ensure_writable_dir
        os.mkdir(tmp)
        with tqdm(total=2 * len(pairs), desc="convexify", unit="file", leave=False) as bar:
            for _, img_path, txt_path in pairs:
                lengths = None
                for path in (img_path, txt_path):
                    bar.set_postfix_str(os.path.basename(path))
                    lengths = convert_file(path, os.path.join(tmp, os.path.basename(path)), start, end, lengths)
                    bar.update()
        save_json(manifest, os.path.join(tmp, MANIFEST))


@cli_main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = settings.parse_args(make_parser(), argv)
    if args.start >= args.end:
        raise UserError(f"--start {args.start} must be smaller than --end {args.end}")
    normal = BufferDir(args.normal_dir, "--normal_dir")
    pairs = normal.pairs()
    manifest = manifest_for(normal, args.start, args.end, argv)
    parent = os.path.dirname(os.path.abspath(args.normal_dir))
    out_dir = os.path.abspath(args.out_dir or os.path.join(parent, f"convexified_{args.start}_{args.end}"))
    flag = "--out_dir" if args.out_dir else "--normal_dir"
    if os.path.exists(out_dir):
        raise UserError(f"{flag}: output {out_dir} already exists; remove it or choose another --out_dir")
    ensure_writable_dir(os.path.dirname(out_dir), flag)
    footprint.check_disk(os.path.dirname(out_dir), footprint.shortcut_bytes(pairs, args.start, args.end),
                         "the shortcut trajectories", flag)
    convexify(pairs, manifest, out_dir, args.start, args.end)
    print(f"convexified {len(pairs)} buffer pairs, timestamps [{args.start}, {args.end}) -> {out_dir}")


if __name__ == "__main__":
    main()
