"""prepare_data.py buffers: the published experts and annotations, from a Hugging Face cache laid out as
huggingface_hub lays it out (the tests never touch the network: HF_HUB_OFFLINE=1, see conftest)."""
import hashlib
import json
import os

import pytest

import prepare_data
from distill_utils.files import buffers
from distill_utils.files.buffers import BufferDir
from distill_utils.files.published import REPO_ID
from networks.dual_encoder import NetConfig, NetworkFactory
from tests import distributed as forms
from tests.helpers import TEXT_DIM, run_cli

ENCODER, SIZE, EXPERTS, STAMPS = "convnet_w8_d2_e32", 16, 2, 3


def published_files(prefix, text_dim=TEXT_DIM):
    """{repository path: bytes}: two expert pairs of the tiny network and the Flickr annotation files."""
    net = NetworkFactory(NetConfig(ENCODER, SIZE, text_dim, True)).build(seed=0)
    files = {}
    for n in range(2):
        files[f"{prefix}/img_replay_buffer_{n}.pt"] = forms.expert_file_bytes(net.img_layout.shapes, EXPERTS, STAMPS, n)
        files[f"{prefix}/txt_replay_buffer_{n}.pt"] = forms.expert_file_bytes(net.txt_layout.shapes, EXPERTS, STAMPS, 9 + n)
    train = [{"image": f"flickr30k-images/{k}.jpg", "caption": forms.caption(k, 0)} for k in range(6)]
    test = [{"image": f"flickr30k-images/{k}.jpg", "caption": [forms.caption(k, 1), forms.caption(k, 2)]} for k in range(6, 8)]
    for name, entries in (("flickr30k_train.json", train), ("flickr30k_val.json", test), ("flickr30k_test.json", test)):
        files[f"Annotation/{name}"] = json.dumps(entries).encode()
    return files


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_text_encoder):
    """A hub cache with the published files of the tiny network; returns (cache, files, argv of the command)."""
    prefix = f"flickr/{ENCODER}_{os.path.basename(tiny_text_encoder)}/InfoNCE/normal"
    files = published_files(prefix)
    cache = str(tmp_path / "hub")
    forms.hub_cache(cache, REPO_ID, files)
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    argv = ["buffers", "--dataset", "flickr", "--buffer_path", str(tmp_path / "buffer"), "--ann_root",
            str(tmp_path / "ann"), "--image_encoder", ENCODER, "--text_encoder", tiny_text_encoder,
            "--image_size", str(SIZE)]
    return cache, files, argv, prefix


def test_published_buffers_and_annotations_come_from_the_hub_cache_checked_and_recorded(hub, tmp_path, capsys):
    cache, files, argv, prefix = hub
    code, err = run_cli(prepare_data.main, argv, capsys)
    assert code == 0, err
    normal = str(tmp_path / "buffer" / prefix)
    manifest = json.load(open(os.path.join(normal, "manifest.json")))
    for name, record in manifest["files"].items():
        data = files[f"{prefix}/{name}"]
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert os.path.realpath(os.path.join(normal, name)).startswith(os.path.realpath(cache))  # linked, not copied
    assert len(manifest["files"]) == 4 and manifest["timestamps"] == STAMPS
    assert manifest["published"]["revision"] == "0123456789abcdef0123456789abcdef01234567"
    assert open(tmp_path / "ann" / "flickr30k_test.json", "rb").read() == files["Annotation/flickr30k_test.json"]
    net = NetworkFactory(NetConfig(ENCODER, SIZE, TEXT_DIM, True)).build(seed=0)
    assert BufferDir(normal).check_network(net)[0] == STAMPS  # what distill_ptm-st.py checks reads it
    code, err = run_cli(prepare_data.main, argv, capsys)  # again: the files in place are checked, not fetched
    assert code == 0, err


def test_copies_with_copy(hub, tmp_path, capsys):
    _, _, argv, prefix = hub
    assert run_cli(prepare_data.main, [*argv, "--copy"], capsys)[0] == 0
    normal = tmp_path / "buffer" / prefix
    assert not any(os.path.islink(normal / n) for n in os.listdir(normal))


def test_offline_without_the_files_says_in_one_line_what_to_download_and_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    code, err = run_cli(prepare_data.main, ["buffers", "--dataset", "coco", "--buffer_path", str(tmp_path / "b"),
                                            "--ann_root", str(tmp_path / "a")], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "HF_HUB_OFFLINE" in err and f"hf download {REPO_ID} --repo-type dataset --include 'coco/nfnet_bert/InfoNCE/normal/*'" in err
    assert str(tmp_path / "b" / "coco" / "nfnet_bert" / "InfoNCE" / "normal") in err
    assert not (tmp_path / "b" / "coco").exists() or not os.listdir(tmp_path / "b" / "coco" / "nfnet_bert" / "InfoNCE")


def test_buffers_of_another_network_are_refused_and_not_placed(hub, tmp_path, capsys):
    cache, _, argv, prefix = hub
    bad = published_files(prefix, text_dim=TEXT_DIM)
    bad[f"{prefix}/img_replay_buffer_1.pt"] = forms.expert_file_bytes([(3, 2)], EXPERTS, STAMPS, 5)
    forms.hub_cache(str(tmp_path / "hub2"), REPO_ID, bad)
    os.environ["HF_HUB_CACHE"] = str(tmp_path / "hub2")  # monkeypatch restores it
    code, err = run_cli(prepare_data.main, argv, capsys)
    assert code == 2 and "img_replay_buffer_1.pt" in err and "do not match the network" in err
    assert not (tmp_path / "buffer" / prefix).exists()


def test_a_damaged_download_is_refused(hub, tmp_path, capsys):
    cache, files, argv, prefix = hub
    blob = os.path.join(cache, f"datasets--{REPO_ID.replace('/', '--')}", "blobs",
                        hashlib.sha256(files[f"{prefix}/txt_replay_buffer_0.pt"]).hexdigest())
    with open(blob, "wb") as f:  # a readable buffer file, but not the one the hub named this blob after
        f.write(files[f"{prefix}/txt_replay_buffer_1.pt"])
    code, err = run_cli(prepare_data.main, argv, capsys)
    assert code == 2 and "txt_replay_buffer_0.pt" in err and "damaged download" in err


def test_own_experts_are_not_taken_for_published_ones(hub, tmp_path, capsys):
    _, _, argv, prefix = hub
    normal = tmp_path / "buffer" / prefix
    normal.mkdir(parents=True)
    (normal / buffers.MANIFEST).write_text(json.dumps({"format": buffers.FORMAT, "kind": "normal"}))
    code, err = run_cli(prepare_data.main, argv, capsys)
    assert code == 2 and "trained here" in err
