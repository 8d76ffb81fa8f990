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


def save_run(logs_dir, data_dir, fixed_class=None, seed=0, fc_channels=16):
    """A run directory with a tiny FCN-8s checkpoint, as inference modes find it.

    Writes ``logs_dir/config.yaml`` and ``logs_dir/checkpoints/ckpt-1`` holding
    ``tf.train.Checkpoint(model=...)``, as training does.

    Args:
      fixed_class: a train id the model then predicts at every pixel (its
        score_fr bias is the only non-zero score weight), or None for random
        score_fr weights, so predictions vary over the image.

    Returns:
      (the resolved config, the Keras model saved).
    """
    import keras
    import tensorflow as tf

    from fcn import config as config_lib
    from fcn import model as model_lib

    config = config_lib.load_config(
        None,
        [("logs_dir", str(logs_dir)), ("data.data_dir", str(data_dir)), ("model.fc_channels", fc_channels),
         ("model.vgg_weights", "none")],
    )
    keras.utils.set_random_seed(seed)
    model = model_lib.build_fcn8s(config.data.num_classes, fc_channels=fc_channels)
    score = model.get_layer("score_fr")
    if fixed_class is None:
        kernel = np.random.default_rng(seed).normal(0, 1, score.kernel.shape).astype(np.float32)
        score.kernel.assign(kernel)
    else:
        bias = np.zeros(score.bias.shape, np.float32)
        bias[fixed_class] = 1.0  # bilinear upsampling keeps it positive everywhere; every other logit stays 0
        score.bias.assign(bias)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), os.path.join(str(logs_dir), "checkpoints"), 1)
    manager.save(checkpoint_number=1)
    config_lib.save_config(config, str(logs_dir))
    return config, model


def run_fcn(*args, timeout=600):
    """Runs FCN.py as a user does; returns the CompletedProcess."""
    import subprocess

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "FCN.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
