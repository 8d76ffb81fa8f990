"""No user file is written over and no refused command changes a file (fcn/outputs.py, the training lock)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import NARROW_FLAGS, REPO, SAMPLE_ROOT, run_fcn, save_run
from conftest import file_digests as digests
from PIL import Image

from fcn import errors, outputs


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """A tiny run (fixed checkpoint) and a copy of the fixture dataset, both to be protected."""
    base = tmp_path_factory.mktemp("protected")
    data = str(base / "ADEChallengeData2016")
    shutil.copytree(SAMPLE_ROOT, data)
    logs = str(base / "run")
    save_run(logs, data)
    return logs, data


def common(logs, data):
    return ["--data_dir", data, "--logs_dir", logs, *NARROW_FLAGS, "--no_progress"]


def test_evaluate_never_writes_predictions_over_the_ground_truth(run_and_data):
    logs, data = run_and_data
    before = digests(data)
    result = run_fcn("--mode=evaluate", *common(logs, data), "--save_predictions", os.path.join(data, "annotations", "validation"))
    assert result.returncode == 1 and "is inside the dataset" in result.stderr and "Traceback" not in result.stderr
    assert digests(data) == before


def test_evaluate_and_visualize_never_write_over_a_users_files(run_and_data, tmp_path):
    logs, data = run_and_data
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("metrics.json", "visualize.png", "ADE_val_00000002.png"):
        (mine / name).write_text(f"the user's own {name}\n")
    before = digests(mine)
    for args in (["--mode=evaluate", "--output", str(mine)], ["--mode=evaluate", "--save_predictions", str(mine)],
                 ["--mode=visualize", "--output", str(mine)]):  # fmt: skip
        result = run_fcn(*args, *common(logs, data))
        assert result.returncode == 1 and "exists and was not written by --mode=" in result.stderr, args
        assert digests(mine) == before, args
    result = run_fcn("--mode=visualize", "--output", os.path.join(data, "images", "validation"), *common(logs, data))
    assert result.returncode == 1 and "is inside the dataset" in result.stderr
    # A folder fcn wrote into may be written again, by the same mode.
    fresh = tmp_path / "fresh"
    for _ in range(2):
        result = run_fcn("--mode=evaluate", "--save_predictions", str(fresh), *common(logs, data))
        assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(fresh)) == [".fcn_outputs", "ADE_val_00000001.png", "ADE_val_00000002.png", "ADE_val_00000003.png"]


def test_predict_refuses_two_images_whose_outputs_collide(run_and_data, tmp_path):
    logs, data = run_and_data
    images = tmp_path / "images"
    images.mkdir()
    picture = np.random.default_rng(0).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    Image.fromarray(picture).save(images / "photo.png")
    Image.fromarray(picture[::-1]).save(images / "photo_mask.png")  # photo's mask would be named like this image's labels
    out = tmp_path / "out"
    result = run_fcn("--mode=predict", "--image", str(images / "photo.png"), str(images / "photo_mask.png"),
                     "--output", str(out), *common(logs, data))  # fmt: skip
    assert result.returncode == 1 and "would both write" in result.stderr and "photo_mask.png" in result.stderr
    assert not out.exists()


def test_a_refused_resume_leaves_the_run_directory_as_it_was(tmp_path):
    logs = str(tmp_path / "run")
    save_run(logs, SAMPLE_ROOT)
    before = digests(logs)
    data = str(tmp_path / "ADEChallengeData2016")
    shutil.copytree(SAMPLE_ROOT, data)
    os.makedirs(os.path.join(data, "images", "training"))
    os.makedirs(os.path.join(data, "annotations", "training"))
    for name in ("ADE_val_00000001", "ADE_val_00000002"):
        shutil.copy(os.path.join(data, "images", "validation", name + ".jpg"), os.path.join(data, "images", "training"))
        shutil.copy(os.path.join(data, "annotations", "validation", name + ".png"), os.path.join(data, "annotations", "training"))
    result = run_fcn("--mode=train", *common(logs, data), "--set", "model.backbone=vgg19", "--pretrained_weights", "none",
                     "--max_steps", "2", "--batch_size", "1", "--crop_size", "32")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert digests(logs) == before  # config.yaml still says vgg16: the run can be evaluated with its own config


def test_one_training_run_per_run_directory(tmp_path):
    logs = str(tmp_path / "run")
    with outputs.exclusive(logs, "a test"):
        result = run_fcn("--mode=train", "--config", os.path.join(REPO, "configs", "sample.yaml"), "--logs_dir", logs,
                         "--data_dir", str(tmp_path / "data"), "--max_steps", "1", "--no_progress")  # fmt: skip
        assert result.returncode == 1 and f"is in use by another training run (process {os.getpid()})" in result.stderr
        assert os.listdir(logs) == []
    # A holder killed with SIGKILL leaves no stale lock.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from fcn import outputs; import time\nwith outputs.exclusive({logs!r}, 'x'):\n"
         "    print('locked', flush=True); time.sleep(60)"],  # fmt: skip
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(errors.InferenceError, match=f"process {holder.pid}"):
        with outputs.exclusive(logs, "a test"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with outputs.exclusive(logs, "a test"):
                break
        except errors.InferenceError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_visualize_with_every_image_refused_says_nothing_was_written(run_and_data, tmp_path):
    logs, data = run_and_data
    out = tmp_path / "pictures"
    result = run_fcn("--mode=visualize", "--output", str(out), "--set", "evaluate.max_pixels=1", *common(logs, data))
    assert result.returncode == 1 and "nothing was written" in result.stderr and "written:" not in result.stdout
    assert not out.exists()


# ---------------------------------------------------------------------------
# Class tables and names that reach files and the terminal.


def test_class_names_with_control_characters_and_a_class_at_255_are_refused(tmp_path):
    from fcn.datasets.classes import ClassTable

    path = tmp_path / "classes.csv"
    path.write_text('id,name,r,g,b\n1,"two\nlines",1,2,3\n2,b,4,5,6\n')
    with pytest.raises(errors.DataError, match=r"class name 'two\\nlines' holds a control character"):
        ClassTable.read_csv(str(path))
    path.write_text("id,name,r,g,b\n1,\x1b]0;pwned\x07,1,2,3\n")
    with pytest.raises(errors.DataError, match=r"'\\x1b\]0;pwned\\x07' holds a control character"):
        ClassTable.read_csv(str(path))
    path.write_text("id,name,r,g,b\n1,alpha,1,2,3\n255,gamma,7,8,9\n")
    with pytest.raises(errors.DataError, match=r"line 3: 255 is always ignored and cannot be the class 'gamma'"):
        ClassTable.read_csv(str(path))
    path.write_text("id,name,r,g,b,ignore\n1,alpha,1,2,3,0\n255,void,0,0,0,1\n")
    assert ClassTable.read_csv(str(path)).names == ("alpha",)  # declared ignored: fine


def test_names_that_a_spreadsheet_would_run_are_written_as_text_and_read_back(tmp_path):
    from fcn.datasets.classes import ClassTable

    table = ClassTable(("=HYPERLINK(1)", "+sum", "-x", "@y", "plain"), (1, 2, 3, 4, 5), ((0, 0, 0),) * 5)
    table.write_csv(str(tmp_path / "classes.csv"))
    cells = [line.split(",")[1] for line in (tmp_path / "classes.csv").read_text().splitlines()[1:6]]
    assert cells == ["'=HYPERLINK(1)", "'+sum", "'-x", "'@y", "plain"]
    assert ClassTable.read_csv(str(tmp_path / "classes.csv")).names == table.names


def test_file_names_reach_the_terminal_with_control_characters_escaped():
    from fcn.datasets.files import display_path

    assert display_path("a\x1b]0;title\x07b.png") == "a\\x1b]0;title\\x07b.png"
    assert display_path("d\u00e9j\u00e0/\tx.png") == "d\u00e9j\u00e0/\\x09x.png"


def test_a_home_folder_in_a_path_key_is_expanded(tmp_path, monkeypatch):
    from fcn import config as config_lib

    monkeypatch.setenv("HOME", str(tmp_path))
    config = config_lib.load_config(None, [("logs_dir", "~/runs/a"), ("data.data_dir", "~/data"), ("train.init_from", "~/other")])
    assert (config.logs_dir, config.data.data_dir, config.train.init_from) == (
        f"{tmp_path}/runs/a", f"{tmp_path}/data", f"{tmp_path}/other")
    assert config_lib.load_config(None, [("logs_dir", "runs/~a")]).logs_dir == "runs/~a"
