"""Faults and bad input a long run meets: each class refused in one line, at its shared root."""
import errno
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import buffer
import convexify
import evaluate
from distill_utils.files import claims
from common import io
from common.errors import UserError
from common.procs import host_id
from distill_utils.files.buffers import BufferDir
from tests.helpers import FAST, TEXT_DIM, distill, distill_args, flag_value, our_file, run_cli, with_flag, write_buffer, write_published

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
    (buffer, ["--batch_train", str(10**20)], "--batch_train"),
    (buffer, ["--num_experts", "abc"], "--num_experts"),
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
    """Every entry script imports distill_utils.startup first; a SIGINT after that and before main() is one line."""
    for script in ("buffer.py", "convexify.py", "distill_ptm-st.py", "evaluate.py"):
        first = next(line for line in open(os.path.join(ROOT, script)) if line.startswith(("import ", "from ")))
        assert first.startswith("import distill_utils.startup"), script
    code = "import distill_utils.startup; print('loading', flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "loading\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
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


# --- shared buffers: claims -------------------------------------------------------------------------------

def _dead_pid():
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _write_claim(directory, n, gen, **record):
    with open(claims.claim_path(str(directory), n, gen), "w") as f:
        json.dump(record, f)


def test_claims_are_exclusive_and_only_stale_ones_are_taken_over(tmp_path):
    d, now = str(tmp_path), time.time()
    first = claims.try_claim(d, 0)
    assert first is not None and claims.try_claim(d, 0) is None  # held by a live owner (this process)
    _write_claim(d, 1, 0, host=host_id(), pid=_dead_pid(), start=None, expires=now + 999)  # killed
    _write_claim(d, 2, 0, host="0badc0de", pid=1, start=None, expires=now + 999)  # another host, lease running
    _write_claim(d, 3, 4, host="0badc0de", pid=1, start=None, expires=now - 1)  # another host, lease over
    _write_claim(d, 4, 0, host=host_id(), pid=os.getpid(), start=12345, expires=now + 999)  # a reused pid
    (tmp_path / ".claim_5.0").write_text("")  # killed between create and write (no hard links)...
    os.utime(tmp_path / ".claim_5.0", (now - 60, now - 60))  # ...a minute ago
    (tmp_path / ".claim_6.0").write_text("")  # being written right now
    got = {n: claims.try_claim(d, n) for n in range(1, 7)}
    assert got[2] is None and got[6] is None and all(got[n] is not None for n in (1, 3, 4, 5))
    assert got[3].gen == 5 and not (tmp_path / ".claim_3.4").exists()
    assert claims.live_claims(d) == [0, 1, 2, 3, 4, 5, 6]
    for claim in [first, *filter(None, got.values())]:
        claim.release()
    assert claims.live_claims(d) == [2, 6]


def test_an_owner_renews_its_lease(tmp_path):
    claim = claims.try_claim(str(tmp_path), 0, lease_s=0.5, renew_s=0.05)
    time.sleep(0.8)
    record = claims.read_claim(claim.path)
    assert not claims.is_stale(record) and record["expires"] > time.time()
    claim.release()
    assert not os.listdir(tmp_path)


def _worker(directory, items, barrier, out):
    barrier.wait()
    done = lambda n: os.path.exists(os.path.join(directory, f"item_{n}"))
    trained, errors = [], []
    try:
        while True:
            claim, held = claims.claim_next(directory, items, done, lease_s=5.0, renew_s=1.0)
            if claim is None:
                if not held:
                    break
                time.sleep(0.005)
                continue
            with claim:
                time.sleep(0.002)
                trained.append(claim.n)
                with open(os.path.join(directory, f"item_{claim.n}.{os.getpid()}"), "x"):
                    pass
                os.replace(os.path.join(directory, f"item_{claim.n}.{os.getpid()}"),
                           os.path.join(directory, f"item_{claim.n}"))
    except Exception as err:  # noqa: BLE001 - the test counts them
        errors.append(repr(err))
    out.put((trained, errors))


def test_stress_racing_processes_take_over_stale_claims_exactly_once(tmp_path):
    """Three processes race over items whose claims a killed process left: every item trained exactly once."""
    ctx = multiprocessing.get_context("fork")
    dead, items = _dead_pid(), 4
    for trial in range(20):
        d = tmp_path / str(trial)
        d.mkdir()
        for n in range(items):
            _write_claim(d, n, 0, host=host_id(), pid=dead, start=None, expires=time.time() + 999)
        barrier, out = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(str(d), items, barrier, out)) for _ in range(3)]
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        trained = sorted(n for t, _ in results for n in t)
        assert trained == list(range(items)) and not [e for _, es in results for e in es], (trial, results)
        assert sorted(os.listdir(d)) == [f"item_{n}" for n in range(items)]  # no claim or temporary left


