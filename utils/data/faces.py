"""Face preprocessing: detection (Haar or dlib), 68 landmarks, eye-line alignment, crop, heatmap channels.

:func:`prepare` turns a :class:`~utils.data.FaceDataset` into :class:`PreparedFaces`: uint8 face images at
one size (48x48 grey by default), their landmarks, a landmark-heatmap channel, detection flags, labels and
splits, cached on disk keyed by the settings so that later notebooks load them in seconds.

Per image (:meth:`FacePreprocessor.process`):

1. **Detect** the face with OpenCV's Haar cascade or dlib's HOG detector, on the image resized by
   ``upscale`` (dlib's detection window is 80 px, so 48-px FER2013 faces are found only when enlarged).
   The largest face wins. When no face is found the image is kept, centred, and counted.
2. **Landmarks**: dlib's 68-point shape predictor (iBUG 300-W convention) inside the detected box; when
   no face was found, inside ``fallback_box``, the median dlib box of FER2013 faces, which suits datasets
   whose images are already face crops. Landmarks shipped with a dataset take precedence.
3. **Align**: a similarity transform that puts the eye centres on a horizontal line at the template
   position (:data:`EYE_MID`, :data:`EYE_DISTANCE`), then crop and resize to ``size``. Without landmarks,
   the detected box is cropped; without a face, the centred square is kept.
4. **Heatmaps**, two kinds: :func:`landmark_heatmaps`, Gaussians at the 68 landmarks (their maximum, so
   255 is a landmark centre); and :func:`centre_heatmap`, the seed project's single Gaussian at the image
   centre, kept as a baseline for ablations. The centred heatmap is **identical for every image**: it
   tells a network nothing about the face.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from utils.core import cache
from utils.core.runtime import DATA_DIR, show_progress
from utils.data.base import DatasetError, FaceDataset, Problem, read_image
from utils.data.labels import class_names
from utils.data.store import FaceStore, Rows

NUM_LANDMARKS = 68
RIGHT_EYE = slice(36, 42)  # the subject's right eye, on the image's left (iBUG 300-W numbering)
LEFT_EYE = slice(42, 48)
MOUTH = slice(48, 68)

# Alignment template, as fractions of the output side. Measured on 1,069 dlib-detected FER2013 Training
# faces (48 px): mean eye midpoint (23.7, 18.4) px, mean inter-ocular distance 17.5 px. Aligned faces are
# thus framed as FER2013 frames them, so aligned and unaligned images look alike.
EYE_MID = (0.493, 0.383)
EYE_DISTANCE = 0.365

# Median dlib box on the same faces, as (x, y, w, h) fractions of the frame: where landmarks are sought
# when no face is detected in an image that is already a face crop.
FER_FACE_BOX = (0.06, 0.13, 0.88, 0.87)

CACHE_VERSION = 1  # bump when the preprocessing changes what it writes


@dataclass(frozen=True)
class FaceConfig:
    """Face preprocessing settings. Every field is part of the cache key.

    Attributes:
        detector: ``"dlib"`` (HOG + linear SVM), ``"haar"`` (OpenCV's frontal-face cascade) or ``"none"``.
        upscale: factor the image is enlarged by before detection (small images only; 2 finds 70% of
            FER2013's 48-px faces with dlib, 1 finds none: dlib's window is 80 px).
        landmarks: predict 68 landmarks with dlib's shape predictor.
        align: rotate and scale faces with landmarks so the eyes sit level at the template position.
        size: output side in pixels.
        color: ``"gray"`` or ``"rgb"`` output.
        sigma: standard deviation of each landmark Gaussian, in output pixels.
        fallback_box: where landmarks are sought when no face is detected, (x, y, w, h) as fractions of
            the image; None to leave such images without landmarks.
        use_given_landmarks: use landmarks shipped with the dataset instead of predicting them.
        max_detect_side: larger images are shrunk to this side for detection (speed).
    """

    detector: str = "dlib"
    upscale: float = 2.0
    landmarks: bool = True
    align: bool = True
    size: int = 48
    color: str = "gray"
    sigma: float = 1.5
    fallback_box: tuple[float, float, float, float] | None = FER_FACE_BOX
    use_given_landmarks: bool = True
    max_detect_side: int = 480

    def __post_init__(self):
        if self.detector not in ("dlib", "haar", "none"):
            raise ValueError(f"detector must be 'dlib', 'haar' or 'none', not {self.detector!r}")
        if self.color not in ("gray", "rgb"):
            raise ValueError(f"color must be 'gray' or 'rgb', not {self.color!r}")
        if self.size < 8 or self.upscale <= 0 or self.sigma <= 0:
            raise ValueError(f"size >= 8, upscale > 0 and sigma > 0 expected, got {self}")


# ------------------------------------------------------------------------------------------ model files


def shape_predictor_path() -> Path:
    """Where dlib's 68-point shape predictor is: ``$FER_SHAPE_PREDICTOR`` or the face-recognition-models package.

    The package is located without importing it (its ``__init__`` needs ``pkg_resources``).
    """
    env = os.environ.get("FER_SHAPE_PREDICTOR")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"FER_SHAPE_PREDICTOR={env}: no such file")
        return path
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "models" / "shape_predictor_68_face_landmarks.dat"
            if path.is_file():
                return path
    raise FileNotFoundError(
        "dlib's 68-point shape predictor was not found: `pip install face-recognition-models`, or download "
        "shape_predictor_68_face_landmarks.dat (dlib.net/files) and set FER_SHAPE_PREDICTOR to its path"
    )


def haar_cascade_path() -> Path:
    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: OpenCV's Haar cascade is missing; reinstall opencv-python (4.x)")
    return path


# ------------------------------------------------------------------------------------------- per image


def similarity_to_template(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 similarity transform putting the eye centres level at the template position in a size x size image."""
    right = landmarks[RIGHT_EYE].mean(axis=0)  # image-left eye
    left = landmarks[LEFT_EYE].mean(axis=0)
    dx, dy = left - right
    distance = max(float(np.hypot(dx, dy)), 1e-6)
    scale = EYE_DISTANCE * size / distance
    angle = np.arctan2(dy, dx)  # rotating by -angle makes the eye line horizontal
    cos, sin = scale * np.cos(-angle), scale * np.sin(-angle)
    mid = (left + right) / 2
    target = np.array(EYE_MID) * size
    rotation = np.array([[cos, -sin], [sin, cos]])
    shift = target - rotation @ mid
    return np.hstack([rotation, shift[:, None]])


def square_crop_transform(box, size: int, zoom: float = 1.0) -> np.ndarray:
    """The 2x3 transform mapping the square around ``box`` (x, y, w, h), enlarged by ``zoom``, to size x size."""
    x, y, w, h = box
    side = max(w, h) * zoom
    cx, cy = x + w / 2, y + h / 2
    s = size / side
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])


