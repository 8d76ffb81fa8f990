"""MIT ADE20K SceneParsing (ADEChallengeData2016): 150 classes, 8-bit greyscale annotations.

``ROOT/images/{training,validation}/ADE_*.jpg`` and
``ROOT/annotations/{training,validation}/ADE_*.png``: values 1..150 are the
classes (train id = value - 1), 0 ("other") is ignored. The CSV files beside
this module are copies of the official ``objectInfo150`` class list and the
standard 150-colour palette (CSAIL's ``color150.mat``).
"""

import csv
import functools
import os

import numpy as np

from fcn import download
from fcn.datasets.classes import IGNORE_LABEL, ClassTable, voc_colormap
from fcn.datasets.files import IMAGE_EXTENSIONS, pair_by_stem
from fcn.datasets.layout import Layout
from fcn.datasets.sample import SampleWriter

NUM_CLASSES = 150
URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
SHA1 = "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"
ROOT_NAME = "ADEChallengeData2016"
ARCHIVE = download.Archive(
    file_name=ROOT_NAME + ".zip",
    top_dir=ROOT_NAME,
    required_dirs=("images/training", "images/validation", "annotations/training", "annotations/validation"),
    dataset_dir="",
    hash_name="sha1",
    what="the official ADE20K zip",
    config_keys="data.download_url, data.download_sha1",
    approximate_bytes=967_382_037,  # only for the progress bar when the server sends no size
    present_dirs=("images", "annotations"),
)
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
def palette() -> np.ndarray:
    """RGB colours indexed by train id: uint8 array of shape (150, 3)."""
    rows = _rows("ade20k_palette.csv")
    colours = np.array([[int(r["r"]), int(r["g"]), int(r["b"])] for r in rows], dtype=np.uint8)
    colours.setflags(write=False)
    return colours


def class_table(num_classes: int = NUM_CLASSES) -> ClassTable:
    """ADE20K's table: values 1..num_classes (train id + 1), 0 ("other") ignored.

    ``num_classes`` below 150 keeps the first classes; above it, the extra
    classes are numbered (``class_151``) and coloured from VOC's colour map.
    """
    names = list(class_names()[:num_classes])
    colours = [tuple(int(c) for c in row) for row in palette()[:num_classes]]
    extra = voc_colormap()
    for value in range(len(names) + 1, num_classes + 1):
        names.append(f"class_{value}")
        colours.append(tuple(int(c) for c in extra[value]))
    return ClassTable(tuple(names), tuple(range(1, num_classes + 1)), tuple(colours), (0, IGNORE_LABEL), False, "ADE20K",
                      ((0, "other"),))  # fmt: skip


def fetch(data_dir: str, url: str = URL, sha1: str = SHA1, progress: bool = True, keep_zip: bool = False) -> str:
    """Makes ``<data_dir>/ADEChallengeData2016`` from the official zip (``download.fetch_archive``)."""
    return download.fetch_archive(ARCHIVE, data_dir, url, sha1, progress, keep_zip)


class Ade20kLayout(Layout):
    """ADEChallengeData2016: images/ and annotations/ by split, 8-bit greyscale values 0..150."""

    name = "ade20k"
    looks_for = "images/ and annotations/ (ADEChallengeData2016)"
    sample_writer = SampleWriter

    def candidates(self, data_dir):
        return [data_dir, os.path.join(data_dir, ROOT_NAME)]

    def is_root(self, folder):
        return os.path.isdir(os.path.join(folder, "images")) and os.path.isdir(os.path.join(folder, "annotations"))

    def list_split(self, root, split, config):
        return pair_by_stem(root, split, IMAGE_EXTENSIONS)

    def class_table(self, root, config):
        return class_table(config.num_classes or NUM_CLASSES)

    def sample_root(self, data_dir):
        return os.path.join(data_dir, ROOT_NAME)

    def download(self, config, progress):
        return fetch(config.data_dir, config.download_url or URL, config.download_sha1 or SHA1, progress=progress)

    def ways_out(self):
        return ["--download                      fetch ADEChallengeData2016.zip (~923 MB) into --data_dir and extract it",
                "--data_dir DIR                  point at an existing ADEChallengeData2016 folder"]  # fmt: skip
