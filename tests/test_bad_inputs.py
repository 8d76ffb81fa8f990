"""Bad input gets a clear message and its exit status, never a traceback; nothing is silently skipped."""

import os

import matplotlib
import numpy as np
import pytest
from conftest import NARROW_FLAGS, SAMPLE_ROOT, run_fcn, save_run
from PIL import Image

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
    result = run_fcn("--mode=evaluate", "--logs_dir", tiny_run, "--data_dir", SAMPLE_ROOT, *NARROW_FLAGS,
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
                     *NARROW_FLAGS, "--no_progress")  # fmt: skip
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


def test_a_huge_header_is_reported_with_its_own_size(tmp_path):
    import io
    import struct

    from fcn import inference

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    marker = data.index(b"\xff\xc0")  # the frame header: height and width after the marker, length and precision
    struct.pack_into(">HH", data, marker + 5, 65000, 65000)
    (tmp_path / "huge.jpg").write_bytes(bytes(data))
    message = inference.too_large(str(tmp_path / "huge.jpg"), 100_000_000)
    assert "65000x65000 = 4,225,000,000 pixels, more than evaluate.max_pixels = 100,000,000" in message  # was 89478485x2


def test_class_table_messages_name_the_line_and_the_difference(tmp_path):
    from fcn import errors

    path = tmp_path / "classes.csv"
    path.write_text("id,name,r,g,b\n1,a,1,1,1\n2,b,1,1,1\n1,c,1,1,1\n")
    with pytest.raises(errors.DataError, match="line 4: class id 1 is already given on line 2"):
        ClassTable.read_csv(str(path))
    path.write_text("id,name,r,g,b\n1,a,1,1,1\n2,b,1,1,1\n3,a,1,1,1\n")
    with pytest.raises(errors.DataError, match="line 4: class name 'a' is already given on line 2"):
        ClassTable.read_csv(str(path))
    three = ClassTable(("x", "y", "z"), (1, 2, 3), ((0, 0, 0),) * 3)
    other = ClassTable(("x", "y", "z"), (10, 20, 30), ((0, 0, 0),) * 3)
    assert three.difference(other) == "class ids [1, 2, 3] only here, [10, 20, 30] only there"  # not '3 classes ... 3 classes'
    renamed = ClassTable(("x", "why", "z"), (1, 2, 3), ((0, 0, 0),) * 3)
    assert three.difference(renamed) == "other names: 'y' for 'why'"


def _folder_dataset(root, label_value=None, rgb=False, values=(1, 2)):
    """A folder dataset of two pairs per split whose annotations are all ``label_value``, RGB pictures, or ``values``."""
    rng = np.random.default_rng(0)
    os.makedirs(root)
    with open(os.path.join(root, "classes.csv"), "w") as f:
        f.write("id,name,r,g,b,ignore\n0,unlabelled,0,0,0,1\n1,sky,70,130,180,0\n2,road,128,64,128,0\n")
    for split in ("training", "validation"):
        for kind in ("images", "annotations"):
            os.makedirs(os.path.join(root, kind, split))
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)).save(os.path.join(root, "images", split, f"p{k}.jpg"))
            if rgb:
                annotation = Image.fromarray(rng.integers(0, 3, (40, 48, 3)).astype(np.uint8))
            elif label_value is not None:
                annotation = Image.fromarray(np.full((40, 48), label_value, np.uint8))
            else:
                annotation = Image.fromarray(rng.choice(values, (40, 48)).astype(np.uint8))
            annotation.save(os.path.join(root, "annotations", split, f"p{k}.png"))
    return root


def test_check_data_refuses_a_dataset_with_nothing_labelled_and_names_unknown_values(tmp_path):
    ignored = _folder_dataset(str(tmp_path / "ignored"), label_value=0)
    result = run_fcn("--mode=check_data", "--data_dir", ignored, "--no_progress")
    assert result.returncode == 1 and "no labelled pixel" in result.stdout and "no problems found" not in result.stdout
    unknown = _folder_dataset(str(tmp_path / "unknown"), values=(1, 42, 77))
    result = run_fcn("--mode=check_data", "--data_dir", unknown, "--no_progress")
    assert result.returncode == 1 and "(values [42, 77])" in result.stdout


def test_training_on_a_split_with_nothing_to_learn_from_stops_saying_why(tmp_path):
    root = _folder_dataset(str(tmp_path / "rgb"), rgb=True)
    result = run_fcn("--mode=train", "--data_dir", root, "--logs_dir", str(tmp_path / "run"), "--pretrained_weights", "none",
                     *NARROW_FLAGS, "--crop_size", "32", "--batch_size", "2", "--max_steps", "3",
                     "--set", "train.val_every=100", "--no_progress")  # fmt: skip
    assert result.returncode == 1 and "met no labelled pixel" in result.stderr and "Traceback" not in result.stderr


def test_an_empty_batch_is_refused_by_the_exported_signature():
    import tensorflow as tf

    from fcn import export

    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one image"):
        export.checked_images(tf.zeros([0, 8, 8, 3], tf.uint8), 100)  # a filter-depth error deep in the network before
    assert export.checked_images(tf.zeros([1, 8, 8, 3], tf.uint8), 100).shape == (1, 8, 8, 3)


@pytest.mark.slow  # a command-line training
def test_a_loss_overflowing_from_weight_decay_names_weight_decay(tmp_path):
    from fcn import datasets

    data = str(tmp_path / "ADEChallengeData2016")
    datasets.generate_sample_dataset(data, num_train=2, num_val=1, min_size=48, max_size=64, progress=False)
    result = run_fcn("--mode=train", "--data_dir", data, "--logs_dir", str(tmp_path / "run"), "--pretrained_weights", "none",
                     "--set", "model.fc_channels=8", "--crop_size", "32", "--batch_size", "1", "--max_steps", "2",
                     "--set", "train.weight_decay=1e30", "--no_progress")  # fmt: skip
    assert result.returncode == 1
    assert "try a lower train.weight_decay (it is 1e+30" in result.stdout + result.stderr  # it advised the learning rate
