"""Tests for the synthetic ADE20K-layout sample dataset (fcn/sample_data.py)."""

import os
import shutil

import numpy as np
import pytest
from conftest import file_digests
from PIL import Image

from fcn import datasets, errors
from fcn.datasets import ade20k, sample

_FOLDERS = ("images/training", "images/validation", "annotations/training", "annotations/validation")


@pytest.fixture(scope="module")
def default_root(tmp_path_factory):
    """The default dataset (64 + 16 images, seed 0), generated once for the module."""
    root = str(tmp_path_factory.mktemp("default") / "ADEChallengeData2016")
    return datasets.generate_sample_dataset(root, progress=False)


def _pairs(root, split):
    """(image, labels) arrays of one split, in file order."""
    names = sorted(os.listdir(os.path.join(root, "images", split)))
    pairs = []
    for name in names:
        stem = os.path.splitext(name)[0]
        image = np.asarray(Image.open(os.path.join(root, "images", split, name)))
        labels = np.asarray(Image.open(os.path.join(root, "annotations", split, stem + ".png")))
        pairs.append((image, labels))
    return pairs


def test_sample_classes_are_real_ade20k_classes():
    assert 8 <= len(sample.SAMPLE_CLASSES) <= 12
    for label, name in sample.SAMPLE_CLASSES.items():
        assert 1 <= label <= ade20k.NUM_CLASSES
        assert ade20k.class_names()[label - 1] == name  # train id = label value - 1


def test_layout(tmp_path):
    root = str(tmp_path / "ADEChallengeData2016")
    assert datasets.generate_sample_dataset(root, num_train=5, num_val=3, progress=False) == root
    assert datasets.is_sample_complete(root)

    assert sorted(os.listdir(root)) == ["SAMPLE_DATA.txt", "annotations", "images"]
    expected = {
        "images/training": [f"ADE_train_{i:08d}.jpg" for i in range(1, 6)],
        "images/validation": [f"ADE_val_{i:08d}.jpg" for i in range(1, 4)],
        "annotations/training": [f"ADE_train_{i:08d}.png" for i in range(1, 6)],
        "annotations/validation": [f"ADE_val_{i:08d}.png" for i in range(1, 4)],
    }
    for folder, names in expected.items():
        assert sorted(os.listdir(os.path.join(root, folder))) == names

    allowed = {0} | set(sample.SAMPLE_CLASSES)
    sizes = set()
    unlabelled = total = 0
    for split in ("training", "validation"):
        for name in os.listdir(os.path.join(root, "images", split)):
            stem = os.path.splitext(name)[0]
            with Image.open(os.path.join(root, "images", split, name)) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                image_size = image.size
            with Image.open(os.path.join(root, "annotations", split, stem + ".png")) as annotation:
                assert annotation.format == "PNG" and annotation.mode == "L"
                assert annotation.size == image_size
                labels = np.asarray(annotation)
            assert 96 <= min(image_size) and max(image_size) <= 160
            sizes.add(image_size)
            assert set(np.unique(labels).tolist()) <= allowed
            unlabelled += int((labels == 0).sum())
            total += labels.size
    assert len(sizes) > 1  # the loader must see varied sizes and aspect ratios
    assert unlabelled / total < 0.10


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    kwargs = dict(num_train=4, num_val=2, min_size=48, max_size=80, progress=False)
    first = file_digests(datasets.generate_sample_dataset(str(tmp_path / "a" / "ADE"), seed=3, **kwargs))
    second = file_digests(datasets.generate_sample_dataset(str(tmp_path / "b" / "ADE"), seed=3, **kwargs))
    other = file_digests(datasets.generate_sample_dataset(str(tmp_path / "c" / "ADE"), seed=4, **kwargs))
    assert len(first) == 4 * 2 + 2 * 2 + 1
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[path] != other[path] for path in first)  # every image, mask and the marker


