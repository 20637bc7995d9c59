"""Robustness to occlusion and head pose, measured on any finished classifier run.

Occlusions are drawn on the evaluation split's aligned faces, placed with their 68 landmarks (notebook 01):

- ``eyes``: a band over both eyes and brows, from 2 px above the highest brow point to 2 px below the lowest
  eye point, across the face from the outer end of one brow to the other;
- ``mouth``: the mouth's bounding box grown by 2 px;
- ``random square``: a square of 25 % of the face's area at a random place (seeded per image);
- ``left half`` / ``right half``: the image's left or right of the nose line (the mean x of the nose bridge,
  landmarks 27-30), i.e. the subject's right or left half of the face.

The occluded pixels are set to the image's mean grey (a flat patch, no new edges). Images without landmarks
keep no landmark-placed occlusion and are left out of those conditions (counted in ``n``).

Pose: the faces are aligned on the eyes, so a turned head shows as a nose off the eyes' midline. The yaw
proxy is the horizontal offset of the nose tip (landmark 30) from the midpoint of the eye centres, divided by
the distance between the eye centres; ``|yaw| >= 0.15`` counts as a strong yaw (about 15-20 degrees on
frontal-face geometry: the nose tip sits roughly 0.6 eye distances in front of the eyes' plane).
"""

from __future__ import annotations

import numpy as np
import torch

from utils.core.loader import FaceTensors, face_tensors
from utils.evaluation.metrics import classification_metrics, predict

OCCLUSIONS = ("eyes", "mouth", "random square", "left half", "right half")
YAW_THRESHOLD = 0.15
PAD = 2.0  # pixels around the landmark boxes, at 48 px
SQUARE_AREA = 0.25


def occlusion_masks(landmarks: np.ndarray, size: int, condition: str, seed: int = 0) -> np.ndarray:
    """``(N, size, size)`` bool, True where ``condition`` hides the face; all False for an image without landmarks
    (except ``random square``, which needs none)."""
    if condition not in OCCLUSIONS:
        raise ValueError(f"condition must be one of {OCCLUSIONS}, not {condition!r}")
    landmarks = np.asarray(landmarks, dtype=np.float32)
    n = len(landmarks)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    pad = PAD * size / 48
    rng = np.random.default_rng(seed)
    side = np.sqrt(SQUARE_AREA) * size
    for i, points in enumerate(landmarks):
        if condition == "random square":
            x0, y0 = rng.uniform(0, size - side, size=2)
            masks[i] = (xs >= x0) & (xs < x0 + side) & (ys >= y0) & (ys < y0 + side)
            continue
        if not np.isfinite(points).all():
            continue
        if condition == "eyes":
            region = points[17:27].tolist() + points[36:48].tolist()  # brows and eyes
            box = _box(np.asarray(region), pad)
        elif condition == "mouth":
            box = _box(points[48:68], pad)
        else:
            nose_x = points[27:31, 0].mean()
            masks[i] = xs < nose_x if condition == "left half" else xs >= nose_x
            continue
        x0, y0, x1, y1 = box
        masks[i] = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    return masks


def _box(points: np.ndarray, pad: float) -> tuple[float, float, float, float]:
    return points[:, 0].min() - pad, points[:, 1].min() - pad, points[:, 0].max() + pad, points[:, 1].max() + pad


def occlude(x: torch.Tensor, masks) -> torch.Tensor:
    """``x`` ``(N, C, S, S)`` uint8 with the masked pixels of its image channel(s) set to each image's mean grey
    (other channels, such as a heatmap, are left as they are). Returns a new tensor."""
    masks = torch.as_tensor(np.asarray(masks), device=x.device)[:, None]  # (N, 1, S, S)
    out = x.clone()
    image = out[:, :1].float()
    mean = image.mean(dim=(1, 2, 3), keepdim=True).round()
    out[:, :1] = torch.where(masks, mean, image).to(x.dtype)
    return out


