"""``python FCN.py --mode=predict --image PATH...``: label PNGs, masks and overlays of image files.

For each image ``STEM``: the raw label PNG (the submission format of the run's
class table), a coloured mask and an overlay on the image, written with the
one predictor every inference mode uses (``fcn/inference.py``), or with a
released model (``--pretrained``, ``fcn/crfasrnn_keras.py``). Nothing is
written over an input image or a file predict did not write.
"""

import dataclasses
import os
import sys

import tqdm

from fcn import crfasrnn_keras, errors, outputs
from fcn.config import Config
from fcn.datasets.files import display_path, scan_image_folder
from fcn.errors import InferenceError
from fcn.inference import overlay, predictor_from_config, read_image, too_large, write_label_png, write_rgb_png


# What a folder given to --image is searched for: the formats the image reader decodes.
PREDICT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def list_images(paths) -> tuple[list[str], dict[str, str]]:
    """Image files named directly, and those inside named folders (not recursive, sorted).

    Returns:
      (the image files, path -> why an entry of a folder cannot be opened:
      a symbolic link looping or pointing nowhere, a folder named like an image).

    Raises:
      InferenceError: a path that does not exist, a folder without images, or
        two images with the same file stem (their outputs would collide).
    """
    files, unopenable = [], {}
    for path in paths:
        if os.path.isdir(path):
            scan = scan_image_folder(path, PREDICT_EXTENSIONS)
            for entry, reason in scan.unreadable:
                unopenable[entry] = f"{display_path(entry)}: {reason}"
            if not scan.files and not scan.unreadable:
                raise InferenceError(f"{display_path(path)}: no images ({', '.join(PREDICT_EXTENSIONS)}) in this folder")
            files.extend(scan.files)
        elif os.path.isfile(path):
            files.append(path)
        elif os.path.exists(path):  # a pipe, a device: reported, and the other images are still segmented
            unopenable[path] = f"{display_path(path)}: not a regular file (a pipe or a device): give an image file"
        else:
            raise InferenceError(f"--image {display_path(path)}: no such file or folder")
    stems = {}
    for path in files:
        stem = _stem(path)
        if stem in stems:
            raise InferenceError(
                f"{display_path(stems[stem])} and {display_path(path)} have the same name {stem!r}: "
                "their outputs would overwrite each other"
            )
        stems[stem] = path
    return files, unopenable


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# ---------------------------------------------------------------------------
# --mode=predict


OUTPUT_SUFFIXES = (".png", "_mask.png", "_overlay.png")
# In an output folder: the names of the files --mode=predict wrote there, the only ones it overwrites.
OUTPUTS_LIST = ".fcn_predictions"


def output_folder(files: list[str], output_dir: str) -> outputs.OutputFolder:
    """The output folder, claimed for every file's outputs before any work (``outputs.OutputFolder.claim``).

    Raises:
      OutputError: an output would write over an input or a file predict did not write, or two inputs
        would write the same file.
    """
    folder = outputs.OutputFolder(output_dir, "--output", OUTPUTS_LIST, "--mode=predict")
    folder.claim({path: [_stem(path) + suffix for suffix in OUTPUT_SUFFIXES] for path in files}, inputs=files)
    return folder


@dataclasses.dataclass
class PredictResult:
    """What ``predict_images`` did.

    Attributes:
      written: image path -> its raw label PNG.
      failed: image path -> why it could not be used.
      checkpoint: the checkpoint prefix used.
    """

    written: dict
    failed: dict
    checkpoint: str


def predict_images(config: Config, paths, output_dir: str = "", checkpoint: str = "", progress: bool = True) -> PredictResult:
    """Segments image files of any size and writes, per image ``STEM``:

    ``STEM.png`` the raw labels (the class table's annotation values, the
    submission format), ``STEM_mask.png`` the labels in the table's colours and
    ``STEM_overlay.png`` the mask blended over the image.

    Args:
      config: the run's config (model shape, ``logs_dir``, the protocol of
        ``evaluate.test_size`` / ``scales`` / ``flip``, ``evaluate.max_pixels``).
      paths: image files and folders of images.
      output_dir: where to write (default ``LOGS_DIR/predictions``).
      checkpoint: see ``restore_model``.
      progress: show a progress bar.

    An image of more than ``evaluate.max_pixels`` pixels is refused (in
    ``failed``, with a message naming the limit) before it is decoded, and the
    next image is processed.

    Files are written only where they write over nothing but earlier outputs
    of ``predict`` (listed in the folder's ``.fcn_predictions``): never over an
    input image or any other file.

    Raises:
      InferenceError: no checkpoint, a bad path, colliding file names, or an
        output that would write over an input or a file not written by predict.
    """
    files, unopenable = list_images(paths)
    output_dir = output_dir or os.path.join(config.logs_dir, "predictions")
    folder = output_folder(files, output_dir)
    predictor, prefix = predictor_from_config(config, checkpoint)
    result = PredictResult({}, dict(unopenable), prefix)
    labels_of = lambda image: predictor.labels(image[None])[0].numpy()  # noqa: E731  (H, W) train ids
    write_predictions(files, folder, labels_of, predictor.classes, config.evaluate.max_pixels, result, progress)
    return result


