"""prepare_data.py's conversions: each distributed form (Karpathy's split files, Flickr30k's .token, img2dataset's
webdataset shards and parquet files) -> a dataset root the loaders read; refusals in one line, nothing left behind."""
import json
import os
import tarfile

import pytest
import torch

import prepare_data
from distill_utils.datasets.captions import pre_caption
from distill_utils.datasets.annotations import load_retrieval_split, load_train_pairs
from distill_utils.datasets.dataset_root import HOLDOUT_FRACTION
from distill_utils.datasets.images import read_image
from tests import distributed as forms
from tests.helpers import run_cli


def prepare(argv, capsys):
    """Run prepare_data.py in-process; returns its stdout."""
    try:
        prepare_data.main(argv)
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def loaded(dataset, root):
    """(train pairs, val split, test split) as the scripts load them from the root."""
    return (load_train_pairs(dataset, root, root), load_retrieval_split(dataset, "val", root, root),
            load_retrieval_split(dataset, "test", root, root))


def leftovers(parent):
    return [n for n in os.listdir(parent) if n.startswith(".")]


def test_karpathy_flickr_keeps_its_splits_restval_as_train_and_links_the_images(tmp_path, capsys):
    split_file, images = forms.karpathy_flickr(str(tmp_path), n=20, captions=3)
    root = str(tmp_path / "root")
    out = prepare(["flickr", "--karpathy", split_file, "--images", images, "--out", root], capsys)
    train, val, test = loaded("flickr", root)
    assert len(set(train.image_paths)) == 14 and len(train) == 42  # 12 train + 2 restval images, 3 captions each
    assert len(val.image_paths) == 3 and len(test.image_paths) == 3 and test.img2txt[0] == [0, 1, 2]
    assert "flickr train: 14 images, 42 captions" in out and "flickr test: 3 images, 9 captions" in out
    assert os.path.islink(os.path.join(root, "flickr30k-images"))
    records = json.load(open(split_file))["images"]
    assert json.load(open(os.path.join(root, "flickr30k_train.json")))[0]["caption"] == records[0]["sentences"][0]["raw"]
    assert train.captions[0] == pre_caption(records[0]["sentences"][0]["raw"])  # the loaders normalise the raw one
    assert test.image_paths[0] == os.path.join(root, "flickr30k-images", records[17]["filename"])
    assert torch.equal(read_image(test.image_paths[0], 8), read_image(os.path.join(images, "1017.jpg"), 8))


def test_karpathy_coco_links_its_image_folders_or_copies_the_files(tmp_path, capsys):
    split_file, images = forms.karpathy_coco(str(tmp_path), n=20)
    for copy in ([], ["--copy"]):
        root = str(tmp_path / f"root{len(copy)}")
        prepare(["coco", "--karpathy", split_file, "--images", images, "--out", root, *copy], capsys)
        train, val, test = loaded("coco", root)
        assert len(set(train.image_paths)) == 14 and len(test.texts) == 6 + 5 + 6  # 5 or 6 sentences per image
        assert test.image_paths[0].endswith("val2014/COCO_val2014_000000000017.jpg")
        assert os.path.islink(os.path.join(root, "train2014")) != bool(copy)
        assert all(os.path.isfile(p) for p in train.image_paths)


def test_token_file_holds_out_a_fixed_seeded_share_for_val_and_test(tmp_path, capsys):
    token, images = forms.token_file(str(tmp_path), n=40, captions=5)
    out = prepare(["flickr", "--token", token, "--images", images, "--out", str(tmp_path / "a")], capsys)
    assert "held out" in out and "not comparable" in out
    train, val, test = loaded("flickr", str(tmp_path / "a"))
    n = round(40 * HOLDOUT_FRACTION)
    assert len(val.image_paths) == len(test.image_paths) == n and len(set(train.image_paths)) == 40 - 2 * n
    assert not set(val.image_paths) & set(test.image_paths) and len(test.texts) == 5 * n
    lines = open(token).read().splitlines()
    shuffled = tmp_path / "shuffled.token"
    shuffled.write_text("\n".join(lines[::-1]) + "\n")  # the same records in another order: the same split
    prepare(["flickr", "--token", str(shuffled), "--images", images, "--out", str(tmp_path / "b")], capsys)
    assert [s.image_paths for s in loaded("flickr", str(tmp_path / "b"))[1:]] == \
        [[p.replace("/a/", "/b/") for p in s.image_paths] for s in (val, test)]


def test_webdataset_shards_with_and_without_validation_shards(tmp_path, capsys):
    shards = forms.webdataset_shards(str(tmp_path / "cc3m"), shards=2, per_shard=20)
    root = str(tmp_path / "root")
    out = prepare(["cc3m", "--shards", str(tmp_path / "cc3m" / "{00000..00001}.tar"), "--out", root], capsys)
    train, val, test = loaded("cc3m", root)
    assert (len(train), len(val.image_paths), len(test.image_paths)) == (36, 2, 2) and "held out" in out
    with tarfile.open(shards[1]) as tar:
        first = tar.extractfile("000010000.jpg").read()
    assert open(os.path.join(root, "images/train/00001/000010000.jpg"), "rb").read() == first
    forms.webdataset_shards(str(tmp_path / "val"), shards=1, per_shard=6, first=100)
    out = prepare(["cc3m", "--shards", str(tmp_path / "cc3m" / "*.tar"), "--val_shards", str(tmp_path / "val" / "*.tar"),
                   "--out", str(tmp_path / "root2")], capsys)
    train, val, test = loaded("cc3m", str(tmp_path / "root2"))
    assert (len(train), len(val.image_paths)) == (40, 6) and val.image_paths == test.image_paths
    assert "same pairs" in out