def yaw_proxy(landmarks: np.ndarray) -> np.ndarray:
    """``(N,)`` signed nose-tip offset from the eyes' midpoint, in eye distances (NaN without landmarks)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    left, right = landmarks[:, 36:42].mean(axis=1), landmarks[:, 42:48].mean(axis=1)  # (N, 2) eye centres
    distance = np.linalg.norm(right - left, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (landmarks[:, 30, 0] - (left[:, 0] + right[:, 0]) / 2) / distance


def conditions(prepared, split: str = "val", channels: str = "gray", seed: int = 0) -> dict[str, tuple]:
    """Every evaluation condition of ``split``: ``{name: (FaceTensors, note)}`` — clean, each occlusion (on the
    images with landmarks), and the frontal and strong-yaw subsets."""
    data = face_tensors(prepared, split, channels)
    landmarks = prepared.landmarks[data.index]
    size = prepared.images.shape[1]
    found = np.isfinite(landmarks).all(axis=(1, 2))
    out = {"clean": (data, "all images")}
    for name in OCCLUSIONS:
        keep = np.arange(len(data)) if name == "random square" else np.flatnonzero(found)
        masks = occlusion_masks(landmarks[keep], size, name, seed)
        subset = data.subset(keep)
        out[name] = (
            FaceTensors(occlude(subset.x, masks), subset.y, subset.soft, subset.index, subset.image_channels),
            "",
        )
    yaw = np.abs(yaw_proxy(landmarks))
    out["frontal"] = (data.subset(np.flatnonzero(found & (yaw < YAW_THRESHOLD))), f"|yaw| < {YAW_THRESHOLD}")
    out["strong yaw"] = (data.subset(np.flatnonzero(found & (yaw >= YAW_THRESHOLD))), f"|yaw| >= {YAW_THRESHOLD}")
    return out


def evaluate(run, prepared, split: str = "val", device=None, seed: int = 0, tta: str | None = None):
    """Accuracy, balanced accuracy and macro-F1 of a finished classifier run under every condition.

    Args:
        run: a :class:`~utils.core.runs.Run` of a classifier (supervised, fine-tuned, RAN).
        prepared: :class:`~utils.data.faces.PreparedFaces` prepared with the run's face settings: the ones it
            was trained on, or another dataset's. When the dataset's classes differ from the run's, only the
            classes both have are scored (as ``utils.evaluate`` does): images of the others are left out and
            the predictions are renormalised over the shared classes.
        split: the split evaluated.
        device: where to run the model (default: the best available).
        seed: places the random squares.
        tta: test-time augmentation (``utils.evaluation.metrics.TTA_MODES``).

    Returns:
        A DataFrame, one row per condition (``clean``, each of :data:`OCCLUSIONS`, ``frontal``, ``strong
        yaw``), with ``n`` the images evaluated.
    """
    import pandas as pd

    from utils.core.engine import amp_dtype
    from utils.core.runs import _device

    device = _device(device)
    model = run.method.to(device).classifier().eval()
    amp = amp_dtype(device, run.record.get("config", {}).get("train", {}).get("amp", True))
    channels = run.method.config.channels
    ours, theirs = list(run.method.spec.classes), list(prepared.classes)
    shared = [c for c in ours if c in theirs]
    if not shared:
        raise ValueError(f"the run's classes {ours} and {prepared.name}'s {theirs} have none in common")
    columns = [ours.index(c) for c in shared]
    to_shared = np.array([shared.index(c) if c in shared else -1 for c in theirs])  # dataset label -> shared
    rows = []
    for name, (data, note) in conditions(prepared, split, channels, seed).items():
        if ours != theirs:
            data = data.subset(np.flatnonzero(to_shared[data.y.cpu().numpy()] >= 0))
        if len(data) == 0:
            rows.append({"condition": name, "n": 0, "note": note})
            continue
        probs = predict(model, data.to(device), tta=tta, amp_dtype=amp)
        y = data.y.cpu().numpy()
        if ours != theirs:
            probs = probs[:, columns]
            probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
            y = to_shared[y]
        m = classification_metrics(y, probs, shared)
        rows.append(
            {
                "condition": name,
                "accuracy": m["accuracy"],
                "balanced_accuracy": m["balanced_accuracy"],
                "macro_f1": m["macro_f1"],
                "n": m["n"],
                "note": note,
            }
        )
    return pd.DataFrame(rows).set_index("condition")


@torch.no_grad()
def region_shares(net, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Each region's share of a RAN's pooled face, ``mu_i nu_i / sum_j mu_j nu_j`` ``(N, 1 + crops)`` (rows sum
    to 1; region 0 is the whole face), for uint8 faces ``x`` ``(N, C, S, S)``. The weights themselves can all be
    small; their shares are what the classifier reads."""
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(x), batch_size):
        out.append(net.attend(x[start : start + batch_size].to(device).float() / 255)[1].shares)
    return torch.cat(out)


@torch.no_grad()
def attention_shift(run, prepared, split: str = "val", device=None, seed: int = 0):
    """For a RAN run: under each occlusion, the share of the pooled face (``region_shares``) of the crop that
    the occlusion covers most, against the mean share of the other crops, on clean and occluded copies of the
    same faces. A crop that loses share when it is hidden is the attention doing what RAN claims.

    Returns:
        A DataFrame, one row per occlusion: the crop most covered, its share clean and occluded, the other
        crops' mean share clean and occluded, and the whole face's share clean and occluded (NaN for an
        occlusion placed by landmarks when no face of the split has them).
    """
    import pandas as pd

    from utils.methods.ran import region_crops

    device = (run.method.net.boxes.device) if device is None else torch.device(device)
    net = run.method.to(device).net.eval()
    names = run.method.crop_names
    data = face_tensors(prepared, split, run.method.config.channels, device)
    landmarks = prepared.landmarks[data.index]
    size = prepared.images.shape[1]
    found = np.flatnonzero(np.isfinite(landmarks).all(axis=(1, 2)))
    clean_shares = region_shares(net, data.x)  # once: every occlusion compares against the same clean faces
    rows = []
    for name in OCCLUSIONS:
        keep = np.arange(len(data)) if name == "random square" else found
        if len(keep) == 0:  # no face with landmarks to place it on: nothing measured
            rows.append({"occlusion": name})
            continue
        masks = occlusion_masks(landmarks[keep], size, name, seed)
        occluded = occlude(data.subset(keep).x, masks)
        # which crop each occlusion covers most, per image (crops only: region 0 is the whole face)
        cover = region_crops(torch.as_tensor(masks, device=device)[:, None].float(), net.boxes, 16)
        covered = cover.reshape(len(keep), len(net.boxes), -1).mean(dim=-1).argmax(dim=1) + 1  # (n,)
        weights = {
            "clean": clean_shares[torch.as_tensor(keep, device=device)],
            "occluded": region_shares(net, occluded),
        }
        rows_idx = torch.arange(len(keep), device=device)
        row = {"occlusion": name, "most covered crop": names[int(covered.mode().values)]}
        for label, w in weights.items():
            mine = w[rows_idx, covered]
            others = (w[:, 1:].sum(dim=1) - mine) / (w.shape[1] - 2)
            row[f"covered crop, {label}"] = float(mine.mean())
            row[f"other crops, {label}"] = float(others.mean())
            row[f"face, {label}"] = float(w[:, 0].mean())
        rows.append(row)
    return pd.DataFrame(rows).set_index("occlusion")
