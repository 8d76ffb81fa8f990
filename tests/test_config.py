"""Tests of the configuration tree (fcn/config.py) and how FCN.py resolves it."""

import dataclasses
import os

import pytest
import yaml
from conftest import REPO

import FCN
from fcn import config as config_lib
from fcn import datasets, errors


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_the_full_ade20k_recipe():
    config = config_lib.Config()
    assert config.data.num_classes == 0  # follows the class table: ADE20K's 150 classes
    assert datasets.LAYOUTS["ade20k"].class_table("", config.data).num_classes == 150
    assert config.data.crop_size == (512, 512) and config.data.base_size == (2048, 512)
    assert config.data.ratio_range == (0.5, 2.0) and config.data.cat_max_ratio == 0.75
    assert config.model.vgg_weights == "imagenet" and config.model.fc_channels == 4096
    assert config.train.learning_rate == 1e-4
    assert config.data.download_sha1 == "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'batch_size'"):
        config.train.batch_size = 3  # frozen


def test_shipped_configs_load():
    full = config_lib.load_config(os.path.join(REPO, "configs", "ade20k.yaml"))
    assert full == config_lib.Config()
    sample = config_lib.load_config(os.path.join(REPO, "configs", "sample.yaml"))
    assert sample.data.synthetic and sample.model.vgg_weights == "none"
    assert sample.data.crop_size == (64, 64) and sample.train.batch_size == 4


def test_unknown_key_in_file_names_file_key_and_valid_keys(tmp_path):
    path = write(tmp_path, "train:\n  batch_sise: 4\n")
    with pytest.raises(errors.ConfigError) as raised:
        config_lib.load_config(path)
    message = str(raised.value)
    assert path in message and "train.batch_sise" in message and "train.batch_size" in message
    with pytest.raises(errors.ConfigError, match="unknown key 'optimiser'"):
        config_lib.load_config(write(tmp_path, "optimiser: sgd\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  batch_size: four\n", "train.batch_size"),
        ("train:\n  batch_size: true\n", "train.batch_size"),
        ("train:\n  learning_rate: fast\n", "train.learning_rate"),
        ("data:\n  photometric: maybe\n", "data.photometric"),
        ("data:\n  crop_size: [1, 2, 3]\n", "data.crop_size"),
        ("data:\n  crop_size: {h: 3}\n", "data.crop_size"),
        ("train: 5\n", "train"),
    ],
)
def test_wrong_types_fail_naming_the_key(tmp_path, text, key):
    with pytest.raises(errors.ConfigError) as raised:
        config_lib.load_config(write(tmp_path, text))
    assert key in str(raised.value)


def test_value_ranges_are_checked():
    with pytest.raises(errors.ConfigError, match="train.batch_size"):
        config_lib.load_config(None, [("train.batch_size", "0")])
    with pytest.raises(errors.ConfigError, match="data.ratio_range"):
        config_lib.load_config(None, [("data.ratio_range", "2,1")])
    with pytest.raises(errors.ConfigError, match="num_classes"):
        config_lib.load_config(None, [("data.num_classes", "255")])
    for width in ("0", "1.5"):
        with pytest.raises(config_lib.ConfigError, match=r"model.width must be in \(0, 1\]"):
            config_lib.load_config(None, [("model.width", width), ("model.vgg_weights", "none")])
    # A narrow trunk has no pretrained weights: asking for them is refused before any work.
    with pytest.raises(config_lib.ConfigError, match="model.width=0.5: pretrained weights fit width 1 only"):
        config_lib.load_config(None, [("model.width", "0.5")])
    assert config_lib.load_config(None, [("model.width", "0.5"), ("model.vgg_weights", "none")]).model.width == 0.5


def test_values_are_coerced_from_strings_and_yaml():
    config = config_lib.load_config(
        None, [("train.learning_rate", "1e-3"), ("data.crop_size", "384,512"), ("data.photometric", "false"), ("train.max_steps", "1_000")]
    )
    assert config.train.learning_rate == 1e-3 and isinstance(config.train.learning_rate, float)
    assert config.data.crop_size == (384, 512) and config.data.photometric is False
    assert config.train.max_steps == 1000
    assert config_lib.load_config(None, [("data.crop_size", "64")]).data.crop_size == (64, 64)


