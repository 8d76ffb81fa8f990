"""Paths and folder listings: the files of a split, found without ever stopping on one bad entry."""

import collections
import dataclasses
import os

from fcn.errors import DataError

SPLITS = ("training", "validation")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Control characters in a file name are printed as escapes: raw, an ESC sequence could retitle or clear the terminal.
_CONTROL_ESCAPES = {chr(c): f"\\x{c:02x}" for c in (*range(32), 127)}


def display_path(path) -> str:
    """A path as text that can always be printed: undecodable name bytes and control characters appear as \\xNN escapes.

    Args:
      path: str (possibly holding the surrogate escapes ``os`` functions return
        for non-UTF-8 names) or bytes (as in the ``path`` tensors).
    """
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(_CONTROL_ESCAPES.get(c, c) for c in text) if any(c in _CONTROL_ESCAPES for c in text) else text


def visible(text: str) -> str:
    """``text`` quoted, with control characters (line breaks, escapes) shown as escapes, never sent raw to a terminal."""
    return repr(text)


def decode_path(value) -> str:
    """A ``path`` tensor element (bytes) as a str the ``os`` functions accept, whatever its bytes."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return os.fsdecode(value) if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """The image files of one folder.

    Attributes:
      files: readable files with one of the extensions, sorted by name.
      unreadable: (path, reason) of entries with one of the extensions that
        cannot be opened: a symbolic link looping or pointing nowhere, a
        name that is not a file, a file this user may not read.
    """

    files: tuple[str, ...]
    unreadable: tuple[tuple[str, str], ...]


def scan_image_folder(folder: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> FolderScan:
    """Lists the image files of ``folder`` (not recursive) without ever raising on an entry.

    Args:
      folder: the folder; a missing folder (or a file in its place) gives an empty scan.
      extensions: lower-case extensions with the dot.

    Raises:
      DataError: the folder itself cannot be read.
    """
    files, unreadable = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if os.path.splitext(entry.name)[1].lower() not in extensions:
                    continue
                reason = _entry_problem(entry)
                if reason:
                    unreadable.append((entry.path, reason))
                else:
                    files.append(entry.path)
    except (FileNotFoundError, NotADirectoryError):  # reported as a missing folder by check_data
        return FolderScan((), ())
    except OSError as error:
        raise DataError(f"{display_path(folder)}: cannot list this folder ({error.strerror})") from None
    return FolderScan(tuple(sorted(files)), tuple(sorted(unreadable)))


def permission_denied(path) -> str:
    """What to say of a file this user may not read (after its path and a colon)."""
    return f"cannot read it: permission denied (give this user read access, e.g. chmod a+r {display_path(path)})"


def _entry_problem(entry: os.DirEntry) -> str:
    """Why a folder entry named like an image cannot be read as a file, or ""."""
    try:
        if entry.is_file():
            return "" if os.access(entry.path, os.R_OK) else permission_denied(entry.path)
        if entry.is_dir():
            return "a folder, not a file: rename or move it"
    except OSError as error:  # a symbolic link loop (ELOOP) raises here
        return f"cannot be opened ({error.strerror}): remove it or fix the link"
    if entry.is_symlink():
        return "a symbolic link to nothing: remove it or fix the link"
    return "not a regular file: remove it"


@dataclasses.dataclass(frozen=True)
class SplitListing:
    """The files of one split.

    Attributes:
      pairs: (image path, annotation path) of every image with an annotation,
        sorted by file name.
      images_without_annotation: image paths with no annotation PNG.
      annotations_without_image: annotation paths with no image.
      unreadable: (path, reason) of entries named like images or annotations
        that cannot be opened (see ``scan_image_folder``).
      same_stem: groups of files of one folder sharing a stem, e.g.
        ``X.jpg`` and ``X.png``; no pair is made for such a stem, since
        picking one would silently depend on the folder order.
      listed: the split is a list of names (VOC): its entries must all have
        their files.
      entries_without_files: list entries with neither image nor annotation.
      missing: folders or list files of the layout that do not exist.
    """

    pairs: tuple[tuple[str, str], ...]
    images_without_annotation: tuple[str, ...]
    annotations_without_image: tuple[str, ...]
    unreadable: tuple[tuple[str, str], ...] = ()
    same_stem: tuple[tuple[str, ...], ...] = ()
    listed: bool = False
    entries_without_files: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """One line per entry that training and evaluation cannot use as it is.

        Unpaired files are not problems of a layout that pairs files by name;
        in a layout whose split is a list of names (VOC), every entry of the
        list without its image or annotation is one.
        """
        lines = [f"{display_path(path)}: {reason}" for path, reason in self.unreadable]
        if self.listed:
            lines += [f"{display_path(p)}: listed in the split, but its annotation is missing" for p in self.images_without_annotation]
            lines += [f"{display_path(p)}: listed in the split, but its image is missing" for p in self.annotations_without_image]
            lines += [f"{entry}: listed in the split, but neither its image nor its annotation exists" for entry in self.entries_without_files]
            lines += [f"{display_path(p)}: missing" for p in self.missing]
        lines += [
            " and ".join(display_path(p) for p in group) + ": the same name with different extensions; "
            "keep one (rename or remove the others)"
            for group in self.same_stem
        ]
        return lines


def _files_by_stem(folder: str, extensions: tuple[str, ...]):
    """(stem -> path of stems with one file, groups sharing a stem, unreadable entries)."""
    scan = scan_image_folder(folder, extensions)
    by_stem = collections.defaultdict(list)
    for path in scan.files:
        by_stem[os.path.splitext(os.path.basename(path))[0]].append(path)
    unique = {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}
    shared = tuple(tuple(paths) for stem, paths in sorted(by_stem.items()) if len(paths) > 1)
    return unique, shared, scan.unreadable



def pair_by_stem(root: str, split: str, image_extensions: tuple[str, ...]) -> SplitListing:
    """Pairs ``ROOT/images/SPLIT/*`` with ``ROOT/annotations/SPLIT/*.png`` by file stem."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    image_dir, annotation_dir = os.path.join(root, "images", split), os.path.join(root, "annotations", split)
    images, shared_images, bad_images = _files_by_stem(image_dir, image_extensions)
    annotations, shared_annotations, bad_annotations = _files_by_stem(annotation_dir, (".png",))
    # A stem whose image is ambiguous is neither paired nor "without image".
    ambiguous = {os.path.splitext(os.path.basename(group[0]))[0] for group in shared_images + shared_annotations}
    images = {stem: path for stem, path in images.items() if stem not in ambiguous}
    annotations = {stem: path for stem, path in annotations.items() if stem not in ambiguous}
    return SplitListing(
        pairs=tuple((images[s], annotations[s]) for s in sorted(images.keys() & annotations.keys())),
        images_without_annotation=tuple(images[s] for s in sorted(images.keys() - annotations.keys())),
        annotations_without_image=tuple(annotations[s] for s in sorted(annotations.keys() - images.keys())),
        unreadable=bad_images + bad_annotations,
        same_stem=shared_images + shared_annotations,
        missing=tuple(folder for folder in (image_dir, annotation_dir) if not os.path.isdir(folder)),
    )
