"""The synthetic sample dataset: scenes drawn from a seed, written in any layout.

This is the project's embedded default data: it lets the whole pipeline (data
loading, training, evaluation) run on a laptop CPU in minutes, without a
download. Each image is an outdoor scene (sky, a band of buildings or trees,
road or grass, cars and people) or an indoor one (ceiling, walls, floor,
doors, beds, people) drawn with random geometry. Every class has its own base
colour and texture, so a network can learn them, but colours of related
classes are close (wall/ceiling, floor/door, tree/grass, road/building) and
brightness varies per image, so a per-pixel colour lookup is not enough.

Scenes are drawn with ADE20K's label values (``SAMPLE_CLASSES``); 0
("other") marks a few small unlabelled objects, as in the real annotations.
Each layout's ``SampleWriter`` (in its own file) writes them in its folders
and maps the values to its classes. Everything is a pure function of the
arguments of ``generate``: the same arguments give byte-identical files.
"""

import dataclasses
import os
import re
import shutil

import numpy as np
import tqdm
from PIL import Image

from fcn.errors import FolderInUseError

# ADE20K label value (1..150) -> official short name, for the classes drawn.
SAMPLE_CLASSES = {
    1: "wall",
    2: "building",
    3: "sky",
    4: "floor",
    5: "tree",
    6: "ceiling",
    7: "road",
    8: "bed",
    10: "grass",
    13: "person",
    15: "door",
    21: "car",
}

MARKER_FILENAME = "SAMPLE_DATA.txt"
# Bump when the drawing changes, so that old and new folders can be told apart.
GENERATOR_VERSION = 1
_SPLITS = (("training", "ADE_train"), ("validation", "ADE_val"))
_JPEG_QUALITY = 90
_UNLABELLED = 0


@dataclasses.dataclass(frozen=True)
class _Look:
    """How one class is painted.

    Attributes:
      colour: base RGB colour (0..255).
      texture: one of ``gradient``, ``stripes``, ``checker``, ``grid``,
        ``blotches``, ``grain``.
      period: texture period in pixels (blob size for ``blotches``).
      angle: stripe orientation in degrees (0 = stripes run vertically).
      amplitude: texture strength in grey levels.
      noise: per-pixel Gaussian noise of the class, in grey levels.
      colour_jitter: standard deviation of the per-object colour change.
    """

    colour: tuple[int, int, int]
    texture: str
    period: float = 8.0
    angle: float = 0.0
    amplitude: float = 10.0
    noise: float = 3.0
    colour_jitter: float = 8.0


# Pairs of classes that meet in a scene share a similar hue on purpose and
# differ in texture: wall/ceiling, floor/door, tree/grass, road/building.
_LOOKS = {
    1: _Look((192, 180, 158), "blotches", period=24, amplitude=7, noise=2),  # wall: plaster
    2: _Look((138, 126, 118), "grid", period=10, amplitude=30, noise=4),  # building: windows
    3: _Look((128, 172, 222), "gradient", amplitude=30, noise=2, colour_jitter=12),  # sky
    4: _Look((150, 108, 72), "stripes", period=6, angle=90, amplitude=18, noise=4),  # floor: planks
    5: _Look((58, 104, 52), "blotches", period=4, amplitude=28, noise=6),  # tree: foliage
    6: _Look((206, 202, 192), "checker", period=9, amplitude=12, noise=2),  # ceiling: tiles
    7: _Look((104, 102, 106), "grain", amplitude=0, noise=14),  # road: asphalt
    8: _Look((176, 140, 172), "stripes", period=7, angle=45, amplitude=16, noise=3),  # bed: sheets
    10: _Look((92, 146, 64), "stripes", period=3, angle=0, amplitude=14, noise=8),  # grass: blades
    13: _Look((150, 96, 86), "blotches", period=6, amplitude=12, noise=5, colour_jitter=22),  # person
    15: _Look((132, 92, 62), "stripes", period=5, angle=0, amplitude=14, noise=3),  # door: wood grain
    21: _Look((168, 44, 46), "gradient", amplitude=-40, noise=2, colour_jitter=30),  # car: glossy
}
def is_complete(root: str, layout: str, writer: type["SampleWriter"]) -> bool:
    """Whether ``root`` holds a finished sample dataset.

    Args:
      root: the dataset folder (ADEChallengeData2016, VOC2012, a folder dataset).
      layout: the name of the layout it should hold.
      writer: that layout's ``SampleWriter`` (its folders are checked).

    Returns:
      True when the marker file written as the last generation step names
      ``layout`` (no layout line: ADE20K) and the layout's folders exist.
    """
    if not os.path.isfile(os.path.join(root, MARKER_FILENAME)):
        return False
    with open(os.path.join(root, MARKER_FILENAME), encoding="utf-8", errors="replace") as f:
        written = re.search(r"^layout: (\w+)$", f.read(), re.M)
    if (written.group(1) if written else "ade20k") != layout:  # the marker of another layout's sample data
        return False
    return all(os.path.isdir(os.path.join(root, folder)) for folder in writer.folders)


