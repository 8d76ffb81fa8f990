"""crfasrnn_keras's released FCN-8s + CRF-RNN: its geometry, its model file, its input convention.

The reference is crfasrnn_keras's model written out here in plain Keras from
its published definition (src/crfrnn_model.py, src/crfrnn_layer.py,
src/util.py of sadeepj/crfasrnn_keras), with fcn.crf's Gaussian filters
standing in for its C++ ``high_dim_filter`` op; its weights are saved the way
Keras 2's ``save_weights`` wrote the released file.
"""

import glob
import os
import re

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SAMPLE_ROOT, clear_argmax
from PIL import Image

from fcn import crf as crf_lib
from fcn import crfasrnn_keras, datasets, errors, inference, permutohedral, train_state
from fcn import model as model_lib
from fcn.datasets import voc
from fcn.datasets.classes import voc_colormap

NUM_CLASSES = 21
FC = 32  # fc6/fc7 width of the test file: the released 4096 makes fc6 alone a 411 MB matrix
IMAGE = sorted(glob.glob(os.path.join(SAMPLE_ROOT, "images", "validation", "*.jpg")))[0]
IMAGENET_MEANS_RGB = np.array([123.68, 116.779, 103.939], dtype=np.float32)  # util.py's _IMAGENET_MEANS


def high_dim_filter(values, lattice):
    """The C++ op's interface ((C, H, W) values), computed on fcn's permutohedral lattices.

    The op takes the (3, H, W) image and builds its lattice (of positions and
    colours, or of positions alone for the spatial kernel) at every call; here
    each lattice is built once by the caller (the same lattice each time).
    """
    values = tf.transpose(values, (1, 2, 0))[None]
    out = permutohedral.lattice_filter(lattice, values)
    return tf.transpose(out[0], (2, 0, 1))


