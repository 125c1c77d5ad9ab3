import shutil
import time

import pytest
import torch

import distill_utils.datasets.text_features as tf
from common.errors import UserError
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


def test_cache_used_where_the_encoder_is_not_installed_names_the_same_weights(tiny_text_encoder, tmp_path):
    """A GPU machine the features were carried to: the cache serves them and the weights digest it recorded stands in
    for the encoder's, so manifests and subset configs written there match the ones written beside the encoder."""
    from networks import text_encoders
    texts = ["a red circle", "a big blue square"]
    moved = tmp_path / "model"
    shutil.copytree(tiny_text_encoder, moved)
    first = tf.text_features(texts, str(moved), str(tmp_path), "demo_train")
    digest = text_encoders.weights_digest(str(moved))
    shutil.rmtree(moved)
    text_encoders._weights_digest.cache_clear()
    with pytest.raises(UserError, match="no such model directory"):
        text_encoders.weights_digest(str(moved))
    assert torch.equal(tf.text_features(texts, str(moved), str(tmp_path), "demo_train"), first)
    assert text_encoders.weights_digest(str(moved)) == digest
    with pytest.raises(UserError, match="no such model directory"):  # other captions: nothing to fall back on
        tf.text_features(["a green star"], str(moved), str(tmp_path), "demo_train")


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


def test_openclip_text_tower_from_a_local_checkpoint(tmp_path):
    """A tiny open_clip architecture registered here, its weights saved to a file and loaded offline."""
    import json
    import open_clip
    from networks.text_encoders import build_text_encoder
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 64, "patch_size": 8},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-clip-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "tiny-clip-test.json"))
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("tiny-clip-test").state_dict(), weights)
    enc = build_text_encoder(f"openclip:tiny-clip-test@{weights}")
    feats = enc.encode(["a red circle", "a big blue square"])
    assert feats.shape == (2, 16) and not torch.allclose(feats[0], feats[1])
    with pytest.raises(UserError, match="unknown open_clip architecture"):
        build_text_encoder("openclip:no-such-arch")


def test_a_cache_serves_a_machine_without_the_encoder_only_for_the_same_captions(tiny_text_encoder, tmp_path,
                                                                                monkeypatch, capsys):
    texts = ["a red circle", "a big blue square"]
    first = tf.text_features(texts, tiny_text_encoder, str(tmp_path), "demo_train")

    def not_installed(spec):
        raise UserError(f"--text_encoder {spec}: not installed")

    monkeypatch.setattr(tf, "fingerprint", not_installed)
    assert torch.equal(tf.text_features(texts, tiny_text_encoder, str(tmp_path), "demo_train"), first)
    assert "not checkable here" in capsys.readouterr().out
    with pytest.raises(UserError, match="not installed"):  # other captions: nothing to fall back on
        tf.text_features(["a red circle", "a big green square"], tiny_text_encoder, str(tmp_path), "demo_train")
    with pytest.raises(UserError, match="not installed"):  # no cache at all
        tf.text_features(texts, tiny_text_encoder, str(tmp_path / "empty"), "demo_train")


def test_the_weights_are_hashed_once_and_config_files_still_count(tiny_text_encoder, tmp_path, monkeypatch, capsys):
    from networks import text_encoders
    model = tmp_path / "model"
    shutil.copytree(tiny_text_encoder, model)
    hashed = []
    real = text_encoders._file_digest
    monkeypatch.setattr(text_encoders, "_file_digest", lambda path, *a, **k: hashed.append(path) or real(path, *a, **k))
    text_encoders._weights_digest.cache_clear()
    texts = ["a red circle", "a big blue square"]
    first = tf.text_features(texts, str(model), str(tmp_path), "demo_train")
    weights = [p for p in hashed if p.endswith((".safetensors", ".bin"))]
    assert len(weights) == len(set(weights)) >= 1
    with open(model / "config.json") as f:  # the weights stay, a config file changes: recomputed
        config = f.read()
    with open(model / "config.json", "w") as f:
        f.write(config.replace("{", '{"note": 1,', 1))
    capsys.readouterr()
    assert torch.equal(tf.text_features(texts, str(model), str(tmp_path), "demo_train"), first)
    assert "stale" in capsys.readouterr().out


def test_a_cache_written_with_the_older_key_is_read_when_the_weights_agree(tiny_text_encoder, tmp_path, monkeypatch):
    texts = ["a red circle", "a big blue square"]
    first = tf.text_features(texts, tiny_text_encoder, str(tmp_path), "demo_train")
    path = tf.cache_path(str(tmp_path), "demo_train", tiny_text_encoder)
    cached = torch.load(path, weights_only=True)
    older = {k: v for k, v in cached["key"].items() if k != "files"}
    torch.save({"key": {**older, "fingerprint": "0123456789abcdef"}, "features": first}, path)
    monkeypatch.setattr(tf, "build_text_encoder", lambda *a, **k: pytest.fail("encoder loaded on a cache hit"))
    assert torch.equal(tf.text_features(texts, tiny_text_encoder, str(tmp_path), "demo_train"), first)
    torch.save({"key": {**older, "fingerprint": "0123456789abcdef", "weights": "other"}, "features": first}, path)
    with pytest.raises(pytest.fail.Exception, match="encoder loaded"):  # other weights: recomputed
        tf.text_features(texts, tiny_text_encoder, str(tmp_path), "demo_train")