# --- buffer.py: nothing reported complete that is not, nothing mixed ---------------------------------------

def _buffer(tiny_args, root, *extra):
    return [*tiny_args, "--buffer_path", str(root), "--num_experts", "2", "--train_epochs", "1", "--image_trainable",
            "--batch_train", "16", "--eval_freq", "1", *extra]


def _buffer_dir(root, tiny_args):
    return BufferDir.of_network(str(root), "synthetic", "convnet_w8_d2_e32", flag_value(tiny_args, "--text_encoder"),
                                "InfoNCE").path


def test_leftover_claims_and_manifest_never_make_a_buffer_look_complete(tiny_args, tmp_path, capsys):
    out = _buffer_dir(tmp_path, tiny_args)
    os.makedirs(out)
    (tmp_path / out / ".claim_0").write_text("")  # the old scheme's empty claim
    _write_claim(out, 1, 0, host=host_id(), pid=_dead_pid(), start=None, expires=time.time() + 999)
    with open(os.path.join(out, "manifest.json"), "w") as f:  # a killed first run with other settings
        json.dump({"dataset": "synthetic", "image_encoder": "convnet_w4", "lr_teacher_img": 5.0}, f)
    code, err = run_cli(buffer.main, _buffer(tiny_args, tmp_path), capsys)
    assert code == 0, err
    assert [n for n, _, _ in BufferDir(out).pairs()] == [0, 1]
    assert json.load(open(os.path.join(out, "manifest.json")))["lr_teacher_img"] == 0.1
    assert not [f for f in os.listdir(out) if f.startswith(".claim_") and f != ".claim_0"]


@pytest.mark.parametrize("flag, value", [("--lr_teacher_img", "0.2"), ("--mom", "0.5"), ("--l2", "0.001"),
                                         ("--batch_train", "8")])
def test_adding_experts_of_other_settings_is_refused(flag, value, tiny_args, tmp_path, capsys):
    assert run_cli(buffer.main, _buffer(tiny_args, tmp_path, "--num_experts", "1"), capsys)[0] == 0
    code, err = run_cli(buffer.main, _buffer(tiny_args, tmp_path, flag, value), capsys)
    _one_line(code, err, flag.lstrip("-"), "another --buffer_path")
    assert [n for n, _, _ in BufferDir(_buffer_dir(tmp_path, tiny_args)).pairs()] == [0]


def test_a_diverging_expert_is_not_saved(tiny_args, tmp_path, capsys):
    code, err = run_cli(buffer.main, _buffer(tiny_args, tmp_path, "--lr_teacher_img", "1e30"), capsys)
    _one_line(code, err, "expert 0 diverged", "--lr_teacher_img")
    out = _buffer_dir(tmp_path, tiny_args)
    assert not [f for f in os.listdir(out) if f.endswith(".pt") or f.startswith(".claim")]


def test_a_corrupt_expert_file_is_not_reported_complete(tiny_args, tmp_path, capsys):
    assert run_cli(buffer.main, _buffer(tiny_args, tmp_path), capsys)[0] == 0
    out = _buffer_dir(tmp_path, tiny_args)
    with open(os.path.join(out, "txt_replay_buffer_1.pt"), "r+b") as f:
        f.truncate(100)
    code, err = run_cli(buffer.main, _buffer(tiny_args, tmp_path), capsys)
    _one_line(code, err, "txt_replay_buffer_1.pt")


# --- distill_ptm-st.py: finite saves, every buffer file checked, a failed start blocks nothing, resume -------



def _run_files(run_dir):
    return sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []


def _copy_buffer(src, dst, edit=None):
    shutil.copytree(src, dst)
    if edit:
        for name in os.listdir(dst):
            if name.endswith(".pt"):
                path = os.path.join(dst, name)
                torch.save(edit(name, torch.load(path, weights_only=True)), path)
    return str(dst)


