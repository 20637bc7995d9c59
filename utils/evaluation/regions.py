"""Where on the face a heatmap puts its mass, measured against the 68 landmarks (no expression labels).

Every pixel of an aligned face belongs to the landmark group of its nearest landmark (iBUG 300-W order:
jaw, brows, nose, eyes, mouth) when that landmark is within ``radius`` pixels, and to ``other`` (forehead,
cheeks, background) otherwise. A heatmap's share of mass in each group, set against the share of the image
the group covers (what a uniform heatmap would give), says what a learned region attends to: a lift well
above 1 on one group and below 1 elsewhere is a region detector for that part of the face.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LANDMARK_GROUPS = {
    "brows": range(17, 27),
    "eyes": range(36, 48),
    "nose": range(27, 36),
    "mouth": range(48, 68),
    "jaw": range(0, 17),
}
GROUPS = (*LANDMARK_GROUPS, "other")
RADIUS = 5.0  # pixels at 48 px: about a quarter of the distance between the eyes of an aligned face


def group_map(landmarks: np.ndarray, size: int, radius: float = RADIUS) -> np.ndarray:
    """``(N, size, size)`` int: for each pixel, the index in :data:`GROUPS` of its nearest landmark's group,
    or of ``other`` when no landmark is within ``radius`` (scaled from 48 px to ``size``) or none was found.

    Args:
        landmarks: ``(N, 68, 2)`` x, y in pixels (pixel centres at integer coordinates), NaN when missing.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    group_of = np.empty(68, dtype=np.int64)
    for g, points in enumerate(LANDMARK_GROUPS.values()):
        group_of[list(points)] = g
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    pixels = np.stack([xs.ravel(), ys.ravel()], axis=1)  # (P, 2)
    out = np.full((len(landmarks), size * size), len(GROUPS) - 1, dtype=np.int64)
    reach = radius * size / 48
    for i, points in enumerate(landmarks):
        if not np.isfinite(points).all():
            continue
        d2 = ((pixels[:, None, :] - points[None]) ** 2).sum(axis=-1)  # (P, 68)
        nearest = d2.argmin(axis=1)
        near = d2[np.arange(len(pixels)), nearest] <= reach**2
        out[i, near] = group_of[nearest[near]]
    return out.reshape(len(landmarks), size, size)


