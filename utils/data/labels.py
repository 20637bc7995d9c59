"""The one label order of the suite, and each dataset's own numbering mapped onto it.

Every dataset numbers its expressions differently: FER2013 starts at angry, RAF-DB at surprise (from 1),
AffectNet at neutral, FERPlus orders its vote columns neutral first, and an ``ImageFolder`` sorts folder
names alphabetically. The suite converts every dataset to one canonical order at read time, here and
nowhere else, so that a class index means the same expression in every array, model and figure.

The canonical order is FER2013's (``0 angry ... 6 neutral``), with contempt as an eighth class for the
datasets that have it (FERPlus, CK+, AffectNet).
"""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")
"""Canonical class names; index = class id. The first seven are FER2013's order."""

ANGRY, DISGUST, FEAR, HAPPY, SAD, SURPRISE, NEUTRAL, CONTEMPT = range(8)
NUM_BASIC = 7  # the seven basic expressions of FER2013 and RAF-DB

# FER2013 (`emotion` column of fer2013.csv / icml_face_data.csv / train.csv): 0..6 in the canonical order.
FER2013_TO_CANONICAL: dict[int, int] = {
    0: ANGRY,
    1: DISGUST,
    2: FEAR,
    3: HAPPY,
    4: SAD,
    5: SURPRISE,
    6: NEUTRAL,
}

# FERPlus (fer2013new.csv): the vote columns, in file order. `unknown` and `NF` (not a face) are not classes.
FERPLUS_COLUMNS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
FERPLUS_TO_CANONICAL: dict[str, int] = {
    "neutral": NEUTRAL,
    "happiness": HAPPY,
    "surprise": SURPRISE,
    "sadness": SAD,
    "anger": ANGRY,
    "disgust": DISGUST,
    "fear": FEAR,
    "contempt": CONTEMPT,
}

CANONICAL_TO_FERPLUS: dict[int, int] = {c: FERPLUS_COLUMNS.index(n) for n, c in FERPLUS_TO_CANONICAL.items()}
"""Canonical class id -> its vote column in ``fer2013new.csv``."""

# RAF-DB basic (EmoLabel/list_patition_label.txt and the DATASET/{train,test}/{1..7}/ folders).
RAFDB_TO_CANONICAL: dict[int, int] = {
    1: SURPRISE,
    2: FEAR,
    3: DISGUST,
    4: HAPPY,  # "happiness"
    5: SAD,  # "sadness"
    6: ANGRY,  # "anger"
    7: NEUTRAL,
}

# AffectNet manual annotations (`expression` column). 8 none, 9 uncertain, 10 non-face are not expressions.
AFFECTNET_TO_CANONICAL: dict[int, int] = {
    0: NEUTRAL,
    1: HAPPY,
    2: SAD,
    3: SURPRISE,
    4: FEAR,
    5: DISGUST,
    6: ANGRY,
    7: CONTEMPT,
}
AFFECTNET_DROPPED: dict[int, str] = {8: "none", 9: "uncertain", 10: "non-face"}

# JAFFE file names such as KA.AN1.39.tiff: the expression code after the subject.
JAFFE_TO_CANONICAL: dict[str, int] = {
    "AN": ANGRY,
    "DI": DISGUST,
    "FE": FEAR,
    "HA": HAPPY,
    "NE": NEUTRAL,
    "SA": SAD,
    "SU": SURPRISE,
}

# Class-named folders (FER2013 per-image export, CK+48, AffectNet folders): every spelling in circulation.
FOLDER_NAMES: dict[str, int] = {
    "angry": ANGRY,
    "anger": ANGRY,
    "disgust": DISGUST,
    "disgusted": DISGUST,
    "fear": FEAR,
    "fearful": FEAR,
    "happy": HAPPY,
    "happiness": HAPPY,
    "sad": SAD,
    "sadness": SAD,
    "surprise": SURPRISE,
    "surprised": SURPRISE,
    "neutral": NEUTRAL,
    "contempt": CONTEMPT,
}


def class_names(num_classes: int) -> tuple[str, ...]:
    """The canonical names of the first ``num_classes`` classes (7 basic, or 8 with contempt)."""
    if num_classes not in (NUM_BASIC, len(EMOTIONS)):
        raise ValueError(f"num_classes must be {NUM_BASIC} or {len(EMOTIONS)}, not {num_classes}")
    return EMOTIONS[:num_classes]


def folder_label(name: str) -> int | None:
    """Canonical id of a class-named folder (case-insensitive), or None when the name is not an expression."""
    return FOLDER_NAMES.get(name.strip().lower())