def test_divergence_after_the_update_saves_nothing_non_finite(tiny_args, expert_dir, tmp_path, capsys):
    args = distill_args(tiny_args, expert_dir, tmp_path, "big", "--Iteration", "1", "1", "--lr_sim", "1e38",
                         "--num_eval", "0")
    code, err = run_cli(distill.main, args, capsys)
    _one_line(code, err, "non-finite after its update", "optimisation")
    run_dir = tmp_path / "synthetic" / "big"
    assert not (run_dir / "distilled_1_final.pt").exists()
    for name in (f for f in _run_files(run_dir) if f.endswith(".pt")):
        obj = torch.load(run_dir / name, weights_only=True)
        tensors = obj["syn"]["tensors"] if name == "checkpoint.pt" else [obj["image"], obj["similarity_mat"]]
        assert all(torch.isfinite(t).all() for t in tensors), name
    named = err.split("the last good save is ")[1].split(" ")[0]
    assert named == "none" or os.path.isfile(named)


def test_the_error_names_a_save_that_really_is_good(tiny_args, expert_dir, tmp_path, capsys, monkeypatch):
    from distill_utils.method.learnable_set import SyntheticSet
    real_step, calls = SyntheticSet.step, {"n": 0}

    def poisoning_step(self):
        real_step(self)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                self.image[0, 0, 0, 0] = float("nan")

    monkeypatch.setattr(SyntheticSet, "step", poisoning_step)
    args = distill_args(tiny_args, expert_dir, tmp_path, "nan2", "--eval_it", "1", "--num_eval", "0")
    code, err = run_cli(distill.main, args, capsys)
    _one_line(code, err, "iteration 2", "distilled_0_1.pt")
    run_dir = tmp_path / "synthetic" / "nan2"
    assert not (run_dir / "distilled_0_2.pt").exists()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 1 and all(torch.isfinite(t).all() for t in ckpt["syn"]["tensors"])
    assert torch.isfinite(torch.load(run_dir / "distilled_0_1.pt", weights_only=True)["image"]).all()


@pytest.mark.parametrize("case", ["short", "shapes", "nan"])
def test_every_buffer_file_is_checked_before_the_run_starts(case, tiny_args, expert_dir, tmp_path, capsys):
    def edit(name, experts):
        if "_1.pt" not in name:
            return experts
        if case == "short":
            return [e[:1] for e in experts]
        if case == "shapes":
            return [[[p[..., :1] for p in stamp] for stamp in e] for e in experts]
        return [[[p.fill_(float("nan")) for p in stamp] for stamp in e] for e in experts]

    bad = _copy_buffer(expert_dir, tmp_path / "bad", edit)
    args = distill_args(tiny_args, expert_dir, tmp_path, "x", "--num_eval", "0")
    args = with_flag(args, "--buffer_path", expert_dir, bad)  # phase 1 reads the damaged copy
    code, err = run_cli(distill.main, args, capsys)
    needle = {"short": "needs timestamp 2", "shapes": "do not match the network", "nan": "buffer is damaged"}[case]
    _one_line(code, err, needle, "replay_buffer_1.pt")
    if case != "nan":  # refused before anything is written: the corrected command starts cleanly
        assert _run_files(tmp_path / "synthetic" / "x") == []
        assert run_cli(distill.main, distill_args(tiny_args, expert_dir, tmp_path, "x", "--num_eval", "0"),
                       capsys)[0] == 0


def test_half_precision_buffers_are_accepted(tiny_args, expert_dir, tmp_path, capsys):
    half = _copy_buffer(expert_dir, tmp_path / "half", lambda name, ex: [[[p.half() for p in s] for s in e] for e in ex])
    args = distill_args(tiny_args, expert_dir, tmp_path, "half", "--num_eval", "0", "--Iteration", "1", "1")
    args = with_flag(args, "--buffer_path", half, half)
    code, err = run_cli(distill.main, args, capsys)
    assert code == 0, err


@pytest.mark.parametrize("flags, needle", [
    (["--num_queries", "6", "1000"], "only 80 pairs"),
    (["--buffer_path", "nope", "nope"], "--buffer_path nope"),
])
def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_command(flags, needle, tiny_args, expert_dir,
                                                                         tmp_path, capsys):
    args = distill_args(tiny_args, expert_dir, tmp_path, "typo", "--num_eval", "0")
    _one_line(*run_cli(distill.main, with_flag(args, *flags), capsys), needle)
    assert _run_files(tmp_path / "synthetic" / "typo") == []
    resume = ["--resume"] if "nope" in flags else []  # a start that never began is no run to continue: it starts
    assert run_cli(distill.main, args + resume, capsys)[0] == 0


