"""The fused norm -> ReLU -> pool Functions (networks/fused.py) against autograd on the plain-op modules they
replace (convnet.GroupNorm, nn.ReLU, nn.AvgPool2d), in float64: values, first and second derivatives."""
import pytest
import torch
import torch.nn as nn
from torch.func import grad

from networks.convnet import ConvNet, GroupNorm
from networks.fused import norm_relu_pool, relu_pool

CASES = [((2, 4, 6, 6), 4), ((2, 4, 5, 7), 2), ((3, 6, 4, 4), 1), ((1, 3, 3, 2), 3)]


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    return rand(*shape), rand(shape[1]), rand(shape[1])


def _plain(z, gamma, beta, groups):
    norm = GroupNorm(groups, z.shape[1]).double()
    with torch.no_grad():
        norm.weight.copy_(gamma)
        norm.bias.copy_(beta)
    # the module's forward with gamma, beta as differentiable inputs
    y = torch.func.functional_call(norm, {"weight": gamma, "bias": beta}, (z,))
    return nn.AvgPool2d(2)(nn.ReLU()(y))


@pytest.mark.parametrize("shape, groups", CASES)
def test_value_and_derivatives_match_the_plain_modules(shape, groups):
    z, gamma, beta = _inputs(shape)
    fused, plain = norm_relu_pool(z, gamma, beta, groups), _plain(z, gamma, beta, groups)
    assert torch.allclose(fused, plain, atol=1e-13)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(fused.shape, generator=g, dtype=torch.float64)
    firsts = [torch.autograd.grad((out * w).sum(), (z, gamma, beta), create_graph=True) for out in (fused, plain)]
    for a, b in zip(*firsts):
        assert torch.allclose(a, b, atol=1e-12)
    # second derivatives: a directional cotangent on every first derivative, back to z, gamma and w's source
    c = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in firsts[0]]
    seconds = [torch.autograd.grad(sum((t * ci).sum() for t, ci in zip(first, c)), (z, gamma), allow_unused=True)
               for first in firsts]
    for a, b in zip(*seconds):
        assert torch.allclose(a, b, atol=1e-11)


@pytest.mark.parametrize("shape, groups", CASES[:2])
def test_gradcheck_and_gradgradcheck(shape, groups):
    z, gamma, beta = _inputs(shape)
    fn = lambda z, gamma, beta: norm_relu_pool(z, gamma, beta, groups)
    assert torch.autograd.gradcheck(fn, (z, gamma, beta))
    assert torch.autograd.gradgradcheck(fn, (z, gamma, beta))
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(relu_pool(x), nn.AvgPool2d(2)(torch.relu(x)))
    assert torch.autograd.gradgradcheck(relu_pool, (x,))


@pytest.mark.parametrize("norm", ["in", "gn", "none"])
def test_convnet_equals_its_plain_sequential_to_second_order(norm):
    torch.manual_seed(0)
    net = ConvNet(width=8, depth=2, norm=norm, embed_dim=6, image_size=10).double()
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    params = dict(net.named_parameters())
    plain = lambda p, x: torch.func.functional_call(net.fc, {"weight": p["fc.weight"], "bias": p["fc.bias"]},
                                                    (torch.func.functional_call(net.features, {
                                                        k.removeprefix("features."): v for k, v in p.items()
                                                        if k.startswith("features.")}, (x,)).flatten(1),))
    fused = lambda p, x: torch.func.functional_call(net, p, (x,))
    assert torch.allclose(fused(params, x), plain(params, x), atol=1e-12)
    # the mixed second derivative distillation needs: d/dx of (c . d loss / d params), through torch.func
    c = {k: torch.randn_like(v) for k, v in params.items()}
    directional = lambda f: lambda x: sum((g * c[k]).sum() for k, g in grad(lambda p: f(p, x).pow(2).sum())(params).items())
    assert torch.allclose(grad(directional(fused))(x), grad(directional(plain))(x), atol=1e-10)


def test_under_autocast_the_norm_runs_in_float32():
    z = torch.randn(2, 4, 4, 4).bfloat16().requires_grad_(True)
    gamma, beta = torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm_relu_pool(z, gamma, beta, 4)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert z.grad.dtype == torch.bfloat16 and gamma.grad is not None
