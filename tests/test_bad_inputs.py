"""Bad input gets a clear message and its exit status, never a traceback; nothing is silently skipped."""

import os

import matplotlib
import numpy as np
import pytest
from conftest import SAMPLE_ROOT, run_fcn, save_run
from PIL import Image

from fcn import config as config_lib
from fcn import evaluate, visualize
from fcn.datasets.classes import ClassTable

matplotlib.use("Agg")


@pytest.mark.parametrize("override, message", [
    ("evaluate.scales=1e6", "evaluate.scales must be at most 8"),
    ("evaluate.test_size=1000000,1000000", "evaluate.test_size at scale 1 makes network inputs of 1,000,000,000,000 pixels"),
    ("data.crop_size=100000", "data.crop_size makes network inputs of 10,000,000,000 pixels"),
])  # fmt: skip
def test_sizes_that_cannot_fit_are_refused_with_the_limit(override, message):
    result = run_fcn("--mode=evaluate", "--set", override, "--no_progress")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert "Traceback" not in result.stderr


def test_class_names_with_dollars_are_drawn_literally(tmp_path):
    names = ("$\\foo{$", "plain", "a $ sign")
    matrix = np.array([[5, 1, 0], [0, 3, 1], [2, 0, 4]])
    evaluate.confusion_figure(matrix, list(names)).savefig(tmp_path / "matrix.png")  # mathtext raised before
    classes = ClassTable(names, (1, 2, 3), ((200, 0, 0), (0, 200, 0), (0, 0, 200)))
    labels = np.array([[0, 1], [2, 255]])
    figure = visualize.comparison_figure([np.zeros((2, 2, 3), np.uint8)], [labels], [labels], titles=["$x$$.png"], classes=classes)
    figure.savefig(tmp_path / "pictures.png")
    texts = [t.get_text() for t in figure.legends[0].get_texts()]
    assert texts[:3] == ["\\$\\foo{\\$", "plain", "a \\$ sign"]  # escaped: drawn as the characters they are


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    logs = str(tmp_path_factory.mktemp("run"))
    save_run(logs, SAMPLE_ROOT)
    return logs


def test_evaluate_with_every_image_too_large_says_so(tiny_run):
    result = run_fcn("--mode=evaluate", "--logs_dir", tiny_run, "--data_dir", SAMPLE_ROOT, "--set", "model.fc_channels=16",
                     "--set", "evaluate.max_pixels=1", "--no_progress")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "every image of the validation split has more than evaluate.max_pixels=1 pixels" in result.stderr


def test_predict_reads_every_format_in_a_folder_and_reports_a_pipe_without_stopping(tiny_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    picture = np.random.default_rng(0).integers(0, 256, (24, 32, 3)).astype(np.uint8)
    for extension in ("jpg", "png", "bmp", "gif", "webp"):
        Image.fromarray(picture).save(folder / f"photo_{extension}.{extension}")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    result = run_fcn("--mode=predict", "--logs_dir", tiny_run, "--image", str(folder), str(fifo), "--output", str(out),
                     "--set", "model.fc_channels=16", "--no_progress")  # fmt: skip
    assert result.returncode == 1 and "pipe.jpg: not a regular file" in result.stderr and "Traceback" not in result.stderr
    labels = sorted(n for n in os.listdir(out) if n.count("_") == 1 and not n.startswith("."))  # photo_EXT.png only
    assert labels == [f"photo_{e}.png" for e in ("bmp", "gif", "jpg", "png", "webp")]


@pytest.mark.slow  # FCN.py in a child process: TensorFlow's warnings go to the real stderr
def test_a_refused_init_from_is_one_line_naming_the_keys(tiny_run, tmp_path):
    from fcn import datasets

    data = str(tmp_path / "ADEChallengeData2016")
    datasets.generate_sample_dataset(data, num_train=2, num_val=1, progress=False)
    result = run_fcn("--mode=train", "--data_dir", data, "--logs_dir", str(tmp_path / "run"), "--init_from", tiny_run,
                     "--set", "model.backbone=vgg19", "--pretrained_weights", "none", "--set", "model.fc_channels=16",
                     "--max_steps", "1", "--crop_size", "32", "--batch_size", "1", "--no_progress", subprocess_=True)  # fmt: skip
    assert result.returncode == 1
    assert "data.num_classes, model.fc_channels and model.backbone must be those of its run" in result.stderr
    lines = [line for line in result.stderr.splitlines()  # not TensorFlow's start-up lines (the test sets their level)
             if line.strip() and not line.startswith(("I0000", "WARNING: All log")) and "cuInit" not in line]
    assert len(lines) == 1 and "Value in checkpoint" not in result.stderr, lines[:5]  # it printed ~100 warnings before
