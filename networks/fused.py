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


def _per_channel(x):
    """[N, C, H, W] -> [N, C, HW] (a view)."""
    return x.view(x.shape[0], x.shape[1], -1)


def _sums(x):
    """sum over space, per sample and channel: [N, C]."""
    return _per_channel(x).sum(-1)


def _dots(x, y):
    """sum over space of x * y, per sample and channel: [N, C] (batched dot products: no full-size write)."""
    n, c = x.shape[:2]
    return torch.bmm(x.reshape(n * c, 1, -1), y.reshape(n * c, 1, -1).transpose(1, 2)).view(n, c)


def _group_mean(t, groups, size):
    """[N, C] per-channel sums -> [N, C]: the mean over each channel's group of `size` values, per channel."""
    n, c = t.shape
    return t.view(n, groups, -1).sum(-1, keepdim=True).expand(n, groups, c // groups).reshape(n, c) / size


def _bc(t):
    """[N, C] or [C] -> broadcastable over [N, C, H, W]."""
    return t.view(*t.shape, 1, 1) if t.dim() == 2 else t.view(1, -1, 1, 1)


def _relu_mask(x, a):
    """x where a > 0, else 0 (the ReLU's backward: a = relu(v) marks v > 0)."""
    return torch.ops.aten.threshold_backward(x, a, 0)


# The kernels below write every full-size result as a sum of full-size tensors times per-(sample, channel)
# coefficients: the group statistics of the module docstring (means, mean_g(x u)) are reduced from per-channel
# sums and dot products, and u = c r is never stored (c: z centred per group). Same formulas, fewer passes.

def _forward(z, gamma, beta, groups: int, eps: float):
    n, ch = z.shape[:2]
    zg = z.view(n, groups, -1)
    c = zg - zg.mean(-1, keepdim=True)
    k = c.shape[-1]
    r = torch.rsqrt(torch.bmm(c.reshape(n * groups, 1, k), c.reshape(n * groups, 1, k).transpose(1, 2)).view(n, groups) / k
                    + eps)
    r = r.view(n, groups, 1).expand(n, groups, ch // groups).reshape(n, ch)  # per channel
    c = c.view(z.shape)
    a = torch.addcmul(_bc(beta), c, _bc(r * gamma)).relu_()
    return pool2(a), c, r, a


def _backward(pbar, gamma, c, r, a, groups: int):
    """dz = r (ubar - mean_g ubar - u mean_g(ubar u)), ubar = gamma vbar, u = c r."""
    k = c[0].numel() // groups
    vbar = _relu_mask(unpool2(pbar, c.shape), a)
    sv, dvc = _sums(vbar), _dots(vbar, c)
    ubar_mean, s2 = _group_mean(gamma * sv, groups, k), r * _group_mean(gamma * dvc, groups, k)
    dz = torch.addcmul(_bc(-r * ubar_mean), vbar, _bc(r * gamma)).addcmul_(c, _bc(-r * r * s2))
    return dz, (r * dvc).sum(0), sv.sum(0), vbar, sv, dvc


def _double_backward(zhat, ghat, bhat, gamma, c, r, a, vbar, sv, dvc, groups: int):
    k = c[0].numel() // groups
    sz, dzc, dvz = _sums(zhat), _dots(zhat, c), _dots(vbar, zhat)
    zhat_mean, s1 = _group_mean(sz, groups, k), r * _group_mean(dzc, groups, k)
    ubar_mean, s2 = _group_mean(gamma * sv, groups, k), r * _group_mean(gamma * dvc, groups, k)
    dgamma = (r * dvz - r * zhat_mean * sv - r * r * s1 * dvc).sum(0)
    # d pbar: avgpool2 of the mask times gamma r P(zhat) + ghat u + bhat
    da = torch.addcmul(_bc(bhat - gamma * r * zhat_mean), zhat, _bc(gamma * r)).addcmul_(c, _bc(r * (ghat - gamma * r * s1)))
    dpbar = pool2(_relu_mask(da, a))
    # dz = r (ut - mean_g ut - u (mean_g(ut u) + r rho)), ut = alpha vbar - r s2 zhat
    alpha = ghat - r * s1 * gamma
    ut_mean = _group_mean(alpha * sv, groups, k) - r * s2 * zhat_mean
    utu_mean = r * _group_mean(alpha * dvc, groups, k) - r * s2 * s1
    rho = _group_mean(gamma * dvz, groups, k) - ubar_mean * zhat_mean - s1 * s2
    dz = (torch.addcmul(_bc(-r * ut_mean), vbar, _bc(r * alpha)).addcmul_(zhat, _bc(-r * r * s2))
          .addcmul_(c, _bc(-r * r * (utu_mean + r * rho))))
    return dpbar, dz, dgamma


class NormReluPool(torch.autograd.Function):
    """(p, c, r, a): p = avgpool2(relu(gamma * groupnorm(z) + beta)) and what its backward needs (not differentiable);
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
    def forward(pbar, z, gamma, beta, c, r, a, groups):
        return _backward(pbar, gamma, c, r, a, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, gamma, _, c, r, a, ctx.groups = inputs
        ctx.mark_non_differentiable(*output[3:])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(gamma, c, r, a, *output[3:])

    @staticmethod
    @once_differentiable
    def backward(ctx, zhat, ghat, bhat, *_):
        gamma, c, r, a, vbar, sv, dvc = ctx.saved_tensors
        zhat = torch.zeros_like(c) if zhat is None else zhat.contiguous()
        ghat = torch.zeros_like(gamma) if ghat is None else ghat
        bhat = torch.zeros_like(gamma) if bhat is None else bhat
        dpbar, dz, dgamma = _double_backward(zhat, ghat, bhat, gamma, c, r, a, vbar, sv, dvc, ctx.groups)
        return dpbar, dz, dgamma, None, None, None, None, None


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
