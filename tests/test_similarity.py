"""The learned similarity S: full (S itself) and low rank (diag(a) + alpha / r * L R^T), whole and by minibatch,
and the matrix a published low-rank file (alpha fixed at 1) is read as."""
import torch

from distill_utils.files.subset_file import load_subset
from distill_utils.method.similarity import lowrank_matrix, make_similarity


def by_hand(a, left, right, alpha):
    n, r = left.shape
    return torch.tensor([[(a[i].item() if i == j else 0.0) + alpha / r * sum(left[i, k].item() * right[j, k].item()
                                                                            for k in range(r)) for j in range(n)]
                         for i in range(n)])


def test_lowrank_matrix_entry_by_entry():
    g = torch.Generator().manual_seed(0)
    a, left, right = torch.rand(5, generator=g), torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert torch.allclose(lowrank_matrix(a, left, right, 2.0), by_hand(a, left, right, 2.0), atol=1e-6)
    assert torch.allclose(lowrank_matrix(a, left, right), by_hand(a, left, right, 1.0), atol=1e-6)


def test_lowrank_generator_indexing_matches_the_full_matrix():
    sim = make_similarity("lowrank", 7, rank=3, alpha=2.0, generator=torch.Generator().manual_seed(0))
    sim.params[2] = torch.randn(7, 3)
    full = by_hand(*sim.params, 2.0)
    assert torch.allclose(sim.matrix(sim.params), full, atol=1e-6)
    idx = torch.tensor([5, 1, 3])
    assert torch.allclose(sim.batch(sim.params, idx), full[idx][:, idx], atol=1e-6)
    assert torch.equal(make_similarity("lowrank", 4, rank=2).matrix(make_similarity("lowrank", 4, rank=2).params), torch.eye(4))
    full_sim = make_similarity("full", 5)
    full_sim.params[0] = torch.randn(5, 5)
    assert torch.equal(full_sim.batch(full_sim.params, idx[1:]), full_sim.params[0][idx[1:]][:, idx[1:]])


def test_a_published_lowrank_file_without_the_matrix_reads_as_alpha_one(tmp_path):
    g = torch.Generator().manual_seed(1)
    params = [torch.rand(4, generator=g), torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)]
    torch.save({"image": torch.zeros(4, 3, 8, 8), "text": torch.zeros(4, 6), "similarity_params": params,
                "syn_lr_img": 0.1, "syn_lr_txt": 0.1}, tmp_path / "published.pt")
    read = load_subset(str(tmp_path / "published.pt")).similarity
    assert torch.allclose(read, by_hand(*params, 1.0), atol=1e-6)
    assert torch.equal(read, make_similarity("lowrank", 4, rank=2).matrix(params))  # the one formula
