"""Evaluation (SPEC section 6): phased student training, baselines, published files, refusals."""
import json

import pytest
import torch

import buffer
import evaluate
from distill_utils.evaluation.coresets import nearest_distinct
from distill_utils.config import EvalProtocol
from distill_utils.evaluation.sources import SubsetSource
from distill_utils.evaluation.summary import format_table
from distill_utils.evaluation.training import eval_epochs, evaluate_sequence
from distill_utils.files.run_log import RunLog
from tests.helpers import FAST, TEXT_DIM, our_file, random_subset, run_cli, with_flag, write_published


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second thread only adds synchronisation, which stalls badly on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RecordingSource(SubsetSource):
    """A SubsetSource that notes, in a shared list, every epoch it serves."""

    def __init__(self, subset, name, journal):
        super().__init__(subset, name)
        self.journal = journal

    def batches(self, batch_size, generator, device):
        self.journal.append(self.name)
        yield from super().batches(batch_size, generator, device)


def test_phased_loop_trains_subsets_in_the_given_order(factory, fake_test, tmp_path):
    journal = []
    a = RecordingSource(random_subset(4, 0), "A", journal)
    b = RecordingSource(random_subset(6, 1), "B", journal)
    protocol = EvalProtocol(num_eval=2, epoch_eval_train=3, batch_train=4, eval_points=3)
    log = RunLog(str(tmp_path))
    rng_before = torch.get_rng_state()
    report = evaluate_sequence([a, b], factory, fake_test, protocol, seed=0, device="cpu", log=log)
    assert torch.equal(torch.get_rng_state(), rng_before)  # a periodic evaluation leaves the caller's RNG alone
    assert report["phase_sequence"] == ["A", "B"]
    assert [(p["name"], p["pairs"], p["epochs"]) for p in report["phases"]] == [("A", 4, 3), ("B", 6, 3)]
    assert journal == ["A"] * 3 + ["B"] * 3 + ["A"] * 3 + ["B"] * 3  # two runs, each A then B
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["name"] for r in logged if r["event"] == "eval_phase"] == ["A", "B", "A", "B"]
    assert report["eval_epochs"] == [2, 4, 6] and [p["phase"] for p in report["runs"][0]["points"]] == [0, 1, 1]
    assert len(report["seeds"]) == 2 and report["reported"] == "final"
    assert report["final"]["mean"]["r_mean"] == pytest.approx(
        sum(r["final"]["r_mean"] for r in report["runs"]) / 2)
    best = report["runs"][0]["best"]["r_mean"]
    assert best == max(p["test"]["r_mean"] for p in report["runs"][0]["points"])
    swapped = evaluate_sequence([b, a], factory, fake_test, protocol, seed=0, device="cpu")
    assert swapped["phase_sequence"] == ["B", "A"]
    assert swapped["runs"][0]["points"] != report["runs"][0]["points"]


def test_val_selection_and_table(factory, fake_test):
    protocol = EvalProtocol(num_eval=2, epoch_eval_train=2, batch_train=8, eval_points=2, select_on="val")
    source = SubsetSource(random_subset(8, 2))
    report = evaluate_sequence([source], factory, fake_test, protocol, 3, "cpu", val=fake_test)
    assert report["reported"] == "val_selected"
    for run in report["runs"]:
        chosen = max(run["points"], key=lambda p: p["val"]["r_mean"])
        assert run["val_epoch"] == chosen["epoch"] and run["val_selected"] == chosen["test"]
    table = format_table(report)
    assert "*val-selected" in table and "best on test" in table and "±" in table
    assert "IR@1" in table and "TR@10" in table


def test_eval_points_and_distinct_prototypes():
    assert eval_epochs(200, 5) == [40, 80, 120, 160, 200]
    assert eval_epochs(3, 5) == [1, 2, 3]
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    assert nearest_distinct(points, torch.tensor([[0.0, 0.0], [0.0, 0.0]])).tolist() == [0, 1]


def test_random_baseline_is_reproducible_per_seed(tiny_args, tmp_path, capsys):
    def run(seed, name):
        out = tmp_path / name
        code, err = run_cli(evaluate.main, tiny_args + FAST + ["--baseline", "random", "--num_pairs", "10",
                                                               "--seed", str(seed), "--out", str(out)], capsys)
        assert code == 0, err
        return json.loads(out.read_text())

    first, again, other = run(0, "a.json"), run(0, "b.json"), run(1, "c.json")
    assert first["results"]["random"]["runs"] == again["results"]["random"]["runs"]
    assert first["selections"] == again["selections"] and len(first["selections"]["random"]) == 10
    assert first["results"]["random"]["runs"] != other["results"]["random"]["runs"]
    assert first["results"]["random"]["seeds"] != other["results"]["random"]["seeds"]
    assert first["config"]["seed"] == 0 and first["config"]["num_pairs"] == 10


