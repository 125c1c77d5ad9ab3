"""distill_ptm-st.py end to end on tiny data: files, resume, refusals."""
import json

import pytest
import torch

from distill_utils import distill_loop
from tests.helpers import assert_same_saves, distill, distill_args, run_cli, saved_tensors, whole_killed_resumed

def test_two_phase_run_writes_the_expected_files(tiny_args, expert_dir, tmp_path, capsys):
    code, err = run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "demo"), capsys)
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
    assert run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "ema", "--num_eval", "0"), capsys)[0] == 0
    assert run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "noema", "--num_eval", "0",
                                       "--ema_decay", "0"), capsys)[0] == 0
    for p in (0, 1):
        raw = saved_tensors(tmp_path / "synthetic" / "ema", f"distilled_{p}_final_raw.pt")
        no_ema = saved_tensors(tmp_path / "synthetic" / "noema", f"distilled_{p}_final.pt")
        ema = saved_tensors(tmp_path / "synthetic" / "ema", f"distilled_{p}_final.pt")
        assert all(torch.equal(a, b) for a, b in zip(raw, no_ema))
        assert not torch.equal(raw[0], ema[0])
    assert not (tmp_path / "synthetic" / "noema" / "distilled_0_final_raw.pt").exists()


@pytest.mark.parametrize("mode, default, other", [("adjoint", "cpu", "recompute"), ("constant", "replay", "graphs")])
def test_matching_store_reaches_the_matching_and_leaves_the_result_unchanged(tiny_args, expert_dir, tmp_path, capsys,
                                                                            monkeypatch, mode, default, other):
    real, stores = distill_loop.MATCHING[mode], []

    def recording(*args, store):
        stores.append(store)
        return real(*args, store=store)

    monkeypatch.setitem(distill_loop.MATCHING, mode, recording)
    for name, extra in ((default, []), (other, [f"--{mode}_store", other])):
        args = distill_args(tiny_args, expert_dir, tmp_path, name, "--num_eval", "0", "--matching", mode, *extra)
        assert run_cli(distill.main, args, capsys)[0] == 0
    assert stores == [default] * 6 + [other] * 6
    for p in (0, 1):
        first = saved_tensors(tmp_path / "synthetic" / default, f"distilled_{p}_final.pt")
        second = saved_tensors(tmp_path / "synthetic" / other, f"distilled_{p}_final.pt")
        assert all(torch.equal(a, b) for a, b in zip(first, second))


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
    code, err = run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "bad") + extra, capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_existing_run_needs_resume_and_resume_needs_same_settings(tiny_args, expert_dir, tmp_path, capsys):
    args = distill_args(tiny_args, expert_dir, tmp_path, "once", "--num_eval", "0")
    assert run_cli(distill.main, args, capsys)[0] == 0
    code, err = run_cli(distill.main, args, capsys)
    assert code == 2 and "pass --resume" in err
    code, err = run_cli(distill.main, args + ["--resume", "--lr_img", "5"], capsys)
    assert code == 2 and "--lr_img" in err


def test_non_finite_loss_stops_and_keeps_the_last_good_save(tiny_args, expert_dir, tmp_path, capsys, monkeypatch):
    real, calls = distill_loop.MATCHING["constant"], {"n": 0}

    def poisoned(student, syn, start, target, schedule, **store):
        calls["n"] += 1
        result = real(student, syn, start, target, schedule, **store)
        if calls["n"] == 3:
            syn.image.grad[0, 0, 0, 0] = float("nan")
        return result

    monkeypatch.setitem(distill_loop.MATCHING, "constant", poisoned)
    code, err = run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "nan", "--num_eval", "0"), capsys)
    run_dir = tmp_path / "synthetic" / "nan"
    assert code == 2 and "iteration 3" in err and "distilled_0_2.pt" in err
    assert not (run_dir / "distilled_0_3.pt").exists() and not (run_dir / "distilled_0_final.pt").exists()
    assert torch.isfinite(torch.load(run_dir / "distilled_0_2.pt", weights_only=True)["image"]).all()
