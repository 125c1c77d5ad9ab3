"""Eval modes and the authors' protocol against schedules written out by hand."""
import json

import pytest
import torch

import evaluate
from distill_utils.config import EvalProtocol
from distill_utils.evaluation import training as evaluation
from distill_utils.evaluation.sources import SubsetSource, arrange
from distill_utils.evaluation.training import PlannedEpoch, evaluate_sequence, training_plan
from tests.helpers import FAST, random_subset, run_cli


def _source(n, seed, lr, name):
    subset = random_subset(n, seed)
    subset.student_lr_img, subset.student_lr_txt = lr, 2 * lr
    return SubsetSource(subset, name)


def _lrs(plan):
    return [lr for p in plan for lr in (p.lr_img, p.lr_txt)]


def test_our_plan_gives_each_phase_a_fresh_sgd_its_lrs_and_its_own_drop():
    a, b = _source(4, 0, 0.5, "A"), _source(6, 1, 0.2, "B")
    b.epochs = 3
    plan = training_plan([a, b], EvalProtocol(epoch_eval_train=4, eval_points=2))
    want = [PlannedEpoch(0, 1, 0.5, 1.0, True, False), PlannedEpoch(0, 2, 0.5, 1.0, False, False),
            PlannedEpoch(0, 3, 0.05, 0.1, False, False), PlannedEpoch(0, 4, 0.05, 0.1, False, True),
            PlannedEpoch(1, 5, 0.2, 0.4, True, False), PlannedEpoch(1, 6, 0.2, 0.4, False, False),
            PlannedEpoch(1, 7, 0.02, 0.04, False, True)]
    assert [(p.phase, p.epoch, p.new_optimizer, p.evaluate) for p in plan] == \
        [(p.phase, p.epoch, p.new_optimizer, p.evaluate) for p in want]
    assert _lrs(plan) == pytest.approx(_lrs(want))


def test_authors_plan_one_sgd_last_lrs_one_drop_over_the_sequence_best_of_all_points():
    a, b = _source(4, 0, 0.5, "A"), _source(6, 1, 0.2, "B")
    plan = training_plan([a, b], EvalProtocol(epoch_eval_train=20, protocol="authors"))
    assert len(plan) == 42  # 21 epochs per subset
    assert [p.phase for p in plan] == [0] * 21 + [1] * 21
    assert [p.epoch for p in plan] == list(range(1, 43))
    assert [p.new_optimizer for p in plan] == [True] + [False] * 41  # momentum kept across phases
    # milestone 20 // 2 + 1 = 11: the first 11 epochs at B's lrs, every later one (both phases) x0.1
    assert _lrs(plan) == pytest.approx([0.2, 0.4] * 11 + [0.02, 0.04] * 31)
    # scored after local epochs 0, 2, ..., 20 of each subset
    assert [p.epoch for p in plan if p.evaluate] == [1 + 2 * k for k in range(11)] + [22 + 2 * k for k in range(11)]
    no_drop = training_plan([a, b], EvalProtocol(epoch_eval_train=20, protocol="authors", lr_decay=False))
    assert {p.lr_img for p in no_drop} == {0.2}


def test_authors_batches_are_fresh_permutations_cut_to_the_batch_size():
    source = _source(5, 2, 0.1, "A")
    batches = list(source.authors_batches(2, torch.Generator().manual_seed(7), "cpu"))
    g = torch.Generator().manual_seed(7)
    assert len(batches) == 3  # ceil(5 / 2)
    for x, y, s in batches:
        idx = torch.randperm(5, generator=g)[:2]
        assert torch.equal(x, source.image[idx]) and torch.equal(y, source.text[idx])
        assert torch.equal(s, source.similarity[idx][:, idx])


def test_cumulative_and_union_join_subsets_block_diagonally_with_the_last_lrs():
    a, b, c = _source(2, 0, 0.5, "A"), _source(3, 1, 0.2, "B"), _source(1, 2, 0.7, "C")
    assert arrange([a, b, c], "sequential") == [a, b, c]
    first, ab, abc = arrange([a, b, c], "cumulative")
    (union,) = arrange([a, b, c], "union")
    assert first is a and ab.name == "A+B" and len(abc) == len(union) == 6
    want = torch.zeros(6, 6)
    want[:2, :2], want[2:5, 2:5], want[5:, 5:] = a.similarity, b.similarity, c.similarity
    assert torch.equal(union.similarity, want) and torch.equal(ab.similarity, want[:5, :5])
    assert torch.equal(union.image, torch.cat([a.image, b.image, c.image]))
    assert torch.equal(ab.text, torch.cat([a.text, b.text]))
    assert (ab.lr_img, ab.lr_txt, union.lr_img) == (0.2, 0.4, 0.7)


@pytest.mark.parametrize("protocol", ["ours", "authors"])
def test_students_train_as_planned(protocol, factory, fake_test, monkeypatch):  # noqa: F811
    seen = []
    real = evaluation.train_epoch

    def recording(student, img, txt, opt, batches):
        seen.append((id(opt), opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        return real(student, img, txt, opt, batches)

    monkeypatch.setattr(evaluation, "train_epoch", recording)
    a, b = _source(4, 0, 0.5, "A"), _source(6, 1, 0.2, "B")
    proto = EvalProtocol(num_eval=1, epoch_eval_train=4, batch_train=4, eval_points=2, protocol=protocol,
                         eval_mode="cumulative")
    report = evaluate_sequence([a, b], factory, fake_test, proto, 0, "cpu")
    plan = training_plan(arrange([a, b], "cumulative"), proto)
    assert [lr for _, lr_i, lr_t in seen for lr in (lr_i, lr_t)] == pytest.approx(_lrs(plan))
    assert len({opt for opt, _, _ in seen}) == (1 if protocol == "authors" else 2)
    assert report["phase_sequence"] == ["A", "A+B"] and [p["pairs"] for p in report["phases"]] == [4, 10]
    assert report["eval_epochs"] == [p.epoch for p in plan if p.evaluate]
    assert report["reported"] == ("best" if protocol == "authors" else "final")
    run = report["runs"][0]
    assert run["best"]["r_mean"] == max(p["test"]["r_mean"] for p in run["points"])


def test_evaluate_cli_modes_and_protocol(tiny_args, tmp_path, capsys):
    files = []
    for k, n in enumerate((4, 5)):
        subset = random_subset(n, k, size=16)
        path = tmp_path / f"d{k}.pt"
        torch.save({"image": subset.image, "text": subset.text, "similarity_mat": subset.similarity,
                    "syn_lr_img": 0.05, "syn_lr_txt": 0.05}, path)
        files.append(str(path))
    out = tmp_path / "r.json"
    code, err = run_cli(evaluate.main, [*tiny_args, *FAST, "--ckpt_path", *files, "--eval_mode", "union",
                                        "--protocol", "authors", "--out", str(out)], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())["results"]["distilled"]
    assert report["reported"] == "best" and [p["pairs"] for p in report["phases"]] == [9]
    assert report["eval_epochs"] == [1, 2, 3, 4]  # epoch_eval_train 3: 4 epochs, scored after each
    code, err = run_cli(evaluate.main, [*tiny_args, *FAST, "--ckpt_path", *files, "--eval_mode", "stacked"], capsys)
    assert code == 2 and "--eval_mode" in err
