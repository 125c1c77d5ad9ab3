"""Coreset baselines on the distilled data's budget (SPEC section 6): N random real pairs, or the N pairs
nearest the k-means prototypes of an expert's embedding space. Both train with identity targets and
the teacher lrs; the full training set is the third baseline (no selection needed). The expert that embeds
the pairs comes from files/buffers.BufferDir.final_expert."""
import torch

from distill_utils.datasets.loading import TrainData
from distill_utils.method.student import embed_split
from networks.dual_encoder import DualEncoder

BASELINES = ("random", "prototype", "full")  # evaluate.py --baseline


def random_indices(num_pairs: int, total: int, seed: int) -> torch.Tensor:
    """`num_pairs` distinct pair indices out of `total`, fixed by `seed`."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:num_pairs].sort().values


def pair_embeddings(net: DualEncoder, img_flat: torch.Tensor, txt_flat: torch.Tensor, train: TrainData,
                    device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """[num_pairs, D]: the mean of each pair's L2-normalised image and text embeddings (one joint space)."""
    img, txt = embed_split(net, img_flat.to(device), txt_flat.to(device), train, device, batch_size, batch_size)
    return ((img + txt) / 2).cpu()


def nearest_distinct(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """For each centroid, the nearest point not already taken by an earlier centroid (indices, sorted)."""
    dist = torch.cdist(centroids, points)
    taken = torch.zeros(len(points), dtype=torch.bool)
    chosen = []
    for row in dist:
        row = row.masked_fill(taken, float("inf"))
        i = int(row.argmin())
        taken[i] = True
        chosen.append(i)
    return torch.tensor(sorted(chosen))


def prototype_indices(embeddings: torch.Tensor, num_pairs: int, seed: int) -> torch.Tensor:
    """k-means (k-means++ init, scikit-learn) with `num_pairs` clusters; the real pair nearest each centroid."""
    from sklearn.cluster import KMeans
    x = embeddings.float().numpy()
    kmeans = KMeans(n_clusters=num_pairs, n_init=1, random_state=seed % 2**32).fit(x)
    return nearest_distinct(embeddings.float(), torch.from_numpy(kmeans.cluster_centers_).float())
