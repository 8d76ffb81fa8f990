"""The configuration of a run: one frozen dataclass tree.

Defaults are the full ADE20K recipe. A YAML file (``--config``) holds only the
differences from these defaults; command-line overrides come last. Every key
and type is checked before any work starts, and the resolved tree is written
into the run directory so that a run can be repeated exactly.

Precedence, lowest first: defaults, the ``--config`` file, ``--set KEY=VALUE``
overrides, the dedicated flags (``--batch_size`` and friends).
"""

import dataclasses
import difflib
import math
import os
import types
import typing

import yaml

ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ADE20K_SHA1 = "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"
ADE20K_ZIP_BYTES = 967_382_037  # only used for the progress bar when the server sends no size
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
VOC_TAR_BYTES = 1_999_639_040  # only used for the progress bar when the server sends no size
LAYOUTS = ("auto", "ade20k", "voc", "folder")
VOC_TRAIN_LISTS = ("train", "trainval", "train_aug")
MAX_SEED = 2**32 - 1  # NumPy and Keras seeds are 32-bit unsigned integers


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data is and how training examples are made from it.

    Attributes:
      data_dir: the dataset's folder or a folder that contains it: an
        ADEChallengeData2016 folder, a VOC2012 folder (or VOCdevkit, or the
        folder holding it), or a folder dataset (``images/``, ``annotations/``,
        ``classes.csv``); see ``fcn/datasets.py``.
      layout: ``auto`` (detected from ``data_dir``), ``ade20k``, ``voc`` or
        ``folder``.
      voc_train_list: the VOC list of the training split, in
        ``ImageSets/Segmentation``: ``train``, ``trainval``, or ``train_aug``
        (the SBD-augmented 10,582 images, annotations in ``SegmentationClassAug/``).
      synthetic: generate the synthetic sample dataset into ``data_dir`` when
        it holds none (the embedded default data, see ``fcn/sample_data.py``),
        in the layout of ``layout`` (ADE20K's for ``auto``).
      download: fetch and extract the official archive when ``data_dir``
        holds no dataset (ADE20K's zip, or VOC 2012's tar with ``layout: voc``).
      download_url: where the ADE20K zip is fetched from.
      download_sha1: its published SHA-1; a mismatch rejects the file.
      voc_download_url: where the VOC 2012 trainval tar is fetched from.
      voc_download_md5: its published MD5; a mismatch rejects the file.
      num_classes: the number of classes, which the dataset's class table
        decides (ADE20K 150, VOC 21, a folder dataset its ``classes.csv``):
        0 follows the table; any other value must equal it (a run is refused
        otherwise). For ADE20K it may select the first classes (values
        1..num_classes).
      base_size: (long edge, short edge) the training image is fitted into
        before the random ratio is applied, as in the common recipe.
      ratio_range: (low, high) of the uniform random rescale ratio.
      crop_size: (height, width) of training crops; smaller images are padded.
      cat_max_ratio: a crop is re-drawn (up to 10 times) while one class
        covers more than this fraction of its labelled pixels; 1 disables.
      flip_prob: probability of a horizontal flip.
      photometric: random brightness, contrast, saturation and hue.
      val_size: (height, width) of the validation batches used to monitor
        training: each image is fitted inside it keeping its aspect ratio and
        padded.
    """

    data_dir: str = "data"
    layout: str = "auto"
    voc_train_list: str = "train"
    synthetic: bool = False
    download: bool = False
    download_url: str = ADE20K_URL
    download_sha1: str = ADE20K_SHA1
    voc_download_url: str = VOC_URL
    voc_download_md5: str = VOC_MD5
    num_classes: int = 150
    base_size: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 512)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    val_size: tuple[int, int] = (512, 512)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network.

    Attributes:
      backbone: ``vgg16`` or ``vgg19`` (FCN.tensorflow's trunk: 16
        convolutions, fc6/fc7 from its fc1/fc2).
      vgg_weights: ``none``, ``imagenet``, ``imagenet_notop`` (Keras' ImageNet
        weights of the backbone) or a path to a Keras ``.h5`` or a MatConvNet
        ``imagenet-vgg-verydeep-16.mat`` / ``-19.mat`` of the backbone; a file
        whose layers do not all fit the model is refused.
      model_dir: where downloaded pretrained weights are cached (the meaning
        of FCN.tensorflow's ``--model_dir``).
      fc_channels: width of fc6 and fc7 (4096 in VGG16; smaller values make a
        cheap model for tests and the sample data, without pretrained fc6/fc7).
      width: multiplies the channels of the backbone's convolutions (1: VGG's
        own, the only width pretrained weights fit; 0.125 makes the cheap
        model the fast tests train and run).
      dropout: dropout rate after fc6 and fc7.
      crf: append the CRF-RNN refinement stage (``fcn/crf.py``) to FCN-8s,
        trained end to end with it; usually fine-tuned from a trained FCN run
        with ``train.init_from``.
      crf_iterations: mean-field iterations in training and in the
        validations during training.
      crf_test_iterations: mean-field iterations for evaluate, visualize,
        predict and export (the paper uses 5 in training and 10 at test).
      crf_theta_alpha: bilateral kernel, spatial standard deviation (pixels).
      crf_theta_beta: bilateral kernel, colour standard deviation (0..255).
      crf_theta_gamma: spatial kernel standard deviation (pixels).
    """

    backbone: str = "vgg16"
    vgg_weights: str = "imagenet"
    model_dir: str = "data/models"
    fc_channels: int = 4096
    width: float = 1.0
    dropout: float = 0.5
    crf: bool = False
    crf_iterations: int = 5
    crf_test_iterations: int = 10
    crf_theta_alpha: float = 160.0
    crf_theta_beta: float = 3.0
    crf_theta_gamma: float = 3.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation and its bookkeeping.

    Attributes:
      batch_size: global batch size.
      learning_rate: Adam learning rate.
      max_steps: total steps of the run; rerunning with a larger value
        continues from the last checkpoint.
      weight_decay: L2 weight decay (0 disables).
      seed: seeds the file shuffle, augmentation and initialisation.
      debug: histograms of activations, gradients and variables.
      summary_every: steps between TensorBoard summaries.
      val_every: steps between validations.
      val_images: size of the fixed validation subset used to monitor training
        (0 = the whole validation split).
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: how many recent checkpoints are kept.
      init_from: checkpoint whose weights start the run (not its step).
      deterministic: deterministic TensorFlow ops, so that a run repeats
        bit for bit (slower on some devices).
      image_summaries: images per TensorBoard image summary.
      strategy: ``default`` (one device), ``mirrored`` (all local GPUs, or
        the devices named in ``devices``) or ``multi_worker`` (from TF_CONFIG).
      devices: comma-separated devices for ``mirrored``, e.g. ``GPU:0,GPU:1``.
      cpu_devices: split the CPU into this many logical devices (0 = no
        split), to run multi-device training on a machine without GPUs.
      mixed_precision: ``float32``, ``bfloat16`` or ``float16`` (with loss
        scaling; meant for GPUs). Variables, logits and the loss stay float32.
      jit_compile: compile the training step with XLA.
    """

    batch_size: int = 16
    learning_rate: float = 1e-4
    max_steps: int = 80_000
    weight_decay: float = 0.0
    seed: int = 0
    debug: bool = False
    summary_every: int = 100
    val_every: int = 2000
    val_images: int = 500
    checkpoint_every: int = 2000
    keep_checkpoints: int = 5
    init_from: str = ""
    deterministic: bool = False
    image_summaries: int = 3
    strategy: str = "default"
    devices: str = ""
    cpu_devices: int = 0
    mixed_precision: str = "float32"
    jit_compile: bool = False


# evaluate.test_size values meaning "each image at its own size".
OWN_SIZE = ("none", "own")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Inference with a trained model (``--mode`` evaluate, visualize, predict, export).

    Attributes:
      split: the split that evaluate and visualize read.
      test_size: (long edge, short edge) every image is fitted into, keeping
        its aspect ratio, before the network runs (the ADE20K test protocol:
        scale = min(long / image's long edge, short / image's short edge));
        the logits are resized back to the image's own size, where the labels
        are taken and scored. ``base_size`` (the default) follows
        ``data.base_size``, the scale the model was trained at; ``none`` (or
        ``[0, 0]``) runs the network at each image's own size (the usual
        Pascal VOC protocol).
      scales: image scales whose class probabilities are averaged, relative
        to the test size (or to the image's own size with ``test_size: none``).
      flip: also average the probabilities of the horizontally flipped image.
      max_pixels: images with more pixels (height x width) are refused with a
        message and the next image is processed; bounds the memory of one
        image (decoded image, full-resolution labels and pictures).
      visualize_images: images of the random batch that visualize shows.
      compare_fcn: with ``model.crf``, evaluate also scores the FCN's own
        logits (before the CRF) in the same pass and reports both.
    """

    split: str = "validation"
    test_size: tuple[int, int] | str = "base_size"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    max_pixels: int = 100_000_000  # bench/memory.py: 3.2 GiB peak for the full model at 100 M pixels
    visualize_images: int = 4
    compare_fcn: bool = False

    def resolved_test_size(self, base_size: tuple[int, int]) -> tuple[int, int] | None:
        """(long edge, short edge) the network input is fitted into, or None for each image's own size."""
        if self.test_size == "base_size":
            return tuple(base_size)
        if self.test_size in OWN_SIZE or tuple(self.test_size) == (0, 0):
            return None
        return tuple(self.test_size)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run.

    Attributes:
      logs_dir: the run directory (checkpoints, TensorBoard events, the
        resolved ``config.yaml``).
    """

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    logs_dir: str = "logs"


def _fields(cls) -> dict[str, type]:
    """Field name -> resolved type annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _valid_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for name, type_ in _fields(cls).items():
        if dataclasses.is_dataclass(type_):
            keys.extend(_valid_keys(type_, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def valid_keys() -> list[str]:
    """Every dotted key a config file or ``--set`` accepts."""
    return _valid_keys(Config)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value, type_, key: str, source: str):
    """Converts ``value`` (from YAML or a command-line string) to ``type_``."""

    def fail(expected):
        raise ConfigError(f"{source}: {key} must be {expected}, got {value!r}")

    if isinstance(type_, types.UnionType):  # e.g. a pair or a word: the first type that takes the value
        if value is None and str in typing.get_args(type_):
            return "none"
        for member in typing.get_args(type_):
            try:
                return _coerce(value, member, key, source)
            except ConfigError:
                continue
        fail(" or ".join(_describe(t) for t in typing.get_args(type_)))

    if type_ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        fail("true or false")
    if type_ is int:
        if isinstance(value, bool):
            fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                fail("an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        fail("an integer")
    if type_ is float:
        if isinstance(value, bool):
            fail("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                fail("a number")
        fail("a number")
    if type_ is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        fail("a string")
    if typing.get_origin(type_) is tuple:
        item_types = typing.get_args(type_)
        if len(item_types) == 2 and item_types[1] is Ellipsis:  # tuple[float, ...]: one or more values
            items = value
            if isinstance(value, str):
                items = [part for part in value.strip().strip("[]()").split(",") if part.strip()]
            elif not isinstance(value, (list, tuple)):
                items = [value]
            if not items:
                fail("a list of one or more values")
            return tuple(_coerce(v, item_types[0], key, source) for v in items)
        items = value
        if isinstance(value, str):
            text = value.strip().strip("[]()")
            items = [part for part in text.replace("x", ",").split(",") if part.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        if not isinstance(items, (list, tuple)):
            fail(f"a list of {len(item_types)} values")
        if len(items) == 1 and len(item_types) > 1:
            items = list(items) * len(item_types)  # "64" means 64x64
        if len(items) != len(item_types):
            fail(f"a list of {len(item_types)} values")
        return tuple(_coerce(v, t, key, source) for v, t in zip(items, item_types))
    raise TypeError(f"unsupported config type {type_} for {key}")  # a bug in this module


def _describe(type_) -> str:
    if typing.get_origin(type_) is tuple:
        return f"a list of {len(typing.get_args(type_))} values"
    return {str: "a word", int: "an integer", float: "a number", bool: "true or false"}.get(type_, str(type_))


def _build(cls, values: dict, prefix: str, source: str):
    """Builds dataclass ``cls`` from a nested dict, checking every key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {values!r}")
    fields = _fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = prefix + str(unknown[0])
        raise ConfigError(
            f"{source}: unknown key '{key}'. Valid keys"
            f"{' under ' + repr(prefix.rstrip('.')) if prefix else ''}: "
            + ", ".join(prefix + name for name in fields)
        )
    kwargs = {}
    for name, value in values.items():
        type_ = fields[name]
        if dataclasses.is_dataclass(type_):
            kwargs[name] = _build(type_, value or {}, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _coerce(value, type_, prefix + name, source)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _nest(dotted_key: str, value) -> dict:
    node = value
    for part in reversed(dotted_key.split(".")):
        node = {part: node}
    return node


def parse_override(text: str) -> tuple[str, str]:
    """Splits a ``KEY=VALUE`` command-line override."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.val_every=500")
    return key.strip(), value


def _read_yaml(path: str) -> dict:
    """The mapping of a config file; ConfigError naming the file for anything unreadable."""
    if os.path.isdir(path):
        raise ConfigError(f"--config {path} is a folder; give a YAML file, e.g. configs/sample.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (configs/ holds ade20k.yaml and sample.yaml)") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    return loaded or {}


def load_config(path: str | None = None, overrides: typing.Sequence[tuple[str, typing.Any]] = ()) -> Config:
    """Resolves a run's configuration.

    Args:
      path: a YAML file with differences from the defaults, or None.
      overrides: (dotted key, value) pairs applied in order after the file;
        values may be strings as typed on a command line.

    Returns:
      The frozen, checked Config.

    Raises:
      ConfigError: naming the file or override, the key, and the valid keys
        or the expected type.
    """
    values: dict = {}
    source = "defaults"
    if path:
        source = path
        values = _read_yaml(path)
        config = _build(Config, values, "", source)  # report file errors against the file
    keys = set(valid_keys())
    for key, value in overrides:
        if key not in keys:
            by_name = {k.split(".")[-1]: k for k in keys}
            close = difflib.get_close_matches(key.split(".")[-1], sorted(by_name), n=1, cutoff=0.75)
            hint = f" Did you mean {by_name[close[0]]}?" if close else ""
            raise ConfigError(f"override: unknown key '{key}'.{hint} Valid keys: {', '.join(sorted(keys))}")
        values = _merge(values, _nest(key, value))
        source = f"override {key}={value}"
        _build(Config, values, "", source)  # so the error names this override
    config = _build(Config, values, "", source)
    check_values(config)
    return config


def check_values(config: Config) -> None:
    """Checks ranges that types alone do not catch."""
    problems = _non_finite(config)
    if problems:  # NaN passes every comparison below (NaN <= 0 is false): stop here
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    d, m, t, e = config.data, config.model, config.train, config.evaluate
    if d.num_classes < 0 or d.num_classes > 254:
        problems.append(
            f"data.num_classes must be in 1..254 (labels are uint8, 255 is ignore), or 0 to follow the class table, "
            f"got {d.num_classes}"
        )
    if d.layout not in LAYOUTS:
        problems.append(f"data.layout must be one of {', '.join(LAYOUTS)}, got {d.layout!r}")
    if d.voc_train_list not in VOC_TRAIN_LISTS:
        problems.append(f"data.voc_train_list must be one of {', '.join(VOC_TRAIN_LISTS)}, got {d.voc_train_list!r}")
    if min(d.crop_size) < 1 or min(d.val_size) < 1 or min(d.base_size) < 1:
        problems.append("data.crop_size, data.val_size and data.base_size must be positive")
    if not 0 < d.ratio_range[0] <= d.ratio_range[1]:
        problems.append(f"data.ratio_range must satisfy 0 < low <= high, got {list(d.ratio_range)}")
    if not 0 < d.cat_max_ratio <= 1:
        problems.append(f"data.cat_max_ratio must be in (0, 1], got {d.cat_max_ratio}")
    if not 0 <= d.flip_prob <= 1:
        problems.append(f"data.flip_prob must be in [0, 1], got {d.flip_prob}")
    if m.backbone not in ("vgg16", "vgg19"):
        problems.append(f"model.backbone must be vgg16 or vgg19, got {m.backbone!r}")
    if not 0 <= m.dropout < 1:
        problems.append(f"model.dropout must be in [0, 1), got {m.dropout}")
    if m.fc_channels < 1:
        problems.append(f"model.fc_channels must be positive, got {m.fc_channels}")
    if not 0 < m.width <= 1:
        problems.append(f"model.width must be in (0, 1], got {m.width}")
    elif m.width != 1 and m.vgg_weights != "none":
        problems.append(f"model.width={m.width}: pretrained weights fit width 1 only; set model.vgg_weights=none")
    if m.crf_iterations < 0 or m.crf_test_iterations < 0:
        problems.append("model.crf_iterations and model.crf_test_iterations must not be negative")
    if min(m.crf_theta_alpha, m.crf_theta_beta, m.crf_theta_gamma) <= 0:
        problems.append("model.crf_theta_alpha, crf_theta_beta and crf_theta_gamma must be positive")
    if m.crf and t.jit_compile:
        problems.append(
            "train.jit_compile cannot compile the CRF stage (its lattice has data-dependent shapes): "
            "drop --jit_compile or model.crf"
        )
    if t.deterministic and t.jit_compile:
        problems.append(
            "train.deterministic cannot be combined with train.jit_compile: XLA has no deterministic max-pooling "
            "gradient (TensorFlow refuses it at the first step); drop one of them"
        )
    if e.compare_fcn and not m.crf:
        problems.append("evaluate.compare_fcn compares the FCN with its CRF stage: it needs model.crf")
    for name in ("batch_size", "max_steps", "summary_every", "val_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(t, name) < 1:
            problems.append(f"train.{name} must be at least 1, got {getattr(t, name)}")
    if not 0 <= t.seed <= MAX_SEED:
        problems.append(f"train.seed must be in 0..{MAX_SEED} (a 32-bit unsigned integer), got {t.seed}")
    if t.learning_rate <= 0:
        problems.append(f"train.learning_rate must be positive, got {t.learning_rate}")
    if t.strategy not in ("default", "mirrored", "multi_worker"):
        problems.append(f"train.strategy must be default, mirrored or multi_worker, got {t.strategy!r}")
    if t.mixed_precision not in ("float32", "bfloat16", "float16"):
        problems.append(f"train.mixed_precision must be float32, bfloat16 or float16, got {t.mixed_precision!r}")
    if t.cpu_devices < 0:
        problems.append(f"train.cpu_devices must not be negative, got {t.cpu_devices}")
    if t.weight_decay < 0 or t.val_images < 0:
        problems.append("train.weight_decay and train.val_images must not be negative")
    if e.split not in ("training", "validation"):
        problems.append(f"evaluate.split must be training or validation, got {e.split!r}")
    if isinstance(e.test_size, str):
        if e.test_size not in ("base_size", *OWN_SIZE):
            problems.append(
                f"evaluate.test_size must be a pair [long edge, short edge] like data.base_size, base_size (follow "
                f"data.base_size) or none (each image at its own size), got {e.test_size!r}"
            )
    elif tuple(e.test_size) != (0, 0) and min(e.test_size) < 1:
        problems.append(
            f"evaluate.test_size must be two positive sizes [long edge, short edge], or [0, 0] / none for each "
            f"image's own size, got {list(e.test_size)}"
        )
    if e.max_pixels < 1:
        problems.append(f"evaluate.max_pixels must be at least 1, got {e.max_pixels}")
    if min(e.scales) <= 0:
        problems.append(f"evaluate.scales must all be positive, got {list(e.scales)}")
    if e.visualize_images < 1:
        problems.append(f"evaluate.visualize_images must be at least 1, got {e.visualize_images}")
    problems += _folder_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _non_finite(config, prefix: str = "") -> list[str]:
    """One message per float value (alone or in a tuple) that is NaN or infinite."""
    problems = []
    for field in dataclasses.fields(config):
        key, value = prefix + field.name, getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            problems += _non_finite(value, key + ".")
            continue
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            problems.append(f"{key} must be a finite number, got {list(value) if isinstance(value, tuple) else value}")
    return problems


def _folder_problems(config: Config) -> list[str]:
    """Folders that can never be used: empty names, or an existing file in their path."""
    problems = []
    for key, path in (("logs_dir", config.logs_dir), ("data.data_dir", config.data.data_dir)):
        if not path.strip():
            problems.append(f"{key} must name a folder, got an empty value")
            continue
        blocker = _existing_non_folder(path)
        if blocker:
            what = "is a file" if blocker == path else f"lies under {blocker}, which is a file"
            problems.append(f"{key} {path} {what}, not a folder: choose another --{key.split('.')[-1]}")
    return problems


def _existing_non_folder(path: str) -> str:
    """``path`` or its nearest existing ancestor when that is not a folder, else ""."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return ""
        current = parent
    if os.path.isdir(current):
        return ""
    return path if current == os.path.abspath(path) else current


def to_dict(config) -> dict:
    """The config as plain nested dicts and lists (YAML- and JSON-ready)."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


def save_config(config: Config, directory: str) -> str:
    """Writes the resolved config as ``directory/config.yaml`` atomically.

    Returns:
      The path written.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "config.yaml")
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write("# Resolved configuration of this run; reuse it with --config.\n")
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
    os.replace(temporary, path)
    return path
