"""A procedurally drawn sample dataset in the FER2013 CSV format, bundled in ``data/sample/``.

The notebooks and CI need a dataset that ships with the repository, so that a first run works without any
download. Real face images cannot be redistributed, so this module *draws* faces: a parametric face model
places the 68 facial landmarks (identity, pose and expression parameters), and a small renderer paints a
shaded face around them (hair, background, eyes, brows, nose, mouth, wrinkles), at 4x resolution
downsampled for anti-aliasing, then blurs, jitters contrast and adds noise.

Expressions follow the prototypes of the Facial Action Coding System (EMFACS, Ekman & Friesen): e.g.
happiness = cheek raiser + lip corner puller (AU6+12), sadness = inner brow raiser + brow lowerer + lip corner
depressor (AU1+4+15), surprise = brow raisers + upper lid raiser + jaw drop (AU1+2+5+26), fear adds brow
lowerer and lip stretcher to surprise (AU1+2+4+5+20+26), anger = brow lowerer + lid tightener + lip presser
(AU4+5+7+23/24), disgust = nose wrinkler + upper lip raiser (AU9+10). Each image draws its own intensity,
so weak expressions sit near neutral and fear/surprise or anger/disgust overlap, as in real data.

The result is a *synthetic* toy: it exercises the code paths (readers, training loops, landmark-based
methods) in seconds, and accuracy on it says nothing about real faces.

>>> import numpy as np
>>> image, landmarks = draw_face(HAPPY, np.random.default_rng(0))
>>> image.shape, image.dtype, landmarks.shape
((48, 48), dtype('uint8'), (68, 2))

Regenerate the bundled copy with ``python -m utils.data.sample [--out data/sample] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import gzip
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from utils.data.labels import ANGRY, DISGUST, EMOTIONS, FEAR, HAPPY, NEUTRAL, NUM_BASIC, SAD, SURPRISE

# ----------------------------------------------------------------------------------------------------------
# Geometry of the mean face.
#
# Coordinates are "local": u to the right, v down, in pixels of a 48x48 image, relative to the image centre.
# The mean positions below match the typical FER2013 framing (the face fills the crop, eyes at ~39% of the
# height, mouth at ~78%, chin at the bottom edge): they were read off the average of dlib's 68-point
# predictions on a few hundred FER2013 training images (only these summary numbers are used here).
# ----------------------------------------------------------------------------------------------------------
BASE_SIZE = 48  # FER2013 image side; local units are pixels at this size
SUPERSAMPLE = 4  # render at 4x and downsample (INTER_AREA) for anti-aliasing

FACE_HALF_WIDTH = 19.3  # jaw points 0 and 16 at u = -/+19.3
JAW_TOP_V = -4.3  # v of jaw points 0 and 16 (about eye level + 1 px)
CHIN_V = 23.3  # v of jaw point 8 (FER2013's mean is 24.3 with chins cut by the crop; ours stay inside)
JAW_SQUARENESS = 2.6  # superellipse exponent of the jaw (2 = ellipse, larger = squarer)

EYE_V = -5.0  # v of the eye centres
EYE_HALF_SPACING = 8.5  # eye centres at u = -/+8.5 (interocular distance 17 px)
EYE_HALF_WIDTH = 3.45  # corner to corner 6.9 px
EYE_UPPER_HEIGHT = 1.3  # centre line to upper lid (points 37, 38)
EYE_LOWER_HEIGHT = 0.9  # centre line to lower lid (points 40, 41)
EYE_LID_POINT_U = 0.38  # lid points 37/38 and 40/41 sit at +/-0.38 half widths from the eye centre
CANTHAL_TILT = 0.4  # the outer corner sits this much higher than the inner one
IRIS_RADIUS = 0.42  # in eye half widths (human iris ~11.7 mm for a ~30 mm eye opening)
PUPIL_RADIUS = 0.45  # in iris radii

BROW_INNER_U = 3.2  # inner brow ends (points 21, 22)
BROW_OUTER_U = 15.7  # outer brow ends (points 17, 26)
BROW_INNER_V = -9.4
BROW_OUTER_V = -8.5
BROW_ARCH = 2.2  # height of the arch above the inner-outer chord
BROW_THICKNESS = 1.6  # at the inner end; tapers to half at the outer end

NOSE_TOP_V = -5.4  # point 27, between the eyes
NOSE_TIP_V = 4.3  # point 30
NOSE_HALF_WIDTH = 3.85  # nostril wings, points 31 and 35
NOSTRIL_V = (6.7, 7.4, 7.9)  # v of points 31/35, 32/34 and 33 (subnasale)
NOSTRIL_U = (1.0, 0.5, 0.0)  # u of the same points, in nose half widths

MOUTH_V = 13.8  # v of the lip line at the mouth centre
MOUTH_HALF_WIDTH = 7.0  # corners 48, 54
INNER_MOUTH_WIDTH = 0.86  # inner corners 60/64 at this fraction of the mouth half width
UPPER_LIP_THICKNESS = 1.5  # lip line to the top of the upper lip (point 51)
LOWER_LIP_THICKNESS = 2.4  # lip line to the bottom of the lower lip (point 57)
# u of the lip points, in mouth half widths (iBUG order, image left to right along each contour)
OUTER_UPPER_U = (-1.0, -0.65, -0.27, 0.0, 0.27, 0.65, 1.0)  # 48..54
OUTER_LOWER_U = (0.66, 0.32, 0.0, -0.32, -0.66)  # 55..59
INNER_UPPER_U = (-0.3, 0.0, 0.3)  # 61..63 (60, 64 are the inner corners)
INNER_LOWER_U = (0.3, 0.0, -0.3)  # 65..67
# the upper lip is thickest under the peaks of Cupid's bow (points 50, 52)
UPPER_LIP_PROFILE = (0.0, 0.8, 1.2, 1.0, 1.2, 0.8, 0.0)

# Landmark displacements of the movements at full intensity (parameter = 1), in pixels at 48x48 unless noted.
# Set by eye against the FACS prototype photos scaled to FER2013's size (a brow lifts ~3 px, a smile's
# corners ~4 px, a surprised mouth opens ~7 px when the interocular distance is 17 px).
BROW_RAISE_PX = 3.0  # AU1+2: the whole brow
BROW_INNER_RAISE_PX = 2.8  # AU1: the inner end
BROW_OUTER_DROP_PX = 0.4  # AU1 alone lets the outer end sink a little (the sad "tent")
BROW_FROWN_PX = 2.6  # AU4: the inner end down
BROW_FROWN_MIDDLE_PX = 0.8  # AU4: the rest of the brow follows, less
BROW_TOGETHER_PX = 1.3  # AU4: the inner ends towards the midline
EYE_WIDEN = 0.9  # AU5: relative growth of the upper lid height
EYE_NARROW = 0.55  # AU6/7: relative shrink of the upper lid height
LOWER_LID_RAISE = 0.55  # AU6/7: relative shrink of the lower lid height
NOSE_WRINKLE_LIFT_PX = 0.5  # AU9: the tip, and as much again for the nostrils
NOSE_WRINKLE_FLARE = 0.12  # AU9: relative widening of the nostrils
SMILE_LIFT_PX = 4.0  # AU12: the mouth corners up
FROWN_DROP_PX = 2.2  # AU15: the mouth corners down
MOUTH_GAP_PX = 7.0  # AU26/27: gap between the lips at the centre
JAW_DROP = 0.4  # the chin moves down by this share of the lip gap
MOUTH_STRETCH = 0.3  # AU20 / AU18: relative change of the mouth width
LIP_PRESS_NARROW = 0.1  # AU23/24: relative narrowing of the mouth
LIP_PRESS_THIN = (0.65, 0.6)  # AU23/24: relative thinning of the upper and lower lip
UPPER_LIP_RAISE_PX = 1.8  # AU10: the middle of the upper lip up
LOWER_LIP_PUSH_PX = 1.0  # AU17: the middle of the lower lip up

# ----------------------------------------------------------------------------------------------------------
# Expressions: action-unit-like parameters, each 0 at rest and about +/-1 at full intensity.
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Expression:
    """Facial movements of one image, each ~0 at rest and ~1 at full intensity (FACS action units in brackets).

    Attributes:
        brow_raise: whole brows up, arched (AU1+2).
        brow_inner_raise: inner brow ends up, brows slant like a tent (AU1).
        brow_frown: inner brow ends down (AU4).
        brow_together: brows drawn towards each other (AU4).
        eye_open: > 0 widens the eyes (AU5), < 0 narrows them (AU6/7/43).
        lower_lid_raise: lower lids pushed up (AU6 cheek raiser, AU7 lid tightener).
        cheek_raise: raised cheeks and deep nasolabial folds (AU6).
        nose_wrinkle: nose wrinkled, nostrils lifted and flared (AU9).
        upper_lip_raise: upper lip lifted off the teeth (AU10).
        mouth_curve: > 0 lifts the mouth corners (AU12), < 0 pulls them down (AU15).
        mouth_open: gap between the lips (AU25/26/27).
        mouth_stretch: > 0 widens the mouth (AU20), < 0 narrows it (AU18/22/23).
        mouth_round: 1 = round "O" opening, 0 = rectangular one.
        lip_press: lips pressed thin (AU23/24).
        lower_lip_push: lower lip pushed up by the chin (AU17).
        upper_teeth: how much of the upper teeth shows when the mouth is open (0-1).
        lower_teeth: the same for the lower teeth.
    """

    brow_raise: float = 0.0
    brow_inner_raise: float = 0.0
    brow_frown: float = 0.0
    brow_together: float = 0.0
    eye_open: float = 0.0
    lower_lid_raise: float = 0.0
    cheek_raise: float = 0.0
    nose_wrinkle: float = 0.0
    upper_lip_raise: float = 0.0
    mouth_curve: float = 0.0
    mouth_open: float = 0.0
    mouth_stretch: float = 0.0
    mouth_round: float = 0.0
    lip_press: float = 0.0
    lower_lip_push: float = 0.0
    upper_teeth: float = 0.0
    lower_teeth: float = 0.0


# Full-intensity prototypes (EMFACS, see the module docstring). Teeth and roundness are shape choices, not
# movements, and are not scaled by intensity.
PROTOTYPES: dict[int, dict[str, float]] = {
    ANGRY: {
        "brow_frown": 1.0,
        "brow_together": 1.0,
        "eye_open": 0.1,
        "lower_lid_raise": 0.6,
        "lip_press": 1.0,
        "mouth_stretch": -0.25,
        "mouth_curve": -0.25,
        "nose_wrinkle": 0.15,
    },
    DISGUST: {
        "nose_wrinkle": 1.0,
        "upper_lip_raise": 1.0,
        "mouth_curve": -0.45,
        "brow_frown": 0.5,
        "brow_together": 0.4,
        "eye_open": -0.4,
        "lower_lid_raise": 0.7,
        "cheek_raise": 0.4,
        "mouth_open": 0.15,
        "upper_teeth": 1.0,
    },
    FEAR: {
        "brow_raise": 0.6,
        "brow_inner_raise": 0.6,
        "brow_together": 0.7,
        "eye_open": 0.9,
        "lower_lid_raise": 0.3,
        "mouth_stretch": 0.45,
        "mouth_open": 0.4,
        "mouth_curve": -0.3,
        "lower_teeth": 0.7,
        "upper_teeth": 0.5,
    },
    HAPPY: {
        "mouth_curve": 1.0,
        "mouth_stretch": 0.45,
        "mouth_open": 0.3,
        "cheek_raise": 1.0,
        "lower_lid_raise": 0.7,
        "eye_open": -0.3,
        "upper_teeth": 1.0,
    },
    SAD: {
        "brow_inner_raise": 1.0,
        "brow_together": 0.35,
        "mouth_curve": -0.8,
        "lower_lip_push": 0.6,
        "eye_open": -0.3,
        "mouth_stretch": -0.05,
    },
    SURPRISE: {"brow_raise": 1.0, "eye_open": 1.0, "mouth_open": 1.0, "mouth_round": 1.0, "mouth_stretch": -0.3},
    NEUTRAL: {},
}
SHAPE_CHOICES = ("mouth_round", "upper_teeth", "lower_teeth")  # not scaled by intensity

# Per-image intensity: uniform in this range, so weak expressions approach neutral and overlap each other.
INTENSITY_RANGE = (0.3, 1.05)
# Smiles are rarely faint in posed and web photos (FER2013's happy class is its easiest), so they start higher.
HAPPY_INTENSITY_RANGE = (0.5, 1.05)
# A resting face is never perfectly blank: neutral images get this much of a random other expression.
NEUTRAL_LEAK = 0.22
# Confusable pairs (as in FER2013's confusion matrices): a share of images blends in some of the partner.
CONFUSABLE = {FEAR: SURPRISE, SURPRISE: FEAR, ANGRY: DISGUST, DISGUST: ANGRY, SAD: NEUTRAL}
BLEND_PROBABILITY = 0.3
BLEND_RANGE = (0.2, 0.55)
PARAMETER_NOISE = 0.08  # std of an idiosyncratic offset added to every parameter
# Variants seen often in FER2013: shouting anger, laughing happiness, surprise showing the upper teeth.
SHOUT_PROBABILITY = 0.3
LAUGH_PROBABILITY = 0.45
SURPRISE_TEETH_PROBABILITY = 0.25


def sample_expression(expression: int, rng: np.random.Generator) -> Expression:
    """Draw the action-unit parameters of one image of class ``expression`` (canonical id 0-6).

    Args:
        expression: canonical class id (``utils.data.labels``), 0 angry ... 6 neutral.
        rng: random generator.

    Returns:
        The parameters: the class prototype scaled by a random intensity, sometimes blended with a
        confusable class, plus small idiosyncratic offsets.
    """
    if expression not in PROTOTYPES:
        raise ValueError(f"expression must be one of 0-{NUM_BASIC - 1} ({', '.join(EMOTIONS[:NUM_BASIC])})")
    values = dict.fromkeys((f.name for f in fields(Expression)), 0.0)

    def add(prototype: dict[str, float], weight: float) -> None:
        for name, value in prototype.items():
            if name in SHAPE_CHOICES:
                values[name] = max(values[name], value * (rng.uniform(0.6, 1.0) if weight > 0.5 else weight))
            else:
                values[name] += weight * value

    if expression == NEUTRAL:
        other = int(rng.choice([e for e in PROTOTYPES if e != NEUTRAL]))
        add(PROTOTYPES[other], rng.uniform(0.0, NEUTRAL_LEAK))
    else:
        add(PROTOTYPES[expression], rng.uniform(*(HAPPY_INTENSITY_RANGE if expression == HAPPY else INTENSITY_RANGE)))
        partner = CONFUSABLE.get(expression)
        if partner is not None and rng.random() < BLEND_PROBABILITY:
            add(PROTOTYPES[partner], rng.uniform(*BLEND_RANGE))
    if expression == ANGRY and rng.random() < SHOUT_PROBABILITY:  # shouting: square open mouth, bared teeth
        values.update(lip_press=0.0, mouth_open=rng.uniform(0.35, 0.7), upper_teeth=1.0, lower_teeth=1.0)
    if expression == HAPPY and rng.random() < LAUGH_PROBABILITY:  # a laugh opens the mouth
        values["mouth_open"] += rng.uniform(0.15, 0.6)
    if expression == SURPRISE and rng.random() < SURPRISE_TEETH_PROBABILITY:  # a dropped jaw shows the teeth
        values["upper_teeth"] = rng.uniform(0.4, 1.0)
    for name in values:
        if name not in SHAPE_CHOICES:
            values[name] += rng.normal(0.0, PARAMETER_NOISE)
    values["mouth_open"] = max(values["mouth_open"], 0.0)
    values["mouth_round"] = float(np.clip(values["mouth_round"], 0.0, 1.0))
    return Expression(**values)


# ----------------------------------------------------------------------------------------------------------
# Identity and pose.
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Identity:
    """Who is drawn: shape factors (1 = mean face) and grey levels (0 black - 1 white).

    Attributes:
        face_width, face_height: jaw width and forehead-to-chin height factors.
        jaw_squareness: superellipse exponent of the jaw outline.
        eye_spacing, eye_size, nose_length, nose_width, mouth_width, lip_thickness, brow_thickness: factors.
        brow_offset: brow height offset in pixels (negative = higher).
        skin, hair, brow, iris, background: grey levels.
        hair_style: 0 short, 1 long (down the sides), 2 bald / shaved, 3 fringe over the forehead.
        hairline: forehead height above the brows, in pixels.
        light: light direction (x, y, z) in the face frame, unit length.
        ambient: share of the light that is ambient rather than directional.
    """

    face_width: float
    face_height: float
    jaw_squareness: float
    eye_spacing: float
    eye_size: float
    nose_length: float
    nose_width: float
    mouth_width: float
    lip_thickness: float
    brow_thickness: float
    brow_offset: float
    skin: float
    hair: float
    brow: float
    iris: float
    background: float
    hair_style: int
    hairline: float
    light: tuple[float, float, float]
    ambient: float


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity (face shape, tones, hair, lighting)."""
    skin = rng.uniform(0.3, 0.85)
    hair_style = int(rng.choice(4, p=[0.4, 0.3, 0.1, 0.2]))
    dark_hair = rng.random() < 0.75
    hair = rng.uniform(0.04, 0.3) if dark_hair else rng.uniform(0.45, 0.85)
    brow = min(hair + rng.uniform(0.0, 0.1), skin * rng.uniform(0.35, 0.6))
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.1), 1.0])
    return Identity(
        face_width=rng.uniform(0.92, 1.06),
        face_height=rng.uniform(0.93, 1.06),
        jaw_squareness=JAW_SQUARENESS + rng.uniform(-0.5, 0.6),
        eye_spacing=rng.uniform(0.94, 1.06),
        eye_size=rng.uniform(0.85, 1.15),
        nose_length=rng.uniform(0.88, 1.12),
        nose_width=rng.uniform(0.85, 1.2),
        mouth_width=rng.uniform(0.9, 1.12),
        lip_thickness=rng.uniform(0.7, 1.3),
        brow_thickness=rng.uniform(0.7, 1.4),
        brow_offset=rng.uniform(-1.0, 1.0),
        skin=skin,
        hair=hair,
        brow=brow,
        iris=rng.uniform(0.08, 0.4),
        background=rng.uniform(0.05, 0.95),
        hair_style=hair_style,
        hairline=rng.uniform(7.0, 11.0),
        light=tuple(light / np.linalg.norm(light)),
        ambient=rng.uniform(0.3, 0.55),
    )