def group_shares(heatmaps, landmarks: np.ndarray, size: int, radius: float = RADIUS, per_image: bool = True) -> dict:
    """Each heatmap's share of mass per landmark group, averaged over the images, and the uniform shares.

    Args:
        heatmaps: ``(N, Q, h, w)`` non-negative maps (Q per image: one per region query); resized to the
            image size with bilinear interpolation and renormalised to sum 1.
        landmarks: ``(N, 68, 2)`` of the same images, in image pixels.
        size: the images' side in pixels.
        per_image: normalise every map to sum 1 and average the images (soft heatmaps); False sums the maps
            as they are (e.g. counts of the positions a query wins) and normalises each query's total.

    Returns:
        ``{"mass": (Q, G) array, "uniform": (G,) array, "groups": GROUPS, "images": n}`` where G = len(GROUPS);
        rows of ``mass`` and ``uniform`` sum to 1. Images without landmarks are left out.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    keep = np.isfinite(landmarks).all(axis=(1, 2))
    if not keep.any():
        raise ValueError("no image has landmarks: nothing to measure the heatmaps against")
    heat = torch.as_tensor(np.asarray(heatmaps), dtype=torch.float32)[torch.from_numpy(keep)]  # (n, Q, h, w)
    heat = F.interpolate(heat, size=(size, size), mode="bilinear", align_corners=False).clamp_min(0)
    if per_image:
        heat = heat / heat.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    groups = torch.from_numpy(group_map(landmarks[keep], size, radius))  # (n, S, S)
    onehot = F.one_hot(groups, len(GROUPS)).float()  # (n, S, S, G)
    mass = torch.einsum("nqhw,nhwg->qg", heat, onehot)  # (Q, G)
    mass = mass / len(heat) if per_image else mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-12)
    uniform = onehot.mean(dim=(0, 1, 2))  # (G,)
    return {"mass": mass.numpy(), "uniform": uniform.numpy(), "groups": GROUPS, "images": int(keep.sum())}


def region_table(shares: dict):
    """:func:`group_shares` as a table: one row per query, its mass share per group, the group with the
    highest lift (share / uniform share) and that lift; a last row with the uniform shares."""
    import pandas as pd

    mass, uniform = shares["mass"], shares["uniform"]
    table = pd.DataFrame(mass, columns=shares["groups"])
    table.index = [f"query {q}" for q in range(len(mass))]
    table.index.name = "region"
    lift = mass / np.maximum(uniform[None], 1e-12)
    used = mass.sum(axis=1) > 0
    table["top group"] = [shares["groups"][g] if u else "unused" for g, u in zip(lift.argmax(axis=1), used)]
    table["lift"] = np.where(used, lift.max(axis=1), np.nan)  # a query that wins no position has no group
    uniform_row = pd.DataFrame([[*uniform, "", 1.0]], columns=table.columns, index=["uniform map"])
    return pd.concat([table, uniform_row])


def region_awareness(fra, prepared, split: str = "val", device=None, batch_size: int = 512) -> dict:
    """Whether a FRA network's regions sit on parts of the face, measured against the 68 landmarks of the
    ``split`` faces that have them, without labels.

    Returns:
        ``{"soft": table, "hard": table, "rows": faces' rows in prepared, "heatmaps": soft maps (N, Q, h, w),
        "landmarks": (N, 68, 2)}``; a table (:func:`region_table`) gives each query's share of its mass (soft:
        the heatmaps that pool the regions) or of the positions it wins (hard: the partition the relation loss
        trains) per landmark group, its top group and ``lift``, how far that exceeds a uniform map's share.
    """
    from utils.core.loader import face_tensors

    device = device if device is not None else next(fra.parameters()).device
    fra = fra.eval()
    data = face_tensors(prepared, split, fra.config.channels, device)
    found = np.flatnonzero(np.isfinite(prepared.landmarks[data.index]).all(axis=(1, 2)))
    landmarks = prepared.landmarks[data.index][found]
    batches = [data.x[i : i + batch_size].float() / 255 for i in range(0, len(data), batch_size)]
    soft = np.concatenate([fra.region_heatmaps(x).cpu().numpy() for x in batches])[found]
    hard = np.concatenate([fra.region_heatmaps(x, hard=True).cpu().numpy() for x in batches])[found]
    size = prepared.images.shape[1]
    return {
        "soft": region_table(group_shares(soft, landmarks, size)),
        "hard": region_table(group_shares(hard, landmarks, size, per_image=False)),
        "rows": data.index[found],
        "heatmaps": soft,
        "landmarks": landmarks,
    }


def record_region_awareness(run, prepared, split: str = "val", device=None) -> dict:
    """:func:`region_awareness` of a finished FRA run, its tables added to the run's ``metrics.json`` under
    ``region_awareness["<dataset>/<split>"]`` (``{"soft": {query: {group share..., "top group", "lift"}},
    "hard": ...}``) and returned with the heatmaps (as :func:`region_awareness`)."""
    from pathlib import Path

    from utils.core.runs import finished, write_record

    aware = region_awareness(run.method, prepared, split, device)
    record = finished(run.run_dir) or dict(run.record)
    tables = {kind: json_ready(aware[kind]) for kind in ("soft", "hard")}
    record.setdefault("region_awareness", {})[f"{prepared.name}/{split}"] = tables
    write_record(Path(run.run_dir), {k: v for k, v in record.items() if k != "run_dir"})
    run.record = record
    return aware


def json_ready(table) -> dict:
    """A DataFrame as ``{row: {column: value}}`` with plain Python values (JSON)."""
    import json

    return json.loads(table.to_json(orient="index"))
