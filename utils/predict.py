"""Recognise expressions on any photo, folder of photos or video with a finished classifier run:
``python -m utils.predict IMAGE_OR_FOLDER_OR_VIDEO --run RUN_DIR [--out DIR] [--fps 2]``.

Every face is found (dlib's detector, OpenCV's Haar cascade when dlib finds none), its 68 landmarks
predicted, and it is aligned and cropped exactly as the run's training faces were (the face settings in its
record), then classified. Each image gets an annotated copy (box and top-3 expressions with probabilities)
and a JSON file; a video is sampled at ``--fps`` frames a second and gets a CSV (a row per frame and face)
and an annotated video. Colour or grey, any size (large images are shrunk for detection, boxes are given in
the original's pixels), EXIF orientation honoured. An image without a face gives an empty list (and exit
status 0); a file that cannot be read is named in an error, the rest of a folder is still processed, and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
TOP = 3


@dataclass
class Face:
    """One face found in an image: its box in the original's pixels, the aligned face and what the run says."""

    box: tuple[float, float, float, float]  # x, y, width, height
    detector: str
    face: np.ndarray  # (S, S) or (S, S, 3) uint8, aligned as in training
    landmarks: np.ndarray  # (68, 2) in the aligned face's pixels
    probabilities: dict[str, float]

    def top(self, k: int = TOP) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_json(self) -> dict:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "detector": self.detector,
            "top": [{"expression": c, "probability": round(p, 4)} for c, p in self.top()],
            "probabilities": {c: round(p, 4) for c, p in self.probabilities.items()},
        }