def predict_pretrained(source: str, paths, output_dir: str, model_dir: str = "", max_pixels: int = 40_000_000,
                       progress: bool = True) -> PredictResult:
    """``--mode=predict --pretrained SOURCE``: ``predict_images`` with a released model (``fcn/crfasrnn_keras.py``).

    Raises:
      WeightsError: no such model, a failed download, or a file whose structure does not fit.
      InferenceError: a bad path, colliding names, or outputs that would write over other files.
    """
    files, unopenable = list_images(paths)
    folder = output_folder(files, output_dir)
    path, entry = crfasrnn_keras.resolve(source, model_dir, progress)
    classes = crfasrnn_keras.class_table(entry)
    result = PredictResult({}, dict(unopenable), path)
    write_predictions(files, folder, crfasrnn_keras.labeller(path, entry), classes, max_pixels, result, progress)
    return result


def write_predictions(files, folder: outputs.OutputFolder, labels_of, classes, max_pixels: int, result: PredictResult,
                      progress: bool = True) -> None:
    """The loop of ``predict_images`` for any model: ``labels_of(uint8 (H, W, 3)) -> train ids (H, W)``.

    ``files`` (claimed in ``folder`` by ``output_folder``) are read one by one;
    each image's label PNG, mask and overlay in the colours of ``classes`` go
    to the folder; refusals and unreadable images go to ``result.failed`` and
    the next image is processed.
    """
    for path in tqdm.tqdm(files, desc="predicting", unit="image", disable=not progress, dynamic_ncols=True):
        refused = too_large(path, max_pixels)  # before decoding: bounds the memory of one image
        if refused:
            result.failed[path] = refused
            continue
        try:
            image = read_image(path)
        except InferenceError as error:
            result.failed[path] = str(error)
            continue
        refused = too_large(path, max_pixels, image.shape[:2])  # a header PIL could not read
        if refused:
            result.failed[path] = refused
            continue
        train_ids = labels_of(image)
        base = os.path.join(folder.path, _stem(path))
        folder.record([_stem(path) + suffix for suffix in OUTPUT_SUFFIXES])
        write_label_png(base + ".png", train_ids, classes)
        write_rgb_png(base + "_mask.png", classes.colourise(train_ids))
        write_rgb_png(base + "_overlay.png", overlay(image, train_ids, classes=classes))
        result.written[path] = base + ".png"


def run(config: Config, args) -> int:
    """``--mode=predict``: label PNGs, masks and overlays of ``--image`` files; exit status 1 when one failed."""
    if not args.image:
        raise errors.UsageError("--mode=predict needs --image PATH [PATH ...] (image files or folders)")
    progress = not args.no_progress
    outputs.check_writable((args.output or os.path.join(config.logs_dir, "predictions"), "--output" if args.output else "--logs_dir"))
    if args.pretrained:
        output = args.output or os.path.join(config.logs_dir, "predictions")
        result = predict_pretrained(args.pretrained, args.image, output, config.model.model_dir,
                                    config.evaluate.max_pixels, progress=progress)  # fmt: skip
        print(f"model: {result.checkpoint}")
    else:
        result = predict_images(config, args.image, args.output, args.checkpoint, progress=progress)
        print(f"checkpoint: {result.checkpoint}")
    for path, label_png in result.written.items():
        print(f"{display_path(path)} -> {display_path(label_png)} (+ _mask.png, _overlay.png)")
    for reason in result.failed.values():
        print(f"FCN.py: {reason}", file=sys.stderr)
    return 1 if result.failed else 0

