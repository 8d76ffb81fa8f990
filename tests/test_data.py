"""Tests of the input pipeline (fcn/data.py) on real ADE20K samples and generated files."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import SAMPLE_ROOT, write_pair
from PIL import Image

from fcn import config as config_lib
from fcn import data, datasets, errors
from fcn.datasets import decode
from fcn.datasets.files import scan_image_folder

# Per-label pixel counts of the three real samples, from the SceneParsing sample data's README.
SAMPLE_COUNTS = {
    "ADE_val_00000001": {0: 3613, 1: 14538, 2: 123406, 3: 134492, 5: 8784, 7: 1755, 10: 53099, 18: 10009},
    "ADE_val_00000002": {0: 17280, 1: 8309, 2: 49211, 3: 85997, 5: 20293, 14: 341, 18: 569},
    "ADE_val_00000003": {
        0: 2031, 1: 2901, 2: 9024, 3: 27749, 5: 2048, 7: 30083, 12: 22518,
        21: 2330, 44: 153, 81: 1681, 88: 202, 97: 17664, 103: 1616,
    },
}
SAMPLE_SIZES = {"ADE_val_00000001": (512, 683), "ADE_val_00000002": (364, 500), "ADE_val_00000003": (300, 400)}


def data_config(**changes) -> config_lib.DataConfig:
    return dataclasses.replace(config_lib.DataConfig(), **changes)


def test_real_samples_load_with_exact_label_counts():
    pairs = datasets.list_split(SAMPLE_ROOT, "validation").pairs
    assert [os.path.basename(p[0]) for p in pairs] == [f"ADE_val_0000000{i}.jpg" for i in (1, 2, 3)]
    for image_path, annotation_path in pairs:
        stem = os.path.splitext(os.path.basename(image_path))[0]
        image, label = decode.load_example(image_path, annotation_path)
        assert image.dtype == np.uint8 and image.shape == SAMPLE_SIZES[stem] + (3,)
        assert label.dtype == np.uint8 and label.shape == SAMPLE_SIZES[stem]
        # 0 -> 255 (ignored), k -> k - 1.
        expected = {(255 if k == 0 else k - 1): n for k, n in SAMPLE_COUNTS[stem].items()}
        values, counts = np.unique(label, return_counts=True)
        assert dict(zip(values.tolist(), counts.tolist())) == expected
        # The decoded JPEG is the same picture PIL sees (libjpeg versions may round differently).
        reference = np.asarray(Image.open(image_path).convert("RGB"), np.int16)
        assert np.abs(image.astype(np.int16) - reference).max() <= 1


# A colour per ADE20K label value 1..20: far apart, so that blends are never pure.
CLASS_COLOURS = np.array([[(37 * k) % 256, (91 * k + 40) % 256, (151 * k + 80) % 256] for k in range(21)], np.uint8)


def colour_coded_scene(rng, height, width, block=12):
    """A label map of random blocks (labels 1..20) and the image painting each label its colour."""
    blocks = rng.integers(1, 21, size=(height // block + 1, width // block + 1))
    label = np.kron(blocks, np.ones((block, block), np.int64))[:height, :width].astype(np.uint8)
    return CLASS_COLOURS[label], label


def alignment_errors(image, label):
    """Counts pixels whose colour is exactly another class's colour than their label says.

    A pure class colour can only come from the interior of that class's region;
    with bilinear images and nearest labels sampled at the same pixel centres,
    such a pixel must carry that class. Blended boundary pixels match no class
    colour and are not counted.

    Returns:
      (misaligned pure pixels, correctly labelled pure pixels, labelled pixels)
    """
    image = image.astype(np.int16)
    distance = np.abs(image[:, :, None, :] - CLASS_COLOURS[None, None, 1:, :].astype(np.int16)).max(-1)  # (H, W, 20)
    pure = distance.min(-1) <= 1
    pure_class = distance.argmin(-1)  # train id = label value - 1
    labelled = label != 255
    wrong = pure & labelled & (pure_class != label)
    right = pure & labelled & (pure_class == label)
    return int(wrong.sum()), int(right.sum()), int(labelled.sum())


def test_alignment_through_the_training_pipeline(tmp_path, rng):
    # PNG images so that colours survive encoding exactly.
    for i in range(6):
        height, width = rng.integers(60, 150, size=2)
        image, label = colour_coded_scene(rng, height, width)
        write_pair(str(tmp_path), "training", f"ADE_train_{i:08d}", image, label, image_format="PNG")
    config = data_config(base_size=(150, 90), ratio_range=(0.5, 2.0), crop_size=(72, 88), photometric=False)
    dataset = data.training_dataset(config, str(tmp_path), batch_size=3, seed=5)
    totals = np.zeros(3, np.int64)
    flipped_label_errors = 0
    padded_batches = 0
    for batch in dataset.take(12).as_numpy_iterator():
        assert batch["image"].shape == (3, 72, 88, 3) and batch["label"].shape == (3, 72, 88)
        assert not batch["error"].any()
        for image, label in zip(batch["image"], batch["label"]):
            totals += alignment_errors(image, label)
            flipped_label_errors += alignment_errors(image, label[:, ::-1])[0]
            padding = label == 255  # the source labels have no 0, so 255 is padding only
            if padding.any():
                padded_batches += 1
                assert (image[padding] == np.round(data.PAD_COLOUR).astype(np.uint8)).all()
    wrong, right, labelled = totals
    assert wrong == 0
    assert right > 0.6 * labelled  # most pixels are interior, so the check covers most of each crop
    assert flipped_label_errors > 1000  # the same check does catch a misaligned label
    assert padded_batches > 0  # ratios below 1 made crops larger than the image


def test_augment_geometry_matches_brute_force_at_ratio_one(rng):
    image, label = colour_coded_scene(rng, 50, 70)
    # cat_max_ratio=1 and ratio 1 with base_size equal to the size: no resampling, just crop/flip/pad.
    config = data_config(base_size=(70, 50), ratio_range=(1.0, 1.0), crop_size=(40, 90), cat_max_ratio=1.0, flip_prob=0.5, photometric=False)
    example = {"image": tf.constant(image), "label": tf.constant(label - 1)}
    flips = 0
    for k in range(8):
        out = data.augment(example, config, tf.constant([3, k], tf.int64))
        out_image, out_label = out["image"].numpy(), out["label"].numpy()
        # Find the crop by brute force among all offsets and both flips.
        matches = []
        for flip in (False, True):
            source = label[:, ::-1] if flip else label
            for y in range(50 - 40 + 1):
                if np.array_equal(out_label[:, :70], source[y : y + 40] - 1):
                    matches.append((flip, y))
        assert matches, "the label is not a crop of the source label"
        flip, y = matches[0]
        source_image = image[:, ::-1] if flip else image
        np.testing.assert_array_equal(out_image[:, :70], source_image[y : y + 40])
        assert (out_label[:, 70:] == 255).all()
        flips += flip
    assert 0 < flips < 8


def test_resized_labels_hold_only_values_of_the_source(rng):
    """Labels are resized by nearest neighbour: no class appears that the source lacks.

    The values are far apart, so any blend of two neighbours (a bilinear label) is a value absent from the
    source; the training transform (random rescale) and the validation one (fit) both resize here.
    """
    train_ids = np.array([9, 59, 109, 149])
    label = np.kron(rng.choice(train_ids, size=(8, 10)), np.ones((9, 9), np.int64))[:70, :87].astype(np.uint8)
    example = {"image": tf.zeros((70, 87, 3), tf.uint8), "label": tf.constant(label)}
    allowed = set(train_ids.tolist()) | {255}
    config = data_config(base_size=(87, 70), ratio_range=(0.6, 1.7), crop_size=(48, 48), cat_max_ratio=1.0,
                         photometric=False)  # fmt: skip
    augment = tf.function(lambda seed: data.augment(example, config, seed)["label"])  # as tf.data runs it
    for k in range(6):
        values = set(np.unique(augment(tf.constant([4, k], tf.int64)).numpy()).tolist())
        assert values <= allowed, (k, sorted(values - allowed))
    for size in ((37, 53), (150, 190)):  # shrunk and enlarged
        fitted = data.fit_and_pad(example, size)["label"].numpy()
        assert set(np.unique(fitted).tolist()) <= allowed, (size, sorted(set(np.unique(fitted).tolist()) - allowed))


def test_cat_max_ratio_redraws_dominated_crops():
    # Class 1 everywhere but a 30x30 patch of class 2 in one corner.
    label = np.zeros((100, 100), np.uint8)
    label[:30, :30] = 1
    example = {"image": tf.zeros((100, 100, 3), tf.uint8), "label": tf.constant(label)}

    def acceptable(crop):
        counts = np.bincount(crop[crop != 255].ravel(), minlength=2)
        return np.count_nonzero(counts) > 1 and counts.max() / counts.sum() < 0.75

    # Brute force over every offset of a 40x40 crop: the chance p that one random crop passes.
    p = np.mean([acceptable(label[y : y + 40, x : x + 40]) for y in range(61) for x in range(61)])
    trials = 120
    rates = {}
    for ratio in (1.0, 0.75):
        config = data_config(base_size=(100, 100), ratio_range=(1.0, 1.0), crop_size=(40, 40), cat_max_ratio=ratio, flip_prob=0.0, photometric=False)
        augment = tf.function(lambda seed, config=config: data.augment(example, config, seed)["label"])  # as tf.data runs it
        passed = [acceptable(augment(tf.constant([0, k], tf.int64)).numpy()) for k in range(trials)]
        rates[ratio] = np.mean(passed)
    # Off: one draw. On: the first of up to 11 draws that passes.
    for rate, expected in ((rates[1.0], p), (rates[0.75], 1 - (1 - p) ** 11)):
        assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / trials) + 1e-9, (rates, p)
    assert rates[0.75] > rates[1.0] + 0.3


def test_photometric_distortion_changes_colours_not_geometry(rng):
    image, label = colour_coded_scene(rng, 64, 64)
    example = {"image": tf.constant(image), "label": tf.constant(label - 1)}
    plain = data_config(base_size=(64, 64), ratio_range=(1.0, 1.0), crop_size=(64, 64), photometric=False)
    distorted = dataclasses.replace(plain, photometric=True)
    changed = 0
    for k in range(6):
        seed = tf.constant([9, k], tf.int64)
        a, b = data.augment(example, plain, seed), data.augment(example, distorted, seed)
        np.testing.assert_array_equal(a["label"], b["label"])
        changed += int(np.abs(a["image"].numpy().astype(int) - b["image"].numpy()).max() > 0)
        assert b["image"].dtype == tf.uint8
    assert changed >= 3


def test_photometric_ranges_are_the_documented_ones():
    """Over seeded draws: brightness +-32 and contrast x0.5..1.5 bound a grey pixel; hue moves at most 0.1 turn.

    A grey image has no saturation or hue to change: its value is (128 + b) x c or 128 x c + b, so it
    stays within [48, 240]; a pure red pixel keeps hue 0 under brightness, contrast and saturation,
    so its hue is the hue shift alone.
    """
    import colorsys

    grey = tf.fill([2, 2, 3], 128.0)
    red = tf.constant([[[255.0, 0.0, 0.0]]])
    values, hues = [], []
    for k in range(300):
        seed = tf.constant([17, k], tf.int64)
        values.append(float(data.photometric_distortion(grey, seed)[0, 0, 0]))
        r, g, b = (data.photometric_distortion(red, seed)[0, 0].numpy() / 255.0).tolist()
        hue = colorsys.rgb_to_hsv(r, g, b)[0]
        hues.append(min(hue, 1.0 - hue))  # distance from red, in turns
    assert 48.0 - 1e-3 <= min(values) and max(values) <= 240.0 + 1e-3
    assert min(values) < 75.0 and max(values) > 200.0  # and the draws do reach towards both ends
    assert max(hues) <= 0.1 + 1e-3
    assert max(hues) > 0.08 and sum(h > 1e-3 for h in hues) > 100  # hue shifts drawn about half the time


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK"])
def test_image_modes_become_rgb(tmp_path, rng, mode):
    image, label = colour_coded_scene(rng, 40, 56)
    image_format = "PNG" if mode == "RGBA" else "JPEG"
    image_path, annotation_path = write_pair(str(tmp_path), "validation", "ADE_val_00000001", image, label, image_format, mode)
    loaded, loaded_label = decode.load_example(image_path, annotation_path)
    assert loaded.shape == (40, 56, 3)
    reference = np.asarray(Image.open(image_path).convert("RGB"), np.int16)
    assert np.abs(loaded.astype(np.int16) - reference).max() <= 3
    if mode == "L":
        assert (loaded[..., 0] == loaded[..., 1]).all() and (loaded[..., 1] == loaded[..., 2]).all()
    np.testing.assert_array_equal(loaded_label, label - 1)


def make_bad_dataset(root, rng):
    """Two good pairs and one pair for each kind of problem. Returns {stem: expected error}."""
    image, label = colour_coded_scene(rng, 48, 64)
    expected = {}

    def pair(stem, error, image=image, label=label, **kwargs):
        paths = write_pair(root, "training", stem, image, label, **kwargs)
        expected[stem] = error
        return paths

    pair("ADE_train_00000001", decode.ERROR_NONE)
    pair("ADE_train_00000002", decode.ERROR_NONE, label=np.full_like(label, 150))  # 150 is the last valid class
    _, annotation = pair("ADE_train_00000003", decode.ERROR_ANNOTATION_FORMAT, label=None)
    Image.fromarray(CLASS_COLOURS[label]).save(annotation)  # an RGB annotation
    pair("ADE_train_00000004", decode.ERROR_LABEL_OUT_OF_RANGE, label=np.where(label == 3, 151, label))
    pair("ADE_train_00000005", decode.ERROR_SIZE_MISMATCH, label=label[:40])
    image_path, _ = pair("ADE_train_00000006", decode.ERROR_UNREADABLE_IMAGE)
    with open(image_path, "r+b") as f:  # a corrupt JPEG: its entropy-coded data cut short
        f.truncate(os.path.getsize(image_path) // 3)
    _, annotation = pair("ADE_train_00000007", decode.ERROR_UNREADABLE_ANNOTATION)
    with open(annotation, "r+b") as f:  # a truncated PNG
        f.truncate(os.path.getsize(annotation) - 30)
    image_path, _ = pair("ADE_train_00000008", decode.ERROR_UNREADABLE_IMAGE)
    with open(image_path, "wb") as f:
        f.write(b"this is not an image")
    _, annotation = pair("ADE_train_00000009", decode.ERROR_ANNOTATION_FORMAT, label=None)
    Image.fromarray(label).convert("P").save(annotation)  # palette PNG: values would become colours
    return expected


def test_bad_files_raise_errors_naming_the_file(tmp_path, rng):
    expected = make_bad_dataset(str(tmp_path), rng)
    pairs = datasets.list_split(str(tmp_path), "training").pairs
    assert len(pairs) == len(expected)
    for image_path, annotation_path in pairs:
        stem = os.path.splitext(os.path.basename(image_path))[0]
        if expected[stem] == decode.ERROR_NONE:
            decode.load_example(image_path, annotation_path)
            continue
        with pytest.raises(errors.DataError) as raised:
            decode.load_example(image_path, annotation_path)
        message = str(raised.value)
        assert decode.ERROR_MESSAGES[expected[stem]] in message
        culprit = image_path if expected[stem] == decode.ERROR_UNREADABLE_IMAGE else annotation_path
        assert culprit in message


def test_bad_files_are_skipped_and_reported_by_the_training_stream(tmp_path, rng):
    expected = make_bad_dataset(str(tmp_path), rng)
    config = data_config(base_size=(64, 48), crop_size=(32, 32))
    report = data.SkipReport()
    seen = {}
    # Three epochs of 9 files: the stream never stops on a bad file.
    for batch in data.training_dataset(config, str(tmp_path), batch_size=3, seed=1).take(9).as_numpy_iterator():
        report.record(batch)
        for path, error, label in zip(batch["path"], batch["error"], batch["label"]):
            stem = os.path.splitext(os.path.basename(path.decode()))[0]
            seen[stem] = seen.get(stem, 0) + 1
            assert error == expected[stem]
            if error:
                assert (label == 255).all()  # nothing of an unusable file is trained on
            else:
                assert (label != 255).any()
    assert seen == {stem: 3 for stem in expected}
    assert report.examples == 27
    bad = {stem for stem, error in expected.items() if error}
    assert {os.path.splitext(os.path.basename(p))[0] for p in report.skipped} == bad
    assert all(decode.ERROR_MESSAGES[expected[os.path.splitext(os.path.basename(p))[0]]] in report.summary() for p in report.skipped)


def test_training_stream_resumes_exactly(tmp_path, rng):
    for i in range(5):
        image, label = colour_coded_scene(rng, 50 + 7 * i, 60)
        write_pair(str(tmp_path), "training", f"ADE_train_{i:08d}", image, label)
    config = data_config(base_size=(80, 60), crop_size=(40, 40))
    full = list(data.training_dataset(config, str(tmp_path), batch_size=2, seed=3).unbatch().take(17).as_numpy_iterator())
    # Every epoch holds each file exactly once, in a different order.
    epochs = [[e["path"] for e in full[i : i + 5]] for i in (0, 5, 10)]
    assert all(sorted(epoch) == sorted(epochs[0]) for epoch in epochs) and len(set(epochs[0])) == 5
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    for start in (4, 7):
        resumed = list(
            data.training_dataset(config, str(tmp_path), batch_size=2, seed=3, start_example=start).unbatch().take(17 - start).as_numpy_iterator()
        )
        for a, b in zip(full[start:], resumed):
            assert a["path"] == b["path"]
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    other_seed = next(data.training_dataset(config, str(tmp_path), batch_size=2, seed=4).unbatch().as_numpy_iterator())
    assert not np.array_equal(other_seed["image"], full[0]["image"])


def test_validation_batches_fit_and_pad_the_samples():
    config = data_config(val_size=(128, 160))
    dataset = data.validation_dataset(config, SAMPLE_ROOT, batch_size=2)
    first = list(dataset.as_numpy_iterator())
    second = list(dataset.as_numpy_iterator())
    assert [b["image"].shape for b in first] == [(2, 128, 160, 3), (1, 128, 160, 3)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["image"], b["image"])
    # ADE_val_00000001 is 683x512: fitted to 160 wide it is round(512 * 160 / 683) = 120 rows high.
    label = first[0]["label"][0]
    assert (label[:120] != 255).mean() > 0.95 and (label[120:] == 255).all()
    _, full_label = decode.load_example(*datasets.list_split(SAMPLE_ROOT, "validation").pairs[0])
    # Nearest-neighbour resizing: only classes of the source (a blend of 9 and 17 would be 10..16, absent),
    # in about their proportions (wall, train id 0: 2.8 % of the labelled pixels).
    assert set(np.unique(label).tolist()) <= set(np.unique(full_label).tolist())
    share = lambda l, c: (l == c).sum() / (l != 255).sum()
    for class_id in (0, 1, 2, 9):
        assert abs(share(label, class_id) - share(full_label, class_id)) < 0.01
    subset = data.validation_dataset(config, SAMPLE_ROOT, batch_size=2, num_images=2)
    assert [b["path"].tolist() for b in subset.as_numpy_iterator()] == [first[0]["path"].tolist()]


def test_listing_reports_unpaired_files(tmp_path, rng):
    image, label = colour_coded_scene(rng, 20, 20)
    write_pair(str(tmp_path), "training", "ADE_train_00000001", image, label)
    write_pair(str(tmp_path), "training", "ADE_train_00000002", image, None)
    write_pair(str(tmp_path), "training", "ADE_train_00000003", None, label)
    listing = datasets.list_split(str(tmp_path), "training")
    assert [os.path.basename(p[0]) for p in listing.pairs] == ["ADE_train_00000001.jpg"]
    assert [os.path.basename(p) for p in listing.images_without_annotation] == ["ADE_train_00000002.jpg"]
    assert [os.path.basename(p) for p in listing.annotations_without_image] == ["ADE_train_00000003.png"]
    assert datasets.find_dataset_root(str(tmp_path)) == str(tmp_path)
    assert datasets.find_dataset_root(os.path.dirname(SAMPLE_ROOT)) == SAMPLE_ROOT
    assert datasets.find_dataset_root(str(tmp_path / "nothing")) is None


def small_pair(tmp_path, rng, split, stem, image_format="JPEG"):
    image, label = colour_coded_scene(rng, 24, 32)
    return write_pair(str(tmp_path), split, stem, image, label, image_format=image_format)


def test_symlink_loop_is_a_listed_problem_not_an_oserror(tmp_path, rng):
    small_pair(tmp_path, rng, "training", "ADE_train_00000001")
    loop = tmp_path / "images" / "training" / "L.jpg"
    os.symlink("L.jpg", loop)  # ln -s L.jpg L.jpg
    os.symlink("gone.png", tmp_path / "annotations" / "training" / "D.png")
    listing = datasets.list_split(str(tmp_path), "training")
    assert [os.path.basename(p[0]) for p in listing.pairs] == ["ADE_train_00000001.jpg"]
    reasons = dict(listing.unreadable)
    assert "Too many levels of symbolic links" in reasons[str(loop)]
    assert "symbolic link to nothing" in reasons[str(tmp_path / "annotations" / "training" / "D.png")]
    with pytest.raises(errors.DataError, match=r"2 file\(s\) cannot be used(.|\n)*L.jpg: cannot be opened"):
        datasets.usable_pairs(str(tmp_path), "training")
    scan = scan_image_folder(str(tmp_path / "images" / "training"))
    assert [os.path.basename(p) for p in scan.files] == ["ADE_train_00000001.jpg"]
    assert [p for p, _ in scan.unreadable] == [str(loop)]


def test_same_stem_as_jpg_and_png_is_never_picked_silently(tmp_path, rng):
    small_pair(tmp_path, rng, "training", "ADE_train_00000001")
    jpg, _ = small_pair(tmp_path, rng, "training", "ADE_train_00000002")
    png, _ = small_pair(tmp_path, rng, "training", "ADE_train_00000002", image_format="PNG")
    listing = datasets.list_split(str(tmp_path), "training")
    assert [os.path.basename(p[0]) for p in listing.pairs] == ["ADE_train_00000001.jpg"]
    assert listing.same_stem == ((jpg, png),) and not listing.annotations_without_image
    with pytest.raises(errors.DataError, match=rf"{jpg} and {png}: the same name with different extensions"):
        datasets.usable_pairs(str(tmp_path), "training")


def test_non_utf8_file_names_are_read_and_reported(tmp_path, rng):
    stem = os.fsdecode(b"B17_\xff\xfe")  # as os.listdir returns the name
    good_image, _ = small_pair(tmp_path, rng, "validation", stem)
    bad_image, bad_annotation = write_pair(str(tmp_path), "training", stem, colour_coded_scene(rng, 24, 32)[0], np.full((5, 5), 1, np.uint8))
    small_pair(tmp_path, rng, "training", "ADE_train_00000001")
    image, label = decode.load_example(*datasets.list_split(str(tmp_path), "validation").pairs[0])
    assert image.shape == (24, 32, 3) and (label != 255).all()
    assert decode.read_image_file(good_image).shape == (24, 32, 3)
    batches = list(data.validation_dataset(data_config(val_size=(32, 32)), str(tmp_path), batch_size=2).as_numpy_iterator())
    assert batches[0]["path"].tolist() == [os.fsencode(good_image)] and batches[0]["error"].tolist() == [0]
    report = data.SkipReport()
    for batch in data.training_dataset(data_config(base_size=(32, 24), crop_size=(16, 16)), str(tmp_path), 2).take(1).as_numpy_iterator():
        report.record(batch)
    assert list(report.skipped) == [bad_image]  # the name as the file system has it
    assert report.new_messages() == [
        f"skipped {tmp_path}/images/training/B17_\\xff\\xfe.jpg: annotation size differs from the image size (its pixels are ignored)"
    ]
    with pytest.raises(errors.DataError, match=r"B17_\\xff\\xfe.png \(image .*B17_\\xff\\xfe.jpg\): annotation size differs"):
        decode.load_example(bad_image, bad_annotation)


def test_read_image_file_names_the_file_it_cannot_read(tmp_path):
    readme = os.path.join(os.path.dirname(SAMPLE_ROOT), "..", "..", "README.md")
    with pytest.raises(errors.DataError, match=r"README.md: not an image it can read: Unknown image file format") as raised:
        decode.read_image_file(readme)
    assert "{{" not in str(raised.value) and "Op:" not in str(raised.value)
    with pytest.raises(errors.DataError, match=r"missing.jpg: cannot be read \(No such file or directory\)"):
        decode.read_image_file(str(tmp_path / "missing.jpg"))
    image = decode.read_image_file(os.path.join(SAMPLE_ROOT, "images", "validation", "ADE_val_00000003.jpg"))
    assert image.shape == (300, 400, 3) and image.dtype == np.uint8


def test_skip_report_reports_each_file_once_for_both_splits():
    def batch(split, *names_errors):
        return {
            "path": np.array([f"/d/images/{split}/{name}.jpg".encode() for name, _ in names_errors]),
            "error": np.array([error for _, error in names_errors], np.int32),
        }

    report = data.SkipReport()
    assert report.record(batch("training", ("a", 0), ("b", decode.ERROR_UNREADABLE_IMAGE))) == 1
    assert report.new_messages() == [
        "skipped /d/images/training/b.jpg: image cannot be decoded (corrupt or truncated file) (its pixels are ignored)"
    ]
    for _ in range(15):  # the same bad file in every later batch is not reported again
        assert report.record(batch("training", ("b", decode.ERROR_UNREADABLE_IMAGE), ("c", 0))) == 1
        assert report.new_messages() == []
    report.record(batch("validation", ("v", decode.ERROR_SIZE_MISMATCH)))
    assert report.new_messages() == [
        "skipped /d/images/validation/v.jpg: annotation size differs from the image size (its pixels are ignored)"
    ]
    assert len(report) == 2 and report.examples == 33
    assert report.summary().splitlines()[0] == "skipped 2 unusable file(s) (their pixels were ignored):"


def test_sample_config_uses_an_existing_dataset_as_it_is():
    # configs/sample.yaml with --data_dir pointing at real data: the data is used, nothing is generated.
    fixtures = os.path.dirname(SAMPLE_ROOT)
    before = sorted(os.listdir(SAMPLE_ROOT))
    assert datasets.prepare_dataset(data_config(data_dir=fixtures, synthetic=True), progress=False).root == SAMPLE_ROOT
    assert sorted(os.listdir(SAMPLE_ROOT)) == before


def test_sample_data_is_not_generated_over_other_files_or_when_only_checking(tmp_path):
    other = tmp_path / "mine" / "ADEChallengeData2016"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("keep")
    with pytest.raises(errors.DataError, match=r"holds other files(.|\n)*nothing in this one was changed(.|\n)*--data_dir"):
        datasets.prepare_dataset(data_config(data_dir=str(tmp_path / "mine"), synthetic=True), progress=False)
    assert os.listdir(other) == ["notes.txt"]
    typo = tmp_path / "typo"
    with pytest.raises(errors.DatasetNotFoundError, match="does not generate the sample data"):
        datasets.prepare_dataset(data_config(data_dir=str(typo), synthetic=True), progress=False, generate_sample=False)
    assert not typo.exists()