class Predictor:
    """A finished run ready to classify faces in photos (loads it once; see :func:`predict_image`)."""

    def __init__(self, run_dir, device="cpu"):
        from utils.core.runs import load_run
        from utils.data.faces import FaceConfig, FacePreprocessor

        from .methods import config_from_dict

        self.run = load_run(run_dir, device=device)
        if self.run.method.kind != "classifier":
            raise ValueError(f"{run_dir}: not a classifier run; use a supervised, RAN or fine-tuning run")
        self.model = self.run.method.classifier().eval()
        self.device = torch.device(device)
        self.classes = list(self.run.method.spec.classes)
        self.channels = self.run.method.config.channels
        self.faces = config_from_dict(FaceConfig, self.run.record["dataset"]["faces"])
        self.pre = FacePreprocessor(self.faces)  # the landmark predictor; detection finds every face (below)
        import dlib

        self._dlib = dlib.get_frontal_face_detector()
        self._haar = None

    def boxes(self, gray: np.ndarray) -> tuple[list[np.ndarray], str, float, np.ndarray]:
        """Every face box (source pixels), the detector that found them, the detection scale and image."""
        scale = self.pre.detection_scale(*gray.shape)
        work = gray if scale == 1 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        found = [np.array([r.left(), r.top(), r.width(), r.height()], float) / scale for r in self._dlib(work, 0)]
        if found:
            return found, "dlib", scale, work
        if self._haar is None:
            from utils.data.faces import haar_cascade_path

            self._haar = cv2.CascadeClassifier(str(haar_cascade_path()))
        side = max(20, int(0.1 * min(work.shape)))
        hits = self._haar.detectMultiScale(work, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        return [np.array(h, float) / scale for h in hits], "haar", scale, work

    def align(self, image: np.ndarray, gray: np.ndarray, box, scale: float, work: np.ndarray):
        """The face in ``box`` aligned and cropped as the training faces were."""
        from utils.data.faces import apply_transform, similarity_to_template, square_crop_transform, warp

        size = self.faces.size
        landmarks = self.pre.predict_landmarks(work, box, scale) if self.faces.landmarks else None
        if landmarks is not None and self.faces.align:
            matrix = similarity_to_template(landmarks, size)
        else:
            matrix = square_crop_transform(box, size, zoom=1.15)
        source = image if self.faces.color == "rgb" and image.ndim == 3 else gray
        face = warp(source, matrix, size)
        points = apply_transform(landmarks, matrix) if landmarks is not None else np.full((68, 2), np.nan)
        return face, points.astype(np.float32)

    @torch.no_grad()
    def classify(self, faces: list[np.ndarray], landmarks: list[np.ndarray]) -> np.ndarray:
        """``(n, classes)`` probabilities for aligned faces, with the run's input channels."""
        from utils.data.faces import centre_heatmap, landmark_heatmaps

        images = np.stack(faces)
        x = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        parts = [x]
        if self.channels.endswith("heatmap"):
            parts.append(landmark_heatmaps(np.stack(landmarks), self.faces.size, self.faces.sigma)[:, None])
        elif self.channels.endswith("centre"):
            parts.append(np.repeat(centre_heatmap(self.faces.size, self.faces.sigma)[None, None], len(x), axis=0))
        batch = torch.from_numpy(np.concatenate(parts, axis=1)).float().div(255).to(self.device)
        return torch.softmax(self.model(batch).float(), dim=1).cpu().numpy()

    def faces_in(self, image: np.ndarray) -> list[Face]:
        """Every face of a uint8 image (grey ``(H, W)`` or RGB ``(H, W, 3)``), classified, in reading order: rows
        top to bottom, left to right within a row (:func:`reading_order`)."""
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        boxes, detector, scale, work = self.boxes(gray)
        if not boxes:
            return []
        boxes = [boxes[i] for i in reading_order(boxes)]
        aligned = [self.align(image, gray, box, scale, work) for box in boxes]
        probs = self.classify([a[0] for a in aligned], [a[1] for a in aligned])
        return [
            Face(tuple(box), detector, face, points, dict(zip(self.classes, map(float, p))))
            for box, (face, points), p in zip(boxes, aligned, probs)
        ]


def read_image(path) -> np.ndarray:
    """A photo as uint8 RGB (or grey), upright as its EXIF orientation says. Raises ``ValueError`` naming the
    file when it cannot be read as an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("L") if im.mode in ("L", "I;16", "I", "1") else im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from None


def reading_order(boxes) -> list[int]:
    """The order in which to number face boxes: rows top to bottom, left to right within a row.

    Two boxes are in one row when their vertical extents overlap by more than half of the smaller box's
    height; a row is every box linked to another of it that way (so a slightly jittered row of faces stays
    one row). Rows are ordered by the mean height of their boxes' centres, a row's boxes by their left edge.

    Args:
        boxes: ``(x, y, width, height)`` of each face, in any order.

    Returns:
        The indices of ``boxes``, first face first.
    """
    boxes = [tuple(float(v) for v in b) for b in boxes]
    row = list(range(len(boxes)))  # union-find: row[i] leads to the first box of i's row

    def leader(i: int) -> int:
        while row[i] != i:
            row[i] = row[row[i]]
            i = row[i]
        return i

    for i, (_, yi, _, hi) in enumerate(boxes):
        for j in range(i):
            _, yj, _, hj = boxes[j]
            if min(yi + hi, yj + hj) - max(yi, yj) > 0.5 * min(hi, hj):
                row[leader(i)] = leader(j)
    rows: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        rows.setdefault(leader(i), []).append(i)

    def centre_y(members: list[int]) -> float:
        return float(np.mean([boxes[i][1] + boxes[i][3] / 2 for i in members]))

    order = []
    for members in sorted(rows.values(), key=centre_y):
        order += sorted(members, key=lambda i: (boxes[i][0], boxes[i][1]))
    return order


def _style(width: float) -> tuple[float, int]:
    """The label's font scale and stroke for a face box ``width`` px wide: about 9 px high at 0.4, readable on a
    72-px face."""
    font = min(1.5, max(0.4, width / 160))
    return font, max(1, int(round(1.5 * font)))


def _label_lines(face: Face) -> list[str]:
    return [f"{name} {p:.2f}" for name, p in face.top()]


def _text_size(s: str, font: float, thick: int) -> tuple[int, int, int]:
    """Width, height above the baseline and depth below it of ``s`` drawn with its black outline."""
    (w, h), base = cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, font, thick + 2)
    return w, h, base


def _overlap(a, b) -> float:
    """The area two ``(x0, y0, x1, y1)`` rectangles share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def label_rectangles(faces: list[Face], shape) -> list[tuple[int, int, int, int]]:
    """Where :func:`annotate` writes each face's top-3 expressions: ``(x0, y0, x1, y1)`` pixel rectangles.

    A label goes above its face's box when there is room inside the image, else below it, never over another
    face's box when that can be avoided. The places tried are above and below the box, each left-aligned with
    it, centred on it and right-aligned, shifted into the image when they stick out; each is scored by, in
    turn, the area of the other faces' boxes it covers, whether it had to be moved up or down to fit in the
    image, the area of its own box it covers and the area of the labels placed before it. The lowest score
    wins; ties go to above before below, left-aligned before centred before right-aligned.

    Args:
        faces: the faces, in their numbering order (labels are placed in that order).
        shape: the image's shape, ``(H, W)`` or ``(H, W, C)``.

    Returns:
        One rectangle per face, in the order of ``faces``.
    """
    height, width = shape[:2]
    boxes = []
    for face in faces:
        x, y, w, h = face.box
        pad = _style(w)[1]  # the drawn box's stroke
        boxes.append((x - pad, y - pad, x + w + pad, y + h + pad))
    placed: list[tuple[int, int, int, int]] = []
    for k, face in enumerate(faces):
        x0, y0, x1, y1 = boxes[k]
        font, thick = _style(face.box[2])
        sizes = [_text_size(s, font, thick) for s in _label_lines(face)]
        w = max((s[0] for s in sizes), default=0)
        h = sum(s[1] + s[2] for s in sizes)
        candidates = []
        for top in (y0 - 1 - h, y1 + 1):  # above, then below
            fits = top >= 0 and top + h <= height
            for left in (x0, (x0 + x1 - w) / 2, x1 - w):  # left-aligned, centred, right-aligned
                left = min(max(0, left), max(0, width - w))
                top_in = min(max(0, top), max(0, height - h))
                rect = (int(round(left)), int(round(top_in)), int(round(left)) + w, int(round(top_in)) + h)
                others = sum(_overlap(rect, b) for i, b in enumerate(boxes) if i != k)
                score = (others, 0 if fits else 1, _overlap(rect, boxes[k]), sum(_overlap(rect, p) for p in placed))
                candidates.append((score, len(candidates), rect))
        placed.append(min(candidates)[2])
    return placed


def annotate(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A BGR copy of ``image`` with every face's number (its place in ``faces``), box and top-3 expressions,
    the text sized to the face and placed by :func:`label_rectangles` (above the box when there is room, never
    over another face when that can be avoided)."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)

    def text(s: str, origin: tuple[int, int], font: float, thick: int) -> None:
        for colour, width in (((0, 0, 0), thick + 2), ((255, 255, 255), thick)):
            cv2.putText(out, s, origin, cv2.FONT_HERSHEY_SIMPLEX, font, colour, width, cv2.LINE_AA)

    for k, face in enumerate(faces):
        x, y, w, h = (int(round(v)) for v in face.box)
        font, thick = _style(face.box[2])
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 200, 255), thick)
        text(str(k), (x + 3, y + int(24 * font)), font * 1.2, thick)
    for face, (left, top, _, _) in zip(faces, label_rectangles(faces, image.shape)):
        font, thick = _style(face.box[2])
        for s in _label_lines(face):
            _, above, below = _text_size(s, font, thick)
            text(s, (left, top + above), font, thick)
            top += above + below
    return out