def _killed_run(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, at_step, name):
    from distill_utils.method.learnable_set import SyntheticSet
    real_step, calls = SyntheticSet.step, {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == at_step:
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(SyntheticSet, "step", dying_step)
    args = distill_args(tiny_args, expert_dir, tmp_path, name, "--num_eval", "0", "--checkpoint_it", "2",
                         "--eval_it", "3")
    assert run_cli(distill.main, args, capsys)[0] == 130
    monkeypatch.setattr(SyntheticSet, "step", real_step)
    return args, tmp_path / "synthetic" / name


@pytest.mark.parametrize("at_step, torn", [(2, False), (4, True)])
def test_resume_tolerates_what_a_kill_leaves(at_step, torn, tiny_args, expert_dir, tmp_path, capsys, monkeypatch):
    """Killed before the first checkpoint (no duplicates after resume) or with a torn last metrics line."""
    args, run_dir = _killed_run(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, at_step, "k")
    if torn:
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write('{"phase": 1, "iter')
    code, err = run_cli(distill.main, args + ["--resume"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [(r["phase"], r["iteration"]) for r in records if "loss" in r] == [(p, i) for p in (0, 1) for i in (1, 2, 3)]


@pytest.mark.parametrize("content", [{"phase": 0}, [1, 2], {"phase": "x", "iteration": 1, "syn": {}, "experts": {},
                                                             "generator": torch.zeros(1), "rng": torch.zeros(1)}])
def test_a_foreign_checkpoint_is_one_line(content, tiny_args, expert_dir, tmp_path, capsys, monkeypatch):
    args, run_dir = _killed_run(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, 4, "f")
    torch.save(content, run_dir / "checkpoint.pt")
    _one_line(*run_cli(distill.main, args + ["--resume"], capsys), "checkpoint.pt")


# --- evaluate.py, data and files: one line for every malformed input ----------------------------------------



def _lowrank_bad(path):
    write_published(path, 4, 0, lowrank=True)
    obj = torch.load(path, weights_only=True)
    obj["similarity_params"][1] = torch.randn(3, 2)
    torch.save(obj, path)


@pytest.mark.parametrize("case, needle", [
    ("config", "'config' must be a dict"),
    ("vector_lr", "'syn_lr_img' must be one number"),
    ("lowrank", "'similarity_params'"),
    ("zero_pairs", "N >= 1"),
    ("other_weights", "other text-encoder weights"),
])
def test_malformed_distilled_files_are_one_line(case, needle, tiny_args, tmp_path, capsys):
    path = tmp_path / f"{case}.pt"
    if case == "config":
        write_published(path, 4, 0, config=[1, 2])
    elif case == "vector_lr":
        write_published(path, 4, 0, syn_lr_img=torch.ones(3))
    elif case == "lowrank":
        _lowrank_bad(path)
    elif case == "zero_pairs":
        write_published(path, 4, 0, image=torch.zeros(0, 3, 16, 16), text=torch.zeros(0, TEXT_DIM),
                        similarity_mat=torch.zeros(0, 0), similarity_params=[])
    else:
        our_file(path, tiny_args, text_encoder_weights="0123456789abcdef")
    _one_line(*run_cli(evaluate.main, tiny_args + FAST + ["--ckpt_path", str(path)], capsys), str(path), needle)


def test_out_is_checked_before_the_evaluation(tiny_args, tmp_path, capsys):
    code, err = run_cli(evaluate.main, tiny_args + FAST + ["--baseline", "random", "--num_pairs", "4",
                                                           "--out", str(tmp_path)], capsys)
    _one_line(code, err, "--out", "is a directory")


def test_a_full_disk_anywhere_is_one_line(capsys):
    from common.errors import cli_main

    @cli_main
    def writes():
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl")

    _one_line(*run_cli(lambda argv: writes(), [], capsys), "runs/x/metrics.jsonl", "No space left")


def test_a_manifest_that_is_not_an_object_is_one_line(tiny_args, tmp_path, capsys):
    out = _buffer_dir(tmp_path, tiny_args)
    os.makedirs(out)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        f.write("[1, 2]")
    (tmp_path / out / "img_replay_buffer_0.pt").write_bytes(b"")
    (tmp_path / out / "txt_replay_buffer_0.pt").write_bytes(b"")
    _one_line(*run_cli(buffer.main, _buffer(tiny_args, tmp_path), capsys), "manifest.json", "JSON object")


def test_a_text_encoder_of_the_same_name_with_other_weights_is_refused(tiny_args, expert_dir, tiny_text_encoder,
                                                                       tmp_path, capsys):
    from transformers import BertModel
    other = tmp_path / "elsewhere" / os.path.basename(tiny_text_encoder)
    shutil.copytree(tiny_text_encoder, other)
    model = BertModel.from_pretrained(tiny_text_encoder)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(other)
    args = distill_args(tiny_args, expert_dir, tmp_path, "enc", "--num_eval", "0")
    args = with_flag(args, "--text_encoder", str(other))
    _one_line(*run_cli(distill.main, args, capsys), "text_encoder_weights")


@pytest.fixture
def images_dataset(tmp_path):
    from PIL import Image
    root = tmp_path / "imgs"
    root.mkdir()
    for k in range(4):
        Image.new("RGB", (20, 12), (40 * k, 0, 0)).save(root / f"{k}.png")
    (root / "2.png").write_bytes(b"\x89PNG broken")
    return [str(root / f"{k}.png") for k in range(4)]


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_bad_image_under_workers_is_one_line_naming_it(images_dataset, in_memory):
    from distill_utils.datasets.images import ImageStore
    with pytest.raises(UserError) as err:
        store = ImageStore(images_dataset, 8, in_memory=in_memory, workers=2)
        list(store.batches(torch.arange(4), 2))
    assert str(err.value).startswith("image file") and "2.png" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_decompression_bomb_is_one_line(images_dataset, monkeypatch):
    from PIL import Image
    from distill_utils.datasets.images import read_image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(UserError, match="0.png is too large"):
        read_image(images_dataset[0], 8)


def test_empty_captions_are_refused(tmp_path):
    from distill_utils.datasets.annotations import load_train_pairs
    (tmp_path / "flickr30k_train.json").write_text(json.dumps([{"image": "a.jpg", "caption": "a dog"},
                                                               {"image": "b.jpg", "caption": " ..! "}]))
    with pytest.raises(UserError, match="entry 1 has an empty caption"):
        load_train_pairs("flickr", str(tmp_path), str(tmp_path))


@pytest.mark.parametrize("case", ["phase", "iteration", "tensors", "optimizer"])
def test_a_checkpoint_that_does_not_fit_the_run_is_one_line(case, tiny_args, expert_dir, tmp_path, capsys,
                                                             monkeypatch):
    args, run_dir = _killed_run(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, 4, "c")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    if case == "phase":
        ckpt["phase"] = 7
    elif case == "iteration":
        ckpt["iteration"] = 99
    elif case == "tensors":
        ckpt["syn"]["tensors"] = ckpt["syn"]["tensors"][:2]
    else:
        ckpt["syn"]["optimizer"] = {"x": 1}
    torch.save(ckpt, run_dir / "checkpoint.pt")
    _one_line(*run_cli(distill.main, args + ["--resume"], capsys), "checkpoint.pt", "restart the run")


def test_claims_work_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    first = claims.try_claim(str(tmp_path), 0)
    assert first is not None and claims.try_claim(str(tmp_path), 0) is None
    assert claims.read_claim(first.path)["pid"] == os.getpid()
    first.release()


def test_a_non_finite_buffer_is_neither_convexified_nor_embedded(tiny_args, tmp_path, capsys):
    normal = tmp_path / "normal"
    write_buffer(str(normal), pairs=1, experts=1, timestamps=4)
    path = normal / "img_replay_buffer_0.pt"
    experts = torch.load(path, weights_only=True)
    experts[0][2][0][0] = float("nan")  # the window end
    torch.save(experts, path)
    _one_line(*run_cli(convexify.main, ["--start", "0", "--end", "3", "--normal_dir", str(normal)], capsys),
              "img_replay_buffer_0.pt", "NaN")
    assert sorted(os.listdir(tmp_path)) == ["normal"]


def test_resume_refuses_a_buffer_that_changed_since_the_checkpoint(tiny_args, expert_dir, tmp_path, capsys,
                                                                   monkeypatch):
    grown = _copy_buffer(expert_dir, tmp_path / "grown")
    args, run_dir = _killed_run(tiny_args, expert_dir, tmp_path, capsys, monkeypatch, 4, "g")
    args = [grown if a == expert_dir else a for a in args]
    config = json.load(open(run_dir / "config.json"))
    config["buffer_path"] = [grown, grown]
    json.dump(config, open(run_dir / "config.json", "w"))
    for side in ("img", "txt"):
        shutil.copy(os.path.join(grown, f"{side}_replay_buffer_1.pt"), os.path.join(grown, f"{side}_replay_buffer_2.pt"))
    _one_line(*run_cli(distill.main, args + ["--resume"], capsys), "--resume", "grown", "as it was")
