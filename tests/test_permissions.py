"""Files this user may not read: check_data, training's data listing and predict say so and name the fix.

Tests usually run as root, whom file permissions do not stop. The checks run
in a child process that permissions do stop: root without the capabilities
that override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped from the
child's bounding set before it starts Python), or else the user ``nobody``
(65534), or this user itself when it is not root.
"""

import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import REPO, write_pair

from fcn import datasets
from fcn.config import DataConfig

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
NOBODY = 65534

# Run in the child: one Python, one TensorFlow start for the three readers.
CHILD = """
import json, sys
sys.path.insert(0, {repo!r})
import FCN
from fcn import datasets, errors, inference, predict
from fcn.config import DataConfig

root, folder, denied_image, voc_root = sys.argv[1:5]
status = FCN.main(["--mode=check_data", "--data_dir", root, "--no_progress"])
try:
    datasets.usable_pairs(root, "training")
    listing = ""
except errors.DataError as error:
    listing = str(error)
voc = datasets.list_split(voc_root, "training", DataConfig(layout="voc", num_classes=0))
files, unopenable = predict.list_images([folder])
try:
    inference.read_image(denied_image)
    named = ""
except inference.InferenceError as error:
    named = str(error)
print(json.dumps(dict(status=status, listing=listing, files=files, unopenable=unopenable, named=named,
                      voc_pairs=len(voc.pairs), voc_problems=voc.problems())))
"""


def _drop_permission_override():
    """In the child before exec: root keeps uid 0 but loses the capabilities that bypass file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _ways_to_run(home):
    """(description, keyword arguments of subprocess.run) for a child whom permissions stop."""
    if os.geteuid() != 0:
        return [("this user", {})]
    return [
        ("root without CAP_DAC_OVERRIDE", {"preexec_fn": _drop_permission_override}),
        ("nobody", {"user": NOBODY, "group": NOBODY, "extra_groups": [], "env": dict(os.environ, HOME=home)}),
    ]


def _run_stopped_by_permissions(args, home):
    """Runs ``python args`` where a mode-000 file cannot be read; skips when no such child can be started."""
    probe = os.path.join(home, "probe")
    with open(probe, "w") as f:
        f.write("x")
    os.chmod(probe, 0)
    tried = []
    for name, kwargs in _ways_to_run(home):
        try:
            check = subprocess.run([sys.executable, "-c", f"open({probe!r}).read()"], cwd=REPO, capture_output=True, text=True,
                                   timeout=120, **kwargs)
        except (OSError, subprocess.SubprocessError) as error:
            tried.append(f"{name}: {error}")
            continue
        if "PermissionError" not in check.stderr:  # Python did not start, or the file could be read
            tried.append(f"{name}: {check.stderr.strip()[-200:] or 'the file could be read'}")
            continue
        return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600, **kwargs)
    pytest.skip("no child process that file permissions stop: " + "; ".join(tried))


@pytest.fixture
def home():
    """A temporary folder every user may enter (pytest's own are private to root)."""
    folder = tempfile.mkdtemp(prefix="fcn-permissions-")
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _readable_by_all(folder):
    for parent, dirs, files in os.walk(folder):
        os.chmod(parent, 0o755)
        for name in files:
            os.chmod(os.path.join(parent, name), 0o644)


@pytest.mark.slow  # one child Python that starts TensorFlow: ~35 s on a loaded machine
def test_unreadable_files_are_named_with_the_fix_not_called_corrupt(home):
    rng = np.random.default_rng(0)
    root, folder = os.path.join(home, "dataset"), os.path.join(home, "photos")
    image = rng.integers(0, 255, (24, 32, 3)).astype(np.uint8)
    label = rng.integers(1, 151, (24, 32)).astype(np.uint8)
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for k in (1, 2):
            write_pair(root, split, f"{prefix}_0000000{k}", image, label)
    os.makedirs(folder)
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(os.path.join(root, "images", "training", "ADE_train_00000001.jpg"), os.path.join(folder, name))
    voc_root = datasets.generate_sample_dataset(os.path.join(home, "voc"), num_train=3, num_val=1, progress=False,
                                                   layout="voc")
    voc_listing = datasets.list_split(voc_root, "training", DataConfig(layout="voc", num_classes=0))
    assert len(voc_listing.pairs) == 3
    _readable_by_all(home)
    denied = [
        os.path.join(root, "images", "training", "ADE_train_00000002.jpg"),
        os.path.join(root, "annotations", "validation", "ADE_val_00000002.png"),
        os.path.join(folder, "b.jpg"),
        voc_listing.pairs[1][1],  # a VOC annotation
    ]
    for path in denied:
        os.chmod(path, 0)
    script = os.path.join(home, "child.py")
    with open(script, "w") as f:
        f.write(CHILD.format(repo=REPO))
    os.chmod(script, 0o644)

    result = _run_stopped_by_permissions([script, root, folder, denied[2], voc_root], home)

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    report, answers = out.rsplit("\n", 2)[0], json.loads(out.strip().splitlines()[-1])
    assert all(stat.S_IMODE(os.stat(path).st_mode) == 0 for path in denied)  # nothing changed them

    def fix(path):
        return f"{path}: cannot read it: permission denied (give this user read access, e.g. chmod a+r {path})"

    # check_data: both files listed as unreadable with the fix, never as corrupt; the readable pairs are checked.
    assert answers["status"] == 1
    assert "files that cannot be opened: 1" in report and fix(denied[0]) in report
    assert fix(denied[1]) in report
    assert "training: 1 pairs, 1 usable" in report and "validation: 1 pairs, 1 usable" in report
    assert "cannot be decoded" not in report and "corrupt" not in report
    # Training's listing refuses the split and names the file and the fix.
    assert "1 file(s) cannot be used as they are" in answers["listing"] and fix(denied[0]) in answers["listing"]
    # predict: the folder's readable image is kept, the other reported; a file named directly too.
    assert answers["files"] == [os.path.join(folder, "a.jpg")]
    assert answers["unopenable"] == {denied[2]: fix(denied[2])}
    assert answers["named"] == fix(denied[2])
    # VOC's listed pairs: the pair with the unreadable annotation is a problem, the others are paired.
    assert answers["voc_pairs"] == 2 and answers["voc_problems"] == [fix(denied[3])]
