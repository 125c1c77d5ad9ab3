"""distill_ptm-st.py end to end on tiny data: files, resume, refusals."""
import importlib.util
import json
import os

import pytest
import torch

import buffer
from distill_utils import distill_loop
from distill_utils.files.buffers import buffer_dir
from tests.conftest import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("distill_ptm_st", os.path.join(ROOT, "distill_ptm-st.py"))
distill = importlib.util.module_from_spec(spec)
spec.loader.exec_module(distill)


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory, tiny_data, tiny_text_encoder):
    root = tmp_path_factory.mktemp("buffers")
    args = ["--dataset", "synthetic", "--ann_root", tiny_data, "--feature_cache", str(root / "cache"),
            "--text_encoder", tiny_text_encoder, "--image_size", "16", "--image_encoder", "convnet_w8_d2_e32",
            "--synthetic_train_images", "40", "--synthetic_test_images", "10", "--device", "cpu",
            "--buffer_path", str(root), "--num_experts", "2", "--train_epochs", "3", "--image_trainable",
            "--batch_train", "16", "--eval_freq", "3"]
    try:
        buffer.main(args)
    except SystemExit as e:
        assert e.code in (0, None)
    return buffer_dir(str(root), "synthetic", "convnet_w8_d2_e32", tiny_text_encoder, "InfoNCE")


def _args(tiny_args, expert_dir, runs, name, *extra):
    return [*tiny_args, "--image_trainable", "--buffer_path", expert_dir, expert_dir, "--min_start_epoch", "0", "1",
            "--max_start_epoch", "1", "2", "--num_queries", "6", "8", "--Iteration", "3", "3", "--subset_num", "2",
            "--syn_steps", "3", "--mini_batch_size", "4", "--lr_img", "0.1", "--lr_txt", "0.1", "--lr_sim", "0.1", "--lr_lr", "1e-5",
            "--eval_it", "2", "--num_eval", "1", "--epoch_eval_train", "2", "--batch_train", "4",
            "--checkpoint_it", "1", "--runs_dir", str(runs), "--name", name, *extra]


def _tensors(run_dir, name):
    obj = torch.load(os.path.join(run_dir, name), weights_only=True)
    return [obj["image"], obj["text"], obj["similarity_mat"], *obj["similarity_params"], obj["syn_lr_img"], obj["syn_lr_txt"]]


def test_two_phase_run_writes_the_expected_files(tiny_args, expert_dir, tmp_path, capsys):
    code, err = run_cli(distill.main, _args(tiny_args, expert_dir, tmp_path, "demo"), capsys)
    assert code == 0, err
    run_dir = tmp_path / "synthetic" / "demo"
    for p, n in ((0, 6), (1, 8)):
        for stem in (f"{p}_2", f"{p}_3", f"{p}_final"):
            obj = torch.load(run_dir / f"distilled_{stem}.pt", weights_only=True)
            assert {"image", "text", "similarity_params", "similarity_mat", "syn_lr_img", "syn_lr_txt"} <= obj.keys()
            assert obj["image"].shape == (n, 3, 16, 16) and obj["similarity_mat"].shape == (n, n)
            assert obj["config"]["phase"] == p and obj["config"]["num_queries"] == n
        assert (run_dir / f"images_{p}_2.png").stat().st_size > 0
        lines = (run_dir / f"captions_{p}_2.txt").read_text().splitlines()
        assert len(lines) == n + 1 and lines[1].count("\t") == 2
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [(r["phase"], r["iteration"]) for r in evals] == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert all(0 <= r["eval_r_mean"] <= 100 for r in evals)
    assert [r["iteration"] for r in records if r.get("phase") == 1 and "loss" in r] == [1, 2, 3]
    assert json.load(open(run_dir / "config.json"))["num_queries"] == [6, 8]
    assert any(r.get("event") == "phase_done" and r["seconds_per_iteration"] > 0 for r in records)


def test_raw_subset_is_what_a_run_without_ema_ends_with(tiny_args, expert_dir, tmp_path, capsys):
    assert run_cli(distill.main, _args(tiny_args, expert_dir, tmp_path, "ema", "--num_eval", "0"), capsys)[0] == 0
    assert run_cli(distill.main, _args(tiny_args, expert_dir, tmp_path, "noema", "--num_eval", "0",
                                       "--ema_decay", "0"), capsys)[0] == 0
    for p in (0, 1):
        raw = _tensors(tmp_path / "synthetic" / "ema", f"distilled_{p}_final_raw.pt")
        no_ema = _tensors(tmp_path / "synthetic" / "noema", f"distilled_{p}_final.pt")
        ema = _tensors(tmp_path / "synthetic" / "ema", f"distilled_{p}_final.pt")
        assert all(torch.equal(a, b) for a, b in zip(raw, no_ema))
        assert not torch.equal(raw[0], ema[0])
    assert not (tmp_path / "synthetic" / "noema" / "distilled_0_final_raw.pt").exists()


