"""Tests of FCN-8s (fcn/model.py): architecture, sizes, initialisation; VGG16 weight files (fcn/weights.py)."""

import hashlib
import http.server
import os
import threading

import h5py
import keras
import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from conftest import SAMPLE_ROOT, narrow_fcn8s

from fcn import backbones, checkpoints, datasets, weights
from fcn import model as model_lib
from fcn.datasets import decode

# FCN-8s for 150 classes: VGG16 convs 14,714,688 + fc6 102,764,544 + fc7 16,781,312
# + score_fr 614,550 + score_pool4 76,950 + score_pool3 38,550 + upscore2 and upscore_pool4
# 2 x 360,000. upscore8 is fixed bilinear upsampling without weights (the reference's frozen
# 16x16x150x150 kernel, 5,760,000 values, is zero across channels).
FCN8S_TRAINABLE_PARAMETERS = 135_710_594
FCN8S_FROZEN_PARAMETERS = 0


def pretrained(source, fc_channels=backbones.VGG_FC_CHANNELS, model_dir=None):
    """A 150-class FCN-8s built, then given the VGG16 weights of ``source``."""
    fcn = model_lib.build_fcn8s(150, fc_channels=fc_channels)
    weights.load_vgg_weights(fcn, source, model_dir)
    return fcn


