"""Nearest neighbours in landmark-heatmap space: the extra positives of HNCL.

The index is built once per dataset and setting, in chunks on the training device, and cached
(:mod:`utils.cache`). Each image is described by its heatmap channel, average-pooled to ``pool`` x
``pool`` and projected on its first ``components`` principal components (which keeps the distances
between heatmaps and makes the search cheap: 28,709 x 28,709 distances are one matrix product of
64-dimensional vectors per chunk); neighbours are the ``k`` nearest by Euclidean distance, the image
itself excluded, ties broken at random.

With the seed project's centred heatmap every image has the same heatmap, every distance is zero, and
the neighbours are therefore random images: exactly what the seed's HNCL used, and the ablation here.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import cache

SPACES = ("landmarks", "centre", "normalised")


@dataclass(frozen=True)
class NeighbourConfig:
    """How the neighbour index is built.

    Attributes:
        k: neighbours per image.
        space: ``"landmarks"`` (the eye-aligned landmark heatmaps of notebook 01), ``"normalised"``
            (heatmaps redrawn from the inner-face landmarks after removing their position and size, so
            that faces are compared by shape only), or ``"centre"`` (the seed's centred heatmap: random
            neighbours).
        pool: heatmaps are average-pooled to pool x pool first.
        components: principal components kept (0: all).
        seed: breaks ties.
    """

    k: int = 5
    space: str = "landmarks"
    pool: int = 24
    components: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, not {self.space!r}")


def normalised_landmark_heatmaps(landmarks: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Heatmaps of the inner-face landmarks (brows, eyes, nose, mouth: 17-67), centred and scaled to unit size.

    Removes where the face sits and how large it is, so two faces are near when their shapes (mouth
    opening, brow height) are alike.
    """
    from .faces import landmark_heatmaps

    inner = landmarks[:, 17:].astype(np.float64)
    centred = inner - inner.mean(axis=1, keepdims=True)
    scale = np.sqrt((centred**2).sum(axis=(1, 2), keepdims=True) / inner.shape[1])
    unit = centred / np.where(scale > 0, scale, 1)
    points = unit * (0.22 * size) + size / 2  # the unit-RMS shape drawn at a fixed size in the frame
    return landmark_heatmaps(points.astype(np.float32), size, sigma)


def heatmap_descriptors(heatmaps: np.ndarray, pool: int, components: int, device="cpu") -> torch.Tensor:
    """``(N, components)`` float32: pooled heatmaps projected on their principal components."""
    x = torch.from_numpy(np.ascontiguousarray(heatmaps)).to(device=device, dtype=torch.float32)[:, None] / 255
    size = x.shape[-1]
    if pool and pool < size:
        x = F.adaptive_avg_pool2d(x, pool)
    x = x.flatten(1)  # (N, pool * pool)
    x = x - x.mean(dim=0, keepdim=True)
    if components and components < min(x.shape):  # pca_lowrank needs components <= N as well
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # pca_lowrank's random projection
        _, _, v = torch.pca_lowrank(x, q=components, center=False, niter=4)
        torch.random.set_rng_state(generator_state)
        x = x @ v  # (N, components): the same distances, up to the discarded variance
    return x


@torch.no_grad()
def nearest_neighbours(
    features: torch.Tensor, k: int, seed: int = 0, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of every row among the others (Euclidean), in chunks of queries.

    Args:
        chunk: queries per chunk; by default as many as keep a chunk's distance matrix near 256 MB.

    Returns:
        ``(indices, distances)``: ``(N, k)`` int64 and float32, nearest first.
    """
    n = len(features)
    k = min(k, n - 1)
    chunk = chunk or max(64, min(4096, (256 << 20) // (4 * n)))
    norms = (features * features).sum(dim=1)  # (N,)
    generator = torch.Generator(device=features.device).manual_seed(seed)
    scale = float(norms.mean().clamp(min=1e-12))
    indices, distances = [], []
    for start in range(0, n, chunk):
        q = features[start : start + chunk]  # (c, D)
        d = norms[start : start + chunk, None] - 2 * q @ features.T + norms[None]  # (c, N) squared distances
        d = d.clamp_(min=0)
        d += 1e-6 * scale * torch.rand(d.shape, generator=generator, device=d.device)  # random tie-breaking
        rows = torch.arange(start, start + len(q), device=d.device)
        d[torch.arange(len(q), device=d.device), rows] = float("inf")  # never one's own neighbour
        top = d.topk(k, dim=1, largest=False)
        indices.append(top.indices.cpu())
        distances.append(top.values.sqrt().cpu())
    return torch.cat(indices).numpy().astype(np.int64), torch.cat(distances).numpy().astype(np.float32)


def build_index(prepared, rows: np.ndarray, config: NeighbourConfig, device="cpu", cache_dir=None) -> dict:
    """The neighbour index of the images ``rows`` of a :class:`~utils.faces.PreparedFaces` (cached).

    Returns:
        ``{"neighbours": (n, k) positions within rows, "distances": (n, k), "seconds": build time,
        "loaded": bool}``.
    """
    from .runtime import DATA_DIR

    heat = _space_heatmaps(prepared, rows, config.space)
    digest = hashlib.sha1(np.ascontiguousarray(heat[:: max(1, len(heat) // 2000)]).data).hexdigest()
    settings = {"config": asdict(config), "rows": len(rows), "rows_sha1": _sha1(rows), "heat_sha1": digest}

    def compute():
        tic = time.perf_counter()
        feats = heatmap_descriptors(heat, config.pool, config.components, device)
        neighbours, distances = nearest_neighbours(feats, config.k, config.seed)
        return {"neighbours": neighbours, "distances": distances, "seconds": np.array(time.perf_counter() - tic)}

    folder = cache_dir if cache_dir is not None else DATA_DIR / "cache"
    if cache_dir is False:
        arrays, loaded = compute(), False
    else:
        arrays, loaded = cache.cached(folder, f"{prepared.name}-neighbours", settings, compute)
    return {**arrays, "seconds": float(arrays["seconds"]), "loaded": loaded}


def _space_heatmaps(prepared, rows, space: str) -> np.ndarray:
    if space == "landmarks":
        return prepared.heatmaps[rows]
    if space == "centre":
        return np.asarray(prepared.heatmap("centre")[rows])
    return normalised_landmark_heatmaps(prepared.landmarks[rows], prepared.images.shape[1], prepared.config.sigma)


def _sha1(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).data).hexdigest()


def label_agreement(neighbours: np.ndarray, labels: np.ndarray) -> dict:
    """How often a neighbour has its query's label, against chance (two random images agreeing).

    Returns:
        ``{"agreement": float, "chance": float, "per_class": {class id: float}}``.
    """
    labels = np.asarray(labels)
    same = labels[neighbours] == labels[:, None]  # (n, k)
    freq = np.bincount(labels) / len(labels)
    per_class = {int(c): float(same[labels == c].mean()) for c in np.unique(labels)}
    return {"agreement": float(same.mean()), "chance": float((freq**2).sum()), "per_class": per_class}
