"""ADE20K (SceneParsing, 150 classes) metadata: class names and the colour palette.

The one owner of these facts. The CSV files beside this module are copies of
the official ``objectInfo150`` class list and the standard 150-colour palette
(CSAIL's ``color150.mat``). Label values in annotation PNGs are 1..150 with
0 = "other"; inside the framework classes are train ids 0..149 and 255 is
ignored.
"""

import csv
import functools
import os

import numpy as np

NUM_CLASSES = 150
IGNORE_LABEL = 255
_HERE = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def _rows(filename: str) -> tuple[dict, ...]:
    with open(os.path.join(_HERE, filename), newline="", encoding="utf-8") as f:
        return tuple(csv.DictReader(f))


@functools.cache
def class_names() -> tuple[str, ...]:
    """Short class names indexed by train id (0..149), e.g. ``class_names()[0] == "wall"``."""
    return tuple(row["ShortName"].strip() for row in _rows("ade20k_classes.csv"))


@functools.cache
def full_class_names() -> tuple[str, ...]:
    """The official synonym lists indexed by train id, e.g. ``"building, edifice"``."""
    return tuple(row["Name"] for row in _rows("ade20k_classes.csv"))


@functools.cache
def palette() -> np.ndarray:
    """RGB colours indexed by train id: uint8 array of shape (150, 3)."""
    rows = _rows("ade20k_palette.csv")
    colours = np.array([[int(r["r"]), int(r["g"]), int(r["b"])] for r in rows], dtype=np.uint8)
    colours.setflags(write=False)
    return colours


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """Paints a train-id map (0..149, 255 ignored) in the ADE20K colours.

    Args:
      train_ids: integer array (..., H, W).

    Returns:
      uint8 array (..., H, W, 3); ignored and unknown ids are black.
    """
    lookup = np.zeros((256, 3), dtype=np.uint8)
    lookup[:NUM_CLASSES] = palette()
    ids = np.asarray(train_ids)
    return lookup[np.where((ids >= 0) & (ids < 256), ids, IGNORE_LABEL).astype(np.intp)]