def test_adjoint_store_reaches_the_matching_and_leaves_the_result_unchanged(tiny_args, expert_dir, tmp_path, capsys,
                                                                           monkeypatch):
    real, stores = distill_loop.MATCHING["adjoint"], []

    def recording(*args, store="cpu"):
        stores.append(store)
        return real(*args, store=store)

    monkeypatch.setitem(distill_loop.MATCHING, "adjoint", recording)
    for name, extra in (("kept", []), ("recomputed", ["--adjoint_store", "recompute"])):
        args = _args(tiny_args, expert_dir, tmp_path, name, "--num_eval", "0", "--matching", "adjoint", *extra)
        assert run_cli(distill.main, args, capsys)[0] == 0
    assert stores == ["cpu"] * 6 + ["recompute"] * 6
    for p in (0, 1):
        kept = _tensors(tmp_path / "synthetic" / "kept", f"distilled_{p}_final.pt")
        recomputed = _tensors(tmp_path / "synthetic" / "recomputed", f"distilled_{p}_final.pt")
        assert all(torch.equal(a, b) for a, b in zip(kept, recomputed))


def whole_killed_resumed(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, *extra):
    """Runs "whole" uninterrupted, and "killed", stopped at phase 1 iteration 2 (after the checkpoint of iteration 1),
    then resumed; returns the run directories."""
    assert run_cli(distill.main, _args(tiny_args, expert_dir, tmp_path, "whole", *extra), capsys)[0] == 0
    from distill_utils.method.learnable_set import SyntheticSet
    real_step, calls = SyntheticSet.step, {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(SyntheticSet, "step", dying_step)
    assert run_cli(distill.main, _args(tiny_args, expert_dir, tmp_path, "killed", *extra), capsys)[0] == 130
    monkeypatch.setattr(SyntheticSet, "step", real_step)
    killed = tmp_path / "synthetic" / "killed"
    ckpt = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert (ckpt["phase"], ckpt["iteration"]) == (1, 1)
    assert run_cli(distill.main, _args(tiny_args, expert_dir, tmp_path, "killed", "--resume", *extra), capsys)[0] == 0
    return tmp_path / "synthetic" / "whole", killed


def assert_same_saves(whole, killed, names=("distilled_0_final.pt", "distilled_1_2.pt", "distilled_1_final.pt")):
    for name in names:
        for a, b in zip(_tensors(whole, name), _tensors(killed, name)):
            assert torch.equal(a, b), name


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(tiny_args, expert_dir, tmp_path, capsys, monkeypatch):
    whole, killed = whole_killed_resumed(tiny_args, expert_dir, tmp_path, capsys, monkeypatch)
    assert_same_saves(whole, killed)
    logged = [json.loads(line) for line in open(killed / "metrics.jsonl")]
    assert [r["iteration"] for r in logged if r.get("phase") == 1 and "loss" in r] == [1, 2, 3]  # no duplicates


@pytest.mark.parametrize("extra, needle", [
    (["--image_encoder", "convnet_w4_d2_e32"], "do not match the network"),
    (["--num_queries", "6"], "--num_queries: expected 2 values"),
    (["--max_start_epoch", "1", "4"], "needs timestamp 4"),
    (["--mini_batch_size", "7"], "--mini_batch_size 7 exceeds --num_queries 6"),
    (["--sim_rank", "2", "2"], "--sim_rank applies to --sim_type lowrank"),
])
def test_bad_settings_are_refused_in_one_line(tiny_args, expert_dir, tmp_path, capsys, extra, needle):
    code, err = run_cli(distill.main, _args(tiny_args, expert_dir, tmp_path, "bad") + extra, capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_existing_run_needs_resume_and_resume_needs_same_settings(tiny_args, expert_dir, tmp_path, capsys):
    args = _args(tiny_args, expert_dir, tmp_path, "once", "--num_eval", "0")
    assert run_cli(distill.main, args, capsys)[0] == 0
    code, err = run_cli(distill.main, args, capsys)
    assert code == 2 and "pass --resume" in err
    code, err = run_cli(distill.main, args + ["--resume", "--lr_img", "5"], capsys)
    assert code == 2 and "--lr_img" in err


def test_non_finite_loss_stops_and_keeps_the_last_good_save(tiny_args, expert_dir, tmp_path, capsys, monkeypatch):
    real, calls = distill_loop.MATCHING["constant"], {"n": 0}

    def poisoned(student, syn, start, target, schedule):
        calls["n"] += 1
        result = real(student, syn, start, target, schedule)
        if calls["n"] == 3:
            syn.image.grad[0, 0, 0, 0] = float("nan")
        return result

    monkeypatch.setitem(distill_loop.MATCHING, "constant", poisoned)
    code, err = run_cli(distill.main, _args(tiny_args, expert_dir, tmp_path, "nan", "--num_eval", "0"), capsys)
    run_dir = tmp_path / "synthetic" / "nan"
    assert code == 2 and "iteration 3" in err and "distilled_0_2.pt" in err
    assert not (run_dir / "distilled_0_3.pt").exists() and not (run_dir / "distilled_0_final.pt").exists()
    assert torch.isfinite(torch.load(run_dir / "distilled_0_2.pt", weights_only=True)["image"]).all()
