import json

import pytest
import torch
from PIL import Image

from distill_utils.datasets.captions import pre_caption
from distill_utils.datasets.annotations import check_images_exist, load_retrieval_split, load_train_pairs
from common.errors import UserError
from distill_utils.datasets.images import ImageStore


@pytest.fixture
def flickr_like(tmp_path):
    """A tiny Flickr30k-layout dataset: 3 images, 4 train pairs, 2 test images with uneven captions."""
    images = tmp_path / "Flickr30k"
    (images / "imgs").mkdir(parents=True)
    for k, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (20, 12), colour).save(images / "imgs" / f"{k}.jpg")
    ann = tmp_path / "ann"
    ann.mkdir()
    train = [{"image": "imgs/0.jpg", "caption": "A Dog.  Runs!"}, {"image": "imgs/0.jpg", "caption": "the dog (running)"},
             {"image": "imgs/1.jpg", "caption": "A cat"}, {"image": "imgs/2.jpg", "caption": "sky " * 40}]
    test = [{"image": "imgs/1.jpg", "caption": ["a cat", "one cat", "cat sitting"]},
            {"image": "imgs/2.jpg", "caption": ["blue sky", "the sky"]}]
    (ann / "flickr30k_train.json").write_text(json.dumps(train))
    (ann / "flickr30k_test.json").write_text(json.dumps(test))
    (ann / "flickr30k_val.json").write_text(json.dumps(test[:1]))
    return str(images), str(ann)


def test_pre_caption_is_blip_normalisation():
    assert pre_caption("A Dog.  Runs!") == "a dog runs"
    assert pre_caption('he said: "hi" (twice) ~ ok;') == "he said hi twice ok"
    assert len(pre_caption("word " * 40, max_words=30).split()) == 30


def test_train_pairs_and_retrieval_maps(flickr_like):
    image_root, ann_root = flickr_like
    pairs = load_train_pairs("flickr", ann_root, image_root)
    assert len(pairs) == 4 and pairs.captions[:3] == ["a dog runs", "the dog running", "a cat"]
    assert len(pairs.captions[3].split()) == 30
    test = load_retrieval_split("flickr", "test", ann_root, image_root)
    assert test.txt2img.tolist() == [0, 0, 0, 1, 1]
    assert test.img2txt == [[0, 1, 2], [3, 4]]
    assert test.texts[2] == "cat sitting"


def test_image_store_decodes_each_file_once_and_streams_alike(flickr_like):
    image_root, ann_root = flickr_like
    pairs = load_train_pairs("flickr", ann_root, image_root)
    memory = ImageStore(pairs.image_paths, 8, in_memory=True)
    stream = ImageStore(pairs.image_paths, 8, in_memory=False)
    assert memory.pixels.shape == (3, 3, 8, 8)  # 4 pairs, 3 distinct images
    idx = torch.tensor([3, 0, 1])
    assert torch.equal(memory.get(idx), stream.get(idx))
    assert torch.equal(memory.get(torch.tensor([0])), memory.get(torch.tensor([1])))  # same image file
    batches = list(stream.batches(torch.arange(4), 3))
    assert [len(i) for _, i in batches] == [3, 1] and batches[0][0].shape == (3, 3, 8, 8)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "malformed JSON"),
    ('{"image": "x"}', "non-empty JSON list"),
    ('[{"image": "imgs/0.jpg", "caption": ["list in a train file"]}]', "must be a string"),
    ('[{"caption": "no image"}]', "no string 'image'"),
])
def test_bad_annotation_files_are_refused_in_one_line(flickr_like, tmp_path, content, message):
    image_root, _ = flickr_like
    ann = tmp_path / "bad"
    ann.mkdir()
    if content is not None:
        (ann / "flickr30k_train.json").write_text(content)
    with pytest.raises(UserError, match=message) as err:
        load_train_pairs("flickr", str(ann), image_root)
    assert "\n" not in str(err.value) and "flickr30k_train.json" in str(err.value)


def test_missing_and_unreadable_images_are_refused(flickr_like, tmp_path):
    image_root, ann_root = flickr_like
    pairs = load_train_pairs("flickr", ann_root, image_root)
    with pytest.raises(UserError, match="missing"):
        check_images_exist(pairs.image_paths + [str(tmp_path / "nope.jpg")])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(UserError, match="unreadable"):
        ImageStore([str(broken)], 8, in_memory=True)