def generate(
    root: str,
    num_train: int = 64,
    num_val: int = 16,
    seed: int = 0,
    min_size: int = 96,
    max_size: int = 160,
    progress: bool = True,
    layout: str = "ade20k",
    writer: type["SampleWriter"] | None = None,
) -> str:
    """Writes the synthetic dataset into ``root`` unless it is already there.

    The files are written into a temporary sibling folder that is renamed to
    ``root`` only after the marker file is written, so an interrupted run never
    leaves a half-written dataset that looks finished.

    Args:
      root: the ADEChallengeData2016 folder to create. It must not exist, be
        empty, or already hold a complete sample dataset (which is kept as it
        is, whatever arguments made it).
      num_train: number of training images.
      num_val: number of validation images.
      seed: seed of all random choices.
      min_size: smallest image width and height in pixels.
      max_size: largest image width and height in pixels; width and height are
        drawn independently.
      progress: show a progress bar.
      layout: the layout's name, recorded in the marker file.
      writer: the layout's ``SampleWriter`` class (default: ADE20K's folders);
        the scenes are the same in every layout.

    Returns:
      ``root`` as an absolute path.

    Raises:
      ValueError: on bad arguments.
      FolderInUseError: ``root`` exists and holds anything other than a
        complete sample dataset (user data is never overwritten).
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got num_train={num_train}, num_val={num_val}")
    writer = writer or SampleWriter
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    root = os.path.abspath(root)
    if is_complete(root, layout, writer):
        return root
    if os.path.exists(root) and not _is_empty_dir(root):
        raise FolderInUseError(
            f"{root} exists and holds other files, but no dataset (images/ and annotations/) and no "
            f"{MARKER_FILENAME}: the sample data is generated only into a new or empty folder, and "
            "nothing in this one was changed"
        )

    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp_root = f"{root}.tmp-{os.getpid()}"
    if os.path.exists(tmp_root):
        # Only a crashed earlier run of this same process id can have left it.
        shutil.rmtree(tmp_root)
    try:
        counts = {"training": num_train, "validation": num_val}
        files = writer(tmp_root)
        with tqdm.tqdm(total=num_train + num_val, desc="sample data", unit="image", disable=not progress) as bar:
            for split_index, (split, prefix) in enumerate(_SPLITS):
                for index in range(1, counts[split] + 1):
                    # One generator per image: an image does not change when
                    # the number of other images does.
                    rng = np.random.default_rng([seed, split_index, index])
                    image, labels = _draw_scene(rng, min_size, max_size)
                    files.write(split, f"{prefix}_{index:08d}", image, labels)
                    bar.update(1)
        files.finish()
        _write_marker(tmp_root, num_train, num_val, seed, min_size, max_size, layout)
        try:
            if os.path.isdir(root):
                os.rmdir(root)  # empty (checked above); os.replace cannot replace it portably
            os.replace(tmp_root, root)
        except OSError:
            if not is_complete(root, layout, writer):
                raise
            shutil.rmtree(tmp_root)  # another process (a second worker) wrote the same dataset first
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    return root
class SampleWriter:
    """Writes the scenes' files as ``images/SPLIT/*.jpg`` and ``annotations/SPLIT/*.png`` (ADE20K's values).

    A layout's writer changes what differs: its folders, file names and the
    mapping of the drawn ADE20K values to its own (``mapped``).
    """

    folders = tuple(os.path.join(kind, split) for kind in ("images", "annotations") for split, _ in _SPLITS)

    def __init__(self, root: str):
        self.root = root
        for folder in self.folders:
            os.makedirs(os.path.join(root, folder))

    def image_path(self, split: str, name: str) -> str:
        return os.path.join(self.root, "images", split, name + ".jpg")

    def write(self, split: str, name: str, image: np.ndarray, labels: np.ndarray) -> None:
        """One scene: ``labels`` are ADE20K values, mapped to the layout's."""
        Image.fromarray(image).save(self.image_path(split, name), quality=_JPEG_QUALITY)
        self.write_annotation(split, name, labels)

    def write_annotation(self, split: str, name: str, labels: np.ndarray) -> None:
        Image.fromarray(labels).save(os.path.join(self.root, "annotations", split, name + ".png"))

    def finish(self) -> None:
        pass