def relative_error(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def keras_vgg16():
    keras.utils.set_random_seed(7)
    return keras.applications.VGG16(weights=None, include_top=True)


@pytest.fixture(scope="module")
def sample_crop():
    image, _ = decode.load_example(*datasets.list_split(SAMPLE_ROOT, "validation").pairs[0])
    return image[100:324, 200:424]  # (224, 224, 3) uint8, a real ADE20K image


@pytest.fixture(scope="module")
def keras_reference(keras_vgg16, sample_crop):
    """block5_pool and fc2 of Keras' VGG16 on the crop, with Keras' own preprocessing."""
    probe = keras.Model(keras_vgg16.input, [keras_vgg16.get_layer("block5_pool").output, keras_vgg16.get_layer("fc2").output])
    batch = keras.applications.vgg16.preprocess_input(sample_crop[None].astype(np.float32))
    pool5, fc2 = probe(batch)
    assert np.count_nonzero(fc2) > 100  # random weights still give a non-trivial signal
    return pool5.numpy(), fc2.numpy()


def fcn_activations(fcn, image):
    probe = keras.Model(fcn.input, [fcn.get_layer("block5_pool").output, fcn.get_layer("fc7").output])
    pool5, fc7 = probe(image[None])
    return pool5.numpy(), fc7.numpy()


def assert_matches_keras(fcn, sample_crop, keras_reference):
    pool5, fc7 = fcn_activations(fcn, sample_crop)
    reference_pool5, reference_fc2 = keras_reference
    assert pool5.shape == reference_pool5.shape == (1, 7, 7, 512)
    assert relative_error(pool5, reference_pool5) < 1e-5
    # fc6 is a 7x7 convolution: at the centre of the 7x7 pool5 map it sees exactly what fc1 saw.
    assert relative_error(fc7[:, 3, 3, :], reference_fc2) < 1e-5


@pytest.mark.slow  # Keras' full VGG16 (138 M weights) written to a file and read back
def test_keras3_weights_file_gives_keras_activations(tmp_path, keras_vgg16, sample_crop, keras_reference):
    path = str(tmp_path / "vgg16.weights.h5")
    keras_vgg16.save_weights(path)
    fcn = pretrained(path)
    assert_matches_keras(fcn, sample_crop, keras_reference)


def write_legacy_h5(path, vgg16, include_top=True):
    """Writes weights in the layout of Keras' published vgg16_weights_tf_dim_ordering_tf_kernels.h5."""
    names = [layer.name for layer in vgg16.layers if layer.weights and (include_top or not layer.name.startswith(("fc", "pred")))]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            group = f.create_group(name)
            kernel, bias = vgg16.get_layer(name).get_weights()
            weight_names = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
            group.attrs["weight_names"] = np.array(weight_names)
            group.create_dataset(weight_names[0].decode(), data=kernel)
            group.create_dataset(weight_names[1].decode(), data=bias)


@pytest.mark.slow  # Keras' full VGG16 (138 M weights) written to a file and read back
def test_legacy_keras_h5_gives_keras_activations(tmp_path, keras_vgg16, sample_crop, keras_reference):
    path = str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    write_legacy_h5(path, keras_vgg16)
    fcn = pretrained(path)
    assert_matches_keras(fcn, sample_crop, keras_reference)


def write_matconvnet(path, vgg16):
    """Writes the VGG16 weights in the structure of MatConvNet's imagenet-vgg-verydeep-16.mat."""
    entries = []
    for layer in vgg16.layers:
        if not layer.weights or layer.name == "predictions":
            continue
        kernel, bias = layer.get_weights()
        if layer.name == "fc1":
            kernel, name = kernel.reshape(7, 7, 512, 4096), "fc6"
        elif layer.name == "fc2":
            kernel, name = kernel.reshape(1, 1, 4096, 4096), "fc7"
        else:
            block, conv = layer.name[5], layer.name[-1]
            name = f"conv{block}_{conv}"
            if name == "conv1_1":
                kernel = kernel[:, :, ::-1, :]  # MatConvNet's VGG reads RGB; Keras' reads BGR
        weights = np.empty((1, 2), dtype=object)
        weights[0, 0] = np.transpose(kernel, (1, 0, 2, 3))  # MatConvNet: (W, H, in, out)
        weights[0, 1] = bias.reshape(-1, 1)
        entries.append({"name": name, "type": "conv", "weights": weights})
        entries.append({"name": "relu" + name[4:] if name.startswith("conv") else "relu", "type": "relu", "weights": np.empty((1, 0), dtype=object)})
    layers = np.empty((1, len(entries)), dtype=object)
    for i, entry in enumerate(entries):
        layers[0, i] = entry
    normalization = {"averageImage": np.array([123.68, 116.779, 103.939]).reshape(1, 1, 3)}
    scipy.io.savemat(path, {"layers": layers, "normalization": normalization})


@pytest.mark.slow  # Keras' full VGG16 (138 M weights) written to a .mat and read back
def test_matconvnet_file_gives_keras_activations(tmp_path, keras_vgg16, sample_crop, keras_reference):
    path = str(tmp_path / "imagenet-vgg-verydeep-16.mat")
    write_matconvnet(path, keras_vgg16)
    fcn = pretrained(path)
    assert_matches_keras(fcn, sample_crop, keras_reference)


@pytest.mark.slow  # Keras' full VGG16 (138 M weights) written to a file and read back
def test_notop_weights_fill_the_convolutions_only(tmp_path, keras_vgg16, sample_crop, keras_reference):
    path = str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    write_legacy_h5(path, keras_vgg16, include_top=False)
    fcn = pretrained(path, fc_channels=64)
    pool5, _ = fcn_activations(fcn, sample_crop)
    assert relative_error(pool5, keras_reference[0]) < 1e-5
    # A narrow fc6/fc7 cannot take the 4096-wide pretrained top.
    top = str(tmp_path / "top.h5")
    write_legacy_h5(top, keras_vgg16)
    with pytest.raises(weights.WeightsError, match="fc_channels"):
        pretrained(top, fc_channels=64)


def test_bad_weight_files_name_file_and_layer(tmp_path, keras_vgg16):
    small = model_lib.build_fcn8s(10, fc_channels=8)
    with pytest.raises(weights.WeightsError, match="not found"):
        weights.load_vgg_weights(small, str(tmp_path / "missing.h5"))
    # A file without block3_conv2.
    path = str(tmp_path / "partial.h5")
    write_legacy_h5(path, keras_vgg16, include_top=False)
    with h5py.File(path, "a") as f:
        f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != b"block3_conv2"])
    with pytest.raises(weights.WeightsError) as raised:
        weights.load_vgg_weights(small, path)
    assert path in str(raised.value) and "block3_conv2 is missing" in str(raised.value)
    # Wrong shapes: another network's weights under the VGG16 names.
    wrong = str(tmp_path / "wrong.h5")
    with h5py.File(wrong, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in backbones.BACKBONES["vgg16"].layers])
        for name in backbones.BACKBONES["vgg16"].layers:
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([b"k", b"b"])
            group.create_dataset("k", data=np.zeros((3, 3, 3, 3), np.float32))
            group.create_dataset("b", data=np.zeros((3,), np.float32))
    with pytest.raises(weights.WeightsError, match=r"layer block1_conv1 has weights of shapes \[\(3, 3, 3, 3\), \(3,\)\]"):
        weights.load_vgg_weights(small, wrong)
    # Not a weights file at all.
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(weights.WeightsError, match="junk.h5"):
        weights.load_vgg_weights(small, str(junk))
    junk_mat = tmp_path / "junk.mat"
    junk_mat.write_bytes(b"not a mat file")
    with pytest.raises(weights.WeightsError, match="junk.mat"):
        weights.load_vgg_weights(small, str(junk_mat))