class ReferenceCrfRnnLayer(keras.layers.Layer):
    """crfasrnn_keras's CrfRnnLayer: batch 1, (C, H, W) messages, ``U - compatibility (W_s S + W_b B)``."""

    def __init__(self, image_dims, num_classes, theta_alpha, theta_beta, theta_gamma, num_iterations, **kwargs):
        super().__init__(**kwargs)
        self.image_dims, self.num_classes = image_dims, num_classes
        self.theta_alpha, self.theta_beta, self.theta_gamma = theta_alpha, theta_beta, theta_gamma
        self.num_iterations = num_iterations

    def build(self, input_shape):
        c = self.num_classes
        self.spatial_ker_weights = self.add_weight(name="spatial_ker_weights", shape=(c, c), initializer="identity")
        self.bilateral_ker_weights = self.add_weight(name="bilateral_ker_weights", shape=(c, c), initializer="identity")
        self.compatibility_matrix = self.add_weight(
            name="compatibility_matrix", shape=(c, c), initializer=lambda shape, dtype=None: -np.eye(shape[0], dtype=np.float32)
        )

    def call(self, inputs):
        unaries = tf.transpose(inputs[0][0, :, :, :], perm=(2, 0, 1))
        rgb = tf.transpose(inputs[1][0, :, :, :], perm=(2, 0, 1))
        c, h, w = self.num_classes, self.image_dims[0], self.image_dims[1]
        lattice = crf_lib.build_image_lattice(tf.transpose(rgb, (1, 2, 0))[None], self.theta_alpha, self.theta_beta)
        positions = permutohedral.build_lattice(crf_lib.spatial_features(tf.transpose(rgb, (1, 2, 0))[None], self.theta_gamma))
        all_ones = np.ones((c, h, w), dtype=np.float32)
        spatial_norm_vals = high_dim_filter(all_ones, positions)
        bilateral_norm_vals = high_dim_filter(all_ones, lattice)
        q_values = unaries
        for _ in range(self.num_iterations):
            softmax_out = tf.nn.softmax(q_values, 0)
            spatial_out = high_dim_filter(softmax_out, positions) / spatial_norm_vals
            bilateral_out = high_dim_filter(softmax_out, lattice) / bilateral_norm_vals
            message_passing = tf.matmul(self.spatial_ker_weights, tf.reshape(spatial_out, (c, -1))) + tf.matmul(
                self.bilateral_ker_weights, tf.reshape(bilateral_out, (c, -1))
            )
            pairwise = tf.reshape(tf.matmul(self.compatibility_matrix, message_passing), (c, h, w))
            q_values = unaries - pairwise
        return tf.transpose(tf.reshape(q_values, (1, c, h, w)), perm=(0, 2, 3, 1))

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def reference_model(fc=FC):
    """crfasrnn_keras's get_crfrnn_model_def(), layer for layer, with Keras 2's automatic names for the unnamed layers."""
    from keras.layers import Add, Conv2D, Conv2DTranspose, Cropping2D, Dropout, Input, MaxPooling2D, ZeroPadding2D

    height, width = 500, 500
    img_input = Input(shape=(height, width, 3), name="input_1")
    x = ZeroPadding2D(padding=(100, 100), name="zero_padding2d_1")(img_input)
    x = Conv2D(64, (3, 3), activation="relu", padding="valid", name="conv1_1")(x)
    x = Conv2D(64, (3, 3), activation="relu", padding="same", name="conv1_2")(x)
    x = MaxPooling2D((2, 2), strides=(2, 2), name="pool1")(x)
    x = Conv2D(128, (3, 3), activation="relu", padding="same", name="conv2_1")(x)
    x = Conv2D(128, (3, 3), activation="relu", padding="same", name="conv2_2")(x)
    x = MaxPooling2D((2, 2), strides=(2, 2), name="pool2", padding="same")(x)
    x = Conv2D(256, (3, 3), activation="relu", padding="same", name="conv3_1")(x)
    x = Conv2D(256, (3, 3), activation="relu", padding="same", name="conv3_2")(x)
    x = Conv2D(256, (3, 3), activation="relu", padding="same", name="conv3_3")(x)
    x = MaxPooling2D((2, 2), strides=(2, 2), name="pool3", padding="same")(x)
    pool3 = x
    x = Conv2D(512, (3, 3), activation="relu", padding="same", name="conv4_1")(x)
    x = Conv2D(512, (3, 3), activation="relu", padding="same", name="conv4_2")(x)
    x = Conv2D(512, (3, 3), activation="relu", padding="same", name="conv4_3")(x)
    x = MaxPooling2D((2, 2), strides=(2, 2), name="pool4", padding="same")(x)
    pool4 = x
    x = Conv2D(512, (3, 3), activation="relu", padding="same", name="conv5_1")(x)
    x = Conv2D(512, (3, 3), activation="relu", padding="same", name="conv5_2")(x)
    x = Conv2D(512, (3, 3), activation="relu", padding="same", name="conv5_3")(x)
    x = MaxPooling2D((2, 2), strides=(2, 2), name="pool5", padding="same")(x)
    x = Conv2D(fc, (7, 7), activation="relu", padding="valid", name="fc6")(x)
    x = Dropout(0.5, name="dropout_1")(x)
    x = Conv2D(fc, (1, 1), activation="relu", padding="valid", name="fc7")(x)
    x = Dropout(0.5, name="dropout_2")(x)
    x = Conv2D(21, (1, 1), padding="valid", name="score-fr")(x)
    score2 = Conv2DTranspose(21, (4, 4), strides=2, name="score2")(x)
    score_pool4 = Conv2D(21, (1, 1), name="score-pool4")(pool4)
    score_pool4c = Cropping2D((5, 5), name="cropping2d_1")(score_pool4)
    score_fused = Add(name="add_1")([score2, score_pool4c])
    score4 = Conv2DTranspose(21, (4, 4), strides=2, name="score4", use_bias=False)(score_fused)
    score_pool3 = Conv2D(21, (1, 1), name="score-pool3")(pool3)
    score_pool3c = Cropping2D((9, 9), name="cropping2d_2")(score_pool3)
    score_final = Add(name="add_2")([score4, score_pool3c])
    upsample = Conv2DTranspose(21, (16, 16), strides=8, name="upsample", use_bias=False)(score_final)
    upscore = Cropping2D(((31, 37), (31, 37)), name="cropping2d_3")(upsample)
    output = ReferenceCrfRnnLayer(
        image_dims=(height, width), num_classes=21, theta_alpha=160.0, theta_beta=3.0, theta_gamma=3.0, num_iterations=10, name="crfrnn"
    )([upscore, img_input])
    return keras.Model(img_input, output, name="crfrnn_net")


def randomise(model, seed=0):
    """Random weights that keep the signal alive through the trunk and give logits of a few units."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = layer.get_weights()
        if not values:
            continue
        if layer.name == "crfrnn":
            c = NUM_CLASSES
            new = [3 * np.eye(c) + rng.normal(0, 0.3, (c, c)), 5 * np.eye(c) + rng.normal(0, 0.3, (c, c)),
                   -np.eye(c) + rng.normal(0, 0.2, (c, c))]  # not symmetric: a transposed matrix would show
        else:
            kernel = values[0]
            fan_in = np.prod(kernel.shape[:2]) * (kernel.shape[3] if "score2" in layer.name or layer.name in ("score4", "upsample") else kernel.shape[2])
            gain = 2.0 if layer.name.startswith(("conv", "fc")) else 0.5
            new = [rng.normal(0, np.sqrt(gain / fan_in), kernel.shape)] + [rng.normal(0, 0.1, v.shape) for v in values[1:]]
        layer.set_weights([np.asarray(v, np.float32) for v in new])


def write_keras2_weights(path, model, wrap=False):
    """What Keras 2's ``model.save_weights`` (or, with ``wrap``, ``model.save``) writes: every layer, weights named by variable."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if wrap else f
        root.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in model.layers])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.0.6"
        for layer in model.layers:
            group = root.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0".encode("utf8") for w in layer.weights]
            group.attrs["weight_names"] = names
            for name, value in zip(names, layer.get_weights()):
                group.create_dataset(name.decode(), data=value)


