"""Shared tiny fixtures: a small synthetic dataset, a tiny BERT built and saved here, CLI args for both."""
import os

import pytest
import torch

TINY_SYNTHETIC = ["--synthetic_train_images", "40", "--synthetic_test_images", "10"]
WORDS = ("a an the on of in at with is there that picture image showing backdrop background over small large "
         "little tiny big huge red green blue yellow purple orange white black grey gray navy sand beige mint "
         "circle disc square block triangle cross plus sign diamond rhombus left right top bottom centre middle "
         "side half edge near upper lower part dog cat , ;").split()


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
    return tiny_flags(tiny_data, tiny_text_encoder, tmp_path_factory)


def tiny_flags(tiny_data, tiny_text_encoder, tmp_path_factory):
    """Flags shared by the entry scripts for a fast CPU run on the tiny dataset."""
    cache = str(tmp_path_factory.getbasetemp() / "feature_cache")
    return ["--dataset", "synthetic", "--ann_root", tiny_data, "--feature_cache", cache,
            "--text_encoder", tiny_text_encoder, "--image_size", "16", "--image_encoder", "convnet_w8_d2_e32",
            "--device", "cpu", *TINY_SYNTHETIC]


def run_cli(main, argv, capsys):
    """Run an entry point in-process; returns (exit status, its `error:` lines, or all of stderr if none)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    return code, "\n".join(errors) if errors else err


@pytest.fixture(autouse=True)
def _quiet_and_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and immune to CPU contention