def apply_transform(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp ``image`` by the 2x3 ``matrix`` into size x size, without aliasing when it shrinks.

    A large face (AffectNet, RAF-DB originals) shrunk to 48 px by bilinear sampling alone would skip most
    pixels; it is first reduced by area averaging to about the output scale, then warped.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.75:
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]
        matrix = np.hstack([matrix[:, :2] @ np.diag([1 / fx, 1 / fy]), matrix[:, 2:]])
        image = small
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class FacePreprocessor:
    """Detects, aligns and crops one image at a time; holds the detector and predictor (not picklable)."""

    def __init__(self, config: FaceConfig):
        self.config = config
        self._detector = None
        self._predictor = None
        if config.detector == "haar":
            self._detector = cv2.CascadeClassifier(str(haar_cascade_path()))
        elif config.detector == "dlib":
            import dlib

            self._detector = dlib.get_frontal_face_detector()
        if config.landmarks:
            import dlib

            self._predictor = dlib.shape_predictor(str(shape_predictor_path()))

    def detection_scale(self, height: int, width: int) -> float:
        """How much an image is resized for detection: enlarged when small, shrunk when large."""
        cfg = self.config
        if max(height, width) * cfg.upscale <= cfg.max_detect_side:
            return cfg.upscale
        return min(cfg.upscale, cfg.max_detect_side / max(height, width))

    def detect(self, gray: np.ndarray, scale: float) -> tuple[np.ndarray | None, np.ndarray]:
        """The largest face as (x, y, w, h) in source pixels (or None), and the image resized by ``scale``."""
        work = gray if scale == 1 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        if self.config.detector == "dlib":
            faces = [(r.left(), r.top(), r.width(), r.height()) for r in self._detector(work, 0)]
        elif self.config.detector == "haar":
            min_side = max(20, int(0.3 * min(work.shape)))  # a face fills a good part of FER-style images
            found = self._detector.detectMultiScale(work, scaleFactor=1.1, minNeighbors=4, minSize=(min_side,) * 2)
            faces = [tuple(int(v) for v in f) for f in found]
        else:
            faces = []
        if not faces:
            return None, work
        box = max(faces, key=lambda f: f[2] * f[3])
        return np.array(box, dtype=np.float64) / scale, work

    def predict_landmarks(self, work: np.ndarray, box, scale: float) -> np.ndarray:
        """68 landmarks in source pixels, predicted in ``box`` (source pixels) on the resized image ``work``."""
        import dlib

        x, y, w, h = (np.asarray(box) * scale).round().astype(int)
        shape = self._predictor(work, dlib.rectangle(int(x), int(y), int(x + w - 1), int(y + h - 1)))
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        return points / scale

    def process(self, image: np.ndarray, given_landmarks: np.ndarray | None = None):
        """Preprocess one image (uint8 grey or RGB, any size).

        Returns:
            ``(face, landmarks, face_found)``: the ``size`` x ``size`` uint8 face (grey or RGB), its 68
            landmarks in output pixels (NaN when none), and whether a face was detected (or given).
        """
        cfg = self.config
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        scale = self.detection_scale(h, w)
        landmarks = None
        if given_landmarks is not None and cfg.use_given_landmarks and np.isfinite(given_landmarks).all():
            landmarks = np.asarray(given_landmarks, dtype=np.float64)
            xy_min, xy_max = landmarks.min(axis=0), landmarks.max(axis=0)
            box = np.array([*xy_min, *(xy_max - xy_min)])
        else:
            box, work = self.detect(gray, scale) if cfg.detector != "none" else (None, None)
            if cfg.landmarks:
                search = box
                if search is None and cfg.fallback_box is not None:
                    fx, fy, fw, fh = cfg.fallback_box
                    search = np.array([fx * w, fy * h, fw * w, fh * h])
                if search is not None:
                    if work is None:
                        work = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
                    landmarks = self.predict_landmarks(work, search, scale)
        found = box is not None
        if found and landmarks is not None and cfg.align:
            matrix = similarity_to_template(landmarks, cfg.size)
        elif found:
            matrix = square_crop_transform(box, cfg.size, zoom=1.15)  # FER2013-like margin around the box
        else:
            side = min(h, w)  # the centred square, kept as it is
            matrix = square_crop_transform(((w - side) / 2, (h - side) / 2, side, side), cfg.size)
        source = image if cfg.color == "rgb" and image.ndim == 3 else gray
        if cfg.color == "rgb" and image.ndim == 2:
            source = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        face = warp(source, matrix, cfg.size)
        if landmarks is None:
            out = np.full((NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        else:
            out = apply_transform(landmarks, matrix).astype(np.float32)
        return face, out, found


def detection_rates(dataset: FaceDataset, settings=(("dlib", 2.0),), n: int | None = 1000, seed: int = 0):
    """Share of images in which each detector finds a face, and its time per image (one process).

    Args:
        dataset: what to measure on; ``n`` images drawn at random (all when None).
        settings: ``(detector, upscale)`` pairs to compare.

    Returns:
        A pandas table, one row per setting: detector, upscale, detected share, milliseconds per image.
    """
    import time

    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = np.arange(len(dataset)) if n is None or n >= len(dataset) else np.sort(rng.choice(len(dataset), n, False))
    images = [dataset.image(int(i)) for i in rows]
    out = []
    for detector, upscale in settings:
        pre = FacePreprocessor(FaceConfig(detector=detector, upscale=upscale, landmarks=False, align=False))
        found = 0
        tic = time.perf_counter()
        for image in images:
            box, _ = pre.detect(image, pre.detection_scale(*image.shape[:2]))
            found += box is not None
        seconds = time.perf_counter() - tic
        out.append(
            {
                "detector": detector,
                "upscale": upscale,
                "detected": found / len(images),
                "ms_per_image": 1000 * seconds / len(images),
                "images": len(images),
            }
        )
    return pd.DataFrame(out)


# -------------------------------------------------------------------------------------------- heatmaps


def landmark_heatmaps(landmarks: np.ndarray, size: int, sigma: float, chunk: int = 2048) -> np.ndarray:
    """One heatmap per image: the maximum of Gaussians centred at its landmarks.

    Args:
        landmarks: ``(N, K, 2)`` x, y in pixels of a size x size image; NaN rows give an empty map.
        size: heatmap side in pixels.
        sigma: Gaussian standard deviation in pixels.

    Returns:
        ``(N, size, size)`` uint8; 255 at a landmark, 0 far from all of them.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    n = len(landmarks)
    out = np.zeros((n, size, size), dtype=np.uint8)
    grid = np.arange(size, dtype=np.float32) + 0.0  # pixel centres at integer coordinates (OpenCV's)
    for start in range(0, n, chunk):
        pts = landmarks[start : start + chunk]  # (n, K, 2)
        gx = np.exp(-((grid[None, None, :] - pts[..., 0:1]) ** 2) / (2 * sigma**2))  # (n, K, size)
        gy = np.exp(-((grid[None, None, :] - pts[..., 1:2]) ** 2) / (2 * sigma**2))
        gx = np.nan_to_num(gx, nan=0.0)
        gy = np.nan_to_num(gy, nan=0.0)
        heat = np.zeros((len(pts), size, size), dtype=np.float32)
        for k in range(pts.shape[1]):  # separable Gaussians: outer product of the x and y profiles
            np.maximum(heat, gy[:, k, :, None] * gx[:, k, None, :], out=heat)
        out[start : start + chunk] = np.rint(heat * 255).astype(np.uint8)
    return out


def centre_heatmap(size: int, sigma: float | None = None) -> np.ndarray:
    """The seed project's heatmap: one Gaussian at the image centre, **the same for every image**.

    Args:
        size: side in pixels.
        sigma: standard deviation in pixels; ``size / 6`` by default, a blob covering the face.

    Returns:
        ``(size, size)`` uint8, 255 at the centre.
    """
    sigma = size / 6 if sigma is None else sigma
    grid = np.arange(size, dtype=np.float32) - (size - 1) / 2
    g = np.exp(-(grid**2) / (2 * sigma**2))
    return np.rint(np.outer(g, g) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------- whole datasets


@dataclass
class PreparedFaces:
    """A preprocessed dataset: arrays ready for training, one row per kept image.

    Attributes:
        name: dataset name (``"fer2013"``; merged sets join the names with ``+``).
        classes: canonical class names (7 or 8).
        images: ``(N, S, S)`` uint8 grey or ``(N, S, S, 3)`` RGB faces.
        landmarks: ``(N, 68, 2)`` float32 in output pixels; NaN rows where none were found.
        heatmaps: ``(N, S, S)`` uint8 landmark heatmaps (see :func:`landmark_heatmaps`).
        labels: ``(N,)`` int64 canonical class ids.
        splits: ``(N,)`` split names (train / val / test / all).
        face_found: ``(N,)`` bool, a face was detected (or its landmarks given).
        rows: ``(N,)`` row of each image in the source :class:`FaceDataset`.
        sources: ``(N,)`` the dataset each image came from (differs only after :func:`merge`).
        soft_labels: ``(N, C)`` float32 label distributions (FERPlus), else None.
        labelled: for a subset with a fraction of the training labels
            (:func:`utils.evaluation.label_efficiency.labelled_subset`), its fraction, seed and training rows; else None.
        config: the :class:`FaceConfig` used.
        problems: unreadable images that were skipped.
        loaded_from_cache: whether :func:`prepare` found these arrays on disk.
    """

    name: str
    classes: tuple[str, ...]
    images: np.ndarray
    landmarks: np.ndarray
    heatmaps: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    face_found: np.ndarray
    rows: np.ndarray
    sources: np.ndarray
    config: FaceConfig
    soft_labels: np.ndarray | None = None
    labelled: dict | None = None
    problems: list[Problem] = field(default_factory=list)
    loaded_from_cache: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s} {int((self.splits == s).sum())}" for s in dict.fromkeys(self.splits))
        return f"PreparedFaces({self.name!r}, {len(self)} images {self.images.shape[1:]}: {sizes})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def heatmap(self, kind: str = "landmarks") -> np.ndarray:
        """``(N, S, S)`` uint8 heatmap channel: ``"landmarks"`` or ``"centre"`` (the same map for all)."""
        if kind == "landmarks":
            return self.heatmaps
        if kind in ("centre", "center"):
            size = self.images.shape[1]
            return np.broadcast_to(centre_heatmap(size), (len(self), size, size))
        raise ValueError(f"heatmap kind must be 'landmarks' or 'centre', not {kind!r}")

    def subset(self, rows) -> PreparedFaces:
        rows = np.asarray(rows)
        take = {
            "images": self.images[rows],
            "landmarks": self.landmarks[rows],
            "heatmaps": self.heatmaps[rows],
            "labels": self.labels[rows],
            "splits": self.splits[rows],
            "face_found": self.face_found[rows],
            "rows": self.rows[rows],
            "sources": self.sources[rows],
            "soft_labels": None if self.soft_labels is None else self.soft_labels[rows],
        }
        return replace(self, **take, problems=list(self.problems))

    def detection_stats(self) -> dict:
        """Share of images with a detected face and with landmarks, overall and per split."""
        step = 1 << 16  # in pieces: a million faces' landmarks are 544 MB, memory-mapped
        pieces = [
            np.isfinite(np.asarray(self.landmarks[s : s + step])).all(axis=(1, 2)) for s in range(0, len(self), step)
        ]
        has_landmarks = np.concatenate(pieces) if pieces else np.zeros(0, dtype=bool)
        out = {
            "images": len(self),
            "face_found": float(self.face_found.mean()) if len(self) else 0.0,
            "landmarks": float(has_landmarks.mean()) if len(self) else 0.0,
        }
        for split in dict.fromkeys(self.splits):
            mask = self.splits == split
            out[f"face_found_{split}"] = float(self.face_found[mask].mean())
        return out


def _fingerprint(dataset: FaceDataset) -> dict:
    """What identifies a dataset's content for the cache key (cheap: no image is decoded)."""
    import hashlib

    digest = hashlib.sha1()
    digest.update(dataset.table[["split", "label"]].to_numpy().astype(str).tobytes())
    if dataset.pixels is not None:
        digest.update(np.ascontiguousarray(dataset.pixels).data)
    if "path" in dataset.table:
        for rel in dataset.table["path"]:
            stat = (dataset.root / rel).stat()
            digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    if dataset.landmarks is not None:
        digest.update(np.ascontiguousarray(dataset.landmarks).data)
    if dataset.soft_labels is not None:
        digest.update(np.ascontiguousarray(dataset.soft_labels).data)
    return {"name": dataset.name, "rows": len(dataset), "sha1": digest.hexdigest()}


_WORKER: dict = {}


def _process_chunk(config: FaceConfig, images, paths, root, given, first_row: int = 0) -> tuple:
    """Worker: preprocess a chunk of images (pixel arrays, or files under ``root``) into the store's arrays.

    Returns:
        ``(arrays, problems)``: ``{"images", "heatmaps", "landmarks", "face_found", "ok"}`` for every row of the
        chunk (zeros where an image could not be read), and ``(row, file, reason)`` for those images.
    """
    pre = _WORKER.get(config)
    if pre is None:
        pre = _WORKER[config] = FacePreprocessor(config)
    n = len(images) if images is not None else len(paths)
    shape = (n, config.size, config.size) + ((3,) if config.color == "rgb" else ())
    faces = np.zeros(shape, dtype=np.uint8)
    landmarks = np.full((n, NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    ok = np.ones(n, dtype=bool)
    problems = []
    for i in range(n):
        if images is not None:
            image = images[i]
        else:
            try:
                image = read_image(Path(root) / paths[i], "rgb" if config.color == "rgb" else "gray")
            except DatasetError as e:
                ok[i] = False
                problems.append((first_row + i, str(paths[i]), str(e).split(": ", 1)[-1]))
                continue
        faces[i], landmarks[i], found[i] = pre.process(image, None if given is None else given[i])
    heat = landmark_heatmaps(landmarks, config.size, config.sigma)
    arrays = {"images": faces, "heatmaps": heat, "landmarks": landmarks, "face_found": found, "ok": ok}
    return arrays, problems


def store_fields(config: FaceConfig) -> dict[str, tuple[str, tuple]]:
    """The arrays of a face store prepared with ``config``: name -> (dtype, shape of one row)."""
    face = (config.size, config.size) + ((3,) if config.color == "rgb" else ())
    return {
        "images": ("uint8", face),
        "heatmaps": ("uint8", (config.size, config.size)),
        "landmarks": ("float32", (NUM_LANDMARKS, 2)),
        "face_found": ("bool", ()),
        "ok": ("bool", ()),
    }


def _fill(store: FaceStore, dataset: FaceDataset, config: FaceConfig, workers: int, progress: bool) -> None:
    """Prepare the chunks ``store`` lacks, on ``workers`` processes, writing each as it finishes."""
    todo = store.todo()
    if not todo:
        return
    paths = dataset.table["path"].to_numpy() if dataset.pixels is None else None

    def args(k):
        span = store.chunk_rows(k)
        part = slice(span.start, span.stop)
        images = None if dataset.pixels is None else dataset.pixels[part]
        part_paths = None if paths is None else paths[part]
        given = None if dataset.landmarks is None else dataset.landmarks[part]
        return config, images, part_paths, dataset.root, given, span.start

    left = sum(len(store.chunk_rows(k)) for k in todo)
    resumed = store.rows - left
    desc = f"preparing {dataset.name}" + (f" (resumed: {resumed:,} faces already done)" if resumed else "")
    bar = _progress(total=left, desc=desc, enabled=progress)
    try:
        if workers <= 1 or len(todo) == 1:
            for k in todo:
                store.write(k, *_process_chunk(*args(k)))
                bar.update(len(store.chunk_rows(k)))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                pending, queue = {}, list(todo)
                while queue or pending:
                    while queue and len(pending) < 2 * workers:  # a bounded window: memory stays flat
                        k = queue.pop(0)
                        pending[pool.submit(_process_chunk, *args(k))] = k
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        k = pending.pop(future)
                        store.write(k, *future.result())
                        bar.update(len(store.chunk_rows(k)))
    finally:
        bar.close()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="face", unit_scale=True, disable=not show_progress(enabled), mininterval=1.0
    )


def _from_old_cache(store: FaceStore, path: Path) -> None:
    """Fill an empty store from the single ``.npz`` file that versions before the store kept for the same settings,
    so that faces prepared once are not prepared again. The old file is left where it was."""
    if store.done() or not path.is_file():
        return
    old = cache.load(path, store.meta["key"])
    if old is None:
        return
    n, rows = store.rows, old["rows"]
    full = {}
    for name, (dtype, shape) in store_fields_of(store).items():
        full[name] = np.zeros((n, *shape), dtype=dtype) if name != "landmarks" else np.full((n, *shape), np.nan, dtype)
    for name in ("images", "heatmaps", "landmarks", "face_found"):
        full[name][rows] = old[name]
    full["ok"][rows] = True
    bad = [(int(r), *str(why).split(": ", 1)) for r, why in zip(old["bad_rows"], old["bad_reasons"])]
    for k in range(store.chunks):
        span = store.chunk_rows(k)
        part = {name: a[span.start : span.stop] for name, a in full.items()}
        store.write(k, part, [b for b in bad if span.start <= b[0] < span.stop])


def store_fields_of(store: FaceStore) -> dict[str, tuple[str, tuple]]:
    return {name: (spec["dtype"], tuple(spec["shape"])) for name, spec in store.meta["fields"].items()}


def store_folder(dataset: FaceDataset, config: FaceConfig | None = None, cache_dir=None) -> Path:
    """Where :func:`prepare` keeps ``dataset`` prepared with ``config``: ``<cache_dir>/<name>-faces-<key>/``."""
    config = config or FaceConfig()
    settings = {"version": CACHE_VERSION, "dataset": _fingerprint(dataset), "config": asdict(config)}
    folder = Path(cache_dir) if cache_dir is not None else DATA_DIR / "cache"
    return folder / f"{dataset.name}-faces-{cache.settings_key(settings)[:16]}"


def prepare(
    dataset: FaceDataset,
    config: FaceConfig | None = None,
    cache_dir=None,
    workers: int | None = None,
    refresh: bool = False,
    progress: bool = True,
    chunk: int = 512,
) -> PreparedFaces:
    """Preprocess every image of ``dataset`` (see the module docstring) into a face store, or open the store.

    The store (:mod:`utils.data.store`) is written chunk by chunk and memory-mapped when read, so a million
    faces need no more memory than a thousand; an interrupted preparation resumes from its finished chunks.

    Args:
        dataset: what a reader of :mod:`utils.data` returned.
        config: preprocessing settings (defaults: dlib, 68 landmarks, aligned, 48x48 grey, sigma 1.5).
        cache_dir: where stores live (``data/cache`` by default); ``False`` keeps the result in memory only.
        workers: processes (default: all CPU cores).
        refresh: prepare again even when a finished store exists.
        progress: show a progress bar (faces/s and the time left).
        chunk: images per chunk: the unit of work of a process, and of resuming.

    Returns:
        :class:`PreparedFaces` whose images, heatmaps and landmarks are memory-mapped from the store.
        Unreadable image files are skipped and listed in ``problems``.

    Raises:
        StoreFull: the disk filled up; the finished chunks are kept, and the next call resumes from them.
    """
    import tempfile

    config = config or FaceConfig()
    workers = workers or os.cpu_count() or 1
    settings = {"version": CACHE_VERSION, "dataset": _fingerprint(dataset), "config": asdict(config)}
    key = cache.settings_key(settings)
    fields = store_fields(config)
    if cache_dir is False:
        with tempfile.TemporaryDirectory(prefix="faces-") as tmp:
            store = FaceStore.open(Path(tmp) / "store", key, len(dataset), chunk, fields)
            _fill(store, dataset, config, workers, progress)
            arrays, bad, loaded = store.arrays(mmap=False), store.problems(), False
    else:
        folder = store_folder(dataset, config, cache_dir)
        if refresh:
            shutil.rmtree(folder, ignore_errors=True)
        store = FaceStore.open(folder, key, len(dataset), chunk, fields)
        _from_old_cache(store, folder.parent / f"{dataset.name}-faces-{key[:16]}.npz")
        loaded = store.complete
        _fill(store, dataset, config, workers, progress)
        arrays, bad = store.arrays(), store.problems()
    keep = np.flatnonzero(arrays["ok"])
    problems = [Problem(where, why) for _, where, why in bad]
    if problems:
        warnings.warn(f"{dataset.root}: {len(problems)} unreadable images skipped, e.g. {problems[0]}", stacklevel=2)
    everything = len(keep) == len(dataset)

    def kept(array):  # every row (the usual case): the mapped array itself; else a view of the readable rows
        return array if everything else Rows([(array, keep)]) if isinstance(array, np.memmap) else array[keep]

    table = dataset.table
    return PreparedFaces(
        name=dataset.name,
        classes=class_names(dataset.num_classes),
        images=kept(arrays["images"]),
        landmarks=kept(arrays["landmarks"]),
        heatmaps=kept(arrays["heatmaps"]),
        labels=table["label"].to_numpy(np.int64)[keep],
        splits=table["split"].to_numpy().astype(str)[keep],
        face_found=np.asarray(arrays["face_found"][keep]),
        rows=keep.astype(np.int64),
        sources=np.full(len(keep), dataset.name),
        config=config,
        soft_labels=None if dataset.soft_labels is None else dataset.soft_labels[keep],
        problems=problems,
        loaded_from_cache=loaded,
    )


def remember_config(dataset_name: str, config: FaceConfig, cache_dir=None) -> Path:
    """Record ``config`` as the preprocessing of ``dataset_name`` (notebook 01 does), for later notebooks."""
    import json

    folder = Path(cache_dir) if cache_dir is not None else DATA_DIR / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset_name}-faces.json"
    path.write_text(json.dumps(asdict(config), indent=1))
    return path


def remembered_config(dataset_name: str, cache_dir=None) -> FaceConfig:
    """The preprocessing notebook 01 recorded for ``dataset_name``, or the defaults when it did not run."""
    import json

    folder = Path(cache_dir) if cache_dir is not None else DATA_DIR / "cache"
    path = folder / f"{dataset_name}-faces.json"
    if not path.is_file():
        return FaceConfig()
    values = json.loads(path.read_text())
    if values.get("fallback_box") is not None:
        values["fallback_box"] = tuple(values["fallback_box"])
    return FaceConfig(**values)


def merge(base: PreparedFaces, *extra: PreparedFaces, drop_extra_classes: bool = True) -> PreparedFaces:
    """Merge datasets into one training set: ``base`` keeps its splits, the others add training images.

    The images of ``extra`` datasets all join ``base``'s train split (whatever their own split was), so
    validation and test stay those of ``base`` and results stay comparable with ``base`` alone; faces without
    labels (:func:`utils.data.folder.read_faces`) stay in the unlabelled split, which only pretraining reads.
    Sets too large for memory are joined without being read (:class:`~utils.data.store.Rows`). All must
    share size and colour. Classes ``base`` lacks (contempt, when ``base`` is FER2013) are dropped when
    ``drop_extra_classes``, and kept as an eighth class otherwise.
    """
    parts = [base, *extra]
    shapes = {p.images.shape[1:] for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"cannot merge images of different shapes {sorted(shapes)}; prepare them with one FaceConfig")
    num_classes = base.num_classes if drop_extra_classes else max(p.num_classes for p in parts)
    kept = []
    for k, part in enumerate(parts):
        mask = part.labels < num_classes
        if k > 0:
            if not mask.all():  # a subset reads its rows: a store of a million faces is kept whole, unread
                part = part.subset(np.flatnonzero(mask))
            part = replace(part, splits=np.where(part.splits == "unlabelled", "unlabelled", "train"))
        kept.append(part)
    soft = None
    if all(p.soft_labels is not None for p in kept):
        soft = np.concatenate([p.soft_labels[:, :num_classes] for p in kept])
    return PreparedFaces(
        name="+".join(p.name for p in kept),
        classes=class_names(num_classes),
        images=_join([p.images for p in kept]),
        landmarks=_join([p.landmarks for p in kept]),
        heatmaps=_join([p.heatmaps for p in kept]),
        labels=np.concatenate([p.labels for p in kept]),
        splits=np.concatenate([p.splits for p in kept]),
        face_found=np.concatenate([p.face_found for p in kept]),
        rows=np.concatenate([p.rows for p in kept]),
        sources=np.concatenate([p.sources for p in kept]),
        config=base.config,
        soft_labels=soft,
        problems=[q for p in kept for q in p.problems],
    )


IN_MEMORY_BYTES = 1 << 30
"""Merged arrays up to this size are joined in memory; larger ones stay on disk, joined as :class:`Rows`."""


def _join(arrays):
    size = sum(len(a) * int(np.prod(a.shape[1:])) * np.dtype(a.dtype).itemsize for a in arrays)
    if size > IN_MEMORY_BYTES and any(isinstance(a, (np.memmap, Rows)) for a in arrays):
        return Rows.stack(arrays)
    return np.concatenate([np.asarray(a) for a in arrays])


# ------------------------------------------------------------------------------ a look inside (notebook 01)


def preparation_steps(
    dataset: FaceDataset, config: FaceConfig | None = None, count: int = 6, seed: int = 0, detectors=("haar", "dlib")
) -> list[dict]:
    """The steps of :meth:`FacePreprocessor.process` on ``count`` images drawn at random, for a figure
    (:func:`utils.evaluation.plots.preparation_steps`).

    Returns:
        One dict per image: ``row``, ``label``, ``image`` (as read), ``boxes`` (``{detector: (x, y, w, h) in
        source pixels, or None}`` for each of ``detectors`` at ``config.upscale``), ``landmarks`` (68, in
        source pixels: the dataset's own when it ships them, else predicted in the box of ``config.detector``,
        or in the fallback box when it finds none; None without either), ``face`` and ``face_landmarks`` (what
        :func:`prepare` keeps: aligned, in output pixels) and ``found``.
    """
    config = config or FaceConfig()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(dataset), size=min(count, len(dataset)), replace=False))
    finders = {d: FacePreprocessor(replace(config, detector=d, landmarks=False, align=False)) for d in detectors}
    full = FacePreprocessor(config)
    out = []
    for row in rows.tolist():
        image = dataset.image(row, "rgb" if config.color == "rgb" else "gray")
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        boxes = {d: pre.detect(gray, pre.detection_scale(*gray.shape))[0] for d, pre in finders.items()}
        given = None if dataset.landmarks is None else dataset.landmarks[row]
        landmarks = given if given is not None and np.isfinite(given).all() else None
        if landmarks is None and config.landmarks:
            scale = full.detection_scale(*gray.shape)
            box, work = full.detect(gray, scale) if config.detector != "none" else (None, None)
            if box is None and config.fallback_box is not None:
                h, w = gray.shape
                box = np.array(config.fallback_box) * [w, h, w, h]
            if box is not None:
                work = work if work is not None else cv2.resize(gray, None, fx=scale, fy=scale)
                landmarks = full.predict_landmarks(work, box, scale)
        face, face_landmarks, found = full.process(image, given)
        label = int(dataset.table["label"].iloc[row])
        out.append(
            {
                "row": row,
                "label": class_names(dataset.num_classes)[label],
                "image": image,
                "boxes": boxes,
                "landmarks": landmarks,
                "face": face,
                "face_landmarks": face_landmarks,
                "found": bool(found),
            }
        )
    return out