def mapped(labels: np.ndarray, values: dict, default: int) -> np.ndarray:
    """``labels`` with each key of ``values`` replaced by its value, every other value by ``default``."""
    lookup = np.full(256, default, np.uint8)
    for source, target in values.items():
        lookup[source] = target
    return lookup[labels]
def _is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def _write_marker(folder: str, num_train: int, num_val: int, seed: int, min_size: int, max_size: int, layout: str) -> None:
    """Writes the marker that makes ``folder`` count as complete; the last step."""
    classes = ", ".join(f"{label} {name}" for label, name in SAMPLE_CLASSES.items())
    text = (
        f"Synthetic {'ADE20K' if layout == 'ade20k' else layout}-layout sample data written by fcn/datasets/sample.py.\n"
        "Not real ADE20K images. Delete this folder to regenerate it.\n"
        f"generator_version: {GENERATOR_VERSION}\n"
        + (f"layout: {layout}\n" if layout != "ade20k" else "")
        + f"seed: {seed}\n"
        f"num_train: {num_train}\n"
        f"num_val: {num_val}\n"
        f"min_size: {min_size}\n"
        f"max_size: {max_size}\n"
        f"classes: {classes}\n"
    )
    with open(os.path.join(folder, MARKER_FILENAME), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


class _Canvas:
    """An image and its label map, painted back to front."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng = rng
        self.height = height
        self.width = width
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
        self.image = np.zeros((height, width, 3), np.float32)
        self.labels = np.zeros((height, width), np.uint8)
        # Lighting and camera differ per photo; the model must not rely on
        # absolute colour.
        self.brightness = rng.uniform(0.78, 1.22)
        self.colour_cast = rng.normal(0.0, 6.0, size=3)

    def paint(self, mask: np.ndarray, label: int, shade: float = 1.0, colour: np.ndarray | None = None) -> None:
        """Paints ``mask`` as one object of class ``label``.

        Args:
          mask: bool (H, W).
          label: ADE20K label value; 0 paints an unlabelled object with a random
            colour and texture.
          shade: multiplies the colour, for object parts (wheels, windows).
          colour: the object's colour (3,), when several parts share one.
        """
        if not mask.any():
            return
        if label == _UNLABELLED:
            look = _Look(
                tuple(int(c) for c in self.rng.integers(30, 226, size=3)),
                str(self.rng.choice(["stripes", "checker", "blotches", "grain"])),
                period=float(self.rng.uniform(3, 12)),
                angle=float(self.rng.uniform(0, 180)),
                amplitude=float(self.rng.uniform(5, 25)),
                noise=4.0,
            )
        else:
            look = _LOOKS[label]
        if colour is None:
            colour = self.object_colour(look)
        texture = _texture(look, self.rng, self.yy, self.xx)  # (H, W)
        pixels = colour * shade + texture[..., None]  # (H, W, 3)
        self.image[mask] = pixels[mask]
        self.labels[mask] = label

    def object_colour(self, look: _Look) -> np.ndarray:
        """The base colour of ``look`` varied for one object: float (3,)."""
        return np.asarray(look.colour, np.float32) + self.rng.normal(0.0, look.colour_jitter, size=3)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns the uint8 RGB image (H, W, 3) and the uint8 label map (H, W)."""
        image = self.image * self.brightness + self.colour_cast
        image += self.rng.normal(0.0, 4.0, size=image.shape)  # sensor noise
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), self.labels


