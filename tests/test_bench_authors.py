"""bench.authors on a fake "authors' checkout" written here with the interface of Previsior/PTM-ST (their file
names, class names, signatures and the variables of their timed loop), whose iteration computes the two-pass
gradient its own way: same inputs must give the same gradient, in float64 to rounding."""
import tempfile
import textwrap

import pytest
import torch

from bench import authors
from common.errors import UserError

NETWORKS = '''
import clip  # not installed here: the bench must not import this module, only read its classes
import torch.nn as nn

class ConvNet(nn.Module):
    def __init__(self, channel, num_classes, net_width=128, net_depth=4, net_act='relu', net_norm='instancenorm',
                 net_pooling='avgpooling', im_size=(224, 224)):
        super().__init__()
        layers, side = [], im_size[0]
        for d in range(net_depth):
            layers += [nn.Conv2d(channel if d == 0 else net_width, net_width, 3, padding=1),
                       nn.GroupNorm(net_width, net_width), nn.ReLU(), nn.AvgPool2d(2)]
            side //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(net_width * side * side, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))

class ProjectionHead(nn.Module):
    def __init__(self, embedding_dim, projection_dim, dropout=0.1):
        super().__init__()
        self.projection, self.gelu = nn.Linear(embedding_dim, projection_dim), nn.GELU()
        self.fc, self.dropout = nn.Linear(projection_dim, projection_dim), nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(projection_dim)

    def forward(self, x):
        p = self.projection(x)
        return self.layer_norm(self.dropout(self.fc(self.gelu(p))) + p)
'''
REPARAM = '''
import torch

class ReparamModule(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module, named = module, list(module.named_parameters())
        self.names, self.shapes = [n for n, _ in named], [p.shape for _, p in named]

    def forward(self, x, flat_param):
        parts = flat_param.split([s.numel() for s in self.shapes])
        return torch.func.functional_call(self.module, {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}, (x,))
'''
SIMILARITY = '''
import torch

class FullSimilarityGenerator(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.sim_mat = torch.nn.Parameter(torch.eye(dim))

    def get_indexed_parameters(self, indices=None):
        return [self.sim_mat if indices is None else self.sim_mat[indices[:, None], indices]]

class MultilabelContrastiveLoss(torch.nn.Module):
    def __init__(self, loss_type):
        super().__init__()

    def forward(self, logits, target):
        return -0.5 * ((target * logits.log_softmax(1)).sum(1).mean() + (target.t() * logits.t().log_softmax(1)).sum(1).mean())
'''
EMA = '''
import torch

class ModelEmaV2:
    def __init__(self, params, decay):
        self.module, self.decay = [p.detach().clone() for p in params], decay

    def update(self, params):
        for e, p in zip(self.module, params):
            e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
'''
# the authors' gradient, written independently: the student points theta_i of pass 1 held constant, the data gradient
# is sum_i d(c . g_i)/d(X, Y, S) with c = -lr dL/dtheta_N, L = sum over sides |theta_N - theta*|^2 / |theta_0 - theta*|^2
SCRIPT = '''
import time
import torch

def main(args):
    _distill_time_accum_s = 0.0
    for it in range(10):
        _t0 = time.perf_counter()
        net = CLIPModel_full(args, temperature=args.temperature)
        img_net = ReparamModule(net.image_encoder.to('cpu')).to('cuda')
        txt_net = ReparamModule(net.text_projection.to('cpu')).to('cuda')
        traj_img, traj_txt = img_buffer[expert_idx], txt_buffer[expert_idx]
        flat = lambda ps: torch.cat([p.reshape(-1) for p in ps]).to(args.device)
        theta0, target = [flat(traj_img[0]), flat(traj_txt[0])], [flat(traj_img[1]), flat(traj_txt[1])]
        lrs = [syn_lr_img.item(), syn_lr_txt.item()]
        perm, indices_chunks_copy = torch.randperm(len(image_syn)), []
        for k in range(args.syn_steps):
            indices_chunks_copy.append(perm[k * args.mini_batch_size:(k + 1) * args.mini_batch_size])

        def step_grads(theta, idx, graph):
            th = [t.detach().requires_grad_(True) for t in theta]
            x = img_net(image_syn[idx], flat_param=th[0]); x = x / x.norm(dim=1, keepdim=True)
            y = txt_net(text_syn[idx], flat_param=th[1]); y = y / y.norm(dim=1, keepdim=True)
            sim = sim_generator.get_indexed_parameters(idx)[0]
            loss = contrastive_criterion(logit_scale.exp() * x @ y.t(), sim)
            return torch.autograd.grad(loss, th, create_graph=graph)

        thetas, theta, total = [], theta0, [0, 0]
        for idx in indices_chunks_copy:
            thetas.append(theta)
            g = step_grads(theta, idx, False)
            theta = [t - lr * gi for t, lr, gi in zip(theta, lrs, g)]
            total = [s + gi for s, gi in zip(total, g)]
        dist = [(a - b).pow(2).sum() for a, b in zip(theta0, target)]
        c = [-2 * lr * (t - e) / d for lr, t, e, d in zip(lrs, theta, target, dist)]
        for th, idx in zip(thetas, indices_chunks_copy):
            g = step_grads(th, idx, True)
            torch.autograd.backward(sum((ci * gi).sum() for ci, gi in zip(c, g)), inputs=[image_syn, text_syn, sim_generator.sim_mat])
        syn_lr_img.grad, syn_lr_txt.grad = (-2 * (s * (t - e)).sum() / d for s, t, e, d in zip(total, theta, target, dist))
        optimizer.step()
        ema.update([image_syn, text_syn, sim_generator.sim_mat, syn_lr_img, syn_lr_txt])
        _distill_time_accum_s += time.perf_counter() - _t0
'''
TINY = ["--num_queries", "8", "--mini_batch_size", "4", "--syn_steps", "2", "--image_size", "8", "--text_dim", "6",
        "--image_encoder", "convnet_w4_d2_e8"]