def test_parquet_with_images_inside_or_beside_and_failed_downloads_skipped(tmp_path, capsys):
    inside = forms.parquet_file(str(tmp_path / "00000.parquet"), n=40, failed=3)
    out = prepare(["cc3m", "--parquet", inside, "--out", str(tmp_path / "a")], capsys)
    train, val, _ = loaded("cc3m", str(tmp_path / "a"))
    assert len(train) + 2 * len(val.image_paths) == 40 and "3 rows" in out
    beside = forms.parquet_file(str(tmp_path / "files" / "00000.parquet"), n=40, images_inside=False)
    prepare(["cc3m", "--parquet", beside, "--out", str(tmp_path / "b")], capsys)
    train_b = loaded("cc3m", str(tmp_path / "b"))[0]
    assert train_b.captions == train.captions and os.path.islink(tmp_path / "b" / "images" / "train" / "00000")
    assert torch.equal(read_image(train_b.image_paths[0], 8), read_image(train.image_paths[0], 8))


def _break(kind, tmp):
    """A bad input of `kind`: (argv, the file the error must name)."""
    if kind in ("missing image", "unreadable image", "malformed karpathy"):
        split_file, images = forms.karpathy_flickr(tmp, n=20)
        if kind == "missing image":
            os.remove(os.path.join(images, "1005.jpg"))
            return ["flickr", "--karpathy", split_file, "--images", images], "1005.jpg"
        if kind == "unreadable image":
            open(os.path.join(images, "1019.jpg"), "wb").write(b"\xff\xd8 not a jpeg")
            return ["flickr", "--karpathy", split_file, "--images", images], "1019.jpg"
        obj = json.load(open(split_file))
        del obj["images"][7]["sentences"]
        json.dump(obj, open(split_file, "w"))
        return ["flickr", "--karpathy", split_file, "--images", images], "record 7"
    if kind == "malformed token":
        token, images = forms.token_file(tmp, n=20)
        with open(token, "a") as f:
            f.write("2001.jpg a caption without its number and tab\n")
        return ["flickr", "--token", token, "--images", images], "results_20130124.token line 101"
    if kind in ("truncated shard", "sample without caption"):
        shards = forms.webdataset_shards(os.path.join(tmp, "cc3m"), shards=2, per_shard=20)
        if kind == "truncated shard":
            data = open(shards[1], "rb").read()
            open(shards[1], "wb").write(data[:len(data) // 2 + 100])
            return ["cc3m", "--shards", *shards], "00001.tar"
        with tarfile.open(shards[1], "a") as tar:
            forms._add(tar, "lonely.jpg", forms.jpeg_bytes(0))
        return ["cc3m", "--shards", *shards], "00001.tar sample lonely"
    path = forms.parquet_file(os.path.join(tmp, "00000.parquet"), n=30)
    if kind == "parquet without key":
        import pyarrow.parquet as pq
        pq.write_table(pq.read_table(path).drop(["key"]), path)
        return ["cc3m", "--parquet", path], "00000.parquet"
    open(path, "r+b").write(b"garbage!")  # unreadable parquet
    return ["cc3m", "--parquet", path], "00000.parquet"


@pytest.mark.parametrize("kind", ["missing image", "unreadable image", "malformed karpathy", "malformed token",
                                  "truncated shard", "sample without caption", "parquet without key",
                                  "unreadable parquet"])
def test_bad_inputs_are_refused_in_one_line_naming_the_file_and_leave_nothing(tmp_path, capsys, kind):
    argv, names = _break(kind, str(tmp_path / "in"))
    (tmp_path / "out").mkdir()
    root = tmp_path / "out" / "root"
    code, err = run_cli(prepare_data.main, [*argv, "--out", str(root), "--cache", "16"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and names in err, err
    assert not root.exists() and leftovers(tmp_path / "out") == []


def test_an_existing_root_is_not_overwritten(tmp_path, capsys):
    split_file, images = forms.karpathy_flickr(str(tmp_path), n=20)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "mine.txt").write_text("keep")
    code, err = run_cli(prepare_data.main, ["flickr", "--karpathy", split_file, "--images", images, "--out",
                                            str(tmp_path / "root")], capsys)
    assert code == 2 and "--out" in err and (tmp_path / "root" / "mine.txt").read_text() == "keep"
    code, err = run_cli(prepare_data.main, ["coco", "--karpathy", split_file, "--images", images, "--out",
                                            str(tmp_path / "other")], capsys)
    assert code == 2 and "not of 'coco'" in err  # Flickr's split file given to coco
