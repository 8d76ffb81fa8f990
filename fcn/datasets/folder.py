"""A folder dataset: any images, 8-bit annotation PNGs and a ``classes.csv`` of its own.

``ROOT/images/{training,validation}/*`` (JPEG, PNG, BMP or GIF),
``ROOT/annotations/{training,validation}/*.png`` (8-bit greyscale or palette,
same stems) and ``ROOT/classes.csv`` (``id,name,r,g,b`` and an optional
``ignore`` column; see ``ClassTable.read_csv``).
"""

import os

from fcn.datasets.classes import CLASSES_FILE, ClassTable
from fcn.datasets.files import pair_by_stem
from fcn.datasets.layout import Layout
from fcn.datasets.sample import SampleWriter, mapped

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# The sample data's classes: annotation id -> (name, colour); ids not 0..2 on purpose, 0 declared ignored.
SAMPLE_CLASSES = {7: ("sky", (70, 130, 180)), 42: ("ground", (152, 251, 152)), 200: ("thing", (220, 20, 60))}
_SAMPLE_VALUES = {0: 0, 3: 7, 4: 42, 7: 42, 10: 42, 8: 200, 13: 200, 21: 200}  # drawn ADE20K value -> id
_SAMPLE_OTHERS = 200  # walls, buildings, trees, ceilings, doors: "thing" too


class FolderWriter(SampleWriter):
    """The sample scenes as a folder dataset: greyscale annotations of SAMPLE_CLASSES' ids, classes.csv."""

    def write_annotation(self, split, name, labels):
        super().write_annotation(split, name, mapped(labels, _SAMPLE_VALUES, _SAMPLE_OTHERS))

    def finish(self):
        with open(os.path.join(self.root, CLASSES_FILE), "w", encoding="utf-8", newline="\n") as f:
            f.write("id,name,r,g,b,ignore\n0,unlabelled,0,0,0,1\n")
            f.writelines(f"{value},{name},{r},{g},{b},0\n" for value, (name, (r, g, b)) in SAMPLE_CLASSES.items())


class FolderLayout(Layout):
    """Any dataset: images/ and annotations/ by split, and classes.csv at the root."""

    name = "folder"
    looks_for = f"images/, annotations/ and {CLASSES_FILE}"
    sample_writer = FolderWriter

    def candidates(self, data_dir):
        return [data_dir]

    def is_root(self, folder):
        has_folders = all(os.path.isdir(os.path.join(folder, name)) for name in ("images", "annotations"))
        return has_folders and os.path.isfile(os.path.join(folder, CLASSES_FILE))

    def list_split(self, root, split, config):
        return pair_by_stem(root, split, IMAGE_EXTENSIONS)

    def class_table(self, root, config):
        return ClassTable.read_csv(os.path.join(root, CLASSES_FILE))

    def sample_root(self, data_dir):
        return data_dir

    def ways_out(self):
        return [f"--data_dir DIR                  a folder with images/, annotations/ and {CLASSES_FILE} (see docs/datasets.md)"]