def util_preprocessed_image(file_name):
    """util.get_preprocessed_image of crfasrnn_keras, step by step."""
    image = Image.open(file_name)
    w, h = image.size
    ratio = min(500.0 / w, 500.0 / h)
    image = image.resize((int(w * ratio), int(h * ratio)), resample=Image.BILINEAR)
    im = np.array(image).astype(np.float32)[:, :, :3]
    im = im - IMAGENET_MEANS_RGB
    im = im[:, :, ::-1]  # to BGR
    img_h, img_w, _ = im.shape
    im = np.pad(im, pad_width=((0, 500 - img_h), (0, 500 - img_w), (0, 0)), mode="constant", constant_values=0)
    return np.expand_dims(im.astype(np.float32), 0), img_h, img_w, (w, h)


def write_released_file(folder) -> tuple:
    """(the reference model with random weights, the path of its crfrnn_keras_model.h5 written in ``folder``)."""
    keras.utils.set_random_seed(3)
    reference = reference_model()
    randomise(reference)
    path = str(folder / "crfrnn_keras_model.h5")
    write_keras2_weights(path, reference)
    return reference, path


@pytest.fixture(scope="module")
def released_file(tmp_path_factory):
    return write_released_file(tmp_path_factory.mktemp("crfasrnn"))


@pytest.fixture(scope="module")
def released_format(released_file):
    """(path of a crfrnn_keras_model.h5 with random weights, the reference's output on the fixture image, util's inputs)."""
    reference, path = released_file
    batch, img_h, img_w, size = util_preprocessed_image(IMAGE)
    probe = keras.Model(reference.input, [reference.get_layer("cropping2d_3").output, reference.output])
    unaries, refined = (np.asarray(t) for t in probe(batch))
    return path, unaries, refined, (batch, img_h, img_w, size)


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.slow  # 500 x 500 through two VGG16 trunks and two 10-iteration CRFs
def test_loaded_file_gives_the_reference_probabilities_and_labels(released_format):
    """Tolerance: 5e-5 on each probability (2.8e-6 measured); labels equal wherever the best class leads by more than 1e-3.

    A transposed or negated compatibility matrix, or a transposed spatial
    kernel weight matrix, changes probabilities by 0.8-1.0 and 22-40 % of the labels.
    """
    path, reference_unaries, reference_refined, (batch, img_h, img_w, size) = released_format
    net = crfasrnn_keras.load_crfasrnn_keras(path, num_classes=21)
    crf = net.get_layer("crfrnn")
    assert (crf.theta_alpha, crf.theta_beta, crf.theta_gamma, crf.num_iterations) == (160.0, 3.0, 3.0, 10)
    image = np.asarray(Image.open(IMAGE).convert("RGB"))
    inputs, valid = crfasrnn_keras.crfasrnn_keras_inputs(image)
    assert valid == (img_h, img_w) and (img_h, img_w) != (500, 500)  # the padding is exercised
    # The model's own preprocessing of our RGB input is util.py's array, bit for bit.
    np.testing.assert_array_equal(model_lib.VggPreprocess()(inputs[None]).numpy(), batch)
    probe = model_lib.with_fcn_output(net)
    unaries, refined = (np.asarray(t) for t in probe(inputs[None]))
    assert unaries.shape == refined.shape == (1, 500, 500, 21)
    spread = reference_unaries.std()
    assert 1 < spread < 50 and np.abs(reference_refined - reference_unaries).mean() > 0.5  # logits and the CRF both matter
    np.testing.assert_allclose(unaries, reference_unaries, rtol=0, atol=1e-4 * spread)
    probabilities, reference_probabilities = softmax(refined), softmax(reference_refined)
    assert np.abs(probabilities - reference_probabilities).max() < 5e-5
    labels, clear = clear_argmax(reference_probabilities)
    assert np.array_equal(probabilities.argmax(-1)[clear], labels[clear])
    assert len(np.unique(labels)) > 3 and (probabilities.argmax(-1) != softmax(unaries).argmax(-1)).mean() > 0.01
    # The label image as util.get_label_image makes it: argmax, crop, nearest-neighbour resize to the original size.
    label_image = crfasrnn_keras.crfasrnn_keras_labels(refined[0], valid, image.shape[:2])
    expected = Image.fromarray(reference_probabilities[0].argmax(-1).astype("uint8")[:img_h, :img_w], "P").resize(size)
    assert label_image.shape == image.shape[:2]
    agree = (label_image == np.asarray(expected)).mean()
    assert agree > 0.999


def tiny_layers(num_classes=5, fc=8):
    return {name: [np.full(shape, 0.01, np.float32) for shape in shapes] for name, shapes in crfasrnn_keras.crfasrnn_keras_layout(num_classes, fc).items()}