def test_published_files_load_and_evaluate_beside_a_same_size_baseline(tiny_args, tmp_path, capsys):
    a, b = write_published(tmp_path / "d0.pt", 5, 0), write_published(tmp_path / "d1.pt", 7, 1, lowrank=True)
    out = tmp_path / "r.json"
    code, err = run_cli(evaluate.main, tiny_args + FAST + ["--ckpt_path", a, b, "--baseline", "random",
                                                           "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    distilled, random = result["results"]["distilled"], result["results"]["random"]
    assert distilled["phase_sequence"] == ["d0.pt", "d1.pt"]
    assert [p["pairs"] for p in distilled["phases"]] == [5, 7] and random["phases"][0]["pairs"] == 12
    assert distilled["seeds"] == random["seeds"]
    assert any("no config" in note for note in result["notes"])


def test_full_baseline_trains_on_every_pair(tiny_args, tmp_path, capsys):
    out = tmp_path / "full.json"
    flags = ["--baseline", "full", "--full_epochs", "1", "--out", str(out)]
    code, err = run_cli(evaluate.main, tiny_args + FAST + flags, capsys)
    assert code == 0, err
    phases = json.loads(out.read_text())["results"]["full"]["phases"]
    assert [(p["name"], p["pairs"], p["epochs"]) for p in phases] == [("full", 80, 1)]  # 40 images x 2 captions


def test_cross_architecture_is_allowed_and_said(tiny_args, tmp_path, capsys):
    path = our_file(tmp_path / "x.pt", tiny_args, image_encoder="convnet_w16_d3")
    evaluate.main(tiny_args + FAST + ["--ckpt_path", path])
    assert "cross-architecture evaluation" in capsys.readouterr().out


def assert_one_line_error(code, err, *words):
    assert code == 2
    assert "Traceback" not in err
    lines = err.rstrip().splitlines()
    assert lines and lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1
    for word in words:
        assert word in lines[-1]


@pytest.mark.parametrize("case", ["image_size", "text_dim", "text_encoder", "dataset", "missing", "corrupt",
                                  "not_a_subset", "nan", "negative_lr"])
def test_bad_checkpoints_are_refused_in_one_line(case, tiny_args, tmp_path, capsys):
    path = tmp_path / f"{case}.pt"
    if case == "image_size":
        write_published(path, 4, 0, image=torch.randn(4, 3, 20, 20).tolist())
    elif case == "text_dim":
        write_published(path, 4, 0, text=torch.randn(4, 48))
    elif case == "text_encoder":
        our_file(path, tiny_args, text_encoder="bert")
    elif case == "dataset":
        our_file(path, tiny_args, dataset="flickr")
    elif case == "corrupt":
        path.write_bytes(b"not a torch file at all")
    elif case == "not_a_subset":
        torch.save({"image": torch.zeros(2, 3, 16, 16)}, path)
    elif case == "nan":
        write_published(path, 4, 0, text=torch.full((4, TEXT_DIM), float("nan")))
    elif case == "negative_lr":
        write_published(path, 4, 0, syn_lr_txt=-0.01)
    code, err = run_cli(evaluate.main, tiny_args + FAST + ["--ckpt_path", str(path)], capsys)
    assert_one_line_error(code, err, str(path))


@pytest.mark.parametrize("flags,words", [
    (["--baseline", "random", "--num_pairs", "1000"], ["--num_pairs 1000", "80 pairs"]),
    (["--baseline", "prototype", "--num_pairs", "5", "--buffer_path", "/nonexistent/buffer"], ["--buffer_path"]),
    (["--baseline", "random"], ["--num_pairs"]),
    (["--baseline", "full", "--num_pairs", "5"], ["--num_pairs"]),
    ([], ["nothing to evaluate"]),
    (["--baseline", "random", "--num_pairs", "0"], ["--num_pairs"]),
])
def test_bad_flags_are_refused_in_one_line(flags, words, tiny_args, capsys):
    code, err = run_cli(evaluate.main, tiny_args + FAST + flags, capsys)
    assert_one_line_error(code, err, *words)


def test_prototype_baseline_from_an_expert_buffer(tiny_args, tmp_path, capsys):
    root = tmp_path / "buffers"
    code, err = run_cli(buffer.main, tiny_args + ["--image_trainable", "--num_experts", "1", "--train_epochs", "1",
                                                  "--buffer_path", str(root)], capsys)
    assert code == 0, err
    directory = next(p.parent for p in root.rglob("img_replay_buffer_0.pt"))
    out = tmp_path / "proto.json"
    code, err = run_cli(evaluate.main, tiny_args + FAST + ["--baseline", "prototype", "--num_pairs", "6",
                                                           "--buffer_path", str(directory), "--out", str(out)], capsys)
    assert code == 0, err
    chosen = json.loads(out.read_text())["selections"]["prototype"]
    assert len(chosen) == len(set(chosen)) == 6 and all(0 <= i < 80 for i in chosen)
    # the same buffer cannot embed for another image encoder: refused, naming the buffer
    other = with_flag(tiny_args, "--image_encoder", "convnet_w8_d2_e16")
    code, err = run_cli(evaluate.main, other + FAST + ["--baseline", "prototype", "--num_pairs", "6",
                                                       "--buffer_path", str(directory)], capsys)
    assert_one_line_error(code, err, "--buffer_path")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(evaluate.main, tiny_args + FAST + ["--baseline", "prototype", "--num_pairs", "6",
                                                           "--buffer_path", str(empty)], capsys)
    assert_one_line_error(code, err, str(empty))
