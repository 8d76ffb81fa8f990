"""Tests of fcn/datasets.py: the class table, the ADE20K, VOC and folder layouts, reading examples, check_data."""

import dataclasses
import os

import numpy as np
import pytest
from conftest import SAMPLE_ROOT, clear_argmax, write_pair
from PIL import Image

from fcn import check_data, data, datasets, errors, inference
from fcn import config as config_lib
from fcn.datasets import ade20k, decode, voc
from fcn.datasets import folder as folder_layout
from fcn.datasets.classes import ClassTable, read_label_png, voc_colormap
from fcn.datasets.files import SPLITS

# Colours of the PASCAL VOC devkit's colour map, as published (VOClabelcolormap.m, the devkit documentation).
VOC_DEVKIT_COLOURS = {
    0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 7: (128, 128, 128),
    8: (64, 0, 0), 12: (64, 0, 128), 15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192),
}  # fmt: skip


def data_config(**changes) -> config_lib.DataConfig:
    """The default data config, but following the class table (data.num_classes 0) unless told."""
    return dataclasses.replace(config_lib.DataConfig(), **{"num_classes": 0, **changes})


def write_palette_png(path, values, palette=None):
    """An 8-bit palette PNG whose pixel indices are ``values`` (the palette: VOC's map, or the one given)."""
    picture = Image.frombytes("P", (values.shape[1], values.shape[0]), np.ascontiguousarray(values, np.uint8).tobytes())
    picture.putpalette(list(np.asarray(palette if palette is not None else voc_colormap(), np.uint8).reshape(-1)))
    picture.save(path, bits=8)


