"""The SavedModel of --mode=export: each weight stored once, a typed input signature (fcn/export.py).

What the signatures compute is tested in tests/test_predict.py and tests/test_protocol.py.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from conftest import save_run
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
    assert parameter_bytes > 60e6  # 16M parameters: a second copy would be plain to see
    stored = folder_bytes(os.path.join(path, "variables"))
    # Each weight once plus the checkpoint's index and object graph (6 kB here); a second copy doubles it.
    assert parameter_bytes <= stored < parameter_bytes * 1.01
    names = [name for name, _ in tf.train.list_variables(os.path.join(path, "variables", "variables"))]
    assert len([name for name in names if name.endswith("VARIABLE_VALUE")]) == len(model.weights)
    assert folder_bytes(path) < parameter_bytes * 1.03  # the graph and the class tables are small beside it


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
