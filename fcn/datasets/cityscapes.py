"""Cityscapes (fine annotations): 19 evaluation classes, labelIds annotations, one folder per city.

``ROOT/leftImg8bit/{train,val,test}/CITY/CITY_SEQ_FRAME_leftImg8bit.png`` and
``ROOT/gtFine/{train,val,test}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png``
(8-bit greyscale labelIds 0..33). The 19 classes of the benchmark are
labelIds 7, 8, 11, ... 33 (train ids 0..18, in the official order); every
other labelId is ignored, as the official scripts do. Label PNGs written by
evaluate (``--save_predictions``) hold labelIds, the submission format.

The dataset needs a login, so it is never downloaded: get
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` from
https://www.cityscapes-dataset.com and unzip both into one folder.
"""

import os

import numpy as np
from PIL import Image

from fcn.datasets.classes import IGNORE_LABEL, ClassTable
from fcn.datasets.files import SPLITS, SplitListing, display_path, scan_image_folder
from fcn.datasets.layout import Layout
from fcn.datasets.sample import SampleWriter, mapped
from fcn.errors import DataError

# (labelId, name, colour) of the 19 evaluation classes, in train-id order (cityscapesScripts' labels.py).
CLASSES = (
    (7, "road", (128, 64, 128)), (8, "sidewalk", (244, 35, 232)), (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)), (13, "fence", (190, 153, 153)), (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)), (20, "traffic sign", (220, 220, 0)), (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)), (23, "sky", (70, 130, 180)), (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)), (26, "car", (0, 0, 142)), (27, "truck", (0, 0, 70)), (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)), (32, "motorcycle", (0, 0, 230)), (33, "bicycle", (119, 11, 32)),
)  # fmt: skip
NUM_LABEL_IDS = 34  # labelIds 0..33; those not in CLASSES (unlabeled, ego vehicle, ..., trailer) are ignored
_SPLIT_FOLDERS = {"training": "train", "validation": "val"}
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"
# The sample data's labelId of each drawn ADE20K value; walls, ceilings, doors and beds become building.
_SAMPLE_VALUES = {0: 0, 1: 12, 2: 11, 3: 23, 4: 8, 5: 21, 6: 11, 7: 7, 8: 11, 10: 22, 13: 24, 15: 11, 21: 26}
_SAMPLE_CITIES = {"training": "aachen", "validation": "frankfurt"}


def class_table() -> ClassTable:
    """The 19 evaluation classes (annotation values = labelIds); every other labelId and 255 ignored."""
    ids = tuple(label_id for label_id, _, _ in CLASSES)
    ignored = tuple(sorted(set(range(NUM_LABEL_IDS)) - set(ids))) + (IGNORE_LABEL,)
    return ClassTable(tuple(name for _, name, _ in CLASSES), ids, tuple(colour for _, _, colour in CLASSES),
                      ignored, False, "Cityscapes")  # fmt: skip


class CityscapesWriter(SampleWriter):
    """The sample scenes in Cityscapes' folders and names (PNG images, labelIds annotations)."""

    folders = tuple(os.path.join(kind, _SPLIT_FOLDERS[split], city)
                    for kind in ("leftImg8bit", "gtFine") for split, city in _SAMPLE_CITIES.items())  # fmt: skip

    def write(self, split, name, image, labels):
        city, index = _SAMPLE_CITIES[split], int(name.rsplit("_", 1)[1])
        stem = f"{city}_{index:06d}_000019"
        folder = _SPLIT_FOLDERS[split]
        Image.fromarray(image).save(os.path.join(self.root, "leftImg8bit", folder, city, stem + _IMAGE_SUFFIX))
        label_ids = mapped(labels, _SAMPLE_VALUES, 11)
        Image.fromarray(np.asarray(label_ids, np.uint8)).save(os.path.join(self.root, "gtFine", folder, city, stem + _LABEL_SUFFIX))


class CityscapesLayout(Layout):
    """leftImg8bit/ and gtFine/ by split and city, annotations ``*_gtFine_labelIds.png``."""

    name = "cityscapes"
    looks_for = "leftImg8bit/ and gtFine/ (Cityscapes)"
    sample_writer = CityscapesWriter

    def candidates(self, data_dir):
        return [data_dir, os.path.join(data_dir, "cityscapes")]

    def is_root(self, folder):
        return os.path.isdir(os.path.join(folder, "leftImg8bit")) and os.path.isdir(os.path.join(folder, "gtFine"))

    def list_split(self, root, split, config):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        image_dir = os.path.join(root, "leftImg8bit", _SPLIT_FOLDERS[split])
        label_dir = os.path.join(root, "gtFine", _SPLIT_FOLDERS[split])
        missing = tuple(folder for folder in (image_dir, label_dir) if not os.path.isdir(folder))
        images, labels, unreadable = {}, {}, []
        for folder, suffix, found in ((image_dir, _IMAGE_SUFFIX, images), (label_dir, _LABEL_SUFFIX, labels)):
            for city in _cities(folder):
                scan = scan_image_folder(os.path.join(folder, city), (".png",))
                unreadable.extend(scan.unreadable)
                for path in scan.files:
                    if os.path.basename(path).endswith(suffix):
                        found[(city, os.path.basename(path)[: -len(suffix)])] = path
        return SplitListing(
            pairs=tuple((images[key], labels[key]) for key in sorted(images.keys() & labels.keys())),
            images_without_annotation=tuple(images[key] for key in sorted(images.keys() - labels.keys())),
            annotations_without_image=tuple(labels[key] for key in sorted(labels.keys() - images.keys())),
            unreadable=tuple(sorted(unreadable)),
            missing=missing,
        )

    def class_table(self, root, config):
        return class_table()

    def sample_root(self, data_dir):
        return data_dir

    def no_pairs(self, root, split):
        return (
            f"{display_path(os.path.join(root, 'leftImg8bit', _SPLIT_FOLDERS[split]))}: no *{_IMAGE_SUFFIX} with a "
            f"matching *{_LABEL_SUFFIX} in gtFine/{_SPLIT_FOLDERS[split]}"
        )

    def download(self, config, progress):
        raise DataError(
            "Cityscapes cannot be downloaded by --download (its site needs a login): get leftImg8bit_trainvaltest.zip "
            "and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com, unzip both into one folder and pass "
            "it as --data_dir"
        )

    def ways_out(self):
        return ["--data_dir DIR                  a folder with leftImg8bit/ and gtFine/ (from www.cityscapes-dataset.com)"]


def _cities(folder: str) -> list[str]:
    """The city folders of a split folder (none when it is missing)."""
    try:
        return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as error:
        raise DataError(f"{display_path(folder)}: cannot list this folder ({error.strerror})") from None