class _FileServer(http.server.ThreadingHTTPServer):
    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.files = files
        self.requests = 0
        self.paths = []


class _FileHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests += 1
        self.server.paths.append(self.path)
        body = self.server.files.get(os.path.basename(self.path))
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.slow  # Keras' full VGG16 (138 M weights) written to a file and read back
def test_imagenet_weights_are_fetched_verified_and_cached(tmp_path, monkeypatch, keras_vgg16, sample_crop, keras_reference):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    source = tmp_path / "served.h5"
    write_legacy_h5(str(source), keras_vgg16, include_top=False)
    body = source.read_bytes()
    filename = backbones.BACKBONES["vgg16"].keras_weights["imagenet_notop"][0]
    server = _FileServer({filename: body})
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        monkeypatch.setattr(weights, "KERAS_WEIGHTS_ORIGIN", f"http://127.0.0.1:{server.server_address[1]}/")
        # The published MD5 does not match this file: rejected, and nothing is left in the cache.
        with pytest.raises(weights.WeightsError, match="could not fetch imagenet_notop"):
            pretrained("imagenet_notop", model_dir=str(tmp_path / "cache"), fc_channels=64)
        assert not (tmp_path / "cache" / filename).exists()
        monkeypatch.setitem(backbones.BACKBONES["vgg16"].keras_weights, "imagenet_notop", (filename, hashlib.md5(body).hexdigest()))
        fcn = pretrained("imagenet_notop", model_dir=str(tmp_path / "cache"), fc_channels=64)
        assert (tmp_path / "cache" / filename).read_bytes() == body
        assert relative_error(fcn_activations(fcn, sample_crop)[0], keras_reference[0]) < 1e-5
        requests = server.requests
        pretrained("imagenet_notop", model_dir=str(tmp_path / "cache"), fc_channels=64)
        assert server.requests == requests  # served from the cache
        assert server.paths == [f"/vgg16/{filename}"] * 2  # Keras' folder of the backbone
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def full_fcn8s():
    return model_lib.build_fcn8s(150)


@pytest.mark.slow  # builds the full 135 M-weight FCN-8s
def test_parameter_count_and_zero_logits_at_initialisation(full_fcn8s):
    trainable = sum(int(np.prod(v.shape)) for v in full_fcn8s.trainable_weights)
    frozen = sum(int(np.prod(v.shape)) for v in full_fcn8s.non_trainable_weights)
    assert trainable == FCN8S_TRAINABLE_PARAMETERS
    assert frozen == FCN8S_FROZEN_PARAMETERS
    logits = full_fcn8s(np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3)).astype(np.uint8))
    assert logits.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(logits))) == 0.0