def make_voc(root, splits, rng, size=(40, 56)):
    """A VOC2012 folder: ``splits`` maps list name -> {stem: values (H, W) or None for a missing annotation}."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for list_name, entries in splits.items():
        with open(os.path.join(root, "ImageSets", "Segmentation", list_name + ".txt"), "w") as f:
            for stem, values in entries.items():
                f.write(stem + "\n")
                image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
                Image.fromarray(image).save(os.path.join(root, "JPEGImages", stem + ".jpg"), quality=95)
                if values is not None:
                    write_palette_png(os.path.join(root, "SegmentationClass", stem + ".png"), values)
    return root


def make_folder(root, classes_csv, pairs, rng):
    """A folder dataset: ``pairs`` maps (split, stem) -> annotation values (H, W)."""
    with open(os.path.join(root, "classes.csv"), "w") as f:
        f.write(classes_csv)
    for (split, stem), values in pairs.items():
        write_pair(root, split, stem, rng.integers(0, 256, values.shape + (3,), dtype=np.uint8), values)
    return root


THREE_CLASSES = "id,name,r,g,b,ignore\n0,unlabelled,0,0,0,1\n7,sky,70,130,180,0\n200,thing,220,20,60,0\n42,ground,152,251,152,\n"


# ---------------------------------------------------------------------------
# The class table.


def test_voc_colormap_is_the_devkits():
    colours = voc_colormap()
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    for index, colour in VOC_DEVKIT_COLOURS.items():
        assert tuple(colours[index]) == colour
    assert len({tuple(c) for c in colours}) == 256  # the map is a bijection of the 8 bits


def test_voc_table():
    table = voc.class_table()
    assert table.num_classes == 21 and table.names[0] == "background" and table.names[15] == "person"
    assert table.names[-1] == "tvmonitor" and table.ids == tuple(range(21)) and table.ignore_values == (255,)
    np.testing.assert_array_equal(table.palette(), voc_colormap()[:21])


def test_ade20k_table_keeps_the_framework_mapping():
    table = ade20k.class_table()
    values = np.arange(256).reshape(16, 16)
    lookup = table.value_lookup()
    assert lookup[0] == 255 and lookup[255] == 255 and (lookup[151:255] == -1).all()
    np.testing.assert_array_equal(lookup[1:151], np.arange(150))
    np.testing.assert_array_equal(table.to_values(np.arange(150)), np.arange(1, 151))
    assert not table.palette_png
    with pytest.raises(errors.DataError, match=r"\[151, 152"):
        table.to_train_ids(values)


def test_classes_csv_ids_in_any_order_and_declared_ignored_values(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text(THREE_CLASSES)
    table = ClassTable.read_csv(str(path))
    assert table.names == ("sky", "thing", "ground") and table.ids == (7, 200, 42)
    assert table.colours == ((70, 130, 180), (220, 20, 60), (152, 251, 152))
    assert set(table.ignore_values) == {0, 255}
    values = np.array([[7, 200, 42, 0, 255]], np.uint8)
    np.testing.assert_array_equal(table.to_train_ids(values), [[0, 1, 2, 255, 255]])
    np.testing.assert_array_equal(table.to_values([[0, 1, 2]]), [[7, 200, 42]])
    with pytest.raises(errors.DataError, match=r"\[8\]"):
        table.to_train_ids(np.array([[7, 8]]))
    # A run's copy reads back as the same table.
    table.write_csv(str(tmp_path / "copy.csv"))
    again = ClassTable.read_csv(str(tmp_path / "copy.csv"))
    assert (again.names, again.ids, again.colours, set(again.ignore_values), again.palette_png) == (
        table.names, table.ids, table.colours, set(table.ignore_values), table.palette_png
    )  # fmt: skip


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,id,r,g,b\nsky,1,0,0,0\n", "header id,name,r,g,b"),
        ("id,name,r,g,b\n1,sky,0,0,0\n1,road,1,1,1\n", "line 3: class id 1 is already given on line 2"),
        ("id,name,r,g,b\n1,sky,0,0,0\n2,sky,1,1,1\n", "line 3: class name 'sky' is already given on line 2"),
        ("id,name,r,g,b\n1,sky,0,0,300\n", "line 2"),
        ("id,name,r,g,b\nx,sky,0,0,0\n", "must be integers"),
        ("id,name,r,g,b,ignore\n0,unlabelled,0,0,0,1\n", "lists no class"),
        ("", "header"),
    ],
)
def test_bad_classes_csv_is_named(tmp_path, text, message):
    path = tmp_path / "classes.csv"
    path.write_text(text)
    with pytest.raises(errors.DataError, match=message) as raised:
        ClassTable.read_csv(str(path))
    assert "classes.csv" in str(raised.value)


def test_label_png_holds_the_annotation_values(tmp_path):
    train_ids = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    folder = ClassTable(("sky", "thing", "ground"), (7, 200, 42), ((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    folder.write_label_png(str(tmp_path / "f.png"), train_ids)
    with Image.open(tmp_path / "f.png") as picture:
        assert picture.mode == "P"
        np.testing.assert_array_equal(np.asarray(picture), [[7, 200, 42], [42, 200, 7]])
        palette = np.asarray(picture.getpalette(), np.uint8).reshape(-1, 3)
        assert tuple(palette[200]) == (4, 5, 6) and tuple(palette[42]) == (7, 8, 9)
    ade = ade20k.class_table()
    ade.write_label_png(str(tmp_path / "a.png"), train_ids)
    with Image.open(tmp_path / "a.png") as picture:
        assert picture.mode == "L"
        np.testing.assert_array_equal(np.asarray(picture), train_ids + 1)


# ---------------------------------------------------------------------------
# VOC.


def test_voc_palette_png_gives_the_indices_exactly(tmp_path, rng):
    values = rng.integers(0, 21, (40, 56)).astype(np.uint8)
    values[5:9, 10:30] = 255  # VOC's "void" outlines
    # A palette unlike VOC's, with repeated colours: only the indices may matter.
    palette = np.zeros((256, 3), np.uint8)
    palette[:, 0] = np.arange(256) // 2
    root = make_voc(str(tmp_path / "VOC2012"), {"train": {"a": None}, "val": {"b": None}}, rng)
    write_palette_png(os.path.join(root, "SegmentationClass", "a.png"), values, palette)
    write_palette_png(os.path.join(root, "SegmentationClass", "b.png"), values)
    dataset = datasets.find_dataset(data_config(data_dir=str(tmp_path)))
    assert isinstance(dataset.layout, voc.VocLayout) and dataset.root == root
    (image_path, annotation_path), = dataset.usable_pairs("training")
    _, label = decode.load_example(image_path, annotation_path, dataset.classes)
    np.testing.assert_array_equal(label, values)  # VOC's values are its train ids; 255 stays ignored
    # The tf.data reader gives the same.
    example = next(iter(decode.read_example_dataset(
        decode.path_tensor(image_path), decode.path_tensor(annotation_path), dataset.classes)))  # fmt: skip
    assert int(example["error"]) == 0
    np.testing.assert_array_equal(example["label"].numpy(), values)
    # TensorFlow's own PNG decoder would have given colours: the reader must not use it on palettes.
    import tensorflow as tf

    decoded = tf.io.decode_png(tf.io.read_file(annotation_path), channels=0).numpy()
    assert decoded.shape[-1] >= 3


def test_rgb_voc_annotation_is_a_named_fault(tmp_path, rng):
    values = rng.integers(0, 21, (40, 56)).astype(np.uint8)
    root = make_voc(str(tmp_path), {"train": {"a": values}, "val": {"b": values}}, rng)
    coloured = voc_colormap()[values]
    Image.fromarray(coloured).save(os.path.join(root, "SegmentationClass", "a.png"))  # colours, not indices
    dataset = datasets.find_dataset(data_config(data_dir=root))
    (image_path, annotation_path), = dataset.usable_pairs("training")
    with pytest.raises(errors.DataError) as raised:
        decode.load_example(image_path, annotation_path, dataset.classes)
    assert decode.ERROR_MESSAGES[decode.ERROR_ANNOTATION_RGB] in str(raised.value)
    assert annotation_path in str(raised.value)
    batch = next(iter(data.validation_dataset(data_config(data_dir=root, val_size=(48, 64)), root, 2, split="training")))
    assert batch["error"].numpy().tolist() == [decode.ERROR_ANNOTATION_RGB]
    assert (batch["label"].numpy() == 255).all()


@pytest.mark.parametrize("where", ["VOC2012", "VOCdevkit/VOC2012", ""])
def test_voc_is_found_from_the_folder_or_its_parents(tmp_path, rng, where):
    values = np.zeros((40, 56), np.uint8)
    root = make_voc(os.path.normpath(os.path.join(str(tmp_path), where)), {"train": {"a": values}, "val": {"b": values}}, rng)
    for data_dir in {str(tmp_path), root}:
        assert datasets.find_dataset_root(data_dir) == root
    assert datasets.find_dataset(data_config(data_dir=str(tmp_path), layout="ade20k")) is None
    assert datasets.find_dataset(data_config(data_dir=str(tmp_path), layout="folder")) is None


def test_voc_list_entries_without_files_are_problems(tmp_path, rng):
    values = np.zeros((40, 56), np.uint8)
    root = make_voc(str(tmp_path), {"train": {"good": values, "no_annotation": None}, "val": {"v": values}}, rng)
    with open(os.path.join(root, "ImageSets", "Segmentation", "train.txt"), "a") as f:
        f.write("ghost\n")
    os.remove(os.path.join(root, "JPEGImages", "v.jpg"))
    dataset = datasets.find_dataset(data_config(data_dir=root))
    listing = dataset.list_split("training")
    assert [os.path.basename(p) for p, _ in listing.pairs] == ["good.jpg"]
    problems = "\n".join(listing.problems())
    assert "no_annotation.jpg: listed in the split, but its annotation is missing" in problems
    assert "train.txt: ghost: listed in the split, but neither" in problems
    with pytest.raises(errors.DataError, match="3 file|2 file"):
        dataset.usable_pairs("training")
    assert "v.png: listed in the split, but its image is missing" in "\n".join(dataset.list_split("validation").problems())


def test_voc_train_aug_reads_the_augmented_annotations(tmp_path, rng):
    values = np.ones((40, 56), np.uint8)
    root = make_voc(str(tmp_path), {"train": {"a": values}, "val": {"b": values}}, rng)
    os.makedirs(os.path.join(root, "SegmentationClassAug"))
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(os.path.join(root, "JPEGImages", "sbd.jpg"))
    Image.fromarray(np.full((40, 56), 9, np.uint8)).save(os.path.join(root, "SegmentationClassAug", "sbd.png"))  # greyscale
    Image.fromarray(np.full((40, 56), 9, np.uint8)).save(os.path.join(root, "SegmentationClassAug", "a.png"))
    with open(os.path.join(root, "ImageSets", "Segmentation", "train_aug.txt"), "w") as f:
        f.write("a\n/JPEGImages/sbd.jpg /SegmentationClassAug/sbd.png\n")
    plain = datasets.find_dataset(data_config(data_dir=root))
    augmented = datasets.find_dataset(data_config(data_dir=root, voc_train_list="train_aug"))
    assert len(plain.usable_pairs("training")) == 1
    pairs = augmented.usable_pairs("training")
    assert [os.path.relpath(a, root) for _, a in pairs] == ["SegmentationClassAug/a.png", "SegmentationClassAug/sbd.png"]
    for pair in pairs:
        assert (decode.load_example(*pair, augmented.classes)[1] == 9).all()
    assert augmented.usable_pairs("validation") == plain.usable_pairs("validation")  # val.txt, SegmentationClass


# ---------------------------------------------------------------------------
# Folder datasets.


def test_folder_values_map_through_its_table_and_unlisted_values_are_faults(tmp_path, rng):
    good = rng.choice(np.array([0, 7, 42, 200, 255], np.uint8), (30, 40))
    root = make_folder(str(tmp_path), THREE_CLASSES, {("training", "a"): good, ("validation", "b"): good, ("validation", "c"): np.where(good == 42, 43, good).astype(np.uint8)}, rng)  # fmt: skip
    dataset = datasets.find_dataset(data_config(data_dir=root, num_classes=0))
    assert isinstance(dataset.layout, folder_layout.FolderLayout) and dataset.classes.ids == (7, 200, 42)
    _, label = decode.load_example(*dataset.usable_pairs("training")[0], dataset.classes)
    expected = np.select([good == 7, good == 200, good == 42], [0, 1, 2], 255)
    np.testing.assert_array_equal(label, expected)
    with pytest.raises(errors.DataError, match="outside the class table"):
        decode.load_example(*dataset.usable_pairs("validation")[1], dataset.classes)
    # Palette annotations are read as their indices in a folder dataset too.
    write_palette_png(dataset.usable_pairs("training")[0][1], good)
    np.testing.assert_array_equal(decode.load_example(*dataset.usable_pairs("training")[0], dataset.classes)[1], expected)


def test_num_classes_must_follow_the_table(tmp_path, rng):
    root = make_folder(str(tmp_path), THREE_CLASSES, {("training", "a"): np.full((8, 8), 7, np.uint8)}, rng)
    for num_classes in (0, 3):
        assert datasets.find_dataset(data_config(data_dir=root, num_classes=num_classes)).classes.num_classes == 3
    with pytest.raises(errors.ClassTableMismatchError, match=r"data.num_classes is 150.*has 3 classes.*num_classes=3"):
        datasets.find_dataset(data_config(data_dir=root, num_classes=150))


def test_layout_can_be_forced(tmp_path, rng):
    root = make_folder(str(tmp_path), THREE_CLASSES, {("training", "a"): np.full((8, 8), 7, np.uint8)}, rng)
    assert isinstance(datasets.find_dataset(data_config(data_dir=root, layout="ade20k")).layout, ade20k.Ade20kLayout)
    assert datasets.find_dataset(data_config(data_dir=root, layout="voc")) is None
    with pytest.raises(errors.DatasetNotFoundError, match="no voc-layout dataset found"):
        datasets.prepare_dataset(data_config(data_dir=root, layout="voc"))


def test_ade20k_samples_are_read_as_before():
    dataset = datasets.find_dataset(data_config(data_dir=SAMPLE_ROOT))
    assert isinstance(dataset.layout, ade20k.Ade20kLayout) and dataset.classes.names[2] == "sky"
    assert dataset.usable_pairs("validation") == datasets.list_split(SAMPLE_ROOT, "validation").pairs


# ---------------------------------------------------------------------------
# The sample data in the other layouts.


@pytest.mark.parametrize("layout", ["voc", "folder"])
def test_sample_data_in_other_layouts(tmp_path, layout):
    config = data_config(data_dir=str(tmp_path / "d"), layout=layout, synthetic=True, num_classes=0)
    root = datasets.generate_sample_dataset(
        datasets.LAYOUTS[layout].sample_root(config.data_dir), num_train=4, num_val=2, progress=False, layout=layout
    )
    assert datasets.prepare_dataset(config).root == root
    dataset = datasets.find_dataset(dataclasses.replace(config, layout="auto"))  # detected as what it is
    assert dataset.layout.name == layout
    reports = check_data.check_dataset(dataset, progress=False)
    assert [r.pairs for r in reports] == [4, 2] and not any(r.error_count for r in reports)
    values = set()
    for split in SPLITS:
        for _, annotation in dataset.usable_pairs(split):
            with Image.open(annotation) as picture:
                assert picture.mode == ("P" if layout == "voc" else "L")
                values |= set(np.unique(np.asarray(picture)).tolist())
    if layout == "voc":
        assert values <= {0, 7, 15, 18, 255} and 0 in values
        assert dataset.classes.num_classes == 21
    else:
        assert values <= {0, 7, 42, 200} and {7, 42, 200} <= values
        assert dataset.classes.ids == tuple(folder_layout.SAMPLE_CLASSES)


# ---------------------------------------------------------------------------
# check_data on every layout.


def test_check_data_names_every_planted_fault_on_voc(tmp_path, rng):
    values = rng.integers(0, 21, (40, 56)).astype(np.uint8)
    root = make_voc(str(tmp_path), {
        "train": {"good": values, "rgb": values, "out_of_table": np.where(values == 3, 40, values).astype(np.uint8),
                  "small": values[:30], "no_annotation": None},
        "val": {"v": values},
    }, rng)  # fmt: skip
    Image.fromarray(voc_colormap()[values]).save(os.path.join(root, "SegmentationClass", "rgb.png"))
    write_palette_png(os.path.join(root, "SegmentationClass", "small.png"), values[:30])
    with open(os.path.join(root, "ImageSets", "Segmentation", "train.txt"), "a") as f:
        f.write("ghost\n")
    with open(os.path.join(root, "JPEGImages", "corrupt.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    write_palette_png(os.path.join(root, "SegmentationClass", "corrupt.png"), values)
    with open(os.path.join(root, "ImageSets", "Segmentation", "val.txt"), "a") as f:
        f.write("corrupt\n")
    dataset = datasets.find_dataset(data_config(data_dir=root))
    reports = check_data.check_dataset(dataset, progress=False)
    text = check_data.format_report(root, reports)
    problems = {os.path.basename(p): code for r in reports for p, code in r.problems}
    assert problems == {
        "rgb.jpg": decode.ERROR_ANNOTATION_RGB,
        "out_of_table.jpg": decode.ERROR_LABEL_OUT_OF_RANGE,
        "small.jpg": decode.ERROR_SIZE_MISMATCH,
        "corrupt.jpg": decode.ERROR_UNREADABLE_IMAGE,
    }
    assert [os.path.basename(p) for p in reports[0].images_without_annotation] == ["no_annotation.jpg"]
    assert reports[0].entries_without_files == (os.path.join(root, "ImageSets", "Segmentation", "train.txt") + ": ghost",)
    for message in (decode.ERROR_MESSAGES[code] for code in problems.values()):
        assert message in text
    assert "split list entries with neither image nor annotation: 1" in text and "ghost" in text
    assert f"{sum(r.error_count for r in reports)} problem(s) found" in text and sum(r.error_count for r in reports) == 6


def test_check_data_names_every_planted_fault_on_a_folder_dataset(tmp_path, rng):
    good = rng.choice(np.array([0, 7, 42, 200], np.uint8), (30, 40))
    root = make_folder(str(tmp_path), THREE_CLASSES, {
        ("training", "good"): good, ("training", "unlisted"): np.where(good == 42, 5, good).astype(np.uint8),
        ("training", "rgb"): good, ("training", "small"): good, ("validation", "v"): good,
    }, rng)  # fmt: skip
    Image.fromarray(good[:20]).save(os.path.join(root, "annotations", "training", "small.png"))
    Image.fromarray(np.stack([good] * 3, -1)).save(os.path.join(root, "annotations", "training", "rgb.png"))
    Image.fromarray(good).save(os.path.join(root, "annotations", "training", "orphan.png"))
    Image.fromarray(good.astype(np.uint16) * 300).save(os.path.join(root, "annotations", "validation", "v.png"))  # 16-bit
    dataset = datasets.find_dataset(data_config(data_dir=root, num_classes=3))
    reports = check_data.check_dataset(dataset, progress=False)
    problems = {os.path.basename(p): code for r in reports for p, code in r.problems}
    assert problems == {
        "unlisted.jpg": decode.ERROR_LABEL_OUT_OF_RANGE,
        "rgb.jpg": decode.ERROR_ANNOTATION_RGB,
        "small.jpg": decode.ERROR_SIZE_MISMATCH,
        "v.jpg": decode.ERROR_ANNOTATION_FORMAT,
    }
    assert [os.path.basename(p) for p in reports[0].annotations_without_image] == ["orphan.png"]
    assert reports[0].label_pixels.sum() == (good != 0).sum()  # the good pair: ignored 0 not counted
    np.testing.assert_array_equal(reports[0].label_pixels, [(good == 7).sum(), (good == 200).sum(), (good == 42).sum()])


def test_check_data_on_ade20k_still_refuses_palette_annotations(tmp_path, rng):
    label = rng.integers(0, 151, (30, 40)).astype(np.uint8)
    _, annotation = write_pair(str(tmp_path), "training", "ADE_train_1", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), label)
    write_palette_png(annotation, label)
    reports = check_data.check_dataset(str(tmp_path), progress=False)
    assert reports[0].problems == [(os.path.join(str(tmp_path), "images", "training", "ADE_train_1.jpg"), decode.ERROR_ANNOTATION_FORMAT)]


# ---------------------------------------------------------------------------
# The class table through every output: train, evaluate, visualize, predict, export.


def _train_tiny_run(tmp_path_factory, layout):
    """Sample data of ``layout``, 2 training steps in-process, and a checkpoint of the same model with random
    scores (a 2-step model predicts one class everywhere; random score_fr weights make every class appear)."""
    import tensorflow as tf

    from fcn import train

    base = tmp_path_factory.mktemp(layout)
    data_dir = str(base / "data")
    root = datasets.generate_sample_dataset(
        datasets.LAYOUTS[layout].sample_root(data_dir), num_train=4, num_val=3, min_size=40, max_size=56, progress=False,
        layout=layout,
    )  # fmt: skip
    config = config_lib.load_config(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "sample.yaml"),
        [("data.data_dir", data_dir), ("logs_dir", str(base / "run")), ("data.layout", layout), ("data.num_classes", 0),
         ("data.crop_size", "32"), ("data.val_size", "48"), ("train.batch_size", 2), ("model.fc_channels", 8), ("model.width", 0.125),
         ("train.max_steps", 2), ("train.val_every", 2), ("train.summary_every", 1), ("train.val_images", 2),
         ("train.checkpoint_every", 2)],
    )  # fmt: skip
    result = train.train(config, root, train.setup_process(config), progress=False)
    assert result.step == 2
    model, _ = inference.restore_model(config)
    score = model.get_layer("score_fr")
    score.kernel.assign(np.random.default_rng(3).normal(0, 1, score.kernel.shape).astype(np.float32))
    checkpoint = str(base / "random")
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), checkpoint, 1).save(checkpoint_number=1)
    return config, root, checkpoint


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    return _train_tiny_run(tmp_path_factory, "voc")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    return _train_tiny_run(tmp_path_factory, "folder")


def _recorded_table(logs_dir):
    """(annotation value, RGB colour) of each train id, read from the run's classes.csv with the csv module.

    Rows: value, name, red, green, blue, ignore, format; classes in train-id order, then the ignored values.
    """
    import csv

    with open(os.path.join(logs_dir, "classes.csv"), newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f)][1:]
    classes = [row for row in rows if row[5].strip() == "0"]
    return np.array([int(row[0]) for row in classes]), np.array([[int(v) for v in row[2:5]] for row in classes], np.uint8)


def _expected_labels(config, checkpoint, image, num_classes):
    """The protocol computed in numpy, on the checkpoint read into a fresh model with TensorFlow's own API.

    Returns:
      (train ids (H, W), where the best class is clear of float32's rounding, probabilities (H, W, C)).
    """
    import tensorflow as tf
    from test_protocol import protocol_logits, protocol_probabilities

    from fcn import model as model_lib

    model = model_lib.build_from_config(config.model, num_classes)
    tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(checkpoint)).expect_partial()
    test_size = config.evaluate.resolved_test_size(config.data.base_size)
    logits = protocol_logits(model, image[None], test_size)[0]
    train_ids, clear = clear_argmax(logits, margin=1e-5 * np.abs(logits).max(), min_clear=0.9)
    return train_ids, clear, protocol_probabilities(model, image[None], test_size)[0]


def _check_outputs(config, root, checkpoint, tmp_path, inference_config=None):
    """Every output of the run follows the dataset's class table, and shows the labels of the numpy protocol.

    Expectations come from the run's classes.csv read with the csv module and from ``_expected_labels``,
    not from the package's class table or predictor.

    ``inference_config``: the config predict and export get (e.g. one whose
    data_dir holds no dataset); default ``config``.
    """
    inference_config = inference_config or config
    import json

    import tensorflow as tf

    from fcn import evaluate, export, predict, summaries, visualize

    dataset = datasets.find_dataset(config.data)
    classes = dataset.classes
    values, colours = _recorded_table(config.logs_dir)  # by train id
    lookup = np.zeros((256, 3), np.uint8)  # train id -> colour; 255 (ignored) black
    lookup[: len(colours)] = colours
    # Training recorded the table; its TensorBoard images are in the table's colours.
    assert list(values) == list(classes.ids) and [tuple(c) for c in colours] == [tuple(c) for c in classes.colours]
    np.testing.assert_array_equal(summaries.colorize(tf.constant([[0, 1, 255]]), classes).numpy()[0], lookup[[0, 1, 255]])
    expected = {}
    for image_path, annotation_path in dataset.usable_pairs("validation"):
        image, _ = decode.load_example(image_path, annotation_path, classes)
        expected[image_path] = _expected_labels(config, checkpoint, image, len(values))

    # evaluate: names in metrics.json, label values in the submission PNGs.
    submission = str(tmp_path / "submission")
    result = evaluate.evaluate(config, root, checkpoint, str(tmp_path / "eval"), submission, progress=False)
    with open(tmp_path / "eval" / "metrics.json") as f:
        metrics = json.load(f)
    assert list(metrics["per_class_iou"]) == list(classes.names)
    values_seen = set()
    for image_path, (train_ids, clear, _) in expected.items():
        stem = os.path.splitext(os.path.basename(image_path))[0]
        with Image.open(os.path.join(submission, stem + ".png")) as picture:
            assert picture.mode == ("P" if classes.palette_png else "L")
            np.testing.assert_array_equal(np.asarray(picture)[clear], values[train_ids][clear], err_msg=stem)
        values_seen |= set(np.unique(values[train_ids][clear]).tolist())
    assert len(values_seen) > 1 and values_seen <= set(values.tolist())
    assert result.images == 3

    # visualize: ground truth and predictions in the table's colours.
    shown = visualize.visualize(config, root, str(tmp_path / "vis"), checkpoint)
    pairs = dict(dataset.usable_pairs("validation"))
    for k, image_path in enumerate(shown.shown):
        _, label = decode.load_example(image_path, pairs[image_path], classes)
        train_ids, clear, _ = expected[image_path]
        with Image.open(tmp_path / "vis" / f"gt_{k}.png") as picture:
            np.testing.assert_array_equal(np.asarray(picture), lookup[label])
        with Image.open(tmp_path / "vis" / f"pred_{k}.png") as picture:
            np.testing.assert_array_equal(np.asarray(picture)[clear], lookup[train_ids][clear])

    # predict: the label PNG holds the table's values, the mask its colours.
    image_path = dataset.usable_pairs("validation")[0][0]
    train_ids, clear, probabilities = expected[image_path]
    written = predict.predict_images(inference_config, [image_path], str(tmp_path / "pred"), checkpoint, progress=False)
    np.testing.assert_array_equal(read_label_png(written.written[image_path])[clear], values[train_ids][clear])
    with Image.open(written.written[image_path]) as picture:
        assert picture.mode == ("P" if classes.palette_png else "L")
        if classes.palette_png:  # the class colours at their values (for VOC, the VOC colour map)
            palette = np.asarray(picture.getpalette(), np.uint8).reshape(-1, 3)
            np.testing.assert_array_equal(palette[values], colours)
    stem = os.path.splitext(os.path.basename(image_path))[0]
    with Image.open(tmp_path / "pred" / f"{stem}_mask.png") as picture:
        np.testing.assert_array_equal(np.asarray(picture)[clear], lookup[train_ids][clear])

    # export: the SavedModel's labels are the table's values and its probabilities the protocol's;
    # classes.txt and classes.csv beside it.
    image = decode.read_image_file(image_path)
    export_dir, _ = export.export(inference_config, str(tmp_path / "export"), checkpoint)
    signatures = tf.saved_model.load(export_dir).signatures
    labels = signatures["serving_default"](images=tf.constant(image[None]))["labels"].numpy()[0]
    outputs = signatures["probabilities"](images=tf.constant(image[None]))
    np.testing.assert_array_equal(labels[clear], values[train_ids][clear])
    np.testing.assert_allclose(outputs["probabilities"].numpy()[0][clear], probabilities[clear], atol=2e-4)
    np.testing.assert_array_equal(outputs["labels"].numpy()[0], labels)
    assert open(os.path.join(export_dir, "classes.txt")).read().splitlines() == list(classes.names)
    assert ClassTable.read_csv(os.path.join(export_dir, "classes.csv")).ids == classes.ids
    return image


@pytest.mark.slow
def test_a_voc_run_speaks_voc_everywhere_and_needs_no_dataset_for_predict_and_export(voc_run, tmp_path):
    config, root, checkpoint = voc_run
    # Predict and export get a config whose data_dir holds no dataset: the run's classes.csv is enough.
    elsewhere = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir=str(tmp_path / "nothing")))
    assert datasets.find_dataset(elsewhere.data) is None
    _check_outputs(config, root, checkpoint, tmp_path, inference_config=elsewhere)
    np.testing.assert_array_equal(voc.class_table().png_palette(), voc_colormap())


@pytest.mark.slow
def test_a_folder_run_with_ids_other_than_0_to_2_speaks_its_table_everywhere(folder_run, tmp_path):
    config, root, checkpoint = folder_run
    assert datasets.find_dataset(config.data).classes.ids == (7, 42, 200)
    _check_outputs(config, root, checkpoint, tmp_path)


def test_voc_config_agrees_with_the_voc_table(tmp_path):
    config = config_lib.load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "voc.yaml"))
    assert (config.data.layout, config.data.num_classes) == ("voc", 21)
    root = datasets.generate_sample_dataset(
        str(tmp_path / "VOC2012"), num_train=1, num_val=1, min_size=500, max_size=500, progress=False, layout="voc"
    )
    dataset = datasets.find_dataset(dataclasses.replace(config.data, data_dir=str(tmp_path)))
    assert dataset.root == root and dataset.classes.names == voc.CLASS_NAMES
    # A whole VOC image with a 500-pixel side goes through the training transform at its own size, padded to 512.
    image, label = decode.load_example(*dataset.usable_pairs("training")[0], dataset.classes)
    import tensorflow as tf

    example = data.augment({"image": tf.constant(image), "label": tf.constant(label)}, config.data, tf.constant([1, 2], tf.int64))
    height, width = label.shape
    np.testing.assert_array_equal(example["label"].numpy()[:height, :width], label)
    assert (example["label"].numpy()[height:] == 255).all() and (example["label"].numpy()[:, width:] == 255).all()


def test_confusion_figure_shows_the_class_colours():
    from fcn import evaluate

    table = ClassTable(("sky", "thing", "ground"), (7, 200, 42), ((70, 130, 180), (220, 20, 60), (152, 251, 152)))
    matrix = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 9]])
    figure = evaluate.confusion_figure(matrix, list(table.names), colours=table.palette())
    swatches = {}
    for patch in figure.axes[0].patches:
        swatches.setdefault(patch.get_gid(), []).append(tuple(np.round(np.asarray(patch.get_facecolor()[:3]) * 255).astype(int)))
    # The two classes with ground truth, each with its colour on both axes; "thing" (no ground truth) is not shown.
    assert swatches == {"class_colour_0": [(70, 130, 180)] * 2, "class_colour_2": [(152, 251, 152)] * 2}


# ---------------------------------------------------------------------------
# The command line (one run per layout).


@pytest.mark.slow  # a FCN.py subprocess
def test_cli_follows_the_voc_table_and_refuses_a_num_classes_that_disagrees(tmp_path):
    from conftest import run_fcn

    datasets.generate_sample_dataset(str(tmp_path / "VOCdevkit" / "VOC2012"), num_train=1, num_val=1, progress=False, layout="voc")
    result = run_fcn("--mode=check_data", "--data_dir", str(tmp_path), "--no_progress")  # no config: the table decides
    assert result.returncode == 0 and "no problems found" in result.stdout, result.stderr
    result = run_fcn("--mode=check_data", "--data_dir", str(tmp_path), "--no_progress", "--set", "data.num_classes=150")
    assert result.returncode == 2, result.stderr
    assert "data.num_classes is 150, but the class table (PASCAL VOC 2012) has 21 classes" in result.stderr
    assert "--set data.num_classes=21" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # a FCN.py subprocess
def test_cli_check_data_names_a_value_outside_a_folder_table(tmp_path, rng):
    from conftest import run_fcn

    good = rng.choice(np.array([0, 7, 42, 200], np.uint8), (30, 40))
    make_folder(str(tmp_path), THREE_CLASSES, {("training", "a"): good, ("training", "b"): np.where(good == 7, 8, good).astype(np.uint8),
                                               ("validation", "c"): good}, rng)  # fmt: skip
    result = run_fcn("--mode=check_data", "--data_dir", str(tmp_path), "--set", "data.num_classes=0", "--no_progress")
    assert result.returncode == 1, result.stderr
    assert f"{decode.ERROR_MESSAGES[decode.ERROR_LABEL_OUT_OF_RANGE]}: 1" in result.stdout
    assert os.path.join(str(tmp_path), "images", "training", "b.jpg") in result.stdout
    assert "training: 2 pairs, 1 usable, 3 classes present" in result.stdout and "1 problem(s) found" in result.stdout
