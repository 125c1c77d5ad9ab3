import os
import shutil
import time

import pytest
import torch

import distill_utils.text_features as tf
from distill_utils.errors import UserError
from networks.text_encoders import HFTextEncoder, resolve_model_dir


def test_cls_features_of_a_local_model(tiny_text_encoder):
    enc = HFTextEncoder(tiny_text_encoder)
    feats = enc.encode(["a red circle", "a blue square on the left"])
    assert feats.shape == (2, 32) and feats.dtype == torch.float32
    assert not torch.allclose(feats[0], feats[1])


def test_cache_hit_does_not_load_the_encoder(tiny_text_encoder, tmp_path, monkeypatch):
    texts = ["a red circle", "a big blue square"]
    first = tf.text_features(texts, tiny_text_encoder, str(tmp_path), "demo_train")
    monkeypatch.setattr(tf, "build_text_encoder", lambda *a, **k: pytest.fail("encoder loaded on a cache hit"))
    assert torch.equal(tf.text_features(texts, tiny_text_encoder, str(tmp_path), "demo_train"), first)


def test_changed_captions_or_encoder_are_recomputed(tiny_text_encoder, tmp_path):
    texts = ["a red circle", "a big blue square"]
    first = tf.text_features(texts, tiny_text_encoder, str(tmp_path), "demo_train")
    changed = tf.text_features(["a red circle", "a big green square"], tiny_text_encoder, str(tmp_path), "demo_train")
    assert torch.equal(changed[0], first[0]) and not torch.equal(changed[1], first[1])
    # same directory name, different weights: the fingerprint changes, features are recomputed
    other = tmp_path / "model"
    shutil.copytree(tiny_text_encoder, other)
    base = tf.text_features(texts, str(other), str(tmp_path), "demo_train")
    from transformers import BertModel
    model = BertModel.from_pretrained(str(other))
    with torch.no_grad():
        model.pooler.dense.weight.zero_()
        model.encoder.layer[0].output.dense.weight.mul_(3.0)
    model.save_pretrained(str(other))
    after = tf.text_features(texts, str(other), str(tmp_path), "demo_train")
    assert not torch.allclose(after, base)


def test_unknown_local_directory_and_offline_hub_name_fail_fast(monkeypatch):
    with pytest.raises(UserError, match="no such model directory"):
        resolve_model_dir("./no/such/model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from networks import hub
    hub.hub_reachable.cache_clear()
    start = time.time()
    with pytest.raises(UserError, match="cannot be reached"):
        resolve_model_dir("some-org/model-that-is-not-cached")
    assert time.time() - start < 5
