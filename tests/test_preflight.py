"""The checks before any training: `prepare_data.py check` against the paper's recipe, the start of every script,
and the disk and GPU figures they compare (footprint.py)."""
import os
import subprocess

import pytest
import torch

import buffer
import prepare_data
from common.errors import UserError
from distill_utils import footprint, settings
from distill_utils.files.buffers import BufferDir
from distill_utils.paper_recipe import SIZES, paper_recipe
from networks.dual_encoder import NetConfig, NetworkFactory
from tests import distributed as forms
from tests.helpers import ROOT, distill, run_cli


@pytest.fixture
def prepared(tmp_path, capsys):
    """A Flickr-form dataset root made by prepare_data.py from Karpathy's split file."""
    split_file, images = forms.karpathy_flickr(str(tmp_path / "in"), n=20)
    root = str(tmp_path / "root")
    assert run_cli(prepare_data.main, ["flickr", "--karpathy", split_file, "--images", images, "--out", root],
                   capsys)[0] == 0
    return root


def check(root, tmp_path, tiny_text_encoder, capsys, *extra):
    argv = ["check", "--dataset", "flickr", "--image_root", root, "--ann_root", root, "--text_encoder",
            tiny_text_encoder, "--feature_cache", str(tmp_path / "cache"), "--buffer_path", str(tmp_path / "buffer"), *extra]
    try:
        prepare_data.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_from_nothing_plans_the_buffers_and_their_size_from_the_network(prepared, tmp_path, tiny_text_encoder,
                                                                              capsys, monkeypatch):
    monkeypatch.setattr(footprint, "free_bytes", lambda path: 2**50)  # the plan, whatever this machine's disk holds
    code, out, err = check(prepared, tmp_path, tiny_text_encoder, capsys)
    assert code == 0, err
    net = NetworkFactory(NetConfig("nfnet", 224, 32, True, image_pretrained=False)).build(seed=0)
    experts = footprint.human_bytes(20 * footprint.expert_bytes(net, 11))
    assert f"buffer.py writes 20 x 11 timestamps ({experts}" in out
    assert "convexified_0_6" in out and "convexified_0_8" in out and "all checks passed" in out
    assert "ok     annotations" in out and "ok     text encoder" in out and "GPU memory" in out


