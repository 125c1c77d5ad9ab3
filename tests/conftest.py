"""The fixtures shared by the tests (helpers live in helpers.py): a small synthetic dataset, a tiny BERT built and
saved here, CLI args for both, an expert buffer, a network factory and a fake test split."""
import pytest
import torch

import buffer
from distill_utils.method.student import RetrievalData
from distill_utils.files.buffers import BufferDir
from networks.dual_encoder import NetConfig, NetworkFactory
from tests.helpers import TEXT_DIM, WORDS, TensorImages, tiny_flags


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory):
    """A 1-layer BERT with a word-level vocabulary, saved like any local transformers model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    out = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(WORDS))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(out / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Directory for a tiny synthetic dataset (generated on first use by the code under test)."""
    return str(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture
def tiny_args(tiny_data, tiny_text_encoder, tmp_path_factory):
    """Flags shared by the entry scripts for a fast CPU run on the tiny dataset."""
    return tiny_flags(tiny_data, tiny_text_encoder, tmp_path_factory)


@pytest.fixture(autouse=True)
def _quiet_and_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and immune to CPU contention


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory, tiny_data, tiny_text_encoder):
    """A buffer of two 3-epoch experts on the tiny data (one per test module that uses it)."""
    root = tmp_path_factory.mktemp("buffers")
    args = ["--dataset", "synthetic", "--ann_root", tiny_data, "--feature_cache", str(root / "cache"),
            "--text_encoder", tiny_text_encoder, "--image_size", "16", "--image_encoder", "convnet_w8_d2_e32",
            "--synthetic_train_images", "40", "--synthetic_test_images", "10", "--device", "cpu",
            "--buffer_path", str(root), "--num_experts", "2", "--train_epochs", "3", "--image_trainable",
            "--batch_train", "16", "--eval_freq", "3"]
    try:
        buffer.main(args)
    except SystemExit as e:
        assert e.code in (0, None)
    return BufferDir.of_network(str(root), "synthetic", "convnet_w8_d2_e32", tiny_text_encoder, "InfoNCE").path


@pytest.fixture
def factory():
    """Networks of the tiny architecture, trainable image side."""
    return NetworkFactory(NetConfig("convnet_w8_d2_e32", 16, TEXT_DIM, True))


@pytest.fixture
def fake_test():
    """A test split of 6 random images with 2 captions each."""
    g = torch.Generator().manual_seed(1)
    return RetrievalData(TensorImages(torch.randn(6, 3, 16, 16, generator=g)), torch.randn(12, TEXT_DIM, generator=g),
                         torch.arange(6).repeat_interleave(2))