def preparation_summary(prepared: PreparedFaces) -> str:
    """What :func:`prepare` did, in three lines: computed or loaded from the cache, the share of faces detected
    and with landmarks, and the unreadable images skipped (named, when there are any)."""
    stats = prepared.detection_stats()
    how = "loaded from the cache (data/cache/)" if prepared.loaded_from_cache else "computed and cached"
    lines = [
        f"{prepared}: {how}",
        f"face detected: {stats['face_found']:.1%}   landmarks: {stats['landmarks']:.1%}",
        f"{len(prepared.problems)} unreadable images skipped" + "".join(f"\n  {p}" for p in prepared.problems[:10]),
    ]
    return "\n".join(lines)


def reading_summary(dataset: FaceDataset) -> str:
    """What a reader skipped or left out of ``dataset``: bad rows or files (the first ten named) and images its own
    rules exclude, counted."""
    lines = [f"{len(dataset.problems)} bad rows or files skipped"]
    lines += [f"   {problem}" for problem in dataset.problems[:10]]
    lines += [f"excluded by the dataset's own rules: {count} ({reason})" for reason, count in dataset.excluded.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- photos to try (notebook 07)


def synthetic_group_photo(expressions=(3, 5, 6), seed: int = 3, size: int = 96) -> np.ndarray:
    """A grey "group photo" of synthetic faces (:func:`utils.data.sample.draw_face`) showing ``expressions``
    (canonical ids; by default happy, surprise, neutral), side by side on a plain background with room above
    and below each face for its label. Nothing to download, and safe to ship."""
    from utils.data.sample import draw_face

    rng = np.random.default_rng(seed)
    gap, margin = size // 3, size
    canvas = np.full((size + 2 * margin, len(expressions) * (size + gap) + gap), 128, dtype=np.uint8)
    for k, expression in enumerate(expressions):
        x, y = gap + k * (size + gap), margin + int(rng.integers(-size // 8, size // 8 + 1))
        canvas[y : y + size, x : x + size] = draw_face(int(expression), rng, size=size)[0]
    return canvas


def uploaded_image(value) -> np.ndarray | None:
    """The photo in an ``ipywidgets.FileUpload``'s ``value`` (ipywidgets 8: a tuple of files; 7: a dict by
    name) as uint8 RGB, upright as its EXIF orientation says; None when nothing was uploaded."""
    import io

    from PIL import Image, ImageOps

    if not value:
        return None
    item = value[0] if isinstance(value, (list, tuple)) else next(iter(value.values()))
    with Image.open(io.BytesIO(bytes(item["content"]))) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
