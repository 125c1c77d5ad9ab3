"""The real-pair batches (identity targets) that experts, real-pair baselines and coreset selection share, and the
embedding of a split."""
import torch

from distill_utils.evaluation.coresets import pair_embeddings
from distill_utils.evaluation.sources import RealPairSource
from distill_utils.method.experts import real_batches
from distill_utils.method.student import identity_batches
from tests.helpers import TEXT_DIM, TensorImages


class Pairs:
    """What the batches read of a TrainData: images by pair index and one text feature per pair."""

    def __init__(self, n=7, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = TensorImages(torch.randn(n, 3, 16, 16, generator=g))
        self.text_features = torch.randn(n, TEXT_DIM, generator=g)

    def __len__(self):
        return len(self.text_features)


def test_identity_batches_follow_the_order_with_identity_targets():
    train, order = Pairs(), torch.tensor([4, 0, 6, 2, 5])
    batches = list(identity_batches(train, order, 2, "cpu"))
    assert [len(x) for x, _, _ in batches] == [2, 2, 1]
    for (x, y, t), idx in zip(batches, torch.split(order, 2)):
        assert torch.equal(x, train.images.images[idx]) and torch.equal(y, train.text_features[idx])
        assert torch.equal(t, torch.eye(len(idx)))


def test_experts_drop_a_short_last_batch_and_real_pair_sources_keep_it():
    train, order = Pairs(), torch.tensor([4, 0, 6, 2, 5])
    assert [len(x) for x, _, _ in real_batches(train, order, 2, "cpu")] == [2, 2]
    assert [len(x) for x, _, _ in real_batches(train, order[:1], 2, "cpu")] == [1]  # one batch: kept
    source = RealPairSource(train, [1, 3, 5], 0.1, 0.1, "random")
    served = torch.cat([y for _, y, _ in source.batches(2, torch.Generator().manual_seed(3), "cpu")])
    perm = torch.randperm(3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(served, train.text_features[torch.tensor([1, 3, 5])[perm]])


def test_pair_embeddings_are_the_mean_of_each_pairs_embeddings_in_eval_mode(factory):
    net, train = factory.build(seed=0), Pairs()
    img, txt = net.initial_params()
    net.train()
    got = pair_embeddings(net, img, txt, train, "cpu", batch_size=3)
    assert net.training  # the caller's mode is restored
    net.eval()
    with torch.no_grad():
        one_by_one = torch.cat([(net.embed_images(train.images.images[i:i + 1], img)
                                 + net.embed_texts(train.text_features[i:i + 1], txt)) / 2 for i in range(len(train))])
    assert got.shape == (7, one_by_one.shape[1]) and torch.allclose(got, one_by_one, atol=1e-5)