@dataclass
class Pose:
    """In-plane placement of the face: rotation (degrees), scale factor and translation (pixels at 48)."""

    angle: float
    scale: float
    shift: tuple[float, float]


MAX_ROTATION = 10.0  # degrees, either way
SCALE_RANGE = (0.9, 1.08)
MAX_SHIFT = 2.5  # pixels at 48 x 48
LANDMARK_MARGIN = 0.5  # pixels: every landmark stays this far inside the image
FIT_STEPS = 30


def sample_pose(rng: np.random.Generator) -> Pose:
    """Draw a small random pose: in-plane rotation, scale and translation."""
    shift = np.clip(rng.normal(0.0, 1.2, size=2), -MAX_SHIFT, MAX_SHIFT)
    return Pose(rng.uniform(-MAX_ROTATION, MAX_ROTATION), rng.uniform(*SCALE_RANGE), (shift[0], shift[1]))


# ----------------------------------------------------------------------------------------------------------
# Landmarks from the parametric model (local coordinates).
# ----------------------------------------------------------------------------------------------------------


def _resample_polyline(points: np.ndarray, count: int) -> np.ndarray:
    """``count`` points evenly spaced by arc length along a polyline ``(N, 2)``."""
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    targets = np.linspace(0.0, arc[-1], count)
    return np.stack([np.interp(targets, arc, points[:, 0]), np.interp(targets, arc, points[:, 1])], axis=1)


