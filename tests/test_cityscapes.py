"""The Cityscapes layout (fcn/datasets/cityscapes.py): its files, its class table, training and sliding-window scoring."""

import json
import os

import numpy as np
import pytest
from conftest import run_fcn
from PIL import Image

from fcn import check_data, datasets
from fcn import config as config_lib
from fcn.datasets import cityscapes, decode

# cityscapesScripts' labels.py, as published: labelId -> trainId of the 19 evaluation classes (every other
# labelId, 0..33, has trainId 255 "ignore").
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                      26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cityscapes"))
    datasets.generate_sample_dataset(root, "cityscapes", num_train=6, num_val=2, min_size=64, max_size=96, progress=False)
    return root


def test_sample_data_has_cityscapes_names_and_is_found_without_a_config(cityscapes_root):
    images = sorted(os.listdir(os.path.join(cityscapes_root, "leftImg8bit", "val", "frankfurt")))
    labels = sorted(os.listdir(os.path.join(cityscapes_root, "gtFine", "val", "frankfurt")))
    assert images == ["frankfurt_000001_000019_leftImg8bit.png", "frankfurt_000002_000019_leftImg8bit.png"]
    assert labels == ["frankfurt_000001_000019_gtFine_labelIds.png", "frankfurt_000002_000019_gtFine_labelIds.png"]
    dataset = datasets.find_dataset(config_lib.DataConfig(data_dir=cityscapes_root, num_classes=0))
    assert dataset.layout.name == "cityscapes" and dataset.classes.num_classes == 19
    assert len(dataset.usable_pairs("training")) == 6 and len(dataset.usable_pairs("validation")) == 2


def test_label_ids_map_to_the_official_train_ids(tmp_path):
    table = cityscapes.class_table()
    lookup = table.value_lookup()
    for label_id in range(34):
        assert lookup[label_id] == OFFICIAL_TRAIN_IDS.get(label_id, 255), label_id
    assert lookup[255] == 255 and (lookup[34:255] == -1).all()
    # One pair written by hand, read through the pipeline's reader.
    root = tmp_path / "cs"
    for kind in ("leftImg8bit", "gtFine"):
        for split in ("train", "val"):
            (root / kind / split / "ulm").mkdir(parents=True)
    values = np.array([[7, 26, 0, 33], [4, 24, 23, 255]], np.uint8)
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "leftImg8bit/val/ulm/ulm_000000_000001_leftImg8bit.png")
    Image.fromarray(values).save(root / "gtFine/val/ulm/ulm_000000_000001_gtFine_labelIds.png")
    dataset = datasets.open_dataset(config_lib.DataConfig(num_classes=0), str(root))
    (image_path, label_path), = dataset.usable_pairs("validation")
    _, train_ids = decode.load_example(image_path, label_path, dataset.classes)
    expected = np.vectorize(lambda v: OFFICIAL_TRAIN_IDS.get(int(v), 255))(values)
    np.testing.assert_array_equal(train_ids, expected)
    # A labelId outside 0..33 is an error, never guessed at.
    Image.fromarray(np.full((2, 4), 40, np.uint8)).save(label_path)
    with pytest.raises(Exception, match="outside the class table"):
        decode.load_example(image_path, label_path, dataset.classes)


def test_check_data_and_the_download_message(cityscapes_root, tmp_path):
    dataset = datasets.open_dataset(config_lib.DataConfig(num_classes=0), cityscapes_root)
    reports = check_data.check_dataset(dataset, progress=False)
    assert [r.pairs for r in reports] == [6, 2] and not any(r.error_count for r in reports)
    config = config_lib.DataConfig(data_dir=str(tmp_path / "none"), layout="cityscapes", download=True, num_classes=0)
    with pytest.raises(Exception, match="cityscapes-dataset.com"):
        datasets.prepare_dataset(config, progress=False)
    assert not os.path.exists(tmp_path / "none")


@pytest.mark.slow  # a command-line training, then evaluate and predict
def test_trains_and_scores_with_slide_inference_writing_label_ids(cityscapes_root, tmp_path):
    logs = str(tmp_path / "run")
    common = ["--data_dir", cityscapes_root, "--logs_dir", logs, "--no_progress", "--set", "data.num_classes=0",
              "--set", "model.fc_channels=16", "--pretrained_weights", "none"]  # fmt: skip
    result = run_fcn("--mode=train", *common, "--batch_size", "2", "--crop_size", "32,64", "--max_steps", "2",
                     "--set", "train.val_every=2", "--set", "train.val_images=2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    predictions = str(tmp_path / "submission")
    result = run_fcn("--mode=evaluate", *common, "--set", "evaluate.test_size=none", "--set", "evaluate.mode=slide",
                     "--set", "evaluate.window=48,64", "--set", "evaluate.stride=24,32", "--save_predictions", predictions)  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.load(open(os.path.join(logs, "metrics.json")))
    assert metrics["mode"] == "slide" and metrics["window"] == [48, 64] and metrics["stride"] == [24, 32]
    written = sorted(name for name in os.listdir(predictions) if not name.startswith("."))  # not fcn's list of its files
    assert written == ["frankfurt_000001_000019_leftImg8bit.png", "frankfurt_000002_000019_leftImg8bit.png"]
    for name in written:
        labels = np.asarray(Image.open(os.path.join(predictions, name)))
        image = Image.open(os.path.join(cityscapes_root, "leftImg8bit", "val", "frankfurt", name))
        assert labels.shape == (image.height, image.width) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= set(OFFICIAL_TRAIN_IDS)  # labelIds of the 19 classes, never train ids
