"""Nearest neighbours in landmark-heatmap space: the extra positives of HNCL.

The index is built once per dataset and setting, in chunks on the training device, and cached
(:mod:`utils.core.cache`). Each image is described by its heatmap channel, average-pooled to ``pool`` x
``pool`` and projected on its first ``components`` principal components (which keeps the distances
between heatmaps and makes the search cheap: 28,709 x 28,709 distances are one matrix product of
64-dimensional vectors per chunk); neighbours are the ``k`` nearest by Euclidean distance, the image
itself excluded, ties broken at random.

At scale the exact search, quadratic in the number of images, stops being cheap (9 s at 28,709
images, about 15 min at AffectNet's 290,000). From ``exact_below`` images on (100,000 by default;
:class:`NeighbourConfig` ``search``), the search is approximate: a faiss inverted-file index
(:func:`approximate_neighbours`: k-means cells, only the ``nprobe`` cells nearest a query searched),
which finds most of the exact neighbours (:func:`recall_at_k`; ``python -m utils.benchmarks
neighbours --search approximate`` measures both) in a fraction of the time. It needs ``faiss-cpu``.

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

from utils.core import cache
from utils.data.store import Rows

SPACES = ("landmarks", "centre", "normalised")
SEARCHES = ("exact", "approximate", "auto")
NPROBE = 24  # cells searched per query by the approximate search (of about 4 sqrt(N))


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
        seed: breaks ties (and seeds the approximate search's k-means).
        search: ``"exact"`` (every distance: :func:`nearest_neighbours`), ``"approximate"`` (a faiss
            inverted-file index: :func:`approximate_neighbours`, needs ``faiss-cpu``), or ``"auto"``:
            approximate from ``exact_below`` images on, exact below.
        exact_below: with ``search="auto"``, the number of images from which the search is approximate.
    """

    k: int = 5
    space: str = "landmarks"
    pool: int = 24
    components: int = 64
    seed: int = 0
    search: str = "auto"
    exact_below: int = 100_000

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, not {self.space!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, not {self.search!r}")


def normalised_landmark_heatmaps(landmarks: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Heatmaps of the inner-face landmarks (brows, eyes, nose, mouth: 17-67), centred and scaled to unit size.

    Removes where the face sits and how large it is, so two faces are near when their shapes (mouth
    opening, brow height) are alike.
    """
    from utils.data.faces import landmark_heatmaps

    inner = landmarks[:, 17:].astype(np.float64)
    centred = inner - inner.mean(axis=1, keepdims=True)
    scale = np.sqrt((centred**2).sum(axis=(1, 2), keepdims=True) / inner.shape[1])
    unit = centred / np.where(scale > 0, scale, 1)
    points = unit * (0.22 * size) + size / 2  # the unit-RMS shape drawn at a fixed size in the frame
    return landmark_heatmaps(points.astype(np.float32), size, sigma)


def heatmap_descriptors(heatmaps: np.ndarray, pool: int, components: int, device="cpu") -> torch.Tensor:
    """``(N, components)`` float32: pooled heatmaps projected on their principal components.

    ``heatmaps`` may be memory-mapped (the face store): it is read in chunks. When the pooled heatmaps would
    not fit in :data:`POOLED_IN_MEMORY` bytes (a million faces: 2.3 GB), the components are those of the
    covariance, accumulated over the chunks, and each chunk is read again and projected: memory stays that
    of one chunk and the ``(N, components)`` result.
    """
    size = heatmaps.shape[-1]
    side = pool if pool and pool < size else size

    def pooled_chunks():
        for start in range(0, len(heatmaps), 16384):  # in chunks: 290,000 float32 heatmaps at 48 px are 2.7 GB
            chunk = np.array(heatmaps[start : start + 16384])  # a writable copy: a store's pages are read-only
            x = torch.from_numpy(chunk).to(device=device, dtype=torch.float32)[:, None] / 255
            if pool and pool < size:
                x = F.adaptive_avg_pool2d(x, pool)
            yield x.flatten(1)  # (n, pool * pool)

    if components and len(heatmaps) * side * side * 4 > POOLED_IN_MEMORY:
        return _streamed_pca(pooled_chunks, len(heatmaps), side * side, components, device)
    pooled = list(pooled_chunks())
    x = torch.cat(pooled) if pooled else torch.zeros(0, (pool if pool and pool < size else size) ** 2, device=device)
    x = x - x.mean(dim=0, keepdim=True)
    if components and components < min(x.shape):  # pca_lowrank needs components <= N as well
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # pca_lowrank's random projection
        _, _, v = torch.pca_lowrank(x, q=components, center=False, niter=4)
        torch.random.set_rng_state(generator_state)
        x = x @ v  # (N, components): the same distances, up to the discarded variance
    return x


POOLED_IN_MEMORY = 1 << 30
"""Pooled heatmaps up to this many bytes are projected by :func:`torch.pca_lowrank` in memory; beyond, in chunks."""


def _streamed_pca(chunks, n: int, dim: int, components: int, device) -> torch.Tensor:
    """Project the rows that ``chunks()`` yields (twice) on the top ``components`` principal components of all
    of them: the covariance accumulated in float64 over one pass, the projection in a second."""
    total = torch.zeros(dim, dtype=torch.float64, device=device)
    outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for x in chunks():
        x = x.double()
        total += x.sum(dim=0)
        outer += x.T @ x
    mean = total / n
    covariance = outer / n - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    v = vectors[:, -components:].flip(1).float()  # (dim, components), largest first
    out = torch.empty(n, components, dtype=torch.float32, device=device)
    start = 0
    for x in chunks():
        out[start : start + len(x)] = (x - mean.float()) @ v
        start += len(x)
    return out


@torch.no_grad()
def nearest_neighbours(
    features: torch.Tensor, k: int, seed: int = 0, chunk: int | None = None, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of every row among the others (Euclidean), in chunks of queries.

    Args:
        chunk: queries per chunk; by default as many as keep a chunk's distance matrix near 256 MB.
        rows: only these rows are queried (still searched against all ``N``, themselves excluded);
            by default all of them.

    Returns:
        ``(indices, distances)``: ``(len(rows), k)`` int64 and float32, nearest first.
    """
    n = len(features)
    k = min(k, n - 1)
    chunk = chunk or max(64, min(4096, (256 << 20) // (4 * n)))
    norms = (features * features).sum(dim=1)  # (N,)
    generator = torch.Generator(device=features.device).manual_seed(seed)
    scale = float(norms.mean().clamp(min=1e-12))
    queries = torch.arange(n) if rows is None else torch.as_tensor(np.asarray(rows, dtype=np.int64).reshape(-1))
    queries = queries.to(features.device)
    indices, distances = [], []
    for start in range(0, len(queries), chunk):
        rows_here = queries[start : start + chunk]
        q = features[rows_here]  # (c, D)
        d = norms[rows_here, None] - 2 * q @ features.T + norms[None]  # (c, N) squared distances
        d = d.clamp_(min=0)
        d += 1e-6 * scale * torch.rand(d.shape, generator=generator, device=d.device)  # random tie-breaking
        d[torch.arange(len(q), device=d.device), rows_here] = float("inf")  # never one's own neighbour
        top = d.topk(k, dim=1, largest=False)
        indices.append(top.indices.cpu())
        distances.append(top.values.sqrt().cpu())
    if not indices:  # no rows queried
        return np.zeros((0, max(k, 0)), dtype=np.int64), np.zeros((0, max(k, 0)), dtype=np.float32)
    return torch.cat(indices).numpy().astype(np.int64), torch.cat(distances).numpy().astype(np.float32)


def approximate_neighbours(
    features: torch.Tensor, k: int, seed: int = 0, nlist: int | None = None, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate ``k`` nearest neighbours of every row among the others (Euclidean), with faiss.

    An inverted-file index (``IndexIVFFlat``): k-means, trained on a random subset of at most
    ``64 * nlist`` rows, splits the rows into ``nlist`` cells; each row is compared with the rows of the
    ``nprobe`` cells whose centres are nearest it only. Rows for which those cells hold fewer than ``k``
    others get their neighbours from the exact search (:func:`nearest_neighbours` on those rows). Rows
    with ``k`` or more neighbours at distance zero (identical descriptors, as images without landmarks
    have) get ``k`` of them at random, like the exact search's random tie-breaking; the cell holding a
    large group of identical rows is searched by each of them, though, so such groups cost quadratic time.

    Args:
        seed: seeds the training subset, the k-means and the tie-breaking: the result is deterministic.
        nlist: number of cells; by default ``4 sqrt(N)``.
        nprobe: cells searched per query; by default :data:`NPROBE` (24).

    Returns:
        ``(indices, distances)``: ``(N, k)`` int64 and float32 Euclidean distances, nearest first.

    Raises:
        ImportError: when faiss is not installed.
    """
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "the approximate neighbour search needs faiss: pip install faiss-cpu "
            '(or build the index with NeighbourConfig(search="exact"))'
        ) from e

    x = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)
    n, dim = x.shape
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, max(k, 0)), dtype=np.int64), np.zeros((n, max(k, 0)), dtype=np.float32)
    nlist = min(n, max(1, int(round(4 * np.sqrt(n)))) if nlist is None else max(1, int(nlist)))
    nprobe = min(nlist, NPROBE if nprobe is None else max(1, int(nprobe)))
    rng = np.random.default_rng(seed)
    train = x[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]

    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
    index.cp.seed = int(seed)
    index.train(train)
    index.add(x)
    index.nprobe = nprobe
    sq, found = index.search(x, k + 1)  # squared distances; -1 ids where the cells held too few rows

    # drop the query itself wherever it is (among identical rows it need not come first), else the last
    own = found == np.arange(n)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(n), drop] = False
    indices = found[keep].reshape(n, k).astype(np.int64)
    distances = np.sqrt(np.maximum(sq[keep].reshape(n, k), 0)).astype(np.float32)

    missing = np.flatnonzero((indices < 0).any(axis=1))
    if len(missing):
        indices[missing], distances[missing] = nearest_neighbours(features, k, seed, rows=missing)
    scale = max(float((x.astype(np.float64) ** 2).sum(axis=1).mean()), 1e-12)
    _randomise_ties(x, indices, distances, 1e-6 * scale, rng)
    return indices, distances


def _randomise_ties(x: np.ndarray, indices: np.ndarray, distances: np.ndarray, tie: float, rng) -> None:
    """Rows whose ``k`` neighbours all lie within squared distance ``tie`` get ``k`` others of their group at random.

    faiss returns tied rows in storage order, which would give every row of a group of identical
    descriptors the same few neighbours; the exact search picks among them at random. In place.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n, k = indices.shape
    tied = np.flatnonzero(distances[:, -1].astype(np.float64) ** 2 <= tie)
    if not len(tied):
        return
    edges = coo_matrix((np.ones(len(tied) * k), (np.repeat(tied, k), indices[tied].ravel())), shape=(n, n))
    _, group = connected_components(edges, directed=True, connection="weak")
    order = tied[np.argsort(group[tied], kind="stable")]
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
    for members in np.split(order, starts[1:]):
        g = len(members)
        if g <= k:
            continue
        if g <= 256:  # a random order of the others per member
            keys = rng.random((g, g))
            keys[np.arange(g), np.arange(g)] = np.inf
            picks = np.argsort(keys, axis=1)[:, :k]
        else:  # k distinct draws among the g - 1 others, redrawn where two coincide
            picks = rng.integers(0, g - 1, (g, k))
            while len(bad := np.flatnonzero((np.diff(np.sort(picks, axis=1), axis=1) == 0).any(axis=1))):
                picks[bad] = rng.integers(0, g - 1, (len(bad), k))
            picks += picks >= np.arange(g)[:, None]  # skip oneself
        chosen = members[picks]
        d = np.stack([np.linalg.norm(x[members] - x[chosen[:, j]], axis=1) for j in range(k)], axis=1)
        order_d = np.argsort(d, axis=1, kind="stable")
        indices[members] = np.take_along_axis(chosen, order_d, axis=1)
        distances[members] = np.take_along_axis(d, order_d, axis=1)


def search_method(config: NeighbourConfig, n: int) -> str:
    """The search :func:`search_neighbours` runs for ``n`` images: ``"exact"`` or ``"faiss-ivf"``."""
    if config.search == "approximate" or (config.search == "auto" and n >= config.exact_below):
        return "faiss-ivf"
    return "exact"


def search_neighbours(features: torch.Tensor, config: NeighbourConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """The ``config.k`` neighbours of every row, exact or approximate as ``config.search`` says.

    Returns:
        ``(indices, distances, method)``: as :func:`nearest_neighbours`, and ``"exact"`` or ``"faiss-ivf"``.
    """
    method = search_method(config, len(features))
    if method == "exact":
        return (*nearest_neighbours(features, config.k, config.seed), method)
    return (*approximate_neighbours(features, config.k, config.seed), method)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of the share of the exact ``k`` neighbours (``(n, k)``) that ``found`` (``(n, k)``) holds."""
    found, exact = np.asarray(found), np.asarray(exact)
    if len(found) != len(exact):
        raise ValueError(f"found and exact differ in rows: {len(found)} and {len(exact)}")
    if exact.size == 0:
        return 1.0
    hit = (exact[:, :, None] == found[:, None, :]).any(axis=2)  # (n, k): each exact neighbour found?
    return float(hit.mean())


def build_index(prepared, rows: np.ndarray, config: NeighbourConfig, device="cpu", cache_dir=None) -> dict:
    """The neighbour index of the images ``rows`` of a :class:`~utils.data.faces.PreparedFaces` (cached).

    Returns:
        ``{"neighbours": (n, k) positions within rows, "distances": (n, k), "seconds": build time,
        "search": "exact" or "faiss-ivf" (see :func:`search_neighbours`), "loaded": bool}``.
    """
    from utils.core.runtime import DATA_DIR

    heat = _space_heatmaps(prepared, rows, config.space)
    digest = hashlib.sha1(np.ascontiguousarray(heat[:: max(1, len(heat) // 2000)]).data).hexdigest()
    method = search_method(config, len(rows))
    # the key names the search that runs, not the threshold that chose it: caches of exact indexes stay valid
    settings = {
        "config": {key: value for key, value in asdict(config).items() if key not in ("search", "exact_below")},
        "rows": len(rows),
        "rows_sha1": _sha1(rows),
        "heat_sha1": digest,
    }
    if method != "exact":
        settings["search"] = {"method": method, "nprobe": NPROBE}

    def compute():
        tic = time.perf_counter()
        feats = heatmap_descriptors(heat, config.pool, config.components, device)
        neighbours, distances, ran = search_neighbours(feats, config)
        seconds = np.array(time.perf_counter() - tic)
        return {"neighbours": neighbours, "distances": distances, "seconds": seconds, "search": np.array(ran)}

    folder = cache_dir if cache_dir is not None else DATA_DIR / "cache"
    if cache_dir is False:
        arrays, loaded = compute(), False
    else:
        arrays, loaded = cache.cached(folder, f"{prepared.name}-neighbours", settings, compute)
    return {
        **arrays,
        "seconds": float(arrays["seconds"]),
        "search": str(arrays.get("search", method)),
        "loaded": loaded,
    }


def _space_heatmaps(prepared, rows, space: str) -> np.ndarray:
    if space == "landmarks":
        heat = prepared.heatmaps
        if len(rows) * int(np.prod(heat.shape[1:])) > POOLED_IN_MEMORY and isinstance(heat, (np.memmap, Rows)):
            return Rows([(heat, rows)])  # a store too large for memory: read in chunks by heatmap_descriptors
        return heat[rows]
    if space == "centre":
        return np.asarray(prepared.heatmap("centre")[rows])
    return normalised_landmark_heatmaps(prepared.landmarks[rows], prepared.images.shape[1], prepared.config.sigma)


def _sha1(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).data).hexdigest()


def label_agreement(neighbours: np.ndarray, labels: np.ndarray) -> dict:
    """How often a neighbour has its query's label, against chance (two random images agreeing).

    Returns:
        ``{"agreement": float, "chance": float, "per_class": {class id: float}}``, over the pairs whose labels
        are both known (None when there is none).
    """
    labels = np.asarray(labels)
    known = labels >= 0  # faces without a label (pretraining data) take no part
    both = known[:, None] & known[neighbours]  # (n, k): pairs whose labels are both known
    same = labels[neighbours] == labels[:, None]  # (n, k)
    if not both.any():
        return {"agreement": None, "chance": None, "per_class": {}}
    freq = np.bincount(labels[known]) / known.sum()
    per_class = {int(c): float(same[(labels == c)[:, None] & both].mean()) for c in np.unique(labels[known])}
    return {"agreement": float(same[both].mean()), "chance": float((freq**2).sum()), "per_class": per_class}
