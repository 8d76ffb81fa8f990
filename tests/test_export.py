"""The SavedModel of --mode=export: each weight stored once, a typed input signature (fcn/export.py).

What the signatures compute is tested in tests/test_predict.py and tests/test_protocol.py.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import save_run
from tensorflow.core.protobuf import saved_model_pb2

from fcn import config as config_lib
from fcn import export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    logs = tmp_path_factory.mktemp("run")
    _, model = save_run(logs, tmp_path_factory.mktemp("no_data"))
    config = config_lib.load_config(str(logs / "config.yaml"), [("evaluate.test_size", "none")])
    path, _ = export.export(config, str(tmp_path_factory.mktemp("export")))
    return path, model


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def test_each_weight_is_stored_once(exported):
    path, model = exported
    parameter_bytes = sum(int(np.prod(w.shape)) * w.dtype.size for w in (tf.convert_to_tensor(v) for v in model.weights))
    assert parameter_bytes > 2e6  # a second copy, this much again, would be plain to see beside the graph's bytes
    stored = folder_bytes(os.path.join(path, "variables"))
    # Each weight once plus the checkpoint's index and object graph (6 kB here); a second copy doubles it.
    assert parameter_bytes <= stored < parameter_bytes * 1.01
    names = [name for name, _ in tf.train.list_variables(os.path.join(path, "variables", "variables"))]
    assert len([name for name in names if name.endswith("VARIABLE_VALUE")]) == len(model.weights)
    assert folder_bytes(path) < parameter_bytes * 1.01 + 1_000_000  # the graph and the class tables: under 1 MB


def test_signatures_declare_uint8_images_of_any_size_with_three_channels(exported):
    """What ``saved_model_cli show --all`` prints: read from the same saved_model.pb."""
    path, _ = exported
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    signatures = saved.meta_graphs[0].signature_def
    for name, outputs in (("serving_default", {"labels"}), ("probabilities", {"labels", "probabilities"})):
        images = signatures[name].inputs["images"]
        assert not images.tensor_shape.unknown_rank
        assert [d.size for d in images.tensor_shape.dim] == [-1, -1, -1, 3]
        assert images.dtype == tf.uint8.as_datatype_enum
        assert set(signatures[name].outputs) == outputs
        assert signatures[name].outputs["labels"].dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in signatures["probabilities"].outputs["probabilities"].tensor_shape.dim] == [-1, -1, -1, 150]


@pytest.mark.slow  # two exports and TFLite's converter: about 30 s
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")  # it still ships with TensorFlow 2.21
def test_tflite_labels_equal_the_saved_models_on_the_fixture_images(tmp_path):
    """--format tflite: built-in ops only, the weights' size, the SavedModel's labels where the protocol's view is the image."""
    import glob

    from conftest import SAMPLE_ROOT, run_fcn
    from PIL import Image

    logs = tmp_path / "run"
    _, model = save_run(logs, tmp_path / "no_data")
    # Images are fitted into 128 x 96: a 128 x 96 image is its own view, which the TFLite model takes.
    flags = ["--logs_dir", str(logs), "--config", str(logs / "config.yaml"), "--set", "evaluate.test_size=128,96"]
    result = run_fcn("--mode=export", *flags, "--format", "tflite", "--input_size", "96,128")
    assert result.returncode == 0, result.stderr[-3000:]
    tflite = logs / "export_tflite" / "1" / export.TFLITE_FILE
    assert f"TFLite: {tflite} (uint8 images (1, 96, 128, 3) -> label values)" in result.stdout
    # TFLite stores identical buffers once: the untrained upscore2 and upscore_pool4 kernels are the same bilinear one.
    parameter_bytes = sum(len(blob) for blob in {np.asarray(w, np.float32).tobytes() for w in model.weights})
    # The weights, once, and the graph (about 60 kB for this small model): a second copy of any kernel would exceed it.
    assert 0.95 * parameter_bytes < os.path.getsize(tflite) < 1.02 * parameter_bytes + 200_000
    assert run_fcn("--mode=export", *flags).returncode == 0
    serving = tf.saved_model.load(str(logs / "export" / "1")).signatures["serving_default"]

    interpreter = tf.lite.Interpreter(str(tflite))
    interpreter.allocate_tensors()
    images, labels = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(images["shape"]) == [1, 96, 128, 3] and images["dtype"] == np.uint8 and labels["dtype"] == np.uint8
    paths = sorted(glob.glob(os.path.join(SAMPLE_ROOT, "images", "validation", "*.jpg")))
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB").resize((128, 96), Image.BILINEAR))[None]
        interpreter.set_tensor(images["index"], image)
        interpreter.invoke()
        from_tflite = interpreter.get_tensor(labels["index"])
        expected = serving(images=tf.constant(image))["labels"].numpy()
        assert len(np.unique(expected)) > 3  # varied labels: a real comparison
        np.testing.assert_array_equal(from_tflite, expected)


@pytest.mark.slow  # two TFLite conversions
def test_tflite_names_the_ops_it_lacks_for_the_crf_stage_and_writes_nothing(tmp_path):
    from fcn import inference
    from fcn import model as model_lib

    config = config_lib.load_config(None, [("logs_dir", str(tmp_path / "run")), ("model.fc_channels", 8), ("model.vgg_weights", "none"),
                                           ("model.crf", True), ("evaluate.test_size", "none")])
    model = model_lib.build_from_config(config.model, 150, crf_iterations=1)
    predictor = inference.Predictor(model)
    base = tmp_path / "tflite"
    with pytest.raises(inference.InferenceError, match=r"TensorFlow Lite cannot convert this model: no built-in op for .*SparseTensorDenseMatMul"):
        export.export_predictor(predictor, str(base), 10_000, format="tflite", tflite_size=(32, 32))
    assert os.listdir(base) == []  # no version, no temporary folder left


@pytest.mark.slow  # an export and its load: about 10 s
def test_a_crf_model_of_many_classes_exports_and_serves_the_labels_of_its_predictor(tmp_path):
    """From 32 classes the CRF's bilateral filter runs on CSR matrices (variant tensors); the export holds them."""
    from fcn import inference
    from fcn import model as model_lib

    config = config_lib.load_config(None, [("logs_dir", str(tmp_path / "run")), ("model.fc_channels", 8), ("model.width", 0.125),
                                           ("model.vgg_weights", "none"), ("model.crf", True), ("evaluate.test_size", "none")])
    model = model_lib.build_from_config(config.model, 40, crf_iterations=2)
    for weight in model.weights:  # varied labels: random, larger weights than the initialisers'
        weight.assign(np.random.default_rng(len(weight.path)).normal(0, 0.5, weight.shape).astype(np.float32))
    predictor = inference.Predictor(model)
    path = export.export_predictor(predictor, str(tmp_path / "export"), 10_000)
    images = np.random.default_rng(1).integers(0, 256, (2, 37, 45, 3), dtype=np.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))["labels"].numpy()
    expected = predictor.labels(tf.constant(images)).numpy()  # train ids; the export writes annotation values
    assert len(np.unique(expected)) > 3
    np.testing.assert_array_equal(served, np.asarray(predictor.classes.ids)[expected])
