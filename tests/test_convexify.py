"""convexify.py on hand-made buffers: output contents, manifest, the distillation reader, and bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

from convexify import main
from distill_utils.method.shortcut import shortcut_trajectory
from distill_utils.files.buffers import BufferDir
from distill_utils.files.expert_stream import ExpertStream
from tests.helpers import IMG_SHAPES, TXT_SHAPES, trajectory, write_buffer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for sa, sb in zip(a, b) for x, y in zip(sa, sb))


def run(*args):
    main([str(a) for a in args])


def test_converts_every_file_and_records_the_window(tmp_path):
    source = {"format": "ptm-st-buffer/1", "kind": "normal", "dataset": "synthetic", "timestamps": 6,
              "img_params": [["w", [3, 2]], ["b", [4]]], "command": "python buffer.py"}
    normal = write_buffer(tmp_path / "normal", manifest=source)
    run("--start", 1, "--end", 5, "--normal_dir", normal)
    out = tmp_path / "convexified_1_5"
    assert sorted(os.listdir(out)) == sorted(os.listdir(normal))
    for name in os.listdir(normal):
        if not name.endswith(".pt"):
            continue
        before, after = load(os.path.join(normal, name)), load(out / name)
        assert len(after) == len(before) == 2
        for orig, short in zip(before, after):
            assert len(short) == 4
            assert same([short[0], short[-1]], [orig[1], orig[4]])
            assert same(short, shortcut_trajectory(orig, 1, 5))
            assert not same(short[1:2], orig[2:3])  # the middle really changed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "convexified" and manifest["window"] == [1, 5] and manifest["timestamps"] == 4
    assert manifest["source_dir"] == os.path.abspath(normal) and manifest["source_command"] == "python buffer.py"
    assert manifest["dataset"] == "synthetic" and manifest["img_params"] == source["img_params"]
    assert "convexify" in manifest["command"]


def test_published_buffer_without_manifest_reads_through_expert_stream(tmp_path):
    normal = write_buffer(tmp_path / "normal", pairs=2, experts=3, timestamps=5)
    out = tmp_path / "elsewhere" / "short"
    run("--start", 0, "--end", 3, "--normal_dir", normal, "--out_dir", out)
    assert not (tmp_path / "convexified_0_3").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "convexified" and manifest["timestamps"] == 3 and "source_command" not in manifest
    stream = ExpertStream(BufferDir(str(out)), seed=0)
    seen = set()
    for _ in range(6):
        img, txt, path = stream.next()
        assert len(img) == len(txt) == 3
        assert [tuple(p.shape) for p in img[1]] == IMG_SHAPES and [tuple(p.shape) for p in txt[1]] == TXT_SHAPES
        seen.add(os.path.basename(path))
    assert seen == {"img_replay_buffer_0.pt", "img_replay_buffer_1.pt"}


def error_line(err):
    """The one-line message ending stderr (a cleared progress bar may precede it)."""
    assert "Traceback" not in err and err.endswith("\n")
    last = err[:-1].split("\n")[-1].split("\r")[-1]
    assert last.startswith("error: ") and "error:" not in err[: -len(last) - 1]
    return last


def save(path, obj):
    torch.save(obj, path)


def uneven_lengths(d):
    save(f"{d}/img_replay_buffer_1.pt", [trajectory(IMG_SHAPES, 6, 0), trajectory(IMG_SHAPES, 5, 1)])


def shapes_across_timestamps(d):
    traj = trajectory(IMG_SHAPES, 6, 0)
    traj[3] = [torch.zeros(3, 3), traj[3][1]]
    save(f"{d}/img_replay_buffer_1.pt", [traj])


def shapes_across_experts(d):
    save(f"{d}/txt_replay_buffer_1.pt", [trajectory(TXT_SHAPES, 6, 0), trajectory(IMG_SHAPES, 6, 1)])


def fewer_txt_experts(d):
    save(f"{d}/txt_replay_buffer_1.pt", [trajectory(TXT_SHAPES, 6, 0)])


def shorter_txt_twin(d):
    save(f"{d}/txt_replay_buffer_1.pt", [trajectory(TXT_SHAPES, 5, 0)] * 2)


def unmatched(d):
    os.remove(f"{d}/txt_replay_buffer_1.pt")


def empty(d):
    for name in os.listdir(d):
        os.remove(os.path.join(d, name))


def not_a_buffer(d):
    save(f"{d}/img_replay_buffer_1.pt", {"not": torch.zeros(1)})


# (what to break, --start, --end, text the message must hold); damage lands on pair 1, after pair 0 converted
BAD = {
    "start_not_below_end": (None, 3, 3, "--start 3"),
    "negative_start": (None, -1, 3, "--start -1"),
    "end_beyond_recorded": (None, 0, 7, "--end 7 is beyond the 6 timestamps recorded in"),
    "empty_dir": (empty, 0, 3, "--normal_dir"),
    "unmatched_files": (unmatched, 0, 3, "txt_replay_buffer_1.pt is missing"),
    "experts_of_different_lengths": (uneven_lengths, 0, 3, "img_replay_buffer_1.pt: expert 1 has 5 timestamps"),
    "shapes_across_timestamps": (shapes_across_timestamps, 0, 3, "img_replay_buffer_1.pt: expert 0 timestamp 3"),
    "shapes_across_experts": (shapes_across_experts, 0, 3, "txt_replay_buffer_1.pt: expert 1 has tensor shapes"),
    "img_txt_expert_counts": (fewer_txt_experts, 0, 3, "txt_replay_buffer_1.pt: 1 experts"),
    "img_txt_lengths": (shorter_txt_twin, 0, 3, "txt_replay_buffer_1.pt: 2 experts of 5 timestamps"),
    "not_a_buffer": (not_a_buffer, 0, 3, "img_replay_buffer_1.pt: expected a list of experts"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, capsys, case):
    damage, start, end, needle = BAD[case]
    normal = write_buffer(tmp_path / "normal")
    if damage:
        damage(normal)
    with pytest.raises(SystemExit) as exit_info:
        run("--start", start, "--end", end, "--normal_dir", normal)
    assert exit_info.value.code == 2
    assert needle in error_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["normal"]  # no output and no temporary directory left behind


def test_existing_output_is_refused_and_kept(tmp_path, capsys):
    normal = write_buffer(tmp_path / "normal")
    (tmp_path / "convexified_0_3").mkdir()
    (tmp_path / "convexified_0_3" / "keep").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        run("--start", 0, "--end", 3, "--normal_dir", normal)
    assert exit_info.value.code == 2
    assert "already exists" in error_line(capsys.readouterr().err)
    assert os.listdir(tmp_path / "convexified_0_3") == ["keep"]


@pytest.mark.parametrize("case", ["end_beyond_recorded", "img_txt_expert_counts"])
def test_cli_bad_input_exit_status(tmp_path, case):
    damage, start, end, needle = BAD[case]
    normal = write_buffer(tmp_path / "normal")
    if damage:
        damage(normal)
    proc = subprocess.run([sys.executable, "convexify.py", "--start", str(start), "--end", str(end), "--normal_dir", normal],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert needle in error_line(proc.stderr)
    assert sorted(os.listdir(tmp_path)) == ["normal"]
