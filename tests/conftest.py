"""Shared test helpers: the real ADE20K samples and small datasets written to disk."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Three real ADE20K validation pairs, copied from the SceneParsing sample data.
SAMPLE_ROOT = os.path.join(REPO, "tests", "fixtures", "ADEChallengeData2016")


def write_pair(root, split, stem, image, label, image_format="JPEG", image_mode=None):
    """Writes one ADE20K-layout pair and returns (image path, annotation path).

    Args:
      root: dataset root.
      split: training or validation.
      stem: file stem, e.g. ADE_train_00000001.
      image: uint8 array (H, W, 3) RGB, or None to skip the image.
      label: uint8 array (H, W) of ADE20K label values (0..150), or None.
      image_format: JPEG or PNG.
      image_mode: PIL mode to convert the image to before saving (L, RGBA, CMYK).
    """
    image_dir = os.path.join(root, "images", split)
    annotation_dir = os.path.join(root, "annotations", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(annotation_dir, exist_ok=True)
    extension = ".jpg" if image_format == "JPEG" else ".png"
    image_path = os.path.join(image_dir, stem + extension)
    annotation_path = os.path.join(annotation_dir, stem + ".png")
    if image is not None:
        picture = Image.fromarray(np.asarray(image, np.uint8))
        if image_mode:
            picture = picture.convert(image_mode)
        picture.save(image_path, format=image_format, quality=95)
    if label is not None:
        Image.fromarray(np.asarray(label, np.uint8)).save(annotation_path)
    return image_path, annotation_path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
