"""Optimizers and learning-rate schedules (train.optimizer, train.schedule), and the recipe configs."""

import math
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from test_train import checkpoint_weights, latest, read_events, tiny_config, train_here

from fcn import checkpoints, datasets, schedules, summaries
from fcn import config as config_lib
from fcn.errors import ConfigError
from fcn.optimizer import FusedAdam, make_optimizer

LEARNING_RATE = summaries.scalar_tag("learning_rate")


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample") / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=16, num_val=4, progress=False)
    return root


def train_config(**values):
    return config_lib.load_config(None, [(f"train.{key}", value) for key, value in values.items()]).train


# ---------------------------------------------------------------------------
# Schedules against their formulas, written out here.


def test_constant_is_the_base_rate_at_every_step():
    train = train_config(learning_rate=3e-4, max_steps=100)
    assert [schedules.learning_rate(train, s) for s in (1, 2, 50, 100)] == [3e-4] * 4


def test_poly_follows_mmsegmentations_formula():
    # base 0.01, min 1e-4, power 0.9, 80k steps: step s uses the rate after s - 1 iterations.
    train = train_config(schedule="poly", learning_rate=0.01, min_learning_rate=1e-4, poly_power=0.9, max_steps=80000)
    expected = {1: 0.01, 40001: (0.01 - 1e-4) * 0.5**0.9 + 1e-4, 80000: (0.01 - 1e-4) * (1 / 80000) ** 0.9 + 1e-4}
    for step, rate in expected.items():
        assert schedules.learning_rate(train, step) == pytest.approx(rate, rel=1e-12), step
    assert expected[40001] == pytest.approx(0.0054053, rel=1e-4)  # 0.0099 x 0.5^0.9 (0.535887) + 0.0001


def test_cosine_reaches_half_way_and_the_minimum():
    train = train_config(schedule="cosine", learning_rate=0.1, min_learning_rate=0.0, max_steps=10)
    rates = [schedules.learning_rate(train, s) for s in range(1, 11)]
    assert rates[0] == 0.1
    assert rates[5] == pytest.approx(0.05, abs=1e-15)  # step 6: 5 of 10 done, cos(pi / 2) = 0
    assert rates[9] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.9)), rel=1e-12)
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_linear_warmup_scales_the_first_steps():
    train = train_config(schedule="poly", learning_rate=0.01, poly_power=1.0, warmup_steps=4, max_steps=100)
    # Power 1: after d steps the schedule is 0.01 * (1 - d / 100); warm-up multiplies by (d + 1) / 4.
    expected = [0.01 * 1.00 * 0.25, 0.01 * 0.99 * 0.5, 0.01 * 0.98 * 0.75, 0.01 * 0.97, 0.01 * 0.96]
    np.testing.assert_allclose([schedules.learning_rate(train, s) for s in range(1, 6)], expected, rtol=1e-12)


@pytest.mark.parametrize(
    "key, value, message",
    [("optimizer", "rmsprop", "train.optimizer must be one of adam, sgd"),
     ("schedule", "step", "train.schedule must be one of constant, poly, cosine"),
     ("momentum", "1.5", "train.momentum must be in"),
     ("warmup_steps", "-1", "train.warmup_steps must not be negative"),
     ("min_learning_rate", "1", "train.min_learning_rate must be in")],
)
def test_bad_optimizer_and_schedule_values_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        train_config(**{key: value})


# ---------------------------------------------------------------------------
# SGD against NumPy.


def numpy_sgd(weights, gradients, rates, momentum, nesterov):
    """SGD with momentum as Keras (and TensorFlow 1's MomentumOptimizer) define it, in float64."""
    weights = [np.asarray(w, np.float64) for w in weights]
    velocity = [np.zeros_like(w) for w in weights]
    for rate, step in zip(rates, gradients):
        for i, g in enumerate(step):
            velocity[i] = momentum * velocity[i] - rate * g
            weights[i] = weights[i] + (momentum * velocity[i] - rate * g if nesterov else velocity[i])
    return weights, velocity


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_with_momentum_follows_numpy(nesterov):
    rng = np.random.default_rng(7)
    shapes = [(3, 3, 2, 4), (4,)]
    initial = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    gradients = [[rng.normal(size=shape).astype(np.float32) for shape in shapes] for _ in range(4)]
    train = train_config(optimizer="sgd", momentum=0.9, nesterov=nesterov, schedule="poly", learning_rate=0.1, max_steps=4)
    optimizer = make_optimizer(train)
    assert isinstance(optimizer, keras.optimizers.SGD)
    variables = [keras.Variable(w) for w in initial]
    optimizer.build(variables)
    rates = [schedules.learning_rate(train, s) for s in range(1, 5)]
    for rate, step in zip(rates, gradients):
        optimizer.learning_rate.assign(rate)
        optimizer.apply_gradients(zip([tf.constant(g) for g in step], variables))
    expected, velocity = numpy_sgd(initial, gradients, rates, 0.9, nesterov)
    for i in range(len(shapes)):
        # Four steps of ~0.1 move the weights by ~1: a wrong formula is off by far more than 1e-5.
        np.testing.assert_allclose(variables[i].numpy(), expected[i], rtol=0, atol=1e-5)
        np.testing.assert_allclose(optimizer.momentums[i].numpy(), velocity[i], rtol=0, atol=1e-5)


