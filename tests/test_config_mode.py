"""``--mode=config`` (the resolved configuration and what set each key) and check_data's class table."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import REPO, run_fcn
from PIL import Image

from fcn import check_data, datasets
from fcn import config as config_lib

FLAGS = ["--config", "configs/sample.yaml", "--batch_size", "3", "--set", "train.val_every=7",
         "--set", "train.schedule=poly", "--set", "model.vgg_weights=imagenet", "--crop_size", "40,48"]


def test_config_mode_prints_every_key_and_reads_back_to_the_same_config(tmp_path):
    result = run_fcn("--mode=config", *FLAGS)
    assert result.returncode == 0, result.stderr
    expected = config_lib.load_config(
        os.path.join(REPO, "configs", "sample.yaml"),
        [("train.batch_size", 3), ("train.val_every", "7"), ("train.schedule", "poly"),
         ("model.pretrained_weights", "imagenet"), ("data.crop_size", "40,48")],
    )
    parsed = yaml.safe_load(result.stdout)
    assert parsed == config_lib.to_dict(expected)
    written = tmp_path / "printed.yaml"
    written.write_text(result.stdout)
    assert config_lib.load_config(str(written)) == expected
    # Every key of the tree is printed.
    printed = {f"{section}.{key}" if isinstance(values, dict) else section
               for section, values in parsed.items() for key in (values if isinstance(values, dict) else [None])}
    assert printed == set(config_lib.valid_keys())


def test_config_mode_names_what_set_each_non_default_value():
    lines = run_fcn("--mode=config", *FLAGS).stdout.splitlines()

    def line(key):
        return next(l.strip() for l in lines if l.strip().startswith(f"{key}:"))

    assert line("batch_size") == "batch_size: 3  # --batch_size"
    assert line("val_every") == "val_every: 7  # --set train.val_every=7"
    assert line("schedule") == "schedule: poly  # --set train.schedule=poly"
    assert line("crop_size") == "crop_size: [40, 48]  # --crop_size"
    assert line("max_steps") == "max_steps: 300  # configs/sample.yaml"
    # Defaults carry no comment, even where a file or flag set them to the default value.
    assert line("pretrained_weights") == "pretrained_weights: imagenet"
    assert line("optimizer") == "optimizer: adam"


def test_config_mode_does_not_import_tensorflow():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import FCN; status = FCN.main(['--mode=config']); "
            "assert status == 0; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", code, REPO], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "logs_dir: logs" in result.stdout


def test_config_mode_refuses_a_bad_key_like_every_mode():
    result = run_fcn("--mode=config", "--set", "train.optimiser=sgd")
    assert result.returncode == 2 and "Did you mean train.optimizer?" in result.stderr


# ---------------------------------------------------------------------------
# check_data's class table.


def pixels_per_value(annotation_paths):
    """Pixel count of every stored value (0..255) over the annotation files, read with PIL alone."""
    counts = np.zeros(256, np.int64)
    for path in annotation_paths:
        with Image.open(path) as picture:
            counts += np.bincount(np.asarray(picture).reshape(-1), minlength=256)
    return counts


@pytest.mark.parametrize("layout", ["ade20k", "voc", "folder", "cityscapes"])
def test_check_data_prints_the_class_table_and_pixels_per_split(tmp_path, layout):
    root = datasets.generate_sample_dataset(str(tmp_path / layout), layout, num_train=3, num_val=2, progress=False)
    dataset = datasets.as_dataset(root, config_lib.DataConfig(layout=layout, num_classes=0))
    classes = dataset.classes
    reports = check_data.check_dataset(dataset, progress=False)
    text = check_data.format_report(dataset.root, reports, classes=classes)
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\s+(\d+)\s+(.+?)\s+(\(\d+, \d+, \d+\))\s+(\d+)\s+(\d+)$", line)
        if match:
            rows[int(match.group(1))] = (match.group(2), match.group(3), int(match.group(4)), int(match.group(5)))
    assert sorted(rows) == sorted(classes.ids)  # one row per class, by its annotation value
    counts = {split: pixels_per_value(a for _, a in dataset.list_split(split).pairs) for split in ("training", "validation")}
    for value, name, colour in zip(classes.ids, classes.names, classes.colours):
        assert rows[value] == (name, str(tuple(colour)), counts["training"][value], counts["validation"][value]), value
    assert sum(row[2] for row in rows.values()) > 0
    # The ignored values under the dataset's own names.
    named = {"ade20k": "0 (other), 255 (ignored)", "folder": "0 (unlabelled), 255 (ignored)", "voc": "255 (ignored)"}
    if layout in named:
        assert f"ignored values: {named[layout]}" in text