@pytest.fixture()
def fake_checkout(tmp_path):
    for rel, text in (("distill_ptm-st.py", SCRIPT), ("src/networks.py", NETWORKS), ("src/reparam_module.py", REPARAM),
                      ("src/similarity_mining.py", SIMILARITY), ("model_ema.py", EMA)):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    return tmp_path


def test_identical_inputs_give_the_same_gradient(fake_checkout):
    """Their side receives our images, texts, similarity, lrs, expert points (cut by our shapes into their buffer
    format) and minibatches; any of them mapped wrongly would move the gradient far beyond float64 rounding."""
    a = authors.parse_args(["--authors", str(fake_checkout), *TINY])
    a.dtype = "float64"
    with tempfile.TemporaryDirectory() as tmp:
        ours = authors.Ours(a, tmp)
        inputs = ours.inputs()
        theirs = authors.Authors(a, str(fake_checkout), inputs)
        assert inputs["convnet"] == dict(width=4, depth=2, embed=8)
        got, want = theirs.iteration(keep=True), ours.iteration(keep=True)
        errors = authors.rel_errors(got, want)
        assert max(errors.values()) < 1e-12, errors
        assert all(want[k].abs().sum() > 0 for k in want)  # not trivially equal
        # the same update (SGD with momentum on the synthetic data) on both sides
        for k, mine in (("image_syn", ours.work.syn.image), ("text_syn", ours.work.syn.text)):
            assert not torch.equal(mine, inputs[k[:-4]])
            torch.testing.assert_close(theirs.ns[k], mine, rtol=1e-12, atol=1e-12)


def test_ratios_are_per_round_and_summarised_by_median_and_range(capsys):
    row = lambda wall, peak: dict(wall=wall, cpu=wall / 2, peak_gb=peak, rise_gb=peak / 4)
    rows = {"ours": [row(1.0, 1.0), row(2.0, 1.0), row(3.0, 2.0)], "authors": [row(2.0, 2.0), row(8.0, 4.0), row(3.0, 2.0)]}
    grads = {k: torch.ones(3) for k in authors.GRADS}
    authors.report(rows, [("same", grads, {k: 2 * v for k, v in grads.items()})])
    out = capsys.readouterr().out
    assert "| iteration, s wall | 2.000 (1.000-3.000) | 3.000 (2.000-8.000) | 0.500 (0.250-1.000) |" in out
    assert "| peak memory, GB | 1.000 (1.000-2.000) | 2.000 (2.000-4.000) | 0.500 (0.250-1.000) |" in out
    assert "same: image 5.0e-01" in out


def test_a_checkout_without_what_is_needed_fails_in_one_line(fake_checkout):
    (fake_checkout / "distill_ptm-st.py").write_text("def main(args):\n    for it in range(3):\n        pass\n")
    with pytest.raises(UserError, match="no loop timed from _t0"):
        authors.iteration_code(str(fake_checkout))
    (fake_checkout / "model_ema.py").unlink()
    with pytest.raises(UserError, match="no model_ema.py"):
        authors.authors_classes(str(fake_checkout))