def test_scene_structure(default_root):
    sky, road, grass, ceiling, floor = 3, 7, 10, 6, 4
    kinds = {"outdoor": 0, "indoor": 0}
    for split in ("training", "validation"):
        for _, labels in _pairs(default_root, split):
            rows = np.arange(labels.shape[0])[:, None] * np.ones_like(labels, dtype=float)
            present = set(np.unique(labels).tolist())
            if sky in present:
                assert ceiling not in present and floor not in present
                ground = np.isin(labels, [road, grass])
                assert rows[labels == sky].mean() < rows[ground].mean()
                kinds["outdoor"] += 1
            else:
                assert ceiling in present and floor in present
                assert rows[labels == ceiling].mean() < rows[labels == floor].mean()
                kinds["indoor"] += 1
    assert min(kinds.values()) >= 10, kinds


def test_colour_alone_is_informative_but_not_sufficient(default_root):
    """A nearest-class-mean RGB classifier: well above chance, far from perfect.

    Measured over seeds 0..5 of the default dataset: pixel accuracy 0.56 to
    0.70 (0.64 for seed 0) while always predicting the most frequent class
    scores 0.20 to 0.37. The bounds below leave room for small drawing changes
    but catch a dataset that became pure colour lookup (accuracy near 1) or
    lost its colour signal (accuracy near the majority baseline).
    """
    class_ids = np.array(sorted(sample.SAMPLE_CLASSES))
    train = _pairs(default_root, "training")
    colours = np.concatenate([image.reshape(-1, 3) for image, _ in train]).astype(np.float64)  # (N, 3)
    labels = np.concatenate([labels.ravel() for _, labels in train])  # (N,)
    means = np.stack([colours[labels == c].mean(axis=0) for c in class_ids])  # (K, 3)

    val = _pairs(default_root, "validation")
    val_colours = np.concatenate([image.reshape(-1, 3) for image, _ in val]).astype(np.float64)
    val_labels = np.concatenate([labels.ravel() for _, labels in val])
    labelled = val_labels != 0
    distances = ((val_colours[labelled, None, :] - means[None]) ** 2).sum(axis=-1)  # (M, K)
    predicted = class_ids[distances.argmin(axis=1)]
    accuracy = (predicted == val_labels[labelled]).mean()
    majority = max((val_labels[labelled] == c).mean() for c in class_ids)

    assert 0.45 < accuracy < 0.85, accuracy
    assert accuracy > majority + 0.15, (accuracy, majority)


