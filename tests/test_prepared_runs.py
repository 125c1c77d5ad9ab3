"""A prepared dataset root runs through the scripts (an expert epoch, a two-iteration distillation), and the decoded
image cache gives the scripts exactly the pixels decoding gives."""
import os
import time

import torch

import buffer
import prepare_data
from distill_utils.datasets.annotations import load_retrieval_split, load_train_pairs
from distill_utils.datasets.image_cache import ImageCache
from distill_utils.datasets.images import ImageStore, read_image
from distill_utils.files.buffers import BufferDir
from tests import distributed as forms
from tests.helpers import distill, run_cli


def _prepare(argv, capsys):
    code, err = run_cli(prepare_data.main, argv, capsys)
    assert code == 0, err


def test_the_cache_holds_the_decoded_pixels_and_image_store_reads_them_bit_for_bit(tmp_path, capsys):
    shards = forms.webdataset_shards(str(tmp_path / "cc3m"), shards=2, per_shard=10)
    root = str(tmp_path / "root")
    _prepare(["cc3m", "--shards", *shards, "--out", root, "--cache", "16"], capsys)
    cache = ImageCache.find(root, 16)
    pairs = load_train_pairs("cc3m", root, root)
    rows = cache.rows(pairs.image_paths)
    assert torch.equal(cache.read(rows), torch.stack([read_image(p, 16) for p in pairs.image_paths]))
    plain = ImageStore(pairs.image_paths, 16, in_memory=True)
    idx = torch.tensor([5, 0, 17, 3])
    for in_memory in (True, False):
        cached = ImageStore(pairs.image_paths, 16, in_memory=in_memory, cache=cache)
        assert torch.equal(cached.get(idx), plain.get(idx))
        assert [torch.equal(a, b) for (a, _), (b, _) in zip(cached.batches(idx, 3), plain.batches(idx, 3))] == [True, True]
    assert ImageCache.find(root, 32) is None  # another size: none
    test = load_retrieval_split("cc3m", "test", root, root)
    assert cache.rows(test.image_paths + [os.path.join(root, "elsewhere.jpg")]) is None  # not every file cached


def test_a_cache_whose_images_changed_is_not_used_and_the_cache_command_rebuilds_it(tmp_path, capsys):
    split_file, images = forms.karpathy_flickr(str(tmp_path / "in"), n=20)
    root = str(tmp_path / "root")
    _prepare(["flickr", "--karpathy", split_file, "--images", images, "--out", root, "--cache", "16"], capsys)
    changed = os.path.join(images, "1000.jpg")  # the first image: always probed
    with open(changed, "wb") as f:
        f.write(forms.jpeg_bytes(7, size=(44, 30)))
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert ImageCache.find(root, 16) is None and "not used" in capsys.readouterr().out
    _prepare(["cache", "--dataset", "flickr", "--image_root", root, "--ann_root", root, "--image_size", "16"], capsys)
    cache = ImageCache.find(root, 16)
    assert torch.equal(cache.read(cache.rows([os.path.join(root, "flickr30k-images", "1000.jpg")]))[0],
                       read_image(changed, 16))


def test_prepared_data_runs_an_expert_epoch_and_a_two_iteration_distillation(tmp_path, capsys, tiny_text_encoder):
    split_file, images = forms.karpathy_flickr(str(tmp_path / "in"), n=24)
    root = str(tmp_path / "root")
    _prepare(["flickr", "--karpathy", split_file, "--images", images, "--out", root, "--cache", "16"], capsys)
    data = ["--dataset", "flickr", "--image_root", root, "--ann_root", root, "--text_encoder", tiny_text_encoder,
            "--feature_cache", str(tmp_path / "cache"), "--image_encoder", "convnet_w8_d2_e32", "--image_size", "16",
            "--image_trainable", "--device", "cpu"]
    code, err = run_cli(buffer.main, [*data, "--buffer_path", str(tmp_path / "buffer"), "--num_experts", "1",
                                      "--train_epochs", "1", "--batch_train", "16", "--eval_freq", "1"], capsys)
    assert code == 0, err
    normal = BufferDir.of_network(str(tmp_path / "buffer"), "flickr", "convnet_w8_d2_e32", tiny_text_encoder,
                                  "InfoNCE").path
    code, err = run_cli(distill.main, [*data, "--buffer_path", normal, "--min_start_epoch", "0", "--max_start_epoch",
                                       "1", "--num_queries", "8", "--Iteration", "2", "--subset_num", "1",
                                       "--syn_steps", "2", "--mini_batch_size", "4", "--num_eval", "0",
                                       "--runs_dir", str(tmp_path / "runs"), "--name", "real"], capsys)
    assert code == 0, err
    saved = torch.load(tmp_path / "runs" / "flickr" / "real" / "distilled_0_final.pt", weights_only=True)
    assert saved["image"].shape == (8, 3, 16, 16) and torch.isfinite(saved["image"]).all()