def write_layers(path, layers, names=None, wrap=False):
    """A Keras 2 weights file from {layer: [values]}, weight names as Keras 2 gives them."""
    default_names = {1: ["kernel"], 2: ["kernel", "bias"], 3: ["spatial_ker_weights", "bilateral_ker_weights", "compatibility_matrix"]}
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if wrap else f
        root.attrs["layer_names"] = np.array([b"input_1", *[n.encode() for n in layers]])
        root.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for layer, values in layers.items():
            group = root.create_group(layer)
            weight_names = [f"{layer}/{n}:0" for n in (names or {}).get(layer, default_names[len(values)])]
            group.attrs["weight_names"] = np.array([n.encode() for n in weight_names])
            for name, value in zip(weight_names, values):
                group.create_dataset(name, data=value)


def test_structure_is_checked_and_every_misfit_named(tmp_path):
    good = str(tmp_path / "good.h5")
    layers = tiny_layers()
    layers["crfrnn"] = [np.full((5, 5), v, np.float32) for v in (1.0, 2.0, 3.0)]
    write_layers(good, layers, wrap=True)  # Keras 2's model.save layout
    net = crfasrnn_keras.load_crfasrnn_keras(good)
    assert net.output.shape[-1] == 5 and net.get_layer("fc6").filters == 8
    crf = net.get_layer("crfrnn")
    assert [float(np.asarray(w)[0, 0]) for w in (crf.spatial_kernel_weights, crf.bilateral_kernel_weights, crf.compatibility)] == [1, 2, 3]
    # By name, not by position.
    swapped = str(tmp_path / "swapped.h5")
    write_layers(swapped, layers, names={"crfrnn": ["compatibility_matrix", "spatial_ker_weights", "bilateral_ker_weights"]})
    crf = crfasrnn_keras.load_crfasrnn_keras(swapped).get_layer("crfrnn")
    assert [float(np.asarray(w)[0, 0]) for w in (crf.spatial_kernel_weights, crf.bilateral_kernel_weights, crf.compatibility)] == [2, 3, 1]

    with pytest.raises(errors.WeightsError, match=r"fc width 8\); nothing was loaded:\n  layer score-fr has weights of shapes"):
        crfasrnn_keras.load_crfasrnn_keras(good, num_classes=21)  # not the 21 classes asked for
    broken = dict(layers)
    del broken["crfrnn"]
    broken["score-pool5"] = broken["score-pool4"]
    broken["score-pool3"] = [np.zeros((1, 1, 512, 5), np.float32), np.zeros(5, np.float32)]
    path = str(tmp_path / "broken.h5")
    write_layers(path, broken)
    with pytest.raises(errors.WeightsError) as raised:
        crfasrnn_keras.load_crfasrnn_keras(path)
    message = str(raised.value)
    assert message.startswith(path + " is not a crfasrnn_keras FCN-8s + CRF-RNN model file (5 classes, fc width 8)")
    assert [line.strip() for line in message.splitlines()[1:]] == [
        "layer score-pool5 of the file is not in the model",
        "layer score-pool3 has weights of shapes [(1, 1, 512, 5), (5,)], expected [(1, 1, 256, 5), (5,)]",
        "layer crfrnn is missing",
    ]
    misnamed = str(tmp_path / "misnamed.h5")
    write_layers(misnamed, layers, names={"crfrnn": ["a", "b", "c"]})
    with pytest.raises(errors.WeightsError, match=r"layer crfrnn holds weights \['crfrnn/a:0', 'crfrnn/b:0', 'crfrnn/c:0'\]"):
        crfasrnn_keras.load_crfasrnn_keras(misnamed)
    non_finite = dict(layers)
    non_finite["fc7"] = [np.full((1, 1, 8, 8), np.nan, np.float32), np.zeros(8, np.float32)]
    write_layers(str(tmp_path / "nan.h5"), non_finite)
    with pytest.raises(errors.WeightsError, match="layers fc7 hold NaN"):
        crfasrnn_keras.load_crfasrnn_keras(str(tmp_path / "nan.h5"))
    (tmp_path / "junk.h5").write_bytes(b"<html>not found</html>")
    with pytest.raises(errors.WeightsError, match="junk.h5: cannot be read as an HDF5"):
        crfasrnn_keras.load_crfasrnn_keras(str(tmp_path / "junk.h5"))
    with pytest.raises(errors.WeightsError, match="releases/download/v1.0/crfrnn_keras_model.h5"):
        crfasrnn_keras.load_crfasrnn_keras(str(tmp_path / "absent.h5"))


def test_reference_geometry_keeps_the_input_size_and_round_trips(tmp_path):
    net = crfasrnn_keras.build_crfasrnn_reference(4, fc_channels=8, crf=dict(num_iterations=1))
    for height, width in ((1, 1), (37, 91), (64, 33)):  # the reference's crops stay inside for any size
        assert tuple(net(np.zeros((1, height, width, 3), np.uint8)).shape) == (1, height, width, 4)
    rng = np.random.default_rng(0)
    net.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in net.get_weights()])
    images = rng.integers(0, 256, (1, 64, 80, 3)).astype(np.uint8)
    expected = net(images)
    clone = keras.Model.from_config(net.get_config())
    clone.set_weights(net.get_weights())
    np.testing.assert_array_equal(clone(images), expected)
    assert clone.get_layer("score-pool4c").offset == 5 and clone.get_layer("upscore").offset == 31