def _texture(look: _Look, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A grey-level offset (H, W) drawn for one object; the phase is random."""
    height, width = yy.shape
    if look.texture == "gradient":
        # Top to bottom, spanning the image, like sky brightening towards the horizon.
        out = look.amplitude * (yy / height - 0.5)
    elif look.texture == "stripes":
        theta = np.deg2rad(look.angle)
        along = xx * np.cos(theta) + yy * np.sin(theta)
        out = look.amplitude * np.sin(2 * np.pi * along / look.period + rng.uniform(0, 2 * np.pi))
    elif look.texture == "checker":
        oy, ox = rng.uniform(0, 2 * look.period, size=2)
        cells = np.floor((yy + oy) / look.period) + np.floor((xx + ox) / look.period)
        out = look.amplitude * (2 * (cells % 2) - 1)
    elif look.texture == "grid":
        # Dark windows on a lighter facade.
        py, px = look.period * 1.3, look.period
        oy, ox = rng.uniform(0, py), rng.uniform(0, px)
        window = (((yy + oy) % py) < 0.55 * py) & (((xx + ox) % px) < 0.5 * px)
        out = np.where(window, -look.amplitude, 0.3 * look.amplitude)
    elif look.texture == "blotches":
        small = rng.normal(0.0, 1.0, size=(int(height / look.period) + 2, int(width / look.period) + 2))
        big = Image.fromarray(small.astype(np.float32)).resize((width, height), Image.BILINEAR)
        out = look.amplitude * np.asarray(big)
    elif look.texture == "grain":
        out = np.full((height, width), look.amplitude, np.float32)
    else:
        raise ValueError(f"unknown texture {look.texture!r}")
    return (out + rng.normal(0.0, look.noise, size=(height, width))).astype(np.float32)


def _draw_scene(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws one random scene; returns the RGB image (H, W, 3) and labels (H, W)."""
    width, height = rng.integers(min_size, max_size, endpoint=True, size=2)
    canvas = _Canvas(rng, int(height), int(width))
    if rng.random() < 0.5:
        _draw_outdoor(canvas)
    else:
        _draw_indoor(canvas)
    return canvas.finish()


def _draw_outdoor(canvas: _Canvas) -> None:
    """Sky, a skyline of buildings and trees, road or grass, then cars and people."""
    rng, h, w, yy, xx = canvas.rng, canvas.height, canvas.width, canvas.yy, canvas.xx
    ground = h * rng.uniform(0.55, 0.8)  # horizon row where the ground starts
    canvas.paint(yy < ground, 3)

    # A run of buildings and tree groups; mostly one kind per image.
    building_prob = rng.choice([0.15, 0.5, 0.85])
    x0 = 0.0
    while x0 < w:
        x1 = x0 + w * rng.uniform(0.15, 0.45)
        columns = (xx >= x0) & (xx < x1) & (yy < ground)
        if rng.random() < building_prob:
            top = rng.uniform(0.12 * h, ground - 0.1 * h)
            canvas.paint(columns & (yy >= top), 2)
        else:
            base = rng.uniform(0.2 * h, ground - 0.05 * h)  # the bumps rise up to 0.08 * h above it
            crown = w * rng.uniform(0.06, 0.14)
            bumps = 0.08 * h * np.abs(np.sin(np.pi * (xx - x0) / crown + rng.uniform(0, np.pi)))
            canvas.paint(columns & (yy >= base - bumps), 5)
        x0 = x1

    below = yy >= ground
    layout = rng.integers(4)
    if layout == 0:
        canvas.paint(below, 7)
    elif layout == 1:
        canvas.paint(below, 10)
    elif layout == 2:  # a grass verge between the skyline and the road
        canvas.paint(below, 10)
        verge = ground + (h - ground) * rng.uniform(0.15, 0.5)
        canvas.paint(yy >= verge, 7)
    else:  # a road running away from the camera through grass
        canvas.paint(below, 10)
        centre = w * rng.uniform(0.3, 0.7)
        half_width = w * rng.uniform(0.03, 0.08) + (yy - ground) * rng.uniform(0.6, 1.4)
        canvas.paint(below & (np.abs(xx - centre) < half_width), 7)

    if rng.random() < 0.4:
        _draw_sign(canvas, ground)

    objects = [("car", ground + (h - ground) * rng.uniform(0.2, 1.0)) for _ in range(rng.integers(0, 4))]
    objects += [("person", ground + (h - ground) * rng.uniform(0.1, 1.0)) for _ in range(rng.integers(0, 3))]
    # Far (higher) objects first, so near ones hide them.
    for kind, bottom in sorted(objects, key=lambda item: item[1]):
        depth = (bottom - ground) / (h - ground)  # 0 at the horizon, 1 at the camera
        if kind == "car":
            _draw_car(canvas, rng.uniform(0, w), bottom, w * (0.4 + 0.6 * depth) * rng.uniform(0.25, 0.4))
        else:
            _draw_person(canvas, rng.uniform(0, w), bottom, h * (0.2 + 0.3 * depth) * rng.uniform(0.85, 1.15))


def _draw_indoor(canvas: _Canvas) -> None:
    """A room corner: ceiling, two walls, floor, then a door, a bed and people."""
    rng, h, w, yy, xx = canvas.rng, canvas.height, canvas.width, canvas.yy, canvas.xx
    corner = w * rng.uniform(0.2, 0.8)
    reach = max(corner, w - corner)  # farthest column from the corner
    ceiling_at_corner = h * rng.uniform(0.15, 0.3)
    floor_at_corner = h * rng.uniform(0.6, 0.78)
    # Lines slope away from the corner, like a room seen in perspective,
    # but never leave less than a few rows of ceiling or floor.
    ceiling_slope = rng.random() * (ceiling_at_corner - 0.05 * h) / reach
    floor_slope = rng.random() * (0.93 * h - floor_at_corner) / reach

    def ceiling_row(x):
        return ceiling_at_corner - ceiling_slope * np.abs(x - corner)

    def floor_row(x):
        return floor_at_corner + floor_slope * np.abs(x - corner)

    wall_colour = canvas.object_colour(_LOOKS[1])
    canvas.paint(xx < corner, 1, colour=wall_colour)
    canvas.paint(xx >= corner, 1, shade=rng.uniform(0.85, 0.95), colour=wall_colour)  # the wall in shadow
    canvas.paint(yy < ceiling_row(xx), 6)
    canvas.paint(yy >= floor_row(xx), 4)

    if rng.random() < 0.4:  # a painting: an unlabelled object on the wall
        centre = rng.uniform(0.2, 0.8) * w
        half_w, half_h = w * rng.uniform(0.05, 0.1), h * rng.uniform(0.05, 0.09)
        mid = 0.5 * (ceiling_row(centre) + floor_row(centre))
        canvas.paint((np.abs(xx - centre) < half_w) & (np.abs(yy - mid) < half_h), _UNLABELLED)

    if rng.random() < 0.75:
        door_width = w * rng.uniform(0.12, 0.2)
        left = rng.uniform(0, w - door_width)
        centre = left + 0.5 * door_width
        bottom = floor_row(centre) + 1
        top = bottom - (bottom - ceiling_row(centre)) * rng.uniform(0.65, 0.85)
        canvas.paint((xx >= left) & (xx < left + door_width) & (yy >= top) & (yy < bottom), 15)

    if rng.random() < 0.6:
        bed_width = w * rng.uniform(0.35, 0.55)
        left = rng.uniform(-0.1 * w, w - 0.9 * bed_width)
        centre = left + 0.5 * bed_width
        head = floor_row(centre) - h * rng.uniform(0.08, 0.14)
        foot = floor_row(centre) + (h - floor_row(centre)) * rng.uniform(0.5, 0.9)
        columns = (xx >= left) & (xx < left + bed_width)
        colour = canvas.object_colour(_LOOKS[8])
        canvas.paint(columns & (yy >= head) & (yy < foot), 8, colour=colour)
        mattress_top = head + 0.4 * (floor_row(centre) - head)
        canvas.paint(columns & (yy >= head) & (yy < mattress_top), 8, shade=0.7, colour=colour)  # headboard
        pillow = (np.abs(xx - centre) < 0.3 * bed_width) & (yy >= mattress_top) & (yy < mattress_top + 0.05 * h)
        canvas.paint(pillow, 8, shade=1.15, colour=colour)

    bottoms = sorted(rng.uniform(0.3, 1.0, size=rng.integers(0, 3)))
    for fraction in bottoms:
        x = rng.uniform(0, w)
        bottom = floor_row(x) + (h - floor_row(x)) * fraction
        _draw_person(canvas, x, bottom, h * rng.uniform(0.35, 0.6) * (0.7 + 0.3 * fraction))


def _draw_car(canvas: _Canvas, centre: float, bottom: float, length: float) -> None:
    """A side view: body, cabin with darker windows, dark wheels."""
    yy, xx = canvas.yy, canvas.xx
    height = length * canvas.rng.uniform(0.4, 0.55)
    colour = canvas.object_colour(_LOOKS[21])
    body = (np.abs(xx - centre) < 0.5 * length) & (yy >= bottom - 0.6 * height) & (yy < bottom - 0.12 * height)
    cabin_top = bottom - height
    cabin = (
        (yy >= cabin_top)
        & (yy < bottom - 0.6 * height)
        & (np.abs(xx - centre) < 0.28 * length + 0.5 * (yy - cabin_top))
    )
    canvas.paint(body | cabin, 21, colour=colour)
    windows = (
        (yy >= cabin_top + 0.1 * height)
        & (yy < bottom - 0.63 * height)
        & (np.abs(xx - centre) < 0.24 * length + 0.5 * (yy - cabin_top))
    )
    canvas.paint(windows, 21, shade=0.45, colour=colour)
    radius = 0.15 * height + 0.5
    for side in (-1, 1):
        wheel_x, wheel_y = centre + side * 0.3 * length, bottom - radius
        canvas.paint((xx - wheel_x) ** 2 + (yy - wheel_y) ** 2 < radius**2, 21, shade=0.2, colour=colour)


def _draw_person(canvas: _Canvas, centre: float, bottom: float, height: float) -> None:
    """A standing figure: darker legs, torso, lighter head."""
    yy, xx = canvas.yy, canvas.xx
    width = 0.28 * height
    colour = canvas.object_colour(_LOOKS[13])
    legs = (np.abs(xx - centre) < 0.35 * width) & (yy >= bottom - 0.45 * height) & (yy < bottom)
    canvas.paint(legs, 13, shade=0.65, colour=colour)
    torso_centre = bottom - 0.62 * height
    torso = ((xx - centre) / (0.5 * width)) ** 2 + ((yy - torso_centre) / (0.2 * height)) ** 2 < 1
    canvas.paint(torso, 13, colour=colour)
    head_radius = 0.09 * height
    head_y = bottom - height + head_radius
    canvas.paint((xx - centre) ** 2 + (yy - head_y) ** 2 < head_radius**2, 13, shade=1.3, colour=colour)


def _draw_sign(canvas: _Canvas, ground: float) -> None:
    """A pole with a board: an unlabelled object, as real annotations have."""
    rng, h, w, yy, xx = canvas.rng, canvas.height, canvas.width, canvas.yy, canvas.xx
    x = rng.uniform(0.05, 0.95) * w
    bottom = ground + (canvas.height - ground) * rng.uniform(0.1, 0.6)
    top = bottom - h * rng.uniform(0.2, 0.35)
    pole = (np.abs(xx - x) < max(1.0, 0.008 * w)) & (yy >= top) & (yy < bottom)
    board = (np.abs(xx - x) < 0.06 * w) & (yy >= top) & (yy < top + 0.08 * h)
    canvas.paint(pole | board, _UNLABELLED)