def test_existing_incomplete_root_is_refused(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    root.mkdir()
    (root / "my_notes.txt").write_text("keep me")
    # Never advise deleting: the folder may hold the user's own data.
    with pytest.raises(errors.FolderInUseError, match="ADEChallengeData2016 exists and holds other files.*nothing in this one was changed") as raised:
        datasets.generate_sample_dataset(str(root), num_train=1, num_val=1, progress=False)
    assert "elete" not in str(raised.value)
    assert os.listdir(root) == ["my_notes.txt"]


def test_empty_root_folder_is_filled(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    root.mkdir()
    datasets.generate_sample_dataset(str(root), num_train=1, num_val=1, progress=False)
    assert datasets.is_sample_complete(str(root))


def test_complete_root_is_kept_without_work(tmp_path, monkeypatch):
    root = str(tmp_path / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=2, num_val=1, progress=False)
    before = file_digests(root)

    def fail(*args, **kwargs):
        raise AssertionError("drew a scene for a complete dataset")

    monkeypatch.setattr(sample, "_draw_scene", fail)
    assert datasets.generate_sample_dataset(root, num_train=2, num_val=1, progress=False) == root
    assert file_digests(root) == before


def test_failure_before_marker_leaves_no_root(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sample, "_write_marker", fail)
    root = tmp_path / "ADEChallengeData2016"
    with pytest.raises(RuntimeError, match="disk full"):
        datasets.generate_sample_dataset(str(root), num_train=2, num_val=1, progress=False)
    assert not root.exists()
    assert os.listdir(tmp_path) == []  # the temporary sibling is removed too
    assert not datasets.is_sample_complete(str(root))


def test_folder_without_marker_is_incomplete(tmp_path):
    for folder in _FOLDERS:
        (tmp_path / folder).mkdir(parents=True)
    assert not datasets.is_sample_complete(str(tmp_path))
    (tmp_path / "SAMPLE_DATA.txt").write_text("x")
    assert datasets.is_sample_complete(str(tmp_path))


@pytest.mark.parametrize(
    "kwargs", [dict(num_train=-1), dict(num_val=-1), dict(min_size=16), dict(min_size=120, max_size=100)]
)
def test_bad_arguments_are_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError, match=r"image counts must be >= 0|need 32 <= min_size <= max_size"):
        datasets.generate_sample_dataset(str(tmp_path / "ADE"), progress=False, **kwargs)
    assert not (tmp_path / "ADE").exists()


def test_sample_data_of_one_layout_is_never_taken_for_another(tmp_path):
    root = str(tmp_path / "data")
    datasets.generate_sample_dataset(root, num_train=1, num_val=1, progress=False, layout="folder")
    assert datasets.is_sample_complete(root, "folder") and not datasets.is_sample_complete(root, "ade20k")
    with open(os.path.join(root, "classes.csv")) as f:
        assert f.readline().strip() == "id,name,r,g,b,ignore"
    before = file_digests(root)
    with pytest.raises(errors.FolderInUseError):
        datasets.generate_sample_dataset(root, num_train=1, num_val=1, progress=False)  # ADE20K over the folder layout
    assert file_digests(root) == before


def test_voc_layout_writes_palette_pngs_of_the_same_scenes(tmp_path):
    ade = datasets.generate_sample_dataset(str(tmp_path / "ade"), num_train=2, num_val=1, progress=False)
    voc = datasets.generate_sample_dataset(str(tmp_path / "VOC2012"), num_train=2, num_val=1, progress=False, layout="voc")
    with open(os.path.join(voc, "ImageSets", "Segmentation", "train.txt")) as f:
        names = f.read().split()
    assert names == ["ADE_train_00000001", "ADE_train_00000002"]
    for name in names:
        with Image.open(os.path.join(ade, "annotations", "training", name + ".png")) as picture:
            ade_values = np.asarray(picture)
        with Image.open(os.path.join(voc, "SegmentationClass", name + ".png")) as picture:
            assert picture.mode == "P"
            voc_values = np.asarray(picture)
        # person 13 -> 15, car 21 -> 7, bed 8 -> sofa 18, unlabelled 0 -> 255, every other class background 0.
        expected = np.zeros_like(ade_values)
        for ade_value, voc_value in {13: 15, 21: 7, 8: 18, 0: 255}.items():
            expected[ade_values == ade_value] = voc_value
        np.testing.assert_array_equal(voc_values, expected)
        with open(os.path.join(ade, "images", "training", name + ".jpg"), "rb") as a, open(os.path.join(voc, "JPEGImages", name + ".jpg"), "rb") as b:
            assert a.read() == b.read()


def test_two_processes_generating_the_same_sample_both_end_with_it(tmp_path):
    """Two workers of a cluster starting on one machine both generate data/sample: the later one keeps the first's."""
    other = datasets.generate_sample_dataset(str(tmp_path / "other" / "ADEChallengeData2016"), num_train=3, num_val=2, progress=False)
    root = str(tmp_path / "data" / "ADEChallengeData2016")

    class RacedWriter(sample.SampleWriter):
        def finish(self):  # the other process puts its finished dataset in place while this one is still writing
            super().finish()
            shutil.copytree(other, root)

    assert sample.generate(root, num_train=3, num_val=2, progress=False, writer=RacedWriter) == root
    assert os.listdir(tmp_path / "data") == ["ADEChallengeData2016"]  # no temporary folder left behind
    assert file_digests(root) == file_digests(other) and datasets.is_sample_complete(root)
