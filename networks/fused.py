"""The ConvNet's norm -> ReLU -> 2x2 average pool as autograd Functions with explicit first and second
derivatives.

Distillation differentiates a student's gradient again (double backward), and on a CPU the cost of that is
not in the convolutions but in the many elementwise ops autograd derives for a plain-op normalisation
(docs/speed.md). Here the block's backward is one Function whose own backward is written out, so an iteration
runs a fixed, short list of full-size passes. Being the same code with and without `create_graph`, the
first-order backward gives the same bits in the distillation's pass 1 and in its replay.

Per group g of K = (C / G) * H * W values (G = C: instance norm), with mean_g over the group:
    u = (z - mean_g z) r,  r = (mean_g (z - mean_g z)^2 + eps)^-1/2,  v = gamma u + beta,  a = relu(v),
    p = avgpool2(a)
Backward, with m = [v > 0], vbar = m * upsample(pbar) / 4 and ubar = gamma * vbar:
    dgamma = sum vbar u,  dbeta = sum vbar,  dz = r P(ubar),  P(w) = w - mean_g w - u mean_g(w u)
P is self-adjoint, so the second derivatives (the backward of that backward, given cotangents zhat, ghat,
bhat of dz, dgamma, dbeta; m is piecewise constant) are
    d pbar  = avgpool2(m (gamma r P(zhat) + ghat u + bhat))
    d gamma = sum r vbar P(zhat)
    d z     = r (ut - mean_g ut - u (mean_g(ut u) + r rho)),   ut = ghat vbar - r (s1 ubar + s2 zhat),
              s1 = mean_g(zhat u), s2 = mean_g(ubar u), rho = mean_g(ubar zhat) - mean_g ubar mean_g zhat - s1 s2
tests/test_fused.py checks all of it against autograd on the plain-op composition (convnet.GroupNorm).
"""
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def pool2(a):
    """2x2 average pool, stride 2, odd edges dropped (as nn.AvgPool2d(2)); strided adds beat avg_pool2d's CPU kernel."""
    h, w = a.shape[-2] // 2 * 2, a.shape[-1] // 2 * 2
    rows = a[..., 0:h:2, :w] + a[..., 1:h:2, :w]
    return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)


def unpool2(g, shape):
    """The adjoint of pool2: each value spread over its 2x2 window / 4, zeros on dropped odd edges."""
    n, c, h, w = g.shape
    up = (g * 0.25).unsqueeze(-1).expand(n, c, h, w, 2).reshape(n, c, h, 2 * w)
    up = up.unsqueeze(-2).expand(n, c, h, 2, 2 * w).reshape(n, c, 2 * h, 2 * w)
    pad_w, pad_h = shape[-1] - 2 * w, shape[-2] - 2 * h
    return F.pad(up, (0, pad_w, 0, pad_h)) if pad_w or pad_h else up


class Pool2(torch.autograd.Function):
    """pool2 as a linear Function; its backward (unpool2) is a Function too, so it differentiates any number of times."""

    @staticmethod
    def forward(a):
        return pool2(a)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx, g):
        return Unpool2.apply(g, ctx.shape)


class Unpool2(torch.autograd.Function):
    @staticmethod
    def forward(g, shape):
        return unpool2(g, shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, a):
        return Pool2.apply(a), None


def _groups(t, groups):
    return t.view(t.shape[0], groups, -1)


def _gmean_dot(a, b):
    """mean over each group of a * b: [N, G, K] x [N, G, K] -> [N, G, 1] (a batched dot product, one pass)."""
    n, g, k = a.shape
    return torch.bmm(a.reshape(n * g, 1, k), b.reshape(n * g, 1, k).transpose(1, 2)).view(n, g, 1) / k


def _channel(t):
    return t.view(1, -1, 1, 1)