def test_override_precedence(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 4\n  learning_rate: 0.01\n  max_steps: 7\ndata:\n  crop_size: 96\n")
    parse = lambda *argv: FCN.resolve_config(FCN.build_parser().parse_args(list(argv)))
    # file over defaults
    config = parse("--config", path)
    assert (config.train.batch_size, config.train.learning_rate, config.train.max_steps) == (4, 0.01, 7)
    assert config.train.seed == 0 and config.data.crop_size == (96, 96)
    # --set over the file
    config = parse("--config", path, "--set", "train.batch_size=6", "--set", "train.seed=3")
    assert (config.train.batch_size, config.train.seed, config.train.max_steps) == (6, 3, 7)
    # dedicated flags over --set and the file, whatever their order on the line
    config = parse("--batch_size", "2", "--config", path, "--set", "train.batch_size=6", "--crop_size", "32,48", "--learning_rate", "0.5")
    assert config.train.batch_size == 2 and config.data.crop_size == (32, 48) and config.train.learning_rate == 0.5
    # FCN.tensorflow's flags map to their keys
    config = parse("--logs_dir", "runs/a", "--data_dir", "d", "--model_dir", "m", "--debug", "--max_steps", "9", "--vgg_weights", "none", "--download")
    assert (config.logs_dir, config.data.data_dir, config.model.model_dir) == ("runs/a", "d", "m")
    assert config.train.debug and config.train.max_steps == 9 and config.model.vgg_weights == "none" and config.data.download
    # a flag that is not given changes nothing
    assert parse("--config", path).train.debug is False


def test_bad_override_syntax_and_key():
    with pytest.raises(errors.ConfigError, match="KEY=VALUE"):
        config_lib.parse_override("train.batch_size")
    with pytest.raises(errors.ConfigError, match="Did you mean train.batch_size"):
        config_lib.load_config(None, [("train.bath_size", "3")])


def test_saved_config_round_trips(tmp_path):
    config = config_lib.load_config(None, [("data.crop_size", "33,65"), ("train.learning_rate", "3e-5"), ("model.crf", "true")])
    path = config_lib.save_config(config, str(tmp_path / "run"))
    assert os.path.basename(path) == "config.yaml" and not os.path.exists(path + ".tmp")
    assert yaml.safe_load(open(path))["data"]["crop_size"] == [33, 65]
    assert config_lib.load_config(path) == config


@pytest.mark.parametrize(
    "key, value",
    [("evaluate.scales", "nan"), ("evaluate.scales", "1.0,inf"), ("train.learning_rate", "nan"), ("model.dropout", "nan"),
     ("data.ratio_range", "nan,2"), ("data.cat_max_ratio", "-inf")],
)
def test_non_finite_floats_are_rejected(key, value):
    # NaN passes every range check written as a comparison (nan <= 0 is false).
    with pytest.raises(errors.ConfigError, match=rf"{key} must be a finite number"):
        config_lib.load_config(None, [(key, value)])


def test_non_finite_float_in_a_file_is_rejected(tmp_path):
    with pytest.raises(errors.ConfigError, match="evaluate.scales must be a finite number"):
        config_lib.load_config(write(tmp_path, "evaluate:\n  scales: [1.0, .nan]\n"))


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_outside_32_bits_is_rejected(seed):
    with pytest.raises(errors.ConfigError, match=r"train.seed must be in 0\.\.4294967295"):
        config_lib.load_config(None, [("train.seed", seed)])
    assert config_lib.load_config(None, [("train.seed", str(2**32 - 1))]).train.seed == 2**32 - 1


def test_folders_that_cannot_be_folders_are_rejected(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    with pytest.raises(errors.ConfigError, match="logs_dir must name a folder, got an empty value"):
        config_lib.load_config(None, [("logs_dir", "")])
    with pytest.raises(errors.ConfigError, match=rf"logs_dir {a_file} is a file, not a folder"):
        config_lib.load_config(None, [("logs_dir", str(a_file))])
    with pytest.raises(errors.ConfigError, match=rf"data.data_dir {a_file}/data lies under {a_file}, which is a file"):
        config_lib.load_config(None, [("data.data_dir", str(a_file / "data"))])
    assert a_file.read_text() == "keep"
    assert config_lib.load_config(None, [("logs_dir", str(tmp_path / "new" / "run"))]).logs_dir.endswith("run")


def test_unreadable_config_files_are_config_errors(tmp_path):
    with pytest.raises(errors.ConfigError, match=rf"--config {tmp_path} is a folder"):
        config_lib.load_config(str(tmp_path))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("logs_dir: logs/caf\xe9\n".encode("latin-1"))
    with pytest.raises(errors.ConfigError, match=r"latin1.yaml is not UTF-8 text.*save it as UTF-8"):
        config_lib.load_config(str(latin1))


def test_deterministic_xla_is_refused_before_any_work():
    # TensorFlow refuses XLA's max-pooling gradient under op determinism, at the first training step.
    with pytest.raises(errors.ConfigError, match="train.deterministic cannot be combined with train.jit_compile"):
        config_lib.load_config(None, [("train.deterministic", True), ("train.jit_compile", True)])


def test_renamed_keys_still_work_in_files_overrides_and_flags(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  vgg_weights: none\n")
    assert config_lib.load_config(str(path)).model.pretrained_weights == "none"
    assert config_lib.load_config(None, [("model.vgg_weights", "imagenet_notop")]).model.pretrained_weights == "imagenet_notop"
    import FCN

    args = FCN.build_parser().parse_args(["--vgg_weights", "none"])
    assert FCN.resolve_config(args).model.pretrained_weights == "none"
    both = tmp_path / "both.yaml"
    both.write_text("model:\n  vgg_weights: none\n  pretrained_weights: imagenet\n")
    with pytest.raises(config_lib.ConfigError, match="model.pretrained_weights is given twice"):
        config_lib.load_config(str(both))
    # A resolved config is written with the current name, and reads back the same.
    config = config_lib.load_config(str(path))
    config_lib.save_config(config, str(tmp_path / "run"))
    assert "pretrained_weights: none" in (tmp_path / "run" / "config.yaml").read_text()
    assert config_lib.load_config(str(tmp_path / "run" / "config.yaml")) == config
