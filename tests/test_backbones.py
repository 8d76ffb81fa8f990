"""The backbone registry (fcn/backbones.py): a trunk registered from outside fcn/ builds, trains and restores."""

import os

import keras
import numpy as np
import pytest
from conftest import run_fcn

from fcn import backbones, datasets
from fcn import config as config_lib
from fcn import model as model_lib


def toy_trunk(x, width=1.0):
    """Five stride-2 stages of 4 channels (times ``width``): the taps at 1/8, 1/16 and 1/32, like VGG's pools."""
    taps = []
    for stage in range(1, 6):
        x = keras.layers.Conv2D(max(1, round(4 * width)), 3, strides=2, padding="same", activation="relu", name=f"toy_conv{stage}")(x)
        taps.append(x)
    return {"pool3": taps[2], "pool4": taps[3], "top": taps[4]}


TOY = backbones.Backbone("toy", toy_trunk, tuple(f"toy_conv{stage}" for stage in range(1, 6)), mean_bgr=(100.0, 110.0, 120.0))


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(backbones.BACKBONES, "toy", TOY)


def test_an_unknown_backbone_is_refused_with_the_registry_listed():
    with pytest.raises(config_lib.ConfigError, match="model.backbone must be one of vgg16, vgg19, got 'toy'"):
        config_lib.load_config(None, [("model.backbone", "toy")])


def test_a_registered_backbone_builds_fcn8s_on_its_taps(toy_registered):
    config = config_lib.load_config(None, [("model.backbone", "toy"), ("model.fc_channels", 8)])
    model = model_lib.build_from_config(config.model, 5)
    names = {layer.name for layer in model.layers}
    assert set(TOY.layers) <= names and not any(name.startswith("block") for name in names)
    assert model_lib.backbone_of(model) == "toy"
    assert model.get_layer("preprocess").mean_bgr == (100.0, 110.0, 120.0)
    # The taps land where FCN-8s fuses them: score_pool3 at 1/8 and score_pool4 at 1/16 of the padded input.
    images = np.zeros((1, 64, 96, 3), np.float32)
    probe = keras.Model(model.input, [model.get_layer("score_pool3").output, model.get_layer("score_pool4").output])
    pool3, pool4 = probe(images)
    assert pool3.shape == (1, 8, 12, 5) and pool4.shape == (1, 4, 6, 5)
    assert model(images).shape == (1, 64, 96, 5)


@pytest.mark.slow  # a command-line training
def test_a_registered_backbone_trains_a_step_from_the_command_line(toy_registered, tmp_path):
    logs, root = str(tmp_path / "run"), str(tmp_path / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=4, num_val=2, min_size=48, max_size=64, progress=False)
    result = run_fcn("--mode=train", "--data_dir", root, "--logs_dir", logs, "--no_progress",
                     "--set", "model.backbone=toy", "--set", "model.fc_channels=8", "--pretrained_weights", "none",
                     "--batch_size", "2", "--crop_size", "32", "--max_steps", "1", "--debug",
                     "--set", "train.val_every=1", "--set", "train.val_images=2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "step 1: validation loss" in result.stdout
    assert config_lib.load_config(os.path.join(logs, "config.yaml")).model.backbone == "toy"
    assert os.path.isfile(os.path.join(logs, "checkpoints", "checkpoint"))