@pytest.fixture(scope="module")
def narrow():
    return narrow_fcn8s(150)  # the geometry of the full model at a fraction of its arithmetic


def test_width_scales_every_trunk_convolution_and_nothing_else(narrow):
    for block, convolutions, filters in backbones.VGG16_BLOCKS:
        for i in range(1, convolutions + 1):
            assert narrow.get_layer(f"block{block}_conv{i}").filters == filters // 8
    assert narrow.get_layer("fc6").kernel.shape == (7, 7, 64, 16)  # 512 / 8 channels of pool5, 7 x 7
    assert narrow.get_layer("score_pool4").kernel.shape == (1, 1, 64, 150)
    assert narrow.get_layer("score_pool3").kernel.shape == (1, 1, 32, 150)
    assert tuple(narrow(np.zeros((1, 33, 65, 3), np.uint8)).shape) == (1, 33, 65, 150)


@pytest.mark.parametrize("height, width", [(97, 131), (375, 500), (32, 32), (33, 65)])
def test_output_has_the_input_size(narrow, height, width):
    logits = narrow(np.zeros((1, height, width, 3), np.uint8))
    assert tuple(logits.shape) == (1, height, width, 150)


def test_bilinear_transposed_convolutions_reproduce_a_ramp():
    ramp = np.arange(12, dtype=np.float32)
    plane = (2.0 * ramp[:, None] - 3.0 * ramp[None, :])[None, :, :, None]  # (1, 12, 12, 1), linear in y and x
    for factor in (2, 8):
        layer = keras.layers.Conv2DTranspose(
            1, 2 * factor, strides=factor, padding="same", use_bias=False, kernel_initializer=model_lib.BilinearUpsampling()
        )
        upsampled = layer(plane).numpy()[0, :, :, 0]
        # Fine pixel centre (i + 0.5) sits at coarse coordinate (i + 0.5) / factor - 0.5.
        coarse = (np.arange(12 * factor) + 0.5) / factor - 0.5
        expected = 2.0 * coarse[:, None] - 3.0 * coarse[None, :]
        interior = slice(factor, -factor)
        np.testing.assert_allclose(upsampled[interior, interior], expected[interior, interior], atol=1e-4)


def outputs_and_gradients(layer, x, cotangent=None):
    """[layer(x), d loss / d x, d loss / d each trainable weight]; loss = sum(y * cotangent), or sum(y^2)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * (y if cotangent is None else cotangent))
    return [y.numpy()] + [g.numpy() for g in tape.gradient(loss, [x, *layer.trainable_weights])]


@pytest.mark.parametrize("height, width, factor", [(4, 7, 8), (13, 5, 8), (6, 9, 2)])
def test_bilinear_upsample_equals_the_frozen_transposed_convolution(height, width, factor):
    """The per-channel layer gives what FCN's dense, frozen, bilinear Conv2DTranspose gives, values and gradients."""
    channels = 5
    x = tf.constant(np.random.default_rng(height).normal(0, 1, (2, height, width, channels)), tf.float32)
    dense = keras.layers.Conv2DTranspose(
        channels, 2 * factor, strides=factor, padding="same", use_bias=False, kernel_initializer=model_lib.BilinearUpsampling()
    )
    fixed = model_lib.BilinearUpsample(factor)
    cotangent = tf.constant(np.random.default_rng(1).normal(0, 1, (2, height * factor, width * factor, channels)), tf.float32)
    (dense_y, dense_grad), (fixed_y, fixed_grad) = (outputs_and_gradients(layer, x, cotangent)[:2] for layer in (dense, fixed))
    assert fixed_y.shape == (2, height * factor, width * factor, channels)
    np.testing.assert_allclose(fixed_y, dense_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fixed_grad, dense_grad, rtol=1e-4, atol=1e-4)
    assert not fixed.weights and fixed.compute_output_shape((2, None, width, channels)) == (2, None, width * factor, channels)