def test_pretrained_description():
    entry = crfasrnn_keras.PRETRAINED["crfasrnn_voc"]
    assert entry.url == "https://github.com/sadeepj/crfasrnn_keras/releases/download/v1.0/crfrnn_keras_model.h5"
    assert (entry.filename, entry.num_classes, entry.input_size, entry.crf_iterations) == ("crfrnn_keras_model.h5", 21, (500, 500), 10)


def test_fetch_pretrained_downloads_once_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import dataclasses
    import threading

    from test_model import _FileServer

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    served = tmp_path / "served.h5"
    write_layers(str(served), tiny_layers(num_classes=21))
    server = _FileServer({"crfrnn_keras_model.h5": served.read_bytes()})
    server.paths = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    cache = tmp_path / "cache"
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/v1.0/"
        entry = crfasrnn_keras.PRETRAINED["crfasrnn_voc"]
        monkeypatch.setitem(crfasrnn_keras.PRETRAINED, "crfasrnn_voc", dataclasses.replace(entry, url=base + "missing.h5"))
        with pytest.raises(errors.WeightsError, match="could not fetch the crfasrnn_voc model"):
            crfasrnn_keras.fetch_pretrained("crfasrnn_voc", str(cache), progress=False)
        assert not (cache / "crfrnn_keras_model.h5").exists()
        monkeypatch.setitem(crfasrnn_keras.PRETRAINED, "crfasrnn_voc", dataclasses.replace(entry, url=base + "crfrnn_keras_model.h5"))
        path = crfasrnn_keras.fetch_pretrained("crfasrnn_voc", str(cache), progress=False)
        assert path == str(cache / "crfrnn_keras_model.h5") and crfasrnn_keras.fetch_pretrained("crfasrnn_voc", str(cache), progress=False) == path
        assert server.paths == ["/v1.0/missing.h5", "/v1.0/crfrnn_keras_model.h5"]  # the second call used the cache
        assert crfasrnn_keras.load_crfasrnn_keras(path).output.shape[-1] == 21
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow  # 500 x 500 through VGG16 and a 10-iteration CRF, twice
def test_demo_command_fetches_the_released_file_and_writes_voc_labels(tmp_path, monkeypatch, capsys):
    """``--mode=predict --pretrained crfasrnn_voc``: the file comes from a server on 127.0.0.1 into the model
    cache; the label PNG is a VOC palette PNG of the image's size holding the model's labels, the mask is in
    the VOC colours."""
    import dataclasses
    import threading

    from test_model import _FileServer

    import FCN

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    served = tmp_path / "served.h5"
    keras.utils.set_random_seed(5)
    reference = reference_model()
    randomise(reference)
    write_keras2_weights(str(served), reference)
    server = _FileServer({"crfrnn_keras_model.h5": served.read_bytes()})
    server.paths = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        entry = crfasrnn_keras.PRETRAINED["crfasrnn_voc"]
        url = f"http://127.0.0.1:{server.server_address[1]}/v1.0/crfrnn_keras_model.h5"
        monkeypatch.setitem(crfasrnn_keras.PRETRAINED, "crfasrnn_voc", dataclasses.replace(entry, url=url))
        out, cache = tmp_path / "out", tmp_path / "cache"
        status = FCN.main(["--mode=predict", "--pretrained", "crfasrnn_voc", "--image", IMAGE, "--output", str(out),
                           "--model_dir", str(cache), "--no_progress"])
    finally:
        server.shutdown()
        server.server_close()
    assert status == FCN.EXIT_OK, capsys.readouterr().err
    assert server.paths == ["/v1.0/crfrnn_keras_model.h5"] and (cache / "crfrnn_keras_model.h5").is_file()
    # The model's labels, computed here from the same file, as crfasrnn_keras's demo makes them.
    image = np.asarray(Image.open(IMAGE).convert("RGB"))
    net = crfasrnn_keras.load_crfasrnn_keras(str(served), num_classes=NUM_CLASSES)
    inputs, valid = crfasrnn_keras.crfasrnn_keras_inputs(image)
    expected = crfasrnn_keras.crfasrnn_keras_labels(np.asarray(net(inputs[None], training=False))[0], valid, image.shape[:2])
    stem = os.path.splitext(os.path.basename(IMAGE))[0]
    written = Image.open(out / f"{stem}.png")
    assert written.mode == "P" and written.size == (image.shape[1], image.shape[0])
    np.testing.assert_array_equal(np.asarray(written), expected)
    assert len(np.unique(expected)) > 1  # the random weights separate several classes: a real comparison
    palette = np.asarray(written.getpalette()[: 3 * NUM_CLASSES]).reshape(-1, 3)
    np.testing.assert_array_equal(palette, voc_colormap()[:NUM_CLASSES])
    mask = np.asarray(Image.open(out / f"{stem}_mask.png").convert("RGB"))
    np.testing.assert_array_equal(mask, voc_colormap()[expected])
    # A name that is neither released nor a file: a message and status 1.
    assert FCN.main(["--mode=predict", "--pretrained", "nope", "--image", IMAGE, "--output", str(out), "--no_progress"]) == FCN.EXIT_FAILED
    assert "neither a released model (crfasrnn_voc) nor an existing file" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The release file's download: resumable, structure-checked, atomic.