def _jaw(identity: Identity, expr: Expression) -> np.ndarray:
    """Points 0-16: a superellipse from the right ear (image left) round the chin to the left ear."""
    half_width = FACE_HALF_WIDTH * identity.face_width
    jaw_drop = JAW_DROP * MOUTH_GAP_PX * max(expr.mouth_open, 0.0)  # opening the mouth drops the chin
    height = (CHIN_V - JAW_TOP_V) * identity.face_height + jaw_drop
    angles = np.linspace(0.0, np.pi, 200)
    power = 2.0 / identity.jaw_squareness
    cos, sin = np.cos(angles), np.sin(angles)
    dense = np.stack([-half_width * np.sign(cos) * np.abs(cos) ** power, JAW_TOP_V + height * sin**power], axis=1)
    return _resample_polyline(dense, 17)


def _brows(identity: Identity, expr: Expression) -> np.ndarray:
    """Points 17-26: five points per brow, image left to right (outer, ..., inner | inner, ..., outer)."""
    t = np.linspace(0.0, 1.0, 5)  # 0 outer end, 1 inner end
    inner_weight, outer_weight = t**2, (1.0 - t) ** 2
    outer_u = BROW_OUTER_U * identity.face_width
    inner_u = BROW_INNER_U * identity.eye_spacing - BROW_TOGETHER_PX * expr.brow_together * t
    u = outer_u + (inner_u - outer_u) * t
    lift = (
        BROW_RAISE_PX * expr.brow_raise
        + BROW_INNER_RAISE_PX * expr.brow_inner_raise * inner_weight
        - BROW_OUTER_DROP_PX * expr.brow_inner_raise * outer_weight
        - BROW_FROWN_PX * expr.brow_frown * inner_weight
        - BROW_FROWN_MIDDLE_PX * expr.brow_frown * (1.0 - outer_weight)
    )
    # raised brows arch more; frowning and the sad tent flatten the arch
    arch = BROW_ARCH * (1.0 + 0.35 * expr.brow_raise - 0.3 * expr.brow_frown - 0.3 * expr.brow_inner_raise)
    v = BROW_OUTER_V + (BROW_INNER_V - BROW_OUTER_V) * t - arch * np.sin(np.pi * t**0.9) - lift
    v = v + identity.brow_offset
    right = np.stack([-u, v], axis=1)  # subject's right brow, image left: outer (17) to inner (21)
    left = np.stack([u[::-1], v[::-1]], axis=1)  # inner (22) to outer (26)
    return np.concatenate([right, left])