class NormReluPool(torch.autograd.Function):
    """(p, u, r, a): p = avgpool2(relu(gamma * groupnorm(z) + beta)) and what its backward needs (not differentiable);
    see the module docstring. In torch.func's style (setup_context), so that torch.func transforms take it too."""

    @staticmethod
    def forward(z, gamma, beta, groups, eps):
        return _forward(z, gamma, beta, groups, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, gamma, beta, ctx.groups, _ = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zeros for the non-differentiable outputs' gradients
        ctx.save_for_backward(z, gamma, beta, *output[1:])

    @staticmethod
    def backward(ctx, pbar, *_):
        if pbar is None:
            return None, None, None, None, None
        dz, dgamma, dbeta, *_ = NormReluPoolBackward.apply(pbar, *ctx.saved_tensors, ctx.groups)
        return dz, dgamma, dbeta, None, None


class NormReluPoolBackward(torch.autograd.Function):
    """(dz, dgamma, dbeta, and what the second derivatives need) from pbar; z, gamma, beta are inputs only so that
    autograd routes their cotangents."""

    @staticmethod
    def forward(pbar, z, gamma, beta, u, r, a, groups):
        return _backward(pbar, gamma, u, r, a, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, gamma, _, u, r, a, ctx.groups = inputs
        ctx.mark_non_differentiable(*output[3:])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(gamma, u, r, a, *output[3:])

    @staticmethod
    @once_differentiable
    def backward(ctx, zhat, ghat, bhat, *_):
        gamma, u, r, a, vbar, ubar_mean, s2 = ctx.saved_tensors
        zhat = torch.zeros_like(u) if zhat is None else zhat.contiguous()
        ghat = torch.zeros_like(gamma) if ghat is None else ghat
        bhat = torch.zeros_like(gamma) if bhat is None else bhat
        dpbar, dz, dgamma = _double_backward(zhat, ghat, bhat, gamma, u, r, a, vbar, ubar_mean, s2, ctx.groups)
        return dpbar, dz, dgamma, None, None, None, None, None


def _channel_dot(x, y):
    """sum over batch and space of x * y, per channel: [N, C, H, W] x2 -> [C] (batched dot products, no full-size write)."""
    n, c = x.shape[:2]
    return torch.bmm(x.reshape(n * c, 1, -1), y.reshape(n * c, 1, -1).transpose(1, 2)).view(n, c).sum(0)


def _relu_mask(x, a):
    """x where a > 0, else 0 (the ReLU's backward: a = relu(v) marks v > 0)."""
    return torch.ops.aten.threshold_backward(x, a, 0)


def _forward(z, gamma, beta, groups: int, eps: float):
    zg = _groups(z, groups)
    u = zg - zg.mean(-1, keepdim=True)
    r = torch.rsqrt(_gmean_dot(u, u) + eps)
    u = u.mul_(r).view(z.shape)
    a = torch.addcmul(_channel(beta), u, _channel(gamma)).relu_()
    return pool2(a), u, r, a


def _backward(pbar, gamma, u, r, a, groups: int):
    vbar = _relu_mask(unpool2(pbar, u.shape), a)
    ubar_g = _groups(vbar * _channel(gamma), groups)
    ug = _groups(u, groups)
    ubar_mean, s2 = ubar_g.mean(-1, keepdim=True), _gmean_dot(ubar_g, ug)
    dz = ubar_g.sub_(ubar_mean).addcmul_(ug, s2, value=-1).mul_(r)
    return dz.view(u.shape), _channel_dot(vbar, u), vbar.sum((0, 2, 3)), vbar, ubar_mean, s2


def _double_backward(zhat, ghat, bhat, gamma, u, r, a, vbar, ubar_mean, s2, groups: int):
    ug, zg = _groups(u, groups), _groups(zhat, groups)
    ubar_g = _groups(vbar * _channel(gamma), groups)
    zhat_mean, s1 = zg.mean(-1, keepdim=True), _gmean_dot(zg, ug)
    w = (zg - zhat_mean).addcmul_(ug, s1, value=-1).mul_(r).view(u.shape)  # r P(zhat)
    dgamma = _channel_dot(vbar, w)
    da = torch.addcmul(_channel(bhat), w, _channel(gamma)).addcmul_(u, _channel(ghat))
    dpbar = pool2(_relu_mask(da, a))
    rho = _gmean_dot(ubar_g, zg) - ubar_mean * zhat_mean - s1 * s2
    ut = torch.addcmul(_groups(vbar * _channel(ghat), groups), zg, -r * s2).addcmul_(ubar_g, -r * s1)
    dz = ut.sub_(ut.mean(-1, keepdim=True)).addcmul_(ug, _gmean_dot(ut, ug) + r * rho, value=-1).mul_(r)
    return dpbar, dz.view(u.shape), dgamma


def norm_relu_pool(z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, groups: int, eps: float = 1e-5) -> torch.Tensor:
    """avgpool2(relu(group norm with affine)) of z [N, C, H, W] in one Function. Under autocast it runs in float32,
    as autocast runs torch's own norms."""
    device = z.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.promote_types(torch.promote_types(z.dtype, gamma.dtype), torch.float32)
        with torch.autocast(device, enabled=False):
            return NormReluPool.apply(z.to(dtype).contiguous(), gamma.to(dtype), beta.to(dtype), groups, eps)[0]
    return NormReluPool.apply(z.contiguous(), gamma, beta, groups, eps)[0]


def relu_pool(z: torch.Tensor) -> torch.Tensor:
    return Pool2.apply(torch.relu(z))