def test_patch_conv2d_equals_conv2d_values_and_gradients():
    """fc6's layer: the same weights and results as a "same" Conv2D, including the kernel gradient."""
    x = tf.constant(np.random.default_rng(0).normal(0, 1, (2, 3, 5, 6)), tf.float32)
    conv = keras.layers.Conv2D(4, 7, padding="same", activation="relu")
    patches = model_lib.PatchConv2D(4, 7, activation="relu")
    conv.build(x.shape)
    patches.build(x.shape)
    rng = np.random.default_rng(1)
    weights = [rng.normal(0, 0.2, w.shape).astype(np.float32) for w in conv.get_weights()]
    conv.set_weights(weights)
    patches.set_weights(weights)
    results = [outputs_and_gradients(layer, x) for layer in (conv, patches)]
    assert float(np.abs(results[0][0]).max()) > 0.1
    for expected, actual in zip(*results):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert keras.layers.deserialize(keras.layers.serialize(patches)).kernel_size == (7, 7)


def traced_op_types(function, *args):
    """The op types of ``function``'s graph, traced on ``args``."""
    return {op.type for op in tf.function(function).get_concrete_function(*args).graph.get_operations()}


def test_fc7_as_a_1x1_patch_conv2d_equals_conv2d_values_and_gradients():
    """fc7's layer: tf.nn.conv2d's 1x1 result and its input, kernel and bias gradients, computed as matrix products."""
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(0, 1, (2, 3, 5, 48)), tf.float32)
    kernel = tf.constant(rng.normal(0, 0.2, (1, 1, 48, 40)), tf.float32)
    bias = tf.constant(rng.normal(0, 0.5, (40,)), tf.float32)
    cotangent = tf.constant(rng.normal(0, 1, (2, 3, 5, 40)), tf.float32)
    fc7 = model_lib.PatchConv2D(40, 1, activation="relu")
    fc7.build(x.shape)
    fc7.set_weights([kernel.numpy(), bias.numpy()])

    def reference(x, kernel, bias):
        return tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding="SAME") + bias)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, kernel, bias])
        expected = reference(x, kernel, bias)
        expected_loss = tf.reduce_sum(expected * cotangent)
        actual = fc7(x)
        actual_loss = tf.reduce_sum(actual * cotangent)
    expected_gradients = tape.gradient(expected_loss, [x, kernel, bias])
    actual_gradients = tape.gradient(actual_loss, [x, fc7.kernel, fc7.bias])
    assert 0.2 < float(np.mean(expected.numpy() > 0)) < 0.8  # the ReLU passes some values and stops others
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("input", "kernel", "bias"), actual_gradients, expected_gradients):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name} gradient")

    # Computed as products: no convolution, and no padding or gathering of 1x1 windows, forward or backward.
    def forward_and_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fc7(x) * cotangent)
        return tape.gradient(loss, [x, fc7.kernel])

    types = traced_op_types(forward_and_backward, x)
    assert "MatMul" in types or "BatchMatMulV2" in types
    assert not types & {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "Pad", "PadV2", "ConcatV2", "StridedSlice"}


def test_fcn8s_fc7_is_a_1x1_patch_conv2d():
    fcn = model_lib.build_fcn8s(5, fc_channels=16)
    fc7 = fcn.get_layer("fc7")
    assert isinstance(fc7, model_lib.PatchConv2D) and fc7.kernel_size == (1, 1)
    assert [tuple(w.shape) for w in fc7.weights] == [(1, 1, 16, 16), (16,)]
    assert [w.name for w in fc7.weights] == ["kernel", "bias"]


def with_conv2d_fc7(fcn):
    """The same network with fc7 a plain keras Conv2D, as FCN-8s was built before fc7 became a PatchConv2D."""

    def clone(layer):
        if layer.name == "fc7":
            return keras.layers.Conv2D(layer.filters, 1, activation="relu", name="fc7")
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(fcn, clone_function=clone)