def predict_image(image, run_dir=None, predictor: Predictor | None = None) -> list[Face]:
    """Every face of ``image`` (a path or a uint8 array), classified by the run in ``run_dir``."""
    predictor = predictor or Predictor(run_dir)
    array = read_image(image) if isinstance(image, str | Path) else np.asarray(image)
    return predictor.faces_in(array)


def predict_file(path: Path, predictor: Predictor, out: Path) -> dict:
    """One image: its faces, ``<name>.json`` and ``<name>.annotated.png`` in ``out``."""
    image = read_image(path)
    faces = predictor.faces_in(image)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "image": path.name,
        "size": [int(image.shape[1]), int(image.shape[0])],
        "faces": [f.to_json() for f in faces],
    }
    (out / f"{path.stem}.json").write_text(json.dumps(result, indent=1))
    cv2.imwrite(str(out / f"{path.stem}.annotated.png"), annotate(image, faces))
    return result


def predict_video(path: Path, predictor: Predictor, out: Path, fps: float = 2.0) -> dict:
    """A video sampled at ``fps``: ``<name>.csv`` (frame, time, face, box, top expression, probabilities) and
    ``<name>.annotated.mp4``."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot be opened as a video")
    source_fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    step = max(1, int(round(source_fps / fps)))
    out.mkdir(parents=True, exist_ok=True)
    writer, frames, rows = None, 0, []
    index = -1
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        index += 1
        if index % step:
            continue
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        faces = predictor.faces_in(rgb)
        annotated = annotate(rgb, faces)
        if writer is None:
            h, w = annotated.shape[:2]
            writer = cv2.VideoWriter(
                str(out / f"{path.stem}.annotated.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h)
            )
        writer.write(annotated)
        frames += 1
        for k, face in enumerate(faces):
            name, p = face.top(1)[0]
            rows.append(
                {"frame": index, "seconds": round(index / source_fps, 3), "face": k,
                 **dict(zip(("x", "y", "width", "height"), (round(v, 1) for v in face.box))),
                 "expression": name, "probability": round(p, 4),
                 **{f"p_{c}": round(v, 4) for c, v in face.probabilities.items()}}
            )  # fmt: skip
    capture.release()
    if writer is not None:
        writer.release()
    columns = ["frame", "seconds", "face", "x", "y", "width", "height", "expression", "probability"]
    columns += [f"p_{c}" for c in predictor.classes]
    with open(out / f"{path.stem}.csv", "w", newline="") as f:
        csv.DictWriter(f, fieldnames=columns).writeheader()
        csv.DictWriter(f, fieldnames=columns).writerows(rows)
    return {"video": path.name, "frames": frames, "faces": len(rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.predict", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="an image, a folder of images, or a video")
    parser.add_argument("--run", required=True, help="a finished classifier run's folder (checkpoints/<run>)")
    parser.add_argument("--out", default="predictions", help="where annotated copies and results go")
    parser.add_argument("--fps", type=float, default=2.0, help="video frames classified per second")
    args = parser.parse_args(argv)
    source, out = Path(args.input), Path(args.out)
    if not source.exists():
        print(f"error: {source} does not exist", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.run)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else [source]
    failed = 0
    for path in files:
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                r = predict_video(path, predictor, out, args.fps)
                print(f"{path.name}: {r['frames']} frames, {r['faces']} faces -> {out / (path.stem + '.csv')}")
                continue
            if source.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            r = predict_file(path, predictor, out)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        found = r["faces"]
        summary = "; ".join(
            f"{f['top'][0]['expression']} {f['top'][0]['probability']:.2f} at {f['box'][:2]}" for f in found
        )
        print(f"{path.name}: {len(found)} face(s)" + (f": {summary}" if found else " (no face found)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
