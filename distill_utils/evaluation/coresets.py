"""Coreset baselines on the distilled data's budget (SPEC section 6): N random real pairs, or the N pairs
nearest the k-means prototypes of an expert's embedding space. Both train with identity targets and
the teacher lrs; the full training set is the third baseline (no selection needed)."""
import torch

from common.errors import UserError
from distill_utils.method.student import embed_split
from distill_utils.files.buffers import check_manifest, check_shapes, list_pairs, load_experts, shapes_of

# Manifest fields that must agree with the evaluation network for the expert to embed anything meaningful.
EXPERT_FIELDS = ("dataset", "image_encoder", "text_encoder", "image_size", "image_trainable", "out_embedding")


def random_indices(num_pairs, total, seed):
    """`num_pairs` distinct pair indices out of `total`, fixed by `seed`."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:num_pairs].sort().values


def load_final_expert(directory, net, expected):
    """(img_flat, txt_flat): the last timestamp of the first expert in a buffer directory, checked against `net`.

    `expected` holds the run's values of EXPERT_FIELDS; a buffer with a manifest must agree on them,
    one without (published) is checked by parameter shapes only.
    """
    check_manifest(directory, {key: expected[key] for key in EXPERT_FIELDS}, f"--buffer_path {directory}")
    _, img_path, txt_path = list_pairs(directory)[0]
    img, txt = load_experts(img_path)[0][-1], load_experts(txt_path)[0][-1]
    check_shapes(shapes_of(img), net.img_layout, "img", f"--buffer_path {img_path}")
    check_shapes(shapes_of(txt), net.txt_layout, "txt", f"--buffer_path {txt_path}")
    img, txt = net.img_layout.flatten(img).float(), net.txt_layout.flatten(txt).float()
    if not (torch.isfinite(img).all() and torch.isfinite(txt).all()):
        raise UserError(f"--buffer_path {img_path} (or its txt twin): the final expert parameters hold NaN or inf")
    return img, txt


def pair_embeddings(net, img_flat, txt_flat, train, device, batch_size=256):
    """[num_pairs, D]: the mean of each pair's L2-normalised image and text embeddings (one joint space)."""
    img, txt = embed_split(net, img_flat.to(device), txt_flat.to(device), train, device, batch_size, batch_size)
    return ((img + txt) / 2).cpu()


def nearest_distinct(points, centroids):
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


def prototype_indices(embeddings, num_pairs, seed):
    """k-means (k-means++ init, scikit-learn) with `num_pairs` clusters; the real pair nearest each centroid."""
    from sklearn.cluster import KMeans
    x = embeddings.float().numpy()
    kmeans = KMeans(n_clusters=num_pairs, n_init=1, random_state=seed % 2**32).fit(x)
    return nearest_distinct(embeddings.float(), torch.from_numpy(kmeans.cluster_centers_).float())
