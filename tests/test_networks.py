import pytest
import torch

from common.errors import UserError
from networks import hub
from networks.convnet import ConvNet, parse_convnet
from networks.dual_encoder import DualEncoder, NetConfig, NetworkFactory
from networks.image_encoders import build_image_encoder


def _net(trainable, encoder="convnet_w8_d2_e16"):
    torch.manual_seed(0)
    image_encoder, dim = build_image_encoder(encoder, 16)
    return DualEncoder(image_encoder, dim, text_dim=12, image_trainable=trainable, out_embedding=10)


@pytest.mark.parametrize("trainable", [True, False])
def test_functional_forward_equals_module_forward(trainable):
    net = _net(trainable).eval()
    images, texts = torch.randn(5, 3, 16, 16), torch.randn(5, 12)
    img, txt = net.initial_params()
    assert torch.allclose(net.logits(images, texts, img, txt), net.logits(images, texts), atol=1e-6)
    # other parameters give other logits: the external parameters are really used
    assert not torch.allclose(net.logits(images, texts, img * 1.1, txt), net.logits(images, texts))


@pytest.mark.parametrize("trainable", [True, False])
def test_param_groups_follow_the_spec(trainable):
    net = _net(trainable)
    img_module = net.image_encoder if trainable else net.image_head
    assert net.img_layout.names == [n for n, _ in img_module.named_parameters()]
    assert net.txt_layout.names == ["projection.weight", "projection.bias", "fc.weight", "fc.bias",
                                    "layer_norm.weight", "layer_norm.bias"]
    img, _ = net.initial_params()
    for tensor, param in zip(net.img_layout.split(img), img_module.parameters()):
        assert torch.equal(tensor, param)
    if not trainable:  # the frozen encoder never trains nor runs in training mode
        assert not any(p.requires_grad for p in net.image_encoder.parameters())
        assert not net.train().image_encoder.training


def test_logit_scale_is_fixed_and_embeddings_normalised():
    net = _net(True).eval()
    logits = net.logits(torch.randn(3, 3, 16, 16), torch.randn(3, 12))
    assert net.logit_scale == pytest.approx(1 / 0.07) and logits.abs().max() <= 1 / 0.07 + 1e-4


def test_convnet_names():
    assert parse_convnet("convnet") == {}
    assert parse_convnet("convnet_w32_d4_e128_gn") == {"width": 32, "depth": 4, "embed_dim": 128, "norm": "gn"}
    assert parse_convnet("resnet18") is None
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ConvNet().modules())


def test_timm_model_by_name_and_local_checkpoint(tmp_path):
    model, dim = build_image_encoder("resnet10t", 32, pretrained=False)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    torch.save({"state_dict": {f"module.{k}": v * 0 + 0.5 for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    loaded, _ = build_image_encoder("resnet10t", 32, checkpoint=str(tmp_path / "w.pth"))
    assert all((p == 0.5).all() for p in loaded.parameters())
    with pytest.raises(UserError, match="does not fit"):
        build_image_encoder("resnet18", 32, checkpoint=str(tmp_path / "w.pth"))


def test_bad_encoder_names_and_offline_weights_fail_in_one_line(monkeypatch):
    with pytest.raises(UserError, match="not a timm model"):
        build_image_encoder("no_such_net", 32)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    import networks.image_encoders as ie
    monkeypatch.setattr(ie, "hub_reachable", lambda: False)
    with pytest.raises(UserError, match="cannot fetch timm weights"):
        build_image_encoder("nfnet", 224)  # the paper's nfnet_l0, pretrained by default
    with pytest.raises(UserError, match="no pretrained weights"):
        build_image_encoder("convnet", 32, pretrained=True)


def test_factory_builds_identical_nets_per_seed_and_keeps_checkpoint_weights(tmp_path):
    conv, _ = build_image_encoder("convnet_w8_d2_e16", 16)
    torch.save(conv.state_dict(), tmp_path / "conv.pt")
    factory = NetworkFactory(NetConfig("convnet_w8_d2_e16", 16, 12, True, image_checkpoint=str(tmp_path / "conv.pt")))
    a, b, c = factory.build(1), factory.build(1), factory.build(2)
    assert all(torch.equal(x, y) for x, y in zip(a.initial_params(), b.initial_params()))
    assert torch.equal(a.initial_params()[0], c.initial_params()[0])  # encoder from the checkpoint
    assert not torch.equal(a.initial_params()[1], c.initial_params()[1])  # text head random per seed
    plain = NetworkFactory(NetConfig("convnet_w8_d2_e16", 16, 12, True))
    assert not torch.equal(plain.build(1).initial_params()[0], plain.build(2).initial_params()[0])


def test_plain_group_norm_matches_torch():
    from networks.convnet import GroupNorm
    x = torch.randn(3, 8, 5, 5)
    ours, ref = GroupNorm(4, 8), torch.nn.GroupNorm(4, 8)
    with torch.no_grad():
        for p in (ours.weight, ours.bias, ref.weight, ref.bias):
            p.copy_(torch.randn(8))
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]


def test_model_names_compare_as_models():
    from networks.names import same_model, same_setting
    assert same_model("nfnet", "nfnet_l0") and same_model("bert", "google-bert/bert-base-uncased")
    assert same_model("./models/minilm/", "/data/minilm") and not same_model("bert", "distilbert")
    assert same_setting("image_size", 224, 224) and not same_setting("text_encoder", "minilm", "bert")
