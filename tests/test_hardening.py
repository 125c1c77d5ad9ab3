"""Faults and bad input a long run meets: each class refused in one line, at its shared root."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import buffer
import convexify
import evaluate
from distill_utils import io
from distill_utils.errors import UserError
from distill_utils.procs import host_id
from tests.conftest import run_cli
from tests.test_distill import distill

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(code, err, *needles):
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("script, flags, needle", [
    (buffer, ["--lr_teacher_img", "nan"], "--lr_teacher_img nan"),
    (buffer, ["--mom", "inf"], "--mom inf"),
    (buffer, ["--image_size", "0"], "--image_size 0"),
    (buffer, ["--seed", str(2**64)], "--seed"),
    (buffer, ["--seed", "-1"], "--seed"),
    (buffer, ["--image_encoder", "convnet_w0"], "--image_encoder convnet_w0"),
    (buffer, ["--workers", "100000"], "--workers"),
    (evaluate, ["--baseline", "full", "--full_lr", "nan"], "--full_lr nan"),
    (evaluate, ["--baseline", "random", "--num_pairs", "4", "--lr_teacher_txt=-inf"], "--lr_teacher_txt -inf"),
    (distill, ["--buffer_path", "b", "--lr_sim", "nan"], "--lr_sim nan"),
    (distill, ["--buffer_path", "b", "--alpha", "inf"], "--alpha inf"),
    (distill, ["--buffer_path", "b", "--name", "../../x"], "--name"),
    (distill, ["--buffer_path", "b", "--name", "a/b"], "--name"),
])
def test_bad_flag_values_are_refused_in_one_line(script, flags, needle, tiny_args, tmp_path, capsys):
    args = [*tiny_args, "--buffer_path", str(tmp_path / "buf")] if script is buffer else list(tiny_args)
    if script is distill:
        args += ["--runs_dir", str(tmp_path / "runs")]
    _one_line(*run_cli(script.main, args + flags, capsys), needle)
    assert not [f for d in ("buf", "runs") for _, _, fs in os.walk(tmp_path / d) for f in fs]  # nothing written


def test_feature_cache_that_is_a_file_is_refused(tiny_args, tmp_path, capsys):
    blocker = tmp_path / "cache_file"
    blocker.write_text("x")
    args = [*tiny_args, "--buffer_path", str(tmp_path / "buf"), "--feature_cache", str(blocker)]
    _one_line(*run_cli(buffer.main, args, capsys), "--feature_cache", "expected a directory")


def test_ctrl_c_while_loading_is_one_line():
    proc = subprocess.Popen([sys.executable, "buffer.py", "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)  # importing torch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the script finished loading before the signal")
    assert proc.returncode == 130 and err.strip() == "interrupted", err


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.pt"
    io.save_torch([torch.ones(2)], target)

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="cannot write .*out.pt"):
        io.save_torch([torch.zeros(2)], target)
    with pytest.raises(UserError, match="No space left"):
        with io.atomic_path(tmp_path / "out.json") as tmp, open(tmp, "w"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert torch.equal(torch.load(target, weights_only=True)[0], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["out.pt"]


def test_dead_writers_temporaries_are_cleaned_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    files = {f".a.pt.tmp{dead_pid}-{host_id()}": False, f".b.pt.tmp{dead_pid}": False,
             f".c.pt.tmp{os.getpid()}-{host_id()}": True, f".d.pt.tmp{dead_pid}-0badc0de": True, "e.pt": True}
    for name in files:
        (tmp_path / name).write_text("x")
    (tmp_path / f".convexified_0_2.tmp{dead_pid}-{host_id()}").mkdir()
    io.ensure_writable_dir(str(tmp_path), "--flag")
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, keep in files.items() if keep)
