"""VGG19 FCN-8s and its weight files; weight files that do not fit the model are refused as a whole (fcn/weights.py)."""

import hashlib
import os
import threading

import h5py
import keras
import numpy as np
import pytest
import scipy.io
from conftest import REPO, SAMPLE_ROOT
from test_model import _FileServer

from fcn import backbones, datasets, errors, weights
from fcn import config as config_lib
from fcn import model as model_lib
from fcn.datasets import decode

FC = 16  # fc1 / fc2 width of the test files: the real 4096 would make fc1 a 411 MB matrix


def relative_error(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def sample_crop():
    image, _ = decode.load_example(*datasets.list_split(SAMPLE_ROOT, "validation").pairs[0])
    return image[100:324, 200:424]  # (224, 224, 3) uint8, a real ADE20K image


@pytest.fixture(scope="module")
def vgg19_layers():
    """Keras' VGG19 trunk with random weights, and its layers' weights plus a top FC wide (real layer names)."""
    keras.utils.set_random_seed(19)
    trunk = keras.applications.VGG19(weights=None, include_top=False, input_shape=(None, None, 3))
    layers = {layer.name: layer.get_weights() for layer in trunk.layers if layer.weights}
    rng = np.random.default_rng(19)
    layers["fc1"] = [rng.normal(0, (2 / 25088) ** 0.5, (25088, FC)).astype(np.float32), rng.normal(0, 0.1, FC).astype(np.float32)]
    layers["fc2"] = [rng.normal(0, (2 / FC) ** 0.5, (FC, FC)).astype(np.float32), rng.normal(0, 0.1, FC).astype(np.float32)]
    layers["predictions"] = [rng.normal(0, 0.1, (FC, 1000)).astype(np.float32), np.zeros(1000, np.float32)]
    return trunk, layers


@pytest.fixture(scope="module")
def vgg19_reference(vgg19_layers, sample_crop):
    """block5_pool of Keras' own VGG19 on the crop (Keras' preprocessing), and fc2 computed from it in NumPy."""
    trunk, layers = vgg19_layers
    pool5 = keras.ops.convert_to_numpy(trunk(keras.applications.vgg19.preprocess_input(sample_crop[None].astype(np.float32))))
    assert pool5.shape == (1, 7, 7, 512) and np.count_nonzero(pool5) > 1000
    flat = pool5.astype(np.float64).reshape(1, -1)  # Keras' Flatten: (H, W, C) order
    fc1 = np.maximum(flat @ layers["fc1"][0] + layers["fc1"][1], 0)
    fc2 = np.maximum(fc1 @ layers["fc2"][0] + layers["fc2"][1], 0)
    assert np.count_nonzero(fc2) > 3
    return pool5, fc2


def write_keras2_h5(path, layers):
    """Weights in the layout of Keras' published vgg19_weights_tf_dim_ordering_tf_kernels(_notop).h5."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name in layers])
        for name, values in layers.items():
            group = f.create_group(name)
            weight_names = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
            group.attrs["weight_names"] = np.array(weight_names)
            for weight_name, value in zip(weight_names, values):
                group.create_dataset(weight_name.decode(), data=value)


def write_matconvnet(path, layers):
    """Weights in the structure of MatConvNet's imagenet-vgg-verydeep-19.mat (SimpleNN layers, (W, H, in, out) kernels, RGB)."""
    entries = []
    for name, (kernel, bias) in layers.items():
        if name == "fc1":
            kernel, name = kernel.reshape(7, 7, 512, -1), "fc6"
        elif name == "fc2":
            kernel, name = kernel.reshape(1, 1, *kernel.shape), "fc7"
        elif name == "predictions":
            kernel, name = kernel.reshape(1, 1, *kernel.shape), "fc8"
        else:
            name = f"conv{name[5]}_{name[-1]}"
            if name == "conv1_1":
                kernel = kernel[:, :, ::-1, :]  # MatConvNet's VGG reads RGB; Keras' reads BGR
        values = np.empty((1, 2), dtype=object)
        values[0, 0] = np.transpose(kernel, (1, 0, 2, 3))
        values[0, 1] = bias.reshape(-1, 1)
        entries.append({"name": name, "type": "conv", "weights": values})
        entries.append({"name": "relu" + name[4:] if name.startswith("conv") else "relu", "type": "relu", "weights": np.empty((1, 0), dtype=object)})
        if name.endswith(("1_2", "2_2", "3_4", "4_4", "5_4")):
            entries.append({"name": "pool" + name[4], "type": "pool", "weights": np.empty((1, 0), dtype=object)})
    cell = np.empty((1, len(entries)), dtype=object)
    for i, entry in enumerate(entries):
        cell[0, i] = entry
    normalization = {"averageImage": np.array([123.68, 116.779, 103.939]).reshape(1, 1, 3)}
    scipy.io.savemat(path, {"layers": cell, "normalization": normalization})


def fcn_activations(fcn, image):
    probe = keras.Model(fcn.input, [fcn.get_layer("block5_pool").output, fcn.get_layer("fc7").output])
    pool5, fc7 = probe(image[None])
    return pool5.numpy(), fc7.numpy()


def vgg19_fcn(fc_channels=FC):
    return model_lib.build_fcn8s(5, fc_channels=fc_channels, backbone="vgg19")


@pytest.fixture(scope="module")
def vgg19_files(tmp_path_factory, vgg19_layers):
    trunk, layers = vgg19_layers
    folder = tmp_path_factory.mktemp("vgg19")
    files = {
        "h5": str(folder / "vgg19_weights_tf_dim_ordering_tf_kernels.h5"),
        "notop_h5": str(folder / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        "keras3": str(folder / "vgg19.weights.h5"),
        "mat": str(folder / "imagenet-vgg-verydeep-19.mat"),
    }
    write_keras2_h5(files["h5"], layers)
    write_keras2_h5(files["notop_h5"], {name: values for name, values in layers.items() if name.startswith("block")})
    trunk.save_weights(files["keras3"])
    write_matconvnet(files["mat"], layers)
    return files


@pytest.mark.parametrize("kind, with_top", [("h5", True), ("mat", True), ("notop_h5", False), ("keras3", False)])
def test_vgg19_files_give_keras_vgg19_activations(vgg19_files, vgg19_reference, sample_crop, kind, with_top):
    fcn = vgg19_fcn()
    weights.load_vgg_weights(fcn, vgg19_files[kind])
    pool5, fc7 = fcn_activations(fcn, sample_crop)
    assert relative_error(pool5, vgg19_reference[0]) < 1e-5
    # fc6 is a 7x7 convolution: at the centre of the 7x7 pool5 map it sees exactly what fc1 saw.
    if with_top:
        assert relative_error(fc7[:, 3, 3, :], vgg19_reference[1]) < 1e-5
    else:
        assert relative_error(fc7[:, 3, 3, :], vgg19_reference[1]) > 0.1  # fc6/fc7 stay as initialised


def kernels(model):
    return {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers if layer.weights}


def assert_unchanged(model, before):
    for name, values in kernels(model).items():
        for value, old in zip(values, before[name]):
            np.testing.assert_array_equal(value, old)


@pytest.mark.parametrize("kind, extra_names", [("mat", "conv3_4, conv4_4, conv5_4"), ("h5", "block3_conv4, block4_conv4, block5_conv4")])
def test_vgg19_files_are_refused_by_a_vgg16_model(vgg19_files, kind, extra_names):
    fcn = model_lib.build_fcn8s(5, fc_channels=FC)
    before = kernels(fcn)
    with pytest.raises(weights.WeightsError) as raised:
        weights.load_vgg_weights(fcn, vgg19_files[kind])
    message = str(raised.value)
    assert message.startswith(vgg19_files[kind]) and "nothing was loaded" in message
    found = [line.split()[1] for line in message.splitlines() if line.endswith("of the file is not in the model")]
    assert ", ".join(found) == extra_names
    assert "set model.backbone=vgg19" in message
    assert_unchanged(fcn, before)  # never a partial load


def test_vgg16_file_is_refused_by_a_vgg19_model(tmp_path):
    keras.utils.set_random_seed(16)
    vgg16 = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    path = str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    write_keras2_h5(path, {layer.name: layer.get_weights() for layer in vgg16.layers if layer.weights})
    fcn = vgg19_fcn()
    before = kernels(fcn)
    with pytest.raises(weights.WeightsError) as raised:
        weights.load_vgg_weights(fcn, path)
    message = str(raised.value)
    missing = [line.split()[1] for line in message.splitlines() if line.endswith(" is missing")]
    assert missing == ["block3_conv4", "block4_conv4", "block5_conv4"]
    assert "these are VGG16 weights: set model.backbone=vgg16" in message
    assert_unchanged(fcn, before)


def test_every_misfit_is_named_at_once(tmp_path, vgg19_layers):
    """An extra layer, a missing one and a wrong shape in one file: all three named, nothing loaded."""
    _, layers = vgg19_layers
    broken = {name: values for name, values in layers.items() if name not in ("block2_conv1", "fc2")}
    broken["block6_conv1"] = layers["block5_conv1"]
    broken["block4_conv2"] = [layers["block4_conv2"][0][:, :, :256], layers["block4_conv2"][1]]
    path = str(tmp_path / "broken.h5")
    write_keras2_h5(path, broken)
    fcn = vgg19_fcn()
    before = kernels(fcn)
    with pytest.raises(weights.WeightsError) as raised:
        weights.load_vgg_weights(fcn, path)
    lines = str(raised.value).splitlines()[1:]
    assert [line.strip() for line in lines] == [
        "layer block6_conv1 of the file is not in the model",
        "layer block2_conv1 is missing",
        "layer block4_conv2 has weights of shapes [(3, 3, 256, 512), (512,)], the model needs [(3, 3, 512, 512), (512,)]",
        "layer fc7 is missing",
    ]
    assert_unchanged(fcn, before)


def test_fc_width_mismatch_names_fc_channels(vgg19_files):
    with pytest.raises(weights.WeightsError, match=r"fc6/fc7 are 16 wide and the model has model.fc_channels=8"):
        weights.load_vgg_weights(vgg19_fcn(fc_channels=8), vgg19_files["mat"])


def test_vgg19_imagenet_weights_are_fetched_from_keras_vgg19_folder(tmp_path, monkeypatch, vgg19_files, vgg19_reference, sample_crop):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    filename, published_md5 = backbones.BACKBONES["vgg19"].keras_weights["imagenet_notop"]
    assert (filename, published_md5) == ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "253f8cb515780f3b799900260a226db6")
    assert backbones.BACKBONES["vgg19"].keras_weights["imagenet"] == ("vgg19_weights_tf_dim_ordering_tf_kernels.h5", "cbe5617147190e668d6c5d5026f83318")
    with open(vgg19_files["notop_h5"], "rb") as f:
        body = f.read()
    server = _FileServer({filename: body})
    server.paths = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    cache = tmp_path / "cache"
    try:
        monkeypatch.setattr(weights, "KERAS_WEIGHTS_ORIGIN", f"http://127.0.0.1:{server.server_address[1]}/")
        with pytest.raises(weights.WeightsError, match="could not fetch imagenet_notop VGG19 weights"):
            weights.load_vgg_weights(vgg19_fcn(), "imagenet_notop", str(cache))  # the published MD5 is not this file's
        assert not (cache / filename).exists()
        monkeypatch.setitem(backbones.BACKBONES["vgg19"].keras_weights, "imagenet_notop", (filename, hashlib.md5(body).hexdigest()))
        fcn = vgg19_fcn()
        weights.load_vgg_weights(fcn, "imagenet_notop", str(cache))
        weights.load_vgg_weights(vgg19_fcn(), "imagenet_notop", str(cache))
        assert relative_error(fcn_activations(fcn, sample_crop)[0], vgg19_reference[0]) < 1e-5
        assert server.paths == [f"/vgg19/{filename}"] * 2  # the second load came from the cache
    finally:
        server.shutdown()
        server.server_close()


def test_vgg19_model_size_and_vgg16_layers_unchanged():
    vgg16, vgg19 = (model_lib.build_fcn8s(5, fc_channels=8, backbone=b) for b in ("vgg16", "vgg19"))
    count = lambda m: sum(int(np.prod(v.shape)) for v in m.trainable_weights)  # noqa: E731
    # conv3_4 (3x3x256x256 + 256) and conv4_4, conv5_4 (3x3x512x512 + 512 each).
    assert count(vgg19) - count(vgg16) == 590_080 + 2 * 2_359_808
    names16 = [layer.name for layer in vgg16.layers]
    names19 = [layer.name for layer in vgg19.layers]
    assert [n for n in names19 if n not in names16] == ["block3_conv4", "block4_conv4", "block5_conv4"]
    assert model_lib.backbone_of(vgg16) == "vgg16" and model_lib.backbone_of(vgg19) == "vgg19"
    # A VGG16 model keeps the layer order existing checkpoints were written with.
    assert [layer.name for layer in vgg16.layers if layer.weights][:14] == [*backbones.BACKBONES["vgg16"].layers, "fc6"]


def test_backbone_config_key():
    config = config_lib.load_config(None, [("model.backbone", "vgg19"), ("model.fc_channels", 8)])
    assert model_lib.backbone_of(model_lib.build_from_config(config.model, 3)) == "vgg19"
    assert config_lib.load_config(None, []).model.backbone == "vgg16"
    with pytest.raises(errors.ConfigError, match="model.backbone must be one of vgg16, vgg19, got 'vgg18'"):
        config_lib.load_config(None, [("model.backbone", "vgg18")])


def test_cli_refuses_a_file_of_another_backbone_with_a_message(tmp_path, vgg19_files, capsys):
    """FCN.tensorflow's imagenet-vgg-verydeep-19.mat given to a VGG16 run: one message, exit status 1, nothing written."""
    import FCN

    root = str(tmp_path / "ADEChallengeData2016")
    datasets.generate_sample_dataset(root, num_train=2, num_val=2, progress=False)
    logs = tmp_path / "logs"
    status = FCN.main(["--mode=train", "--config", os.path.join(REPO, "configs", "sample.yaml"), "--data_dir", root, "--logs_dir", str(logs),
                       "--no_progress", "--crop_size", "32", "--set", f"model.fc_channels={FC}", "--vgg_weights", vgg19_files["mat"]])
    err = capsys.readouterr().err
    assert status == FCN.EXIT_FAILED
    assert err.startswith(f"FCN.py: {vgg19_files['mat']} does not fit this FCN-8s (model.backbone=vgg16); nothing was loaded")
    assert "layer conv3_4 of the file is not in the model" in err and "--set model.backbone=vgg19" in err
    assert "Traceback" not in err and not (logs / "checkpoints").exists()


@pytest.mark.parametrize("saved, restored", [("vgg19", "vgg16"), ("vgg16", "vgg19")])
def test_checkpoint_of_one_backbone_is_refused_by_the_other(tmp_path, saved, restored):
    import tensorflow as tf

    from fcn import checkpoints

    source = model_lib.build_fcn8s(5, fc_channels=8, backbone=saved, width=0.125)  # the layers decide, not their width
    tf.train.CheckpointManager(tf.train.Checkpoint(model=source), str(tmp_path / "checkpoints"), 1).save(checkpoint_number=1)
    with pytest.raises(checkpoints.MismatchError, match="it holds another model"):
        checkpoints.restore_model_weights(model_lib.build_fcn8s(5, fc_channels=8, backbone=restored, width=0.125), str(tmp_path))
    same = model_lib.build_fcn8s(5, fc_channels=8, backbone=saved, width=0.125)
    checkpoints.restore_model_weights(same, str(tmp_path))
    for a, b in zip(same.weights, source.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