def test_adam_stays_the_fused_adam_by_default():
    assert isinstance(make_optimizer(train_config()), FusedAdam)


def test_every_optimizer_the_config_accepts_is_built():
    built = {name: type(make_optimizer(train_config(optimizer=name))) for name in config_lib.OPTIMIZERS}
    assert built == {"adam": FusedAdam, "sgd": keras.optimizers.SGD}


# ---------------------------------------------------------------------------
# A run: the rate TensorBoard shows, across a resume; SGD's momentum resumes.

SGD_POLY = [("train.optimizer", "sgd"), ("train.momentum", 0.9), ("train.schedule", "poly"), ("train.learning_rate", 0.01),
            ("train.min_learning_rate", 1e-4), ("train.warmup_steps", 2), ("train.summary_every", 1),
            ("train.val_every", 100000), ("train.checkpoint_every", 1), ("train.keep_checkpoints", 10),
            ("train.deterministic", True), ("train.max_steps", 6)]


def expected_rate(step):
    """Warm-up over 2 steps, then poly (power 0.9) from 0.01 to 1e-4 over 6 steps."""
    done = step - 1
    return ((0.01 - 1e-4) * (1 - done / 6) ** 0.9 + 1e-4) * min(1.0, (done + 1) / 2)


@pytest.mark.slow
def test_poly_schedule_and_sgd_momentum_resume_exactly(tmp_path, sample_root):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train_here(tiny_config(whole, sample_root, *SGD_POLY), sample_root).status == "finished"
    rates = {step: float(value) for step, _, value in read_events(whole / "train")[LEARNING_RATE]}
    assert sorted(rates) == [1, 2, 3, 4, 5, 6]
    for step, value in rates.items():
        assert value == pytest.approx(expected_rate(step), rel=1e-6), step
    # The same run killed after its checkpoint of step 3: its folder without what came later.
    shutil.copytree(whole, split)
    for step in (4, 5, 6):
        checkpoints.discard(str(split / checkpoints.CHECKPOINTS_DIR), step)
    shutil.rmtree(split / "train")
    resumed = train_here(tiny_config(split, sample_root, *SGD_POLY), sample_root)
    assert resumed.step == 6
    rates = {step: float(value) for step, _, value in read_events(split / "train")[LEARNING_RATE]}
    assert sorted(rates) == [4, 5, 6]
    for step, value in rates.items():
        assert value == pytest.approx(expected_rate(step), rel=1e-6), step
    # The momentum slots were saved and restored: the resumed run ends on the uninterrupted run's weights.
    whole_weights, split_weights = checkpoint_weights(latest(whole)), checkpoint_weights(latest(split))
    # One momentum per trainable variable (those under optimizer/_trainable_variables are the model's weights).
    slots = [name for name in whole_weights if name.startswith("optimizer/_variables/")]
    trainable = [name for name in whole_weights if name.startswith("optimizer/_trainable_variables/")]
    assert len(trainable) > 20 and len(slots) == len(trainable)
    assert whole_weights.keys() == split_weights.keys()
    for name in whole_weights:
        np.testing.assert_array_equal(split_weights[name], whole_weights[name], err_msg=name)


# ---------------------------------------------------------------------------
# The recipe configs.


def test_recipe_configs_resolve_to_their_published_settings():
    sgd = config_lib.load_config(os.path.join(REPO, "configs", "ade20k_sgd_poly.yaml")).train
    assert (sgd.optimizer, sgd.learning_rate, sgd.momentum, sgd.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
    assert (sgd.schedule, sgd.poly_power, sgd.min_learning_rate, sgd.max_steps, sgd.batch_size) == ("poly", 0.9, 1e-4, 80000, 16)
    adam = config_lib.load_config(os.path.join(REPO, "configs", "ade20k.yaml")).train
    assert (adam.optimizer, adam.learning_rate, adam.schedule) == ("adam", 1e-4, "constant")
