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
import os
import typing

import yaml

from fcn import backbones, config_values, datasets, schedules
from fcn.datasets import ade20k, voc
from fcn.errors import ConfigError

LAYOUTS = ("auto", *datasets.LAYOUTS)
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "bfloat16", "float16")
EVALUATE_MODES = ("whole", "slide")
OPTIMIZERS = ("adam", "sgd")  # fcn/optimizer.py builds each
SCHEDULES = tuple(schedules.SCHEDULES)
MAX_SEED = 2**32 - 1  # NumPy and Keras seeds are 32-bit unsigned integers
# Keys of earlier versions that still work (in files and --set), and the keys they now are.
KEY_ALIASES = {"model.vgg_weights": "model.pretrained_weights"}



@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data is and how training examples are made from it.

    Attributes:
      data_dir: the dataset's folder or a folder that contains it: an
        ADEChallengeData2016 folder, a VOC2012 folder (or VOCdevkit, or the
        folder holding it), or a folder dataset (``images/``, ``annotations/``,
        ``classes.csv``); see ``fcn/datasets/``.
      layout: ``auto`` (detected from ``data_dir``) or a name of
        ``fcn.datasets.LAYOUTS``: ``ade20k``, ``voc``, ``folder``.
      voc_train_list: the VOC list of the training split, in
        ``ImageSets/Segmentation``: ``train``, ``trainval``, or ``train_aug``
        (the SBD-augmented 10,582 images, annotations in ``SegmentationClassAug/``).
      synthetic: generate the synthetic sample dataset into ``data_dir`` when
        it holds none (the embedded default data, see ``fcn/datasets/sample.py``),
        in the layout of ``layout`` (ADE20K's for ``auto``).
      download: fetch and extract the official archive when ``data_dir``
        holds no dataset (ADE20K's zip, or VOC 2012's tar with ``layout: voc``).
      download_url: where the ADE20K zip is fetched from.
      download_sha1: its published SHA-1; a mismatch rejects the file.
      voc_download_url: where the VOC 2012 trainval tar is fetched from.
      voc_download_md5: its published MD5; a mismatch rejects the file.
      num_classes: the number of classes, which the dataset's class table
        decides (ADE20K 150, VOC 21, Cityscapes 19, a folder dataset its
        ``classes.csv``): 0 (the default) follows the table; any other value
        must equal it (a run is refused otherwise). For ADE20K it may select
        the first classes (values 1..num_classes).
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
    download_url: str = ade20k.URL
    download_sha1: str = ade20k.SHA1
    voc_download_url: str = voc.URL
    voc_download_md5: str = voc.MD5
    num_classes: int = 0
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
      backbone: a name of ``fcn.backbones.BACKBONES``: ``vgg16`` or
        ``vgg19`` (FCN.tensorflow's trunk: 16 convolutions, fc6/fc7 from its
        fc1/fc2).
      pretrained_weights: ``none``, ``imagenet``, ``imagenet_notop`` (Keras'
        ImageNet weights of the backbone) or a path to a Keras ``.h5`` or a
        MatConvNet ``imagenet-vgg-verydeep-16.mat`` / ``-19.mat`` of the
        backbone; a file whose layers do not all fit the model is refused.
        ``model.vgg_weights`` (and ``--vgg_weights``) is the same key.
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
    pretrained_weights: str = "imagenet"
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

    @property
    def vgg_weights(self) -> str:
        """The earlier name of ``pretrained_weights``."""
        return self.pretrained_weights


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation and its bookkeeping.

    Attributes:
      batch_size: global batch size.
      optimizer: ``adam`` (FCN.tensorflow's; TensorFlow's fused Adam kernel)
        or ``sgd`` (Keras' SGD, with ``momentum`` and ``nesterov``).
      momentum: SGD's momentum (0 = plain SGD).
      nesterov: Nesterov momentum for SGD.
      learning_rate: the base learning rate (the peak of the schedule).
      schedule: ``constant``, ``poly`` or ``cosine`` over ``max_steps``
        (``fcn/schedules.py``).
      poly_power: the power of the ``poly`` schedule.
      min_learning_rate: where ``poly`` and ``cosine`` end at ``max_steps``.
      warmup_steps: the rate rises linearly over these first steps (0: none).
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
      join_timeout: ``multi_worker``: seconds a worker waits for the whole
        cluster to start before it gives up.
      heartbeat_timeout: ``multi_worker``: seconds without a heartbeat after
        which a worker is declared lost and training stops.
    """

    batch_size: int = 16
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = False
    learning_rate: float = 1e-4
    schedule: str = "constant"
    poly_power: float = 0.9
    min_learning_rate: float = 0.0
    warmup_steps: int = 0
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
    join_timeout: float = 600.0
    heartbeat_timeout: float = 60.0


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
      mode: ``whole`` (the network sees each view whole) or ``slide``
        (overlapping ``window`` crops every ``stride`` pixels, their
        probabilities averaged: how Cityscapes is usually scored, and the
        network's memory bounded by the window).
      window: (height, width) of the sliding windows.
      stride: (rows, columns) between the sliding windows.
    """

    split: str = "validation"
    test_size: tuple[int, int] | str = "base_size"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    max_pixels: int = 100_000_000  # bench/memory.py: 3.2 GiB peak for the full model at 100 M pixels
    visualize_images: int = 4
    compare_fcn: bool = False
    mode: str = "whole"
    window: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)

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


def valid_keys() -> list[str]:
    """Every dotted key a config file or ``--set`` accepts."""
    return config_values.dotted_keys(Config)


def _unalias(values: dict, source: str, prefix: str = "") -> dict:
    """``values`` (nested) with the keys of ``KEY_ALIASES`` renamed; both spellings at once is an error."""
    if not isinstance(values, dict):
        return values
    out = {}
    for key, value in values.items():
        dotted = KEY_ALIASES.get(prefix + str(key), prefix + str(key))
        name = dotted.rsplit(".", 1)[-1]
        if name in out:
            raise ConfigError(f"{source}: {dotted} is given twice (once as {prefix + str(key)}); keep one")
        out[name] = _unalias(value, source, dotted + ".")
    return out


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
        raise ConfigError(f"config file {path} does not exist (configs/ holds {', '.join(sorted(_config_files()))})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    return loaded or {}


def _config_files() -> list[str]:
    """The files of the repository's ``configs/`` folder, for messages."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    return [name for name in os.listdir(folder) if name.endswith(".yaml")] if os.path.isdir(folder) else []


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
        values = _unalias(_read_yaml(path), source)
        config = config_values.build(Config, values, "", source)  # report file errors against the file
    keys = set(valid_keys())
    for key, value in overrides:
        key = KEY_ALIASES.get(key, key)
        if key not in keys:
            by_name = {k.split(".")[-1]: k for k in keys}
            close = difflib.get_close_matches(key.split(".")[-1], sorted(by_name), n=1, cutoff=0.75)
            hint = f" Did you mean {by_name[close[0]]}?" if close else ""
            raise ConfigError(f"override: unknown key '{key}'.{hint} Valid keys: {', '.join(sorted(keys))}")
        values = config_values.merge(values, config_values.nest(key, value))
        source = f"override {key}={value}"
        config_values.build(Config, values, "", source)  # so the error names this override
    config = config_values.build(Config, _expand_home(values), "", source)
    check_values(config)
    return config


# Keys that name files or folders: ``~`` in them is the home folder, as a shell would read it.
PATH_KEYS = ("logs_dir", "data.data_dir", "model.model_dir", "model.pretrained_weights", "train.init_from")


def _expand_home(values: dict) -> dict:
    """The nested config values with a leading ``~`` of every path key expanded to the home folder."""
    for key in PATH_KEYS:
        *parents, name = key.split(".")
        section = values
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and isinstance(section.get(name), str) and section[name].startswith("~"):
            section[name] = os.path.expanduser(section[name])
    return values


def check_values(config: Config) -> None:
    """Checks ranges that types alone do not catch."""
    problems = config_values.non_finite(config)
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
    if d.voc_train_list not in voc.TRAIN_LISTS:
        problems.append(f"data.voc_train_list must be one of {', '.join(voc.TRAIN_LISTS)}, got {d.voc_train_list!r}")
    if min(d.crop_size) < 1 or min(d.val_size) < 1 or min(d.base_size) < 1:
        problems.append("data.crop_size, data.val_size and data.base_size must be positive")
    if not 0 < d.ratio_range[0] <= d.ratio_range[1]:
        problems.append(f"data.ratio_range must satisfy 0 < low <= high, got {list(d.ratio_range)}")
    if not 0 < d.cat_max_ratio <= 1:
        problems.append(f"data.cat_max_ratio must be in (0, 1], got {d.cat_max_ratio}")
    if not 0 <= d.flip_prob <= 1:
        problems.append(f"data.flip_prob must be in [0, 1], got {d.flip_prob}")
    if m.backbone not in backbones.BACKBONES:
        problems.append(f"model.backbone must be one of {', '.join(backbones.BACKBONES)}, got {m.backbone!r}")
    if not 0 <= m.dropout < 1:
        problems.append(f"model.dropout must be in [0, 1), got {m.dropout}")
    if m.fc_channels < 1:
        problems.append(f"model.fc_channels must be positive, got {m.fc_channels}")
    if not 0 < m.width <= 1:
        problems.append(f"model.width must be in (0, 1], got {m.width}")
    elif m.width != 1 and m.pretrained_weights != "none":
        problems.append(f"model.width={m.width}: pretrained weights fit width 1 only; set model.pretrained_weights=none")
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
    if t.optimizer not in OPTIMIZERS:
        problems.append(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {t.optimizer!r}")
    if t.schedule not in SCHEDULES:
        problems.append(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {t.schedule!r}")
    if not 0 <= t.momentum < 1:
        problems.append(f"train.momentum must be in [0, 1), got {t.momentum}")
    if t.nesterov and not t.momentum:
        problems.append("train.nesterov needs a train.momentum above 0")
    if t.poly_power <= 0:
        problems.append(f"train.poly_power must be positive, got {t.poly_power}")
    if not 0 <= t.min_learning_rate <= t.learning_rate:
        problems.append(
            f"train.min_learning_rate must be in [0, train.learning_rate], got {t.min_learning_rate} "
            f"(learning rate {t.learning_rate})"
        )
    if t.warmup_steps < 0:
        problems.append(f"train.warmup_steps must not be negative, got {t.warmup_steps}")
    if t.strategy not in STRATEGIES:
        problems.append(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {t.strategy!r}")
    if t.mixed_precision not in PRECISIONS:
        problems.append(f"train.mixed_precision must be one of {', '.join(PRECISIONS)}, got {t.mixed_precision!r}")
    if not (t.join_timeout >= 1 and t.heartbeat_timeout >= 1):
        problems.append(f"train.join_timeout and train.heartbeat_timeout are seconds, at least 1: got {t.join_timeout}, {t.heartbeat_timeout}")
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
    problems += _size_problems(config)
    if e.mode not in EVALUATE_MODES:
        problems.append(f"evaluate.mode must be one of {', '.join(EVALUATE_MODES)}, got {e.mode!r}")
    if min(e.window) < 1 or min(e.stride) < 1:
        problems.append(f"evaluate.window and evaluate.stride must be positive, got {list(e.window)} and {list(e.stride)}")
    if e.visualize_images < 1:
        problems.append(f"evaluate.visualize_images must be at least 1, got {e.visualize_images}")
    problems += _folder_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


MAX_SCALE = 8.0  # evaluate.scales above this make views no image needs, at 64x the pixels
# The most pixels of one network input (a training crop, a validation batch image, a test view, a window): 0.4 G floats
# per channel of the first convolutions already; a larger one fails deep inside TensorFlow for want of memory.
MAX_INPUT_PIXELS = 100_000_000


def _size_problems(config: Config) -> list[str]:
    """Sizes whose tensors could never fit, refused with the limit named instead of failing inside TensorFlow."""
    d, e = config.data, config.evaluate
    problems = []
    if max(e.scales) > MAX_SCALE:
        problems.append(f"evaluate.scales must be at most {MAX_SCALE:g}, got {list(e.scales)}")
    sizes = [("data.crop_size", d.crop_size), ("data.val_size", d.val_size), ("evaluate.window", e.window)]
    test_size = None if isinstance(e.test_size, str) and e.test_size not in ("base_size", *OWN_SIZE) else (
        e.resolved_test_size(d.base_size))  # a malformed one is reported by check_values already
    if test_size is not None and all(isinstance(v, int) for v in test_size):
        scale = min(max(e.scales), MAX_SCALE)
        sizes.append((f"evaluate.test_size at scale {scale:g}", (test_size[0] * scale, test_size[1] * scale)))
    for key, (height, width) in sizes:
        if height * width > MAX_INPUT_PIXELS:
            problems.append(f"{key} makes network inputs of {height * width:,.0f} pixels, above the {MAX_INPUT_PIXELS:,} "
                            "that fit in memory: lower it")  # fmt: skip
    return problems


def _folder_problems(config: Config) -> list[str]:
    """Folders that can never be used: empty names, or an existing file in their path."""
    problems = []
    for key, path in (("logs_dir", config.logs_dir), ("data.data_dir", config.data.data_dir)):
        if not path.strip():
            problems.append(f"{key} must name a folder, got an empty value")
            continue
        blocker = config_values.existing_non_folder(path)
        if blocker:
            what = "is a file" if blocker == path else f"lies under {blocker}, which is a file"
            problems.append(f"{key} {path} {what}, not a folder: choose another --{key.split('.')[-1]}")
    return problems


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


def key_sources(path: str | None, overrides: typing.Sequence[tuple[str, typing.Any, str]]) -> dict[str, str]:
    """Dotted key -> what set it last: the config file's path or an override's label.

    Args:
      path: the ``--config`` file, or None.
      overrides: (dotted key, value, label) in the order ``load_config`` applies them.
    """
    sources: dict[str, str] = {}

    def walk(values, prefix):
        for name, value in values.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")
            else:
                sources[prefix + name] = path

    if path:
        walk(_unalias(_read_yaml(path), path), "")
    for key, _, label in overrides:
        sources[KEY_ALIASES.get(key, key)] = label
    return sources