def _nose(identity: Identity, expr: Expression) -> np.ndarray:
    """Points 27-35: the bridge from between the eyes to the tip, then the nostrils image left to right."""
    wrinkle = max(expr.nose_wrinkle, 0.0)
    tip_v = NOSE_TOP_V + (NOSE_TIP_V - NOSE_TOP_V) * identity.nose_length - NOSE_WRINKLE_LIFT_PX * wrinkle
    bridge = np.stack([np.zeros(4), np.linspace(NOSE_TOP_V, tip_v, 4)], axis=1)
    half_width = NOSE_HALF_WIDTH * identity.nose_width * (1.0 + NOSE_WRINKLE_FLARE * wrinkle)
    offset = tip_v - NOSE_TIP_V - NOSE_WRINKLE_LIFT_PX * wrinkle  # nostrils follow the tip, and lift more
    u = np.array([-NOSTRIL_U[0], -NOSTRIL_U[1], NOSTRIL_U[2], NOSTRIL_U[1], NOSTRIL_U[0]]) * half_width
    v = np.array([NOSTRIL_V[0], NOSTRIL_V[1], NOSTRIL_V[2], NOSTRIL_V[1], NOSTRIL_V[0]]) + offset
    return np.concatenate([bridge, np.stack([u, v], axis=1)])


def _eyes(identity: Identity, expr: Expression) -> np.ndarray:
    """Points 36-47: each eye clockwise in the image from its image-left corner."""
    half_width = EYE_HALF_WIDTH * identity.eye_size
    opening = expr.eye_open
    upper = EYE_UPPER_HEIGHT * identity.eye_size * (1.0 + (EYE_WIDEN if opening > 0 else EYE_NARROW) * opening)
    lower = EYE_LOWER_HEIGHT * identity.eye_size * (1.0 + 0.3 * opening)  # the lower lid follows a little
    lower *= 1.0 - LOWER_LID_RAISE * expr.lower_lid_raise
    upper, lower = max(upper, 0.15), max(lower, 0.1)
    lid_u = EYE_LID_POINT_U * half_width
    out = []
    for side in (-1.0, 1.0):  # image left (subject's right) then image right
        cu = side * EYE_HALF_SPACING * identity.eye_spacing
        outer_u, inner_u = cu + side * half_width, cu - side * half_width
        outer_v, inner_v = EYE_V - CANTHAL_TILT / 2, EYE_V + CANTHAL_TILT / 2
        # clockwise in image coordinates starting at the image-left corner
        left_u, right_u = min(outer_u, inner_u), max(outer_u, inner_u)
        left_v, right_v = (outer_v, inner_v) if side < 0 else (inner_v, outer_v)
        out += [
            (left_u, left_v),
            (cu - lid_u, EYE_V - upper),
            (cu + lid_u, EYE_V - upper),
            (right_u, right_v),
            (cu + lid_u, EYE_V + lower),
            (cu - lid_u, EYE_V + lower),
        ]
    return np.array(out)


def _mouth(identity: Identity, expr: Expression) -> np.ndarray:
    """Points 48-67: outer lip contour from the image-left corner clockwise, then the inner contour."""
    press = float(np.clip(expr.lip_press, 0.0, 1.0))
    half_width = MOUTH_HALF_WIDTH * identity.mouth_width
    half_width *= (1.0 + MOUTH_STRETCH * expr.mouth_stretch) * (1 - LIP_PRESS_NARROW * press)
    inner_width = half_width * (INNER_MOUTH_WIDTH - 0.06 * expr.mouth_round)  # an "O" opens nearer the corners
    curve = (SMILE_LIFT_PX if expr.mouth_curve > 0 else FROWN_DROP_PX) * expr.mouth_curve  # corner lift, px
    gap = MOUTH_GAP_PX * max(expr.mouth_open, 0.0)
    exponent = 5.0 - 3.0 * expr.mouth_round  # opening profile: 2 = oval, 5 = rectangular
    upper_thick = UPPER_LIP_THICKNESS * identity.lip_thickness * (1.0 - LIP_PRESS_THIN[0] * press)
    lower_thick = LOWER_LIP_THICKNESS * identity.lip_thickness * (1.0 - LIP_PRESS_THIN[1] * press)
    lower_thick *= 1 + 0.25 * expr.lower_lip_push  # the pushed-up lower lip pouts
    raise_px = UPPER_LIP_RAISE_PX * max(expr.upper_lip_raise, 0.0)
    push_px = LOWER_LIP_PUSH_PX * max(expr.lower_lip_push, 0.0)

    def centre(x):  # lip line: corners lifted (smile) or pulled down (frown)
        return MOUTH_V - curve * (np.abs(x) / half_width) ** 2

    def opening(x):  # half gap between the lips along the mouth
        r = np.clip(np.abs(x) / inner_width, 0.0, 1.0)
        return 0.5 * gap * (1.0 - r**exponent) ** (1.0 / exponent)

    def lifted(x):  # the upper lip raiser lifts the middle of the lip, not the corners
        return raise_px * np.sqrt(np.clip(1.0 - (np.abs(x) / half_width) ** 2, 0.0, 1.0))

    def pushed(x):
        return push_px * np.clip(1.0 - (np.abs(x) / inner_width) ** 2, 0.0, 1.0)

    ou = np.array(OUTER_UPPER_U) * half_width
    outer_upper_v = centre(ou) - opening(ou) - upper_thick * np.array(UPPER_LIP_PROFILE) - lifted(ou)
    lu = np.array(OUTER_LOWER_U) * half_width
    lower_profile = np.clip(1.0 - (np.abs(lu) / half_width) ** 2, 0.0, 1.0) ** 0.6
    outer_lower_v = centre(lu) + opening(lu) + lower_thick * lower_profile - 0.6 * pushed(lu)
    iu = np.concatenate([[-inner_width], np.array(INNER_UPPER_U) * half_width, [inner_width]])
    inner_upper_v = centre(iu) - opening(iu) - 0.9 * lifted(iu)
    ilu = np.array(INNER_LOWER_U) * half_width
    inner_lower_v = np.maximum(centre(ilu) + opening(ilu) - pushed(ilu), inner_upper_v[1:4][::-1])
    return np.concatenate(
        [
            np.stack([ou, outer_upper_v], axis=1),
            np.stack([lu, outer_lower_v], axis=1),
            np.stack([iu, inner_upper_v], axis=1),
            np.stack([ilu, inner_lower_v], axis=1),
        ]
    )


