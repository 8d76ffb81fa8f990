"""PASCAL VOC 2012: 21 classes (background and 20 objects), palette PNGs, split lists.

``VOC2012/JPEGImages/*.jpg``, ``VOC2012/SegmentationClass/*.png`` (palette
PNGs whose pixel values are the class indices 0..20, 255 = ignored), split
lists ``ImageSets/Segmentation/{train,val}.txt``; with
``data.voc_train_list=train_aug``, ``ImageSets/Segmentation/train_aug.txt`` and
``SegmentationClassAug/`` (the SBD-augmented 10,582 images).
"""

import os

from PIL import Image

from fcn import download
from fcn.datasets.classes import IGNORE_LABEL, ClassTable, voc_colormap
from fcn.datasets.files import SPLITS, SplitListing, display_path, permission_denied
from fcn.datasets.layout import Layout
from fcn.datasets.sample import SampleWriter, mapped
from fcn.errors import DataError

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
ARCHIVE = download.Archive(
    file_name="VOCtrainval_11-May-2012.tar",
    top_dir="VOCdevkit",
    required_dirs=("VOC2012/JPEGImages", "VOC2012/SegmentationClass", "VOC2012/ImageSets/Segmentation"),
    dataset_dir="VOC2012",
    hash_name="md5",
    what="the official VOC 2012 trainval tar",
    config_keys="data.voc_download_url, data.voc_download_md5",
    approximate_bytes=1_999_639_040,  # only for the progress bar when the server sends no size
)
TRAIN_LISTS = ("train", "trainval", "train_aug")
# The sample data's VOC value of each drawn ADE20K value (0 "other" -> 255, VOC's void); others background.
SAMPLE_VALUES = {0: 255, 8: 18, 13: 15, 21: 7}
_SPLIT_LISTS = {"training": "train", "validation": "val"}


def class_table() -> ClassTable:
    """PASCAL VOC 2012: values 0..20 (background and the 20 object classes), 255 ignored."""
    colours = voc_colormap()[: len(CLASS_NAMES)]
    return ClassTable(CLASS_NAMES, tuple(range(len(CLASS_NAMES))), tuple(tuple(int(c) for c in row) for row in colours),
                      (IGNORE_LABEL,), True, "PASCAL VOC 2012")  # fmt: skip


def fetch(data_dir: str, url: str = URL, md5: str = MD5, progress: bool = True, keep_tar: bool = False) -> str:
    """Makes ``<data_dir>/VOCdevkit/VOC2012`` from the official trainval tar (``download.fetch_archive``)."""
    return download.fetch_archive(ARCHIVE, data_dir, url, md5, progress, keep_tar)


class VocWriter(SampleWriter):
    """The sample scenes as VOC2012: JPEGImages/, palette PNGs in SegmentationClass/, the split lists."""

    folders = ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation"))

    def __init__(self, root: str):
        super().__init__(root)
        self.lists = {split: [] for split in _SPLIT_LISTS}

    def image_path(self, split, name):
        return os.path.join(self.root, "JPEGImages", name + ".jpg")

    def write_annotation(self, split, name, labels):
        values = mapped(labels, SAMPLE_VALUES, 0)
        picture = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
        picture.putpalette(voc_colormap().reshape(-1).tolist())
        picture.save(os.path.join(self.root, "SegmentationClass", name + ".png"), bits=8)
        self.lists[split].append(name)

    def finish(self):
        for split, names in self.lists.items():
            path = os.path.join(self.root, "ImageSets", "Segmentation", _SPLIT_LISTS[split] + ".txt")
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.writelines(name + "\n" for name in names)


_ANNOTATION_FOLDERS = {"train": "SegmentationClass", "trainval": "SegmentationClass", "train_aug": "SegmentationClassAug"}


class VocLayout(Layout):
    """PASCAL VOC 2012: JPEGImages/, SegmentationClass/ (palette PNGs), ImageSets/Segmentation/*.txt."""

    name = "voc"
    looks_for = "JPEGImages/ and ImageSets/Segmentation/ (VOC2012)"
    sample_writer = VocWriter

    def candidates(self, data_dir):
        return [data_dir, os.path.join(data_dir, "VOC2012"), os.path.join(data_dir, "VOCdevkit", "VOC2012")]

    def is_root(self, folder):
        return os.path.isdir(os.path.join(folder, "JPEGImages")) and os.path.isdir(
            os.path.join(folder, "ImageSets", "Segmentation")
        )

    def list_split(self, root, split, config):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        list_name = config.voc_train_list if split == "training" else "val"
        list_path = os.path.join(root, "ImageSets", "Segmentation", list_name + ".txt")
        annotation_dir = os.path.join(root, _ANNOTATION_FOLDERS.get(list_name, "SegmentationClass"))
        missing = tuple(p for p in (os.path.join(root, "JPEGImages"), annotation_dir) if not os.path.isdir(p))
        if not os.path.isfile(list_path):
            return SplitListing((), (), (), listed=True, missing=missing + (list_path,))
        try:
            with open(list_path, "rb") as f:
                lines = [os.fsdecode(line.strip()) for line in f.read().splitlines() if line.strip()]
        except PermissionError:
            raise DataError(f"{display_path(list_path)}: {permission_denied(list_path)}") from None
        pairs, without_annotation, without_image, without_files = [], [], [], []
        unreadable = []
        for entry in sorted(set(lines)):
            fields = entry.split()
            if len(fields) == 2:  # "/JPEGImages/X.jpg /SegmentationClassAug/X.png", as SBD-augmented lists are written
                image_path, annotation_path = (os.path.join(root, field.lstrip("/")) for field in fields)
            else:
                image_path = os.path.join(root, "JPEGImages", entry + ".jpg")
                annotation_path = os.path.join(annotation_dir, entry + ".png")
            has_image, has_annotation = os.path.isfile(image_path), os.path.isfile(annotation_path)
            if has_image and has_annotation:
                denied = [(p, permission_denied(p)) for p in (image_path, annotation_path) if not os.access(p, os.R_OK)]
                if denied:
                    unreadable.extend(denied)
                else:
                    pairs.append((image_path, annotation_path))
            elif has_image:
                without_annotation.append(image_path)
            elif has_annotation:
                without_image.append(annotation_path)
            else:
                without_files.append(f"{display_path(list_path)}: {entry}")
        return SplitListing(
            pairs=tuple(sorted(pairs)),
            images_without_annotation=tuple(without_annotation),
            annotations_without_image=tuple(without_image),
            unreadable=tuple(unreadable),
            listed=True,
            entries_without_files=tuple(without_files),
            missing=missing,
        )

    def class_table(self, root, config):
        return class_table()

    def no_pairs(self, root, split):
        return f"{display_path(root)}: the {split} split lists no image"

    def sample_root(self, data_dir):
        return os.path.join(data_dir, "VOC2012")

    def download(self, config, progress):
        return fetch(config.data_dir, config.voc_download_url or URL, config.voc_download_md5 or MD5, progress=progress)

    def ways_out(self):
        return ["--download                      fetch VOCtrainval_11-May-2012.tar (~2 GB) into --data_dir and extract it",
                "--data_dir DIR                  point at a VOC2012 folder, VOCdevkit, or the folder holding it"]  # fmt: skip