def _serve(payload, monkeypatch):
    """A ZipServer of tests/test_download.py on 127.0.0.1 serving ``payload`` as the release file."""
    import dataclasses
    import threading

    from test_download import ZipServer

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = ZipServer(payload)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1.0/crfrnn_keras_model.h5"
    monkeypatch.setitem(crfasrnn_keras.PRETRAINED, "crfasrnn_voc", dataclasses.replace(crfasrnn_keras.PRETRAINED["crfasrnn_voc"], url=url))
    return server


def test_release_file_download_resumes_after_a_cut_and_ends_with_the_exact_bytes(tmp_path, monkeypatch):
    served = tmp_path / "served.h5"
    write_layers(str(served), tiny_layers(num_classes=21))
    payload = served.read_bytes()
    server = _serve(payload, monkeypatch)
    cache = tmp_path / "cache"
    final, partial = cache / "crfrnn_keras_model.h5", cache / "crfrnn_keras_model.h5.partial"
    try:
        server.mode = "cut"  # the full length announced, half the body sent, the connection closed
        with pytest.raises(errors.WeightsError, match="could not fetch the crfasrnn_voc model .* stopped after"):
            crfasrnn_keras.fetch_pretrained("crfasrnn_voc", str(cache), progress=False)
        assert not final.exists() and partial.read_bytes() == payload[: len(payload) // 2]
        server.mode = "normal"
        path = crfasrnn_keras.fetch_pretrained("crfasrnn_voc", str(cache), progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert server.ranges == [None, f"bytes={len(payload) // 2}-"] and server.statuses == [200, 206]
    assert path == str(final) and final.read_bytes() == payload and not partial.exists()
    assert crfasrnn_keras.load_crfasrnn_keras(path).output.shape[-1] == 21


@pytest.mark.parametrize("what", ["html", "misfit"])
def test_a_release_file_failing_the_structure_check_never_gets_its_final_name(tmp_path, monkeypatch, what):
    if what == "html":
        payload = b"<html>rate limited</html>"
    else:  # an HDF5 Keras file of another model: 5 classes, not the release's 21
        write_layers(str(tmp_path / "served.h5"), tiny_layers(num_classes=5))
        payload = (tmp_path / "served.h5").read_bytes()
    server = _serve(payload, monkeypatch)
    cache = tmp_path / "cache"
    try:
        with pytest.raises(errors.WeightsError, match="is not the released crfasrnn_voc model, so it was deleted") as raised:
            crfasrnn_keras.fetch_pretrained("crfasrnn_voc", str(cache), progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert ("score-fr" if what == "misfit" else "cannot be read as an HDF5") in str(raised.value)
    assert os.listdir(cache) == []  # neither the final name nor a .partial that a rerun would resume


# ---------------------------------------------------------------------------
# --mode=evaluate --pretrained on VOC.


def voc_sample(folder, num_val=2):

    return datasets.generate_sample_dataset(
        os.path.join(folder, "VOCdevkit", "VOC2012"), num_train=1, num_val=num_val, min_size=48, max_size=96,
        progress=False, layout="voc",
    )  # fmt: skip


def confusion(truth, predicted, num_classes=NUM_CLASSES):
    counted = truth != 255
    return np.bincount(truth[counted].astype(np.int64) * num_classes + predicted[counted], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def miou_and_accuracy(matrix):
    intersection = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    return float(np.mean(intersection[union > 0] / union[union > 0])), float(intersection.sum() / matrix.sum())


@pytest.mark.slow  # 500 x 500 through the reference and our model for each of 2 images
def test_evaluate_pretrained_gives_the_scores_of_the_reference_labels(released_file, tmp_path, capsys):
    """The numbers of ``--mode=evaluate --pretrained FILE`` on a VOC val split, against a confusion matrix computed
    here in numpy from crfasrnn_keras's own pipeline (util.py's preprocessing, the plain-Keras reference, argmax,
    crop, nearest resize) and the annotation PNGs at their own size, 255 left out."""
    import json

    import FCN

    reference, path = released_file
    root = voc_sample(str(tmp_path / "data"))
    out, saved = tmp_path / "eval", tmp_path / "saved"
    status = FCN.main(["--mode=evaluate", "--pretrained", path, "--data_dir", str(tmp_path / "data"), "--output", str(out),
                       "--save_predictions", str(saved), "--no_progress"])  # fmt: skip
    assert status == FCN.EXIT_OK, capsys.readouterr().err
    with open(out / "metrics.json") as f:
        reported = json.load(f)
    scored = np.load(out / "confusion_matrix.npy")
    stems = open(os.path.join(root, "ImageSets", "Segmentation", "val.txt")).read().split()
    expected, ours, agree, pixels = 0, 0, 0, 0
    for stem in stems:
        truth = np.asarray(Image.open(os.path.join(root, "SegmentationClass", stem + ".png")))  # palette indices
        batch, img_h, img_w, size = util_preprocessed_image(os.path.join(root, "JPEGImages", stem + ".jpg"))
        assert (img_h, img_w) != (500, 500) and size != (img_w, img_h)  # resized and padded
        probabilities = np.asarray(reference(batch))[0]
        labels = np.asarray(Image.fromarray(probabilities.argmax(-1).astype(np.uint8)[:img_h, :img_w], "P").resize(size))
        predicted = np.asarray(Image.open(saved / f"{stem}.png"))  # the labels evaluate scored (VOC values = train ids)
        assert labels.shape == predicted.shape == truth.shape
        expected = expected + confusion(truth, labels)
        ours = ours + confusion(truth, predicted)
        agree += (labels == predicted).sum()
        pixels += labels.size
    # The scoring: the matrix evaluate reports is that of the labels it wrote, 255 excluded, at full resolution.
    np.testing.assert_array_equal(scored, ours)
    truth_values = np.concatenate([np.asarray(Image.open(os.path.join(root, "SegmentationClass", s + ".png"))).ravel() for s in stems])
    assert (truth_values == 255).any() and scored.sum() == (truth_values != 255).sum()
    # The model and its protocol: those labels are the reference's, and so are the numbers.
    assert agree / pixels > 0.999
    miou, accuracy = miou_and_accuracy(expected)
    assert abs(reported["pixel_accuracy"] - accuracy) <= 1 - agree / pixels + 1e-12
    assert abs(reported["mean_iou"] - miou) < 2e-3
    assert len(np.unique(np.nonzero(expected)[1])) > 2 and 0 < accuracy < 1  # several classes predicted, some right
    assert reported["checkpoint"] == path and reported["images"] == len(stems) == 2
    assert reported["test_size"] == [500, 500] and reported["crf"] and reported["crf_iterations"] == 10
    assert list(reported["per_class_iou"]) == list(voc.CLASS_NAMES)


def test_evaluate_pretrained_refuses_a_dataset_of_other_classes(tmp_path, capsys):
    import FCN

    out = tmp_path / "eval"
    status = FCN.main(["--mode=evaluate", "--pretrained", "crfasrnn_voc", "--data_dir", SAMPLE_ROOT, "--output", str(out),
                       "--model_dir", str(tmp_path / "cache"), "--no_progress"])  # fmt: skip
    assert status == FCN.EXIT_USAGE
    assert re.search(r"--pretrained crfasrnn_voc predicts 21 classes .* but .*ADEChallengeData2016 has 150 classes",
                     capsys.readouterr().err)
    assert not (tmp_path / "cache").exists() and not out.exists()  # refused before fetching or writing anything
    assert FCN.main(["--mode=export", "--pretrained", "crfasrnn_voc"]) == FCN.EXIT_USAGE
    assert FCN.main(["--mode=evaluate", "--pretrained", "crfasrnn_voc", "--checkpoint", "logs/x"]) == FCN.EXIT_USAGE
    assert "pass one of them" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# --init_from crfrnn_keras_model.h5: this project's FCN-8s + CRF-RNN starts from the file.


def file_arrays(path):
    """layer -> {weight name: value} read with h5py as Keras 2 wrote them (``conv1_1/kernel:0``)."""
    with h5py.File(path, "r") as f:
        text = lambda name: name.decode() if isinstance(name, bytes) else str(name)  # noqa: E731
        return {layer: {text(name).split("/")[-1].split(":")[0]: np.asarray(group[text(name)])
                        for name in group.attrs["weight_names"]}
                for layer, group in f.items() if len(group.attrs["weight_names"])}  # fmt: skip


def expected_fcn8s_weights(path):
    """Our layer -> its weights taken from the file: renamed, score2's bias moved to score_pool4 (both are summed at
    fuse_pool4), the skip kernels divided by the 0.01 / 1e-4 scaling of pool4 / pool3."""
    a = file_arrays(path)
    expected = {f"block{b}_conv{i}": [a[f"conv{b}_{i}"]["kernel"], a[f"conv{b}_{i}"]["bias"]]
                for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)}  # fmt: skip
    for ours, theirs in (("fc6", "fc6"), ("fc7", "fc7"), ("score_fr", "score-fr")):
        expected[ours] = [a[theirs]["kernel"], a[theirs]["bias"]]
    expected["upscore2"] = [a["score2"]["kernel"]]
    expected["score_pool4"] = [a["score-pool4"]["kernel"] * 100, a["score-pool4"]["bias"] + a["score2"]["bias"]]
    expected["upscore_pool4"] = [a["score4"]["kernel"]]
    expected["score_pool3"] = [a["score-pool3"]["kernel"] * 10_000, a["score-pool3"]["bias"]]
    crf = a["crfrnn"]
    expected["crf"] = [crf["spatial_ker_weights"], crf["bilateral_ker_weights"], crf["compatibility_matrix"]]
    return expected


def assert_weights(model, expected):
    for name, values in expected.items():
        found = model.get_layer(name).get_weights()
        assert len(found) == len(values), name
        for got, want in zip(found, values):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max(), err_msg=name)


def test_init_from_the_release_file_starts_fcn8s_and_crf_from_its_weights(released_file, tmp_path):


    _, path = released_file
    expected = expected_fcn8s_weights(path)
    assert not np.allclose(expected["crf"][2], expected["crf"][2].T)  # a transposed matrix would show
    net = model_lib.build_fcn8s(NUM_CLASSES, fc_channels=FC, crf=dict(num_iterations=1))
    notes = []
    train_state._initialise_from(net, path, notes.append)
    assert_weights(net, expected)
    assert notes[0] == f"initialised from {path} (crfasrnn_keras's FCN-8s + CRF-RNN)"
    assert any(n.strip().startswith("upsample: not used") for n in notes)  # the random file's upsample is not bilinear
    # The bias fold is exact: fuse_pool4 = upscore2(score_fr) + score2's bias + score-pool4(pool4) at every pixel.
    images = np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3)).astype(np.uint8)
    probe = keras.Model(net.input, [net.get_layer(n).output for n in ("fuse_pool4", "block4_pool", "upscore2")])
    fuse, pool4, upscore2 = (np.asarray(t, np.float64) for t in probe(images))
    a = file_arrays(path)
    by_hand = upscore2 + a["score2"]["bias"] + pool4 @ a["score-pool4"]["kernel"][0, 0] + a["score-pool4"]["bias"]
    np.testing.assert_allclose(fuse, by_hand, rtol=0, atol=1e-4 * np.abs(by_hand).max())


