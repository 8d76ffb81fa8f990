"""Folders fcn cannot write into are refused before any work, with the folder and the fix named, never a traceback."""

import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from conftest import NARROW_FLAGS, REPO, SAMPLE_ROOT, save_run
from PIL import Image
from test_permissions import _run_stopped_by_permissions

# Run in the child: one Python, one TensorFlow start for every mode.
CHILD = """
import contextlib, io, json, sys
sys.path.insert(0, {repo!r})
import FCN

answers = []
for args in json.loads(sys.argv[1]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = FCN.main(args)
        except BaseException as error:  # a traceback: what must not happen
            status = repr(error)
    answers.append([status, stderr.getvalue()])
print(json.dumps(answers))
"""


@pytest.fixture
def home():
    folder = tempfile.mkdtemp(prefix="fcn-writable-")
    os.chmod(folder, 0o755)
    yield folder
    for parent, dirs, _ in os.walk(folder):
        os.chmod(parent, 0o755)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # a child Python that starts TensorFlow
def test_read_only_folders_are_refused_in_every_mode_before_any_work(home):
    data = os.path.join(home, "ADEChallengeData2016")
    shutil.copytree(SAMPLE_ROOT, data)
    run = os.path.join(home, "run")
    save_run(run, data)
    photo = os.path.join(home, "photo.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(photo)
    locked, mine = os.path.join(home, "locked"), os.path.join(home, "mine")
    os.makedirs(locked)
    os.makedirs(mine)
    for parent, dirs, files in os.walk(home):
        os.chmod(parent, 0o755)
        for name in files:
            os.chmod(os.path.join(parent, name), 0o644)
    os.chmod(locked, 0o555)
    os.chmod(os.path.join(run, "checkpoints"), 0o555)  # the run itself is writable, its checkpoints are not
    common = ["--data_dir", data, *NARROW_FLAGS, "--no_progress"]
    cases = [
        (["--mode=train", "--logs_dir", run, "--max_steps", "2"], "checkpoints is not writable"),
        (["--mode=evaluate", "--logs_dir", run, "--output", locked], "locked is not writable"),
        (["--mode=evaluate", "--logs_dir", run, "--save_predictions", os.path.join(locked, "sub")], "locked is not writable"),
        (["--mode=visualize", "--logs_dir", run, "--output", locked], "locked is not writable"),
        (["--mode=predict", "--logs_dir", run, "--image", photo, "--output", locked], "locked is not writable"),
        (["--mode=export", "--logs_dir", run, "--output", locked], "locked is not writable"),
    ]
    before = {name: sorted(os.listdir(os.path.join(home, name))) for name in ("run", "locked")}
    script = os.path.join(home, "child.py")
    with open(script, "w") as f:
        f.write(CHILD.format(repo=REPO))
    os.chmod(script, 0o644)
    result = _run_stopped_by_permissions([script, json.dumps([args + common for args, _ in cases])], home)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for (args, expected), (status, stderr) in zip(cases, answers):
        assert status == 1 and expected in stderr and "permission denied" in stderr, (args, status, stderr)
        assert "Traceback" not in stderr and stderr.count("\n") == 1, (args, stderr)
    assert {name: sorted(os.listdir(os.path.join(home, name))) for name in ("run", "locked")} == before


def test_links_to_nothing_or_in_a_loop_are_refused_as_output_folders(tmp_path):
    from fcn import errors, outputs

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for name in ("dangling", "loop"):
        with pytest.raises(errors.FcnError, match=f"--output {tmp_path / name}: .* is a symbolic link to nothing or in a loop"):
            outputs.check_writable((str(tmp_path / name), "--output"))
        with pytest.raises(errors.FcnError, match="symbolic link to nothing or in a loop"):
            outputs.check_writable((str(tmp_path / name / "below"), "--save_predictions"))
    outputs.check_writable((str(tmp_path / "new" / "deeper"), "--output"))  # not there yet: its parent is writable
    assert not (tmp_path / "new").exists()