def test_check_reports_every_failure_and_ends_in_one_error_line(prepared, tmp_path, tiny_text_encoder, capsys,
                                                                monkeypatch):
    normal = BufferDir.of_network(str(tmp_path / "buffer"), "flickr", "nfnet", tiny_text_encoder, "InfoNCE").path
    os.makedirs(normal)
    for n in range(2):  # published-style experts (no manifest) of 5 timestamps: too short for convexify --end 6
        for side in ("img", "txt"):
            with open(os.path.join(normal, f"{side}_replay_buffer_{n}.pt"), "wb") as f:
                f.write(forms.expert_file_bytes([(3, 2), (4,)], 1, 5, n))
    os.remove(os.path.join(prepared, "flickr30k_val.json"))
    monkeypatch.setattr(footprint, "free_bytes", lambda path: 1000)
    code, out, err = check(prepared, tmp_path, tiny_text_encoder, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "3 check(s) failed" in err
    assert "FAILED data: annotation file" in out and "flickr30k_val.json" in out
    assert "FAILED buffers" in out and "--end 6 needs more" in out and "FAILED disk" in out


def test_the_recipe_table_is_what_the_shell_recipes_run(tmp_path, monkeypatch):
    """Runs sh/buffer.sh and sh/distill.sh with a `python` that records its arguments; parses them (with the recipe
    files they name, relative to the repository) with the scripts' own parsers and compares them with paper_recipe."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "ARGS_OUT": str(tmp_path / "args")}

    def argv_of(*command):
        subprocess.run(["bash", *command], cwd=ROOT, env=env, check=True)
        return (tmp_path / "args").read_text().splitlines()[1:]  # without the script's name

    monkeypatch.chdir(ROOT)
    for dataset in ("flickr", "coco", "cc3m"):
        b = settings.parse_args(buffer.make_parser(), argv_of("sh/buffer.sh", dataset))
        for size in SIZES:
            r = paper_recipe(dataset, size)
            assert (b.num_experts, b.train_epochs, b.batch_train, b.image_encoder, b.text_encoder, b.image_size,
                    b.loss_type) == (r.num_experts, r.train_epochs, r.expert_batch, r.image_encoder, r.text_encoder,
                                     r.image_size, r.loss_type)
            d = settings.parse_args(distill.make_parser(), argv_of("sh/distill.sh", dataset, str(size)))
            assert [os.path.basename(p) for p in d.buffer_path] == [os.path.basename(p) for p in r.shortcut_dirs("x/normal")]
            assert (tuple(d.min_start_epoch), tuple(d.max_start_epoch), tuple(d.num_queries), d.expert_epochs,
                    d.mini_batch_size, d.batch_train) == (r.min_start_epoch, r.max_start_epoch, r.num_queries,
                                                          r.expert_epochs, r.mini_batch_size, r.eval_batch)


def test_gpu_estimates_are_the_measurements_at_the_measured_size_and_scale_with_batch_and_pixels():
    assert footprint.gpu_estimate("distillation", "nfnet", 224, 40) == pytest.approx(12.11e9)
    assert footprint.gpu_estimate("expert epoch", "nfnet_l0", 112, 64) == pytest.approx(15.76e9 / 8)
    assert footprint.gpu_estimate("distillation (unrolled)", "nfnet", 224, 40, steps=16) == pytest.approx(2 * 80.25e9)
    assert footprint.gpu_estimate("distillation", "nfnet", 224, 40, amp=True) == pytest.approx(7.30e9)  # --amp bf16
    assert footprint.gpu_estimate("distillation", "convnet", 32, 40) is None


def test_gpu_check_refuses_a_recipe_larger_than_the_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10e9, 24e9))
    cuda = torch.device("cuda")
    needs = {"distillation": footprint.gpu_estimate("distillation", "nfnet", 224, 40),
             "evaluation student": footprint.gpu_estimate("evaluation student", "nfnet", 224, 64)}
    with pytest.raises(UserError, match="distillation needs about 12.1 GB.*10.0 GB free of 24.0 GB"):
        footprint.check_gpu(cuda, needs)
    assert "7.9 GB" in footprint.check_gpu(cuda, {**needs, "distillation": None})  # the evaluation fits
    assert "not compared on cpu" in footprint.check_gpu(torch.device("cpu"), needs)
    assert "not estimated" in footprint.check_gpu(cuda, {"distillation": None})


def test_expert_bytes_match_the_files_buffer_py_writes(expert_dir, factory):
    net = factory.build(seed=0)
    written = sum(os.path.getsize(os.path.join(expert_dir, f"{side}_replay_buffer_0.pt")) for side in ("img", "txt"))
    computed = footprint.expert_bytes(net, 4)  # 3 epochs: 4 timestamps
    assert computed <= written < computed + 64 * 1024  # the rest is torch.save's per-tensor overhead


def test_scripts_stop_at_their_start_before_any_feature_is_computed(prepared, tmp_path, tiny_text_encoder, capsys):
    os.remove(os.path.join(prepared, "flickr30k_test.json"))
    cache = tmp_path / "cache"
    argv = ["--dataset", "flickr", "--image_root", prepared, "--ann_root", prepared, "--text_encoder", tiny_text_encoder,
            "--feature_cache", str(cache), "--image_encoder", "convnet_w8_d2_e32", "--image_size", "16", "--device",
            "cpu", "--buffer_path", str(tmp_path / "buffer"), "--num_experts", "1", "--train_epochs", "1"]
    code, err = run_cli(buffer.main, argv, capsys)
    assert code == 2 and "flickr30k_test.json" in err and not cache.exists()