@pytest.mark.slow  # a training step of VGG16 + CRF-RNN, a checkpoint of 15 M weights and Adam's slots
def test_training_with_init_from_the_release_file_starts_from_its_weights(released_file, tmp_path):
    """One step at a learning rate of 1e-30 from the file: the run's weights are the file's."""
    from test_train import tiny_config, train_here


    _, path = released_file
    expected = expected_fcn8s_weights(path)
    root = voc_sample(str(tmp_path / "data"), num_val=1)
    config = tiny_config(tmp_path / "run", root, ("data.layout", "voc"), ("data.num_classes", 0), ("model.fc_channels", FC),
                         ("model.width", 1.0), ("model.crf", True), ("model.crf_iterations", 1), ("train.max_steps", 1), ("train.init_from", path),
                         ("train.learning_rate", 1e-30), ("data.val_size", "32"), ("train.val_images", 1))  # fmt: skip
    result = train_here(config, root)
    assert result.step == 1
    trained, _ = inference.restore_model(config)
    assert_weights(trained, expected)


def test_init_from_refuses_a_file_that_does_not_fit_naming_the_layers(tmp_path):
    from fcn import train

    path = str(tmp_path / "crfrnn_keras_model.h5")
    layers = tiny_layers(num_classes=5, fc=8)
    layers["upsample"] = [np.asarray(model_lib.BilinearUpsampling()((16, 16, 5, 5)))]
    write_layers(path, layers)
    net = model_lib.build_fcn8s(5, fc_channels=8)  # fits; bilinear upsample carries over; no CRF stage
    notes = crfasrnn_keras.load_crfasrnn_keras_into_fcn8s(net, path)
    assert not any(n.startswith("upsample") for n in notes) and "crfrnn: not used (model.crf is off)" in notes
    np.testing.assert_array_equal(net.get_layer("fc7").get_weights()[0], layers["fc7"][0])

    for model, lines in (
        (model_lib.build_fcn8s(21, fc_channels=8), ["layer score-fr has weights of shapes [(1, 1, 8, 5), (5,)], the model "
                                                     "needs [(1, 1, 8, 21), (21,)]", "the file scores 5 classes"]),
        (model_lib.build_fcn8s(5, fc_channels=16), ["layer fc6 has weights of shapes [(7, 7, 512, 8), (8,)], the model "
                                                     "needs [(7, 7, 512, 16), (16,)]", "set model.fc_channels=8"]),
        (model_lib.build_fcn8s(5, fc_channels=8, backbone="vgg19"), ["model.backbone=vgg19: the file has VGG16's conv1_1 .. "
                                                                     "conv5_3, nothing for block3_conv4, block4_conv4, block5_conv4"]),
    ):  # fmt: skip
        before = [w.copy() for w in model.get_weights()]
        with pytest.raises(train.TrainingError, match=re.escape(f"--init_from {path}: {path} does not fit this FCN-8s; nothing was loaded")) as raised:
            train_state._initialise_from(model, path, print)
        for line in lines:
            assert line in str(raised.value)
        assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # nothing copied
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(train.TrainingError, match="junk.h5: cannot be read as an HDF5"):
        train_state._initialise_from(model_lib.build_fcn8s(5, fc_channels=8), str(tmp_path / "junk.h5"), print)
