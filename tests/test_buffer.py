import json
import os

import torch

import buffer
from distill_utils.files.buffers import BufferDir
from tests.helpers import flag_value, run_cli


def _buffer_args(tiny_args, root, *extra):
    return [*tiny_args, "--buffer_path", str(root), "--num_experts", "2", "--train_epochs", "2", "--image_trainable",
            "--batch_train", "16", "--eval_freq", "1", *extra]


def _out_dir(root, tiny_args):
    text_encoder = flag_value(tiny_args, "--text_encoder")
    return BufferDir.of_network(str(root), "synthetic", "convnet_w8_d2_e32", text_encoder, "InfoNCE").path


def test_buffer_run_writes_published_compatible_files(tiny_args, tmp_path, capsys):
    code, err = run_cli(buffer.main, _buffer_args(tiny_args, tmp_path), capsys)
    assert code == 0, err
    out_dir = _out_dir(tmp_path, tiny_args)
    manifest = json.load(open(os.path.join(out_dir, "manifest.json")))
    pairs = BufferDir(out_dir).pairs()
    assert [n for n, _, _ in pairs] == [0, 1]
    for _, img_path, txt_path in pairs:
        for path, side in ((img_path, "img_params"), (txt_path, "txt_params")):
            experts = torch.load(path, weights_only=True)
            assert len(experts) == 1 and len(experts[0]) == 3  # [expert][timestamp][param], train_epochs + 1
            for stamp in experts[0]:
                assert [list(p.shape) for p in stamp] == [s for _, s in manifest[side]]
            assert not torch.equal(experts[0][0][0], experts[0][-1][0])  # it trained
    img0, img1 = (torch.load(p, weights_only=True)[0][0][0] for _, p, _ in pairs)
    assert not torch.equal(img0, img1)  # each expert from a fresh initialisation
    assert not [f for f in os.listdir(out_dir) if f.startswith(".")]  # no claims or temporary files left
    metrics = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    assert {"img_r1", "txt_r10", "r_mean"} <= metrics[-1].keys()


def test_rerun_trains_only_missing_experts_and_mismatch_is_refused(tiny_args, tmp_path, capsys):
    assert run_cli(buffer.main, _buffer_args(tiny_args, tmp_path), capsys)[0] == 0
    out_dir = _out_dir(tmp_path, tiny_args)
    before = os.path.getmtime(os.path.join(out_dir, "img_replay_buffer_0.pt"))
    os.remove(os.path.join(out_dir, "img_replay_buffer_1.pt"))  # as if killed before expert 1 was written
    os.remove(os.path.join(out_dir, "txt_replay_buffer_1.pt"))
    assert run_cli(buffer.main, _buffer_args(tiny_args, tmp_path), capsys)[0] == 0
    assert os.path.getmtime(os.path.join(out_dir, "img_replay_buffer_0.pt")) == before
    assert len(BufferDir(out_dir).pairs()) == 2
    code, err = run_cli(buffer.main, _buffer_args(tiny_args, tmp_path, "--num_experts", "3", "--train_epochs", "3"), capsys)
    assert code == 2 and "train_epochs" in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_exit_with_one_line(tiny_args, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for extra, needle in ((["--buffer_path", str(blocker)], "--buffer_path"),
                          (["--image_encoder", "no_such_net"], "--image_encoder"),
                          (["--num_experts", "0"], "--num_experts"),
                          (["--text_encoder", str(tmp_path / "nope")], "--text_encoder")):
        code, err = run_cli(buffer.main, _buffer_args(tiny_args, tmp_path / "buf") + extra, capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (extra, err)
