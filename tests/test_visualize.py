"""Tests of --mode=visualize (fcn/visualize.py) and notebooks/colormap.ipynb, on a run trained by the real CLI."""

import os

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from conftest import REPO, run_fcn
from fcn import ade20k, data, sample_data

NOTEBOOK = os.path.join(REPO, "notebooks", "colormap.ipynb")
TINY = ["--config", "configs/sample.yaml", "--no_progress", "--crop_size", "32", "--batch_size", "2",
        "--set", "model.fc_channels=16", "--set", "train.val_images=2", "--set", "data.val_size=48"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(dataset root, run directory) after a 1-step sample training through the CLI."""
    root = str(tmp_path_factory.mktemp("sample") / "ADEChallengeData2016")
    sample_data.generate_sample_dataset(root, num_train=8, num_val=6, progress=False)
    logs = str(tmp_path_factory.mktemp("run"))
    result = run_fcn(*TINY, "--data_dir", root, "--logs_dir", logs, "--max_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, logs


def palette_or_black(rgb: np.ndarray) -> bool:
    colours = {tuple(c) for c in ade20k.palette()} | {(0, 0, 0)}
    return {tuple(c) for c in rgb.reshape(-1, 3)} <= colours


def test_visualize_writes_coloured_images_of_a_seeded_batch(trained_run):
    root, logs = trained_run
    args = [*TINY, "--mode=visualize", "--data_dir", root, "--logs_dir", logs, "--set", "evaluate.visualize_images=2"]
    result = run_fcn(*args, "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    output = os.path.join(logs, "visualize")
    assert sorted(os.listdir(output)) == sorted(
        [f"{kind}_{k}.png" for kind in ("inp", "gt", "pred") for k in (0, 1)] + ["visualize.png"]
    )
    shown = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line[:3] in ("0: ", "1: ")]
    pairs = dict(data.list_split(root, "validation").pairs)
    assert len(shown) == 2 and all(path in pairs for path in shown)
    for k, image_path in enumerate(shown):
        image, label = data.load_example(image_path, pairs[image_path])
        np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(output, f"inp_{k}.png"))), image)
        ground_truth = np.asarray(Image.open(os.path.join(output, f"gt_{k}.png")))
        np.testing.assert_array_equal(ground_truth, ade20k.colorize(label))  # label 0 ("other") black
        prediction = np.asarray(Image.open(os.path.join(output, f"pred_{k}.png")))
        assert prediction.shape == image.shape and palette_or_black(prediction)
    figure = Image.open(os.path.join(output, "visualize.png"))
    assert figure.size[0] >= 800
    # The same seed draws the same batch.
    again = run_fcn(*args, "--seed", "3", "--output", os.path.join(logs, "again"))
    assert again.returncode == 0
    assert [l for l in again.stdout.splitlines() if l[:3] in ("0: ", "1: ")] == [f"{k}: {p}" for k, p in enumerate(shown)]


def execute_notebook(run_dir, monkeypatch) -> str:
    """Runs the notebook headless as a user would; returns its printed text."""
    monkeypatch.setenv("FCN_RUN_DIR", run_dir)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 2  # the palette and the predictions
    return "".join(output.get("text", "") for output in outputs if output.output_type == "stream")


def test_notebook_runs_on_a_trained_run(trained_run, monkeypatch):
    _, logs = trained_run
    text = execute_notebook(logs, monkeypatch)
    assert "trained run: " in text and "NOTE" not in text


def test_notebook_runs_without_a_trained_run(tmp_path, monkeypatch):
    text = execute_notebook(str(tmp_path / "no_run"), monkeypatch)
    assert "NOTE: no trained run" in text and "UNTRAINED" in text