def face_landmarks(identity: Identity, expr: Expression) -> np.ndarray:
    """The 68 iBUG-300W landmarks ``(68, 2)`` of a face in local coordinates (pixels at 48, image centre 0)."""
    return np.concatenate(
        [
            _jaw(identity, expr),
            _brows(identity, expr),
            _nose(identity, expr),
            _eyes(identity, expr),
            _mouth(identity, expr),
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------------------------------------
SUBPIXEL_BITS = 4  # fixed-point fraction bits for cv2 drawing (1/16 pixel)


def _pose_mapping(pose: Pose, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The similarity transform of a pose: image position of the local origin, rotation, pixels per unit."""
    unit = size / BASE_SIZE  # output pixels per local unit before the pose's own scale
    angle = np.deg2rad(pose.angle)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([(size - 1) / 2 + pose.shift[0] * unit, (size - 1) / 2 + pose.shift[1] * unit])
    return centre, rotation, unit * pose.scale


def _to_image(local: np.ndarray, size: int, pose: Pose) -> np.ndarray:
    """Local coordinates ``(N, 2)`` -> output-image pixel coordinates (pixel centres at integers)."""
    centre, rotation, scale = _pose_mapping(pose, size)
    return centre + (local @ rotation.T) * scale


def _fit_pose(pose: Pose, local: np.ndarray, size: int) -> Pose:
    """Shrink and re-centre ``pose`` until every landmark lies inside the image (FER crops keep the chin)."""
    for _ in range(FIT_STEPS):
        points = _to_image(local, size, pose)
        if points.min() >= LANDMARK_MARGIN and points.max() <= size - 1 - LANDMARK_MARGIN:
            break
        pose = Pose(pose.angle, pose.scale * 0.97, (pose.shift[0] * 0.8, pose.shift[1] * 0.8 - 0.3))
    return pose


class _Canvas:
    """A hi-res float canvas with the pose mapping between local and image coordinates.

    Args:
        size: output side in pixels.
        pose: the face's pose.
    """

    def __init__(self, size: int, pose: Pose):
        self.size = size
        self.side = size * SUPERSAMPLE
        self.pose = pose
        self.centre, self.rotation, self.scale = _pose_mapping(pose, size)
        # local coordinates of every hi-res pixel centre
        grid = (np.arange(self.side) + 0.5) / SUPERSAMPLE - 0.5
        x, y = np.meshgrid(grid, grid)
        d = np.stack([x - self.centre[0], y - self.centre[1]], axis=-1) / self.scale
        local = d @ self.rotation  # inverse rotation (row vectors times R = R^T applied)
        self.u, self.v = local[..., 0], local[..., 1]
        self.image = np.zeros((self.side, self.side), np.float32)

    def _hires(self, local: np.ndarray) -> np.ndarray:
        image = _to_image(np.asarray(local, dtype=np.float64).reshape(-1, 2), self.size, self.pose)
        return np.round(((image + 0.5) * SUPERSAMPLE - 0.5) * (1 << SUBPIXEL_BITS)).astype(np.int32)

    def polygon(self, local: np.ndarray, blur: float = 0.0) -> np.ndarray:
        """A filled polygon mask (hi-res float 0-1) from local points, edges softened by ``blur`` local px."""
        mask = np.zeros((self.side, self.side), np.uint8)
        cv2.fillPoly(mask, [self._hires(local)], 255, cv2.LINE_AA, SUBPIXEL_BITS)
        return self.soften(mask, blur)

    def line(self, local: np.ndarray, width: float, blur: float = 0.0, closed: bool = False) -> np.ndarray:
        """A polyline mask of ``width`` local pixels (hi-res float 0-1)."""
        mask = np.zeros((self.side, self.side), np.uint8)
        thickness = max(1, round(width * self.scale * SUPERSAMPLE))
        cv2.polylines(mask, [self._hires(local)], closed, 255, thickness, cv2.LINE_AA, SUBPIXEL_BITS)
        return self.soften(mask, blur)

    def soften(self, mask: np.ndarray, blur: float) -> np.ndarray:
        """A float 0-1 copy of ``mask`` (bool, float or uint8 0-255) blurred by ``blur`` local pixels."""
        out = mask.astype(np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)
        sigma = blur * self.scale * SUPERSAMPLE
        return cv2.GaussianBlur(out, (0, 0), sigma) if sigma > 0.3 else out

    def disc(self, cu: float, cv: float, radius: float) -> np.ndarray:
        """A filled disc mask (hi-res float 0-1) in local units."""
        return (((self.u - cu) ** 2 + (self.v - cv) ** 2) <= radius**2).astype(np.float32)

    def gaussian(self, cu: float, cv: float, su: float, sv: float) -> np.ndarray:
        """An axis-aligned (in the face frame) Gaussian bump of peak 1, in local units."""
        return np.exp(-0.5 * (((self.u - cu) / su) ** 2 + ((self.v - cv) / sv) ** 2)).astype(np.float32)

    def paint(self, mask: np.ndarray, value, alpha: float = 1.0) -> None:
        """Blend ``value`` (scalar or hi-res array) over the canvas where ``mask`` is set."""
        weight = np.clip(mask * alpha, 0.0, 1.0)
        self.image = self.image * (1.0 - weight) + weight * value


def _spline(points: np.ndarray, samples: int = 8, closed: bool = False) -> np.ndarray:
    """A Catmull-Rom spline through ``points`` ``(N, 2)``, ``samples`` points per segment."""
    p = np.asarray(points, dtype=np.float64)
    padded = np.concatenate([p[-1:], p, p[:2]]) if closed else np.concatenate([p[:1], p, p[-1:]])
    segments = len(p) if closed else len(p) - 1
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None]
    out = []
    for i in range(segments):
        p0, p1, p2, p3 = padded[i], padded[i + 1], padded[i + 2], padded[i + 3]
        out.append(
            0.5
            * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)
        )
    if not closed:
        out.append(p[-1:])
    return np.concatenate(out)


def _smooth_noise(rng: np.random.Generator, side: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a ``cells`` x ``cells`` random grid upscaled with bicubic."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (side, side), interpolation=cv2.INTER_CUBIC), -1.0, 1.0)


# Rendering constants. Positions and sizes are in local pixels (48x48 scale); shading strengths are fractions
# of the local brightness. They were tuned by eye so that 48x48 crops resemble FER2013's grey web photos.
HAIR_WIDTH = 1.13  # head (hair) ellipse half width, in face half widths
LONG_HAIR_WIDTH = 1.3  # long hair falling beside the face, in face half widths
FOREHEAD_WIDTH = 0.98  # forehead arc half width, in jaw widths at ear level
EYE_SOCKET_DEPTH = (0.25, 0.45)  # darkening at the centre of the eye sockets (the Haar cascades' dark band)
SCLERA_GAIN = 0.15  # the white of the eye is this much lighter than the skin (0.55-0.92 in all)
GAZE_SIGMA = 0.35  # iris offset from the eye centre, px
LID_LINE_WIDTH = 0.55  # upper lid and lashes, px
CREASE_WIDTH = 0.45  # wrinkles and folds, px
LIP_TONE = (0.62, 0.8)  # lips relative to the skin
TEETH_TONE = 0.8  # teeth relative to white, capped by skin + 0.35 so they stay in the lit face's range
MOUTH_INSIDE = 0.1  # grey level of the open mouth
TEETH_HEIGHT = 1.8  # visible height of a row of teeth, px (incisors ~10 mm for a ~50 mm mouth)
TEETH_SHARE = 0.7  # at most this share of the lip gap shows one row of teeth


def _paint_head(c: _Canvas, landmarks: np.ndarray, identity: Identity, rng: np.random.Generator) -> tuple:
    """Background, clothing, neck, hair, ears and the face's skin; returns the face and hair masks."""
    u, v = c.u, c.v
    jaw, brows = landmarks[0:17], landmarks[17:27]
    skin = identity.skin
    half_width = FACE_HALF_WIDTH * identity.face_width
    brow_v = float(brows[:, 1].min())
    top_v = brow_v - identity.hairline  # top of the forehead

    # background: a grey level, a gradient and some blurry clutter
    gradient = rng.uniform(-0.15, 0.15) * (u / BASE_SIZE * 2) + rng.uniform(-0.15, 0.15) * (v / BASE_SIZE * 2)
    clutter = 0.12 * _smooth_noise(rng, c.side, 5)
    c.image[:] = np.clip(identity.background + gradient + clutter, 0.02, 0.98)

    # shoulders / clothing at the bottom corners, and the neck under the chin
    shoulders = [(-40, 50), (-40, 30), (-18, 24), (18, 24), (40, 30), (40, 50)]
    c.paint(c.polygon(shoulders, blur=1.0), rng.uniform(0.05, 0.9))
    neck = 0.62 * half_width
    c.paint(c.polygon([(-neck, 5), (neck, 5), (neck * 1.05, 40), (-neck * 1.05, 40)], blur=0.8), skin * 0.7)

    # hair behind the face: an ellipse round the head, long hair continuing down the sides
    head_top = top_v - rng.uniform(1.5, 4.0)
    head_mid = JAW_TOP_V + 2.0
    head = ((u / (half_width * HAIR_WIDTH)) ** 2 + ((v - head_mid) / (head_mid - head_top)) ** 2 <= 1.0) & (
        v < head_mid + 4.0
    )
    if identity.hair_style == 1:
        head |= (np.abs(u) < half_width * LONG_HAIR_WIDTH) & (v >= head_mid)
    hair = np.clip(identity.hair * (1.0 + 0.15 * _smooth_noise(rng, c.side, 12)), 0.0, 1.0)
    hair_mask = c.soften(head, 1.0)
    c.paint(hair_mask, skin * 0.85 if identity.hair_style == 2 else hair)  # style 2: shaved, the scalp shows
    if identity.hair_style != 1:  # ears at the sides, at eye-to-nose height, unless long hair covers them
        for side in (-1, 1):
            ear = ((u - side * (half_width + 0.6)) / 1.8) ** 2 + ((v - (EYE_V + 5.0)) / 4.5) ** 2 <= 1.0
            c.paint(c.soften(ear, 0.5), skin * 0.8)

    # the face: the jaw from landmarks, closed over the forehead by an elliptical arc
    arc = np.linspace(0.0, np.pi, 40)
    jaw_top = float(jaw[[0, 16], 1].mean())
    forehead = np.stack([jaw[16, 0] * np.cos(arc) * FOREHEAD_WIDTH, jaw_top - (jaw_top - top_v) * np.sin(arc)], axis=1)
    face = c.polygon(np.concatenate([_spline(jaw, 6), forehead]), blur=0.6)
    c.paint(face, skin)
    if identity.hair_style == 3:  # a fringe over the forehead, ending a little above the brows
        fringe_v = brow_v - rng.uniform(1.5, 3.5) - 0.6 * np.cos(u * rng.uniform(0.8, 1.6)) + 0.04 * u * rng.normal()
        c.paint(c.soften((v < fringe_v) * face, 0.6), hair)
    return face, hair_mask


def _lighting(c: _Canvas, landmarks: np.ndarray, identity: Identity, expr: Expression, rng: np.random.Generator):
    """Shading of the head: ``(gain, highlight)`` so that lit = albedo * gain + highlight.

    The gain is Lambert shading of an ellipsoid times soft occlusion shadows (eye sockets, cheekbones, the
    sides of the nose, under the nose and the lower lip); the highlight brightens the nose, forehead, cheeks
    and lower lip.
    """
    u, v = c.u, c.v
    jaw, brows, nose, mouth = landmarks[0:17], landmarks[17:27], landmarks[27:36], landmarks[48:68]
    eye_centres = [landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)]
    half_width = FACE_HALF_WIDTH * identity.face_width
    top_v = float(brows[:, 1].min()) - identity.hairline
    lx, ly, lz = identity.light
    face_mid = (top_v + float(jaw[8, 1])) / 2.0
    face_half_height = (float(jaw[8, 1]) - top_v) / 2.0
    nx, ny = u / (half_width * 1.08), (v - face_mid) / (face_half_height * 1.1)
    nz = np.sqrt(np.clip(1.0 - nx**2 - ny**2, 0.0, 1.0))
    shade = identity.ambient + (1.0 - identity.ambient) * np.clip(nx * lx + ny * ly + nz * lz, 0.0, 1.0)

    occlusion = np.ones_like(u)
    socket_depth = rng.uniform(*EYE_SOCKET_DEPTH)
    for (cu, cv), side in zip(eye_centres, (-1, 1)):
        occlusion -= socket_depth * c.gaussian(cu - side * 0.3, cv - 1.2, 3.6, 2.8)  # eye socket
        occlusion -= 0.12 * c.gaussian(side * (half_width * 0.78), cv + 8.0, 2.2, 4.5)  # under the cheekbone
    nose_side = 1.0 if lx < 0 else -1.0  # the nose casts its shadow away from the light
    nose_mid_v = float(nose[[0, 3], 1].mean())
    nose_len = float(nose[3, 1] - nose[0, 1])
    occlusion -= (0.1 + 0.25 * abs(lx)) * c.gaussian(nose_side * 1.9, nose_mid_v + 1.5, 0.9, nose_len * 0.4)
    occlusion -= 0.07 * c.gaussian(-nose_side * 1.9, nose_mid_v + 1.5, 0.9, nose_len * 0.35)
    for wing, side in ((nose[4], -1), (nose[8], 1)):  # the nostril wings
        occlusion -= 0.15 * c.gaussian(wing[0] - side * 0.2, wing[1] - 0.5, 0.8, 1.1)
    occlusion -= 0.2 * c.gaussian(0.0, float(nose[6, 1]) + 0.9, 2.8, 0.8)  # under the nose
    occlusion -= 0.2 * c.gaussian(0.0, float(mouth[9, 1]) + 1.4, 3.0, 0.9)  # under the lower lip (57)

    highlight = 0.04 * c.gaussian(0.0, nose_mid_v, 0.7, nose_len * 0.4)  # the nose bridge
    highlight += 0.06 * c.gaussian(0.0, float(nose[3, 1]), 1.3, 1.0)  # the nose tip
    highlight += 0.06 * c.gaussian(0.0, top_v + identity.hairline * 0.55, 5.5, 2.5)  # the forehead
    highlight += 0.08 * c.gaussian(0.0, float(mouth[18, 1]) + 1.0, 2.0, 0.6)  # the lower lip (below 66)
    cheek = max(expr.cheek_raise, 0.0)  # the cheeks, round and raised in a smile (AU6)
    for (cu, cv), side in zip(eye_centres, (-1, 1)):
        highlight += (0.05 + 0.1 * cheek) * c.gaussian(cu + side * 1.0, cv + 6.0 - 1.5 * cheek, 3.0, 2.5)
    return shade * np.clip(occlusion, 0.2, 1.0), highlight


def _paint_creases(c: _Canvas, landmarks: np.ndarray, identity: Identity, expr: Expression, face: np.ndarray):
    """Wrinkles and folds: nasolabial folds, forehead lines, frown lines, nose wrinkles."""
    brows, nose, mouth = landmarks[17:27], landmarks[27:36], landmarks[48:68]
    brow_v = float(brows[:, 1].min())
    top_v = brow_v - identity.hairline

    def crease(points, strength: float, width: float = CREASE_WIDTH) -> None:
        if strength > 0.05:
            line = c.line(_spline(np.asarray(points), 6), width, blur=0.35) * face
            c.paint(line, identity.skin * 0.55, alpha=min(strength, 1.0))

    for side, corner in zip((-1, 1), mouth[[0, 6]]):  # nasolabial folds, deep in smiles and disgust
        wing = nose[4 if side < 0 else 8]
        start = wing + (side * 0.9, -0.4)
        end = np.array([corner[0] + side * 1.8, max(corner[1], MOUTH_V) + 2.2])
        mid = (start + end) / 2 + (side * 1.4, -0.3)
        depth = 0.1 + 0.6 * max(expr.cheek_raise, 0.0) + 0.4 * max(expr.upper_lip_raise, 0.0)
        crease([start, mid, end], depth, width=0.5)
    for k in range(3):  # horizontal forehead lines when the brows go up (AU1+2)
        line_v = brow_v - 2.3 - 1.8 * k
        if line_v > top_v + 1.0:
            xs = np.linspace(-6.5 + k, 6.5 - k, 5)
            crease(np.stack([xs, line_v - 0.5 * np.cos(xs / 7.0 * np.pi / 2)], axis=1), 0.7 * expr.brow_raise)
    for side in (-1, 1):  # vertical lines between the brows when they are drawn down and together (AU4)
        inner = brows[4 if side < 0 else 5]
        crease([inner + (-side * 0.6, -0.5), inner + (-side * 0.9, 2.0)], 0.8 * expr.brow_frown)
    for k in range(2):  # wrinkles across the upper nose (AU9)
        line_v = float(nose[1, 1]) - 0.5 + 1.3 * k
        crease([(-2.0, line_v + 0.4), (0.0, line_v - 0.2), (2.0, line_v + 0.4)], 0.9 * expr.nose_wrinkle)


def _paint_eyes_brows_nose(
    c: _Canvas, landmarks: np.ndarray, identity: Identity, expr: Expression, rng: np.random.Generator
) -> None:
    """Eyes (sclera, iris, pupil, lids), brows (tapered strips) and nostrils."""
    skin = identity.skin
    sclera = float(np.clip(skin + SCLERA_GAIN, 0.55, 0.92))
    gaze = rng.normal(0.0, GAZE_SIGMA, size=2) * (1.0, 0.5)
    for eye in (landmarks[36:42], landmarks[42:48]):
        upper_lid = _spline(eye[[0, 1, 2, 3]], 8)
        lower_lid = _spline(eye[[3, 4, 5, 0]], 8)
        opening = c.polygon(np.concatenate([upper_lid, lower_lid]))
        c.paint(opening, sclera)
        cu, cv = eye.mean(axis=0) + gaze
        iris_r = IRIS_RADIUS * float(eye[3, 0] - eye[0, 0]) / 2
        c.paint(c.disc(cu, cv, iris_r) * opening, identity.iris)
        c.paint(c.disc(cu, cv, iris_r * PUPIL_RADIUS) * opening, 0.03)
        c.paint(c.line(upper_lid, LID_LINE_WIDTH, blur=0.15), 0.08, alpha=0.9)  # upper lid and lashes
        c.paint(c.line(lower_lid, 0.3, blur=0.2), skin * 0.5, alpha=0.5)
        fold_lift = 0.9 + 0.4 * max(-expr.eye_open, 0.0)  # the lid fold above the eye
        c.paint(c.line(upper_lid[4:-4] - (0.0, fold_lift), 0.35, blur=0.3), skin * 0.6, alpha=0.4)

    thickness = BROW_THICKNESS * identity.brow_thickness
    for brow in (landmarks[17:22], landmarks[22:27][::-1]):  # both outer -> inner; thickest at the inner end
        centre = _spline(brow, 6)
        taper = np.linspace(0.5, 1.0, len(centre))[:, None] * thickness
        strip = np.concatenate([centre - taper * (0, 0.35), (centre + taper * (0, 0.65))[::-1]])
        c.paint(c.polygon(strip, blur=0.3), identity.brow, alpha=0.9)

    for index, side in ((32, -1), (34, 1)):  # nostrils beside the subnasale, and the crease of each wing
        cu, cv = landmarks[index]
        c.paint(c.gaussian(cu - side * 0.3, cv - 0.4, 0.9, 0.45), skin * 0.25, alpha=0.75)
        wing = landmarks[31 if side < 0 else 35]
        wing_crease = _spline([wing + (0, -1.6), wing + (side * 0.4, -0.4), wing + (-side * 0.5, 0.6)], 5)
        c.paint(c.line(wing_crease, 0.35, blur=0.3), skin * 0.5, alpha=0.5)


def _paint_mouth(c: _Canvas, landmarks: np.ndarray, identity: Identity, expr: Expression, rng) -> None:
    """Lips (the upper one in shade), the dark opening with its rows of teeth, the lip seam and corners."""
    skin = identity.skin
    mouth = landmarks[48:68]
    lip = skin * rng.uniform(*LIP_TONE)
    outer_upper, outer_lower = mouth[0:7], np.concatenate([mouth[6:12], mouth[:1]])  # 48-54, 54-59 + 48
    inner_upper, inner_lower = mouth[12:17], np.concatenate([mouth[16:20], mouth[12:13]])  # 60-64, 64-67 + 60
    c.paint(c.polygon(np.concatenate([_spline(outer_upper, 6), _spline(inner_upper[::-1], 6)]), blur=0.25), lip * 0.93)
    c.paint(c.polygon(np.concatenate([_spline(outer_lower, 6), _spline(inner_lower[::-1], 6)]), blur=0.25), lip)
    gap = c.polygon(np.concatenate([_spline(inner_upper, 6), _spline(inner_lower, 6)]), blur=0.1)
    gap_height = float(mouth[18, 1] - mouth[14, 1])  # 66 - 62
    if gap.max() > 0:
        c.paint(gap, MOUTH_INSIDE)
        for amount, top in ((expr.upper_teeth, True), (expr.lower_teeth, False)):
            if amount > 0.1 and gap_height > 0.3:
                band = min(TEETH_HEIGHT, TEETH_SHARE * gap_height) * amount
                if top:
                    rows = c.v < float(inner_upper[:, 1].mean()) + band
                else:
                    rows = c.v > float(inner_lower[:, 1].max()) - band
                c.paint(gap * rows, TEETH_TONE * min(1.0, skin + 0.35))
    c.paint(c.line(_spline(inner_upper, 6), 0.35, blur=0.2), skin * 0.3, alpha=0.8)  # lip seam
    for corner in mouth[[0, 6]]:
        c.paint(c.gaussian(corner[0], corner[1], 0.5, 0.4), skin * 0.35, alpha=0.6)


def _render(
    landmarks: np.ndarray, identity: Identity, expr: Expression, pose: Pose, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Paint a face around its local landmarks ``(68, 2)``; returns the float image (size x size, 0-1).

    Albedo is painted back to front (background, hair, skin, creases, eyes, brows, nose, mouth), then the head
    is lit; all at :data:`SUPERSAMPLE` times the resolution, downsampled by area averaging.
    """
    c = _Canvas(size, pose)
    face, hair_mask = _paint_head(c, landmarks, identity, rng)
    gain, highlight = _lighting(c, landmarks, identity, expr, rng)
    _paint_creases(c, landmarks, identity, expr, face)
    _paint_eyes_brows_nose(c, landmarks, identity, expr, rng)
    _paint_mouth(c, landmarks, identity, expr, rng)
    head = np.clip(face + hair_mask * 0.6, 0.0, 1.0)  # hair catches the light less than skin
    lit = c.image * gain + highlight
    image = c.image * (1.0 - head) + lit * head
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


# photometric jitter after downsampling
BLUR_SIGMA = (0.0, 0.6)  # output pixels
CONTRAST_RANGE = (0.75, 1.25)
BRIGHTNESS_SHIFT = 0.08
GAMMA_RANGE = (0.8, 1.25)
NOISE_SIGMA = (0.0, 1.2)  # grey levels out of 255; kept low so the bundled CSV compresses well


def draw_face(expression: int, rng: np.random.Generator, size: int = BASE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic face showing ``expression``.

    Args:
        expression: canonical class id (``utils.data.labels``: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad,
            5 surprise, 6 neutral).
        rng: random generator; the same generator state gives the same face.
        size: image side in pixels (48 as in FER2013).

    Returns:
        ``(image, landmarks)``: a ``(size, size)`` uint8 grey image and its ``(68, 2)`` float32 landmarks
        (x, y in pixels of the returned image, pixel centres at integer coordinates), in the iBUG-300W / dlib
        68-point order.
    """
    identity = sample_identity(rng)
    expr = sample_expression(expression, rng)
    local = face_landmarks(identity, expr)
    pose = _fit_pose(sample_pose(rng), local, size)
    image = _render(local, identity, expr, pose, size, rng)

    sigma = rng.uniform(*BLUR_SIGMA) * size / BASE_SIZE
    if sigma > 0.2:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(*GAMMA_RANGE)
    mean = image.mean()
    image = (image - mean) * rng.uniform(*CONTRAST_RANGE) + mean + rng.uniform(-BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT)
    image = image * 255.0 + rng.normal(0.0, rng.uniform(*NOISE_SIGMA), size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    points = _to_image(local, size, pose)
    return image, np.clip(points, 0.0, size - 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# The bundled dataset.
# ----------------------------------------------------------------------------------------------------------
USAGES = ("Training", "PublicTest", "PrivateTest")  # FER2013's `Usage` values, in its row order
# Images per class (canonical order: angry, disgust, fear, happy, sad, surprise, neutral). Proportional to
# FER2013's Training split (13.9 / 1.5 / 14.3 / 25.1 / 16.8 / 11.0 / 17.3 %), except that disgust is doubled
# to ~3% so that the rare class still has a few test images. 500 / 110 / 110 images: with ~2.6 kB per
# gzipped image and landmark row, this keeps data/sample/ under 2 MB.
DEFAULT_COUNTS: dict[str, tuple[int, ...]] = {
    "Training": (68, 15, 71, 124, 83, 54, 85),
    "PublicTest": (15, 4, 15, 27, 18, 12, 19),
    "PrivateTest": (15, 4, 15, 27, 18, 12, 19),
}
CSV_NAME = "fer2013.csv.gz"
LANDMARKS_NAME = "fer2013_landmarks.csv.gz"
GZIP_LEVEL = 9


def _write_gzip(path: Path, lines: list[str]) -> None:
    """Write text lines gzipped with a zero timestamp and no file name, so equal content gives equal bytes."""
    data = ("\n".join(lines) + "\n").encode("ascii")
    path.write_bytes(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0))


def make_sample(out_dir, counts=None, seed: int = 0) -> dict[str, tuple[int, ...]]:
    """Draw the sample dataset and write it in the FER2013 challenge format.

    Writes ``fer2013.csv.gz`` (``emotion,pixels,Usage``; 2304 space-separated grey values per row; rows
    ordered Training, PublicTest, PrivateTest, classes shuffled within each) and ``fer2013_landmarks.csv.gz``
    (one column ``landmarks``: 136 numbers ``x0 y0 ... x67 y67`` in 48x48 pixel coordinates, 2 decimals, one
    row per image in the same order). Both are gzipped deterministically: the same arguments give the same
    bytes.

    Args:
        out_dir: folder to write into (created if missing).
        counts: images per class for each ``Usage``, e.g. ``{"Training": (96, 20, 99, 173, 116, 76, 120)}``
            in the canonical class order (angry ... neutral); default :data:`DEFAULT_COUNTS`.
        seed: random seed.

    Returns:
        The per-class counts written, by ``Usage``.
    """
    counts = DEFAULT_COUNTS if counts is None else counts
    for usage, per_class in counts.items():
        if usage not in USAGES:
            raise ValueError(f"unknown Usage {usage!r}; expected one of {USAGES}")
        if len(per_class) != NUM_BASIC or min(per_class) < 0:
            raise ValueError(f"{usage}: expected {NUM_BASIC} non-negative counts ({', '.join(EMOTIONS[:NUM_BASIC])})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, landmark_rows = ["emotion,pixels,Usage"], ["landmarks"]
    written = {}
    for usage in (u for u in USAGES if u in counts):
        labels = np.repeat(np.arange(NUM_BASIC), counts[usage])
        rng.shuffle(labels)
        for label in labels:
            image, points = draw_face(int(label), rng)
            rows.append(f"{label},{' '.join(map(str, image.ravel().tolist()))},{usage}")
            landmark_rows.append(" ".join(f"{value:.2f}" for value in points.ravel().tolist()))
        written[usage] = tuple(int(n) for n in counts[usage])
    _write_gzip(out_dir / CSV_NAME, rows)
    _write_gzip(out_dir / LANDMARKS_NAME, landmark_rows)
    return written


VOTES_NAME = "fer2013new.csv.gz"
CONFUSED_WITH = {  # canonical class -> the classes its synthetic faces are drawn ambiguous with (see above)
    0: (1,),  # angry ~ disgust
    1: (0,),
    2: (5,),  # fear ~ surprise
    5: (2,),
    4: (6,),  # sad ~ neutral
    6: (4, 7),  # neutral ~ sad, contempt
    3: (7,),  # happy ~ contempt (a one-sided smile)
}


def make_votes(out_dir, seed: int = 0) -> dict[str, int]:
    """Write ``fer2013new.csv.gz``: ten crowd votes per image of the sample, in the FERPlus format (``Usage,
    Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF``), so that the
    FERPlus reader and its four label modes run on the sample.

    The votes are made up from the drawn label, not collected: most go to it, the rest to the classes its
    faces are drawn ambiguous with, contempt (FERPlus's eighth class), ``unknown``; about 2 % of the images
    get mostly ``NF`` votes (not a face) and are excluded by the reader, as FERPlus does. Deterministic.

    Returns:
        How many images got each kind of vote: ``{"clear", "split", "not a face"}``.
    """
    import pandas as pd

    from utils.data.labels import CANONICAL_TO_FERPLUS

    out_dir = Path(out_dir)
    fer = pd.read_csv(out_dir / CSV_NAME, usecols=["emotion", "Usage"])
    rng = np.random.default_rng(seed)
    rows = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    kinds = {"clear": 0, "split": 0, "not a face": 0}
    counters = {}
    for emotion, usage in zip(fer["emotion"], fer["Usage"]):
        counters[usage] = counters.get(usage, -1) + 1
        votes = np.zeros(10, dtype=int)
        if rng.random() < 0.02:
            votes[9], votes[8] = 8, 2  # not a face
            kinds["not a face"] += 1
        else:
            own = int(rng.integers(5, 11))  # 5..10 of the 10 votes for the drawn class
            votes[CANONICAL_TO_FERPLUS[int(emotion)]] += own
            others = [CANONICAL_TO_FERPLUS[c] for c in CONFUSED_WITH[int(emotion)]] + [8]  # ... and unknown
            for _ in range(10 - own):
                votes[others[int(rng.integers(len(others)))]] += 1
            kinds["clear" if own >= 8 else "split"] += 1
        prefix = {"Training": "train", "PublicTest": "public", "PrivateTest": "private"}[usage]
        rows.append(f"{usage},fer{prefix}{counters[usage]:05d}.png," + ",".join(map(str, votes)))
    _write_gzip(out_dir / VOTES_NAME, rows)
    return kinds


def main(argv: list[str] | None = None) -> None:
    """``python -m utils.data.sample [--out data/sample] [--seed 0]``: regenerate the bundled sample."""
    from utils.core.runtime import SAMPLE_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    written = make_sample(args.out, seed=args.seed)
    make_votes(args.out, seed=args.seed)
    width = max(len(name) for name in EMOTIONS[:NUM_BASIC])
    print(f"{'':{width}}  " + "  ".join(f"{usage:>11}" for usage in written))
    for label, name in enumerate(EMOTIONS[:NUM_BASIC]):
        print(f"{name:{width}}  " + "  ".join(f"{per_class[label]:>11}" for per_class in written.values()))
    print(f"{'total':{width}}  " + "  ".join(f"{sum(per_class):>11}" for per_class in written.values()))
    for name in (CSV_NAME, LANDMARKS_NAME, VOTES_NAME):
        print(f"{args.out / name}: {(args.out / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