def test_checkpoint_with_a_conv2d_fc7_restores_bit_for_bit(tmp_path, sample_crop):
    """A training checkpoint (model and Adam slots) written when fc7 was a Conv2D restores into today's model."""
    images = sample_crop[None, :64, :96]
    old = with_conv2d_fc7(model_lib.build_fcn8s(5, fc_channels=16))
    assert type(old.get_layer("fc7")) is keras.layers.Conv2D
    rng = np.random.default_rng(4)
    for layer in old.layers:  # distinct values in fc6, fc7 and the score layers (signal through every path)
        if layer.weights and layer.name.startswith(("score", "fc")):
            layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights()])
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(old.trainable_variables)
    for index, variable in enumerate(optimizer.variables):  # a distinct value per slot, as after some training
        variable.assign(tf.fill(variable.shape, tf.cast(index + 1, variable.dtype)))
    expected = old(images).numpy()
    assert float(np.abs(expected).max()) > 0.1
    prefix = tf.train.Checkpoint(model=old, optimizer=optimizer).write(str(tmp_path / "old" / "ckpt"))

    new = model_lib.build_fcn8s(5, fc_channels=16)
    new_optimizer = keras.optimizers.Adam(1e-3)
    new_optimizer.build(new.trainable_variables)
    tf.train.Checkpoint(model=new, optimizer=new_optimizer).read(prefix).assert_consumed()
    assert isinstance(new.get_layer("fc7"), model_lib.PatchConv2D)
    assert len(old.weights) == len(new.weights) and len(optimizer.variables) == len(new_optimizer.variables)
    for want, got in zip(old.weights + optimizer.variables, new.weights + new_optimizer.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)
    actual = new(images).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))

    # The same checkpoint through the project's own restore of a model's weights (evaluate, predict, export).
    for variable in new.weights:
        variable.assign(tf.zeros_like(variable))
    checkpoints.restore_model_weights(new, prefix, report=lambda message: None)
    for want, got in zip(old.weights, new.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)
    np.testing.assert_array_equal(new(images), actual)


def test_uint8_and_float_inputs_agree_and_preprocessing_is_caffe_style(sample_crop):
    fcn = model_lib.build_fcn8s(5, fc_channels=16)
    np.testing.assert_allclose(fcn(sample_crop[None]), fcn(sample_crop[None].astype(np.float32)), rtol=0, atol=0)
    preprocessed = model_lib.VggPreprocess()(sample_crop[None]).numpy()
    expected = keras.applications.vgg16.preprocess_input(sample_crop[None].astype(np.float32))
    np.testing.assert_allclose(preprocessed, expected, atol=1e-4)


def test_get_config_and_keras_file_round_trip(tmp_path, sample_crop):
    fcn = model_lib.build_fcn8s(7, fc_channels=16, dropout=0.3)
    rng = np.random.default_rng(3)
    for name in ("score_fr", "score_pool4", "score_pool3"):  # make every path carry signal
        layer = fcn.get_layer(name)
        layer.set_weights([rng.normal(0, 1, w.shape).astype(np.float32) for w in layer.get_weights()])
    images = np.stack([sample_crop[:97, :131], sample_crop[50:147, 60:191]])
    expected = fcn(images)
    assert float(tf.reduce_max(tf.abs(expected))) > 0
    clone = keras.Model.from_config(fcn.get_config())
    clone.set_weights(fcn.get_weights())
    np.testing.assert_array_equal(clone(images), expected)
    path = str(tmp_path / "fcn8s.keras")
    fcn.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded(images), expected)
    assert reloaded.get_layer("drop6").rate == 0.3 and reloaded.get_layer("scale_pool3").factor == 0.0001
    assert reloaded.get_layer("upscore8").factor == 8
