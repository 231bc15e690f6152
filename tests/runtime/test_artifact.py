"""runtime.artifact: the one description of an artifact (names, dims with symbolic axes, channels, static batch,
classes, metadata), read from ONNX models built here with onnx's own helpers."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from gap_deploy.runtime.artifact import describe
from gap_deploy.runtime.errors import ArtifactError
from gap_deploy.runtime.metadata import ModelMetadata


def _model(in_dims, out_dims, props=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"])],
        "gap", [helper.make_tensor_value_info("images", TensorProto.FLOAT, in_dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (props or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def test_a_dynamic_model_has_symbolic_axes_and_its_metadata():
    meta = ModelMetadata(in_channels=3, num_classes=3, min_height=4, min_width=4, export_height=64)
    spec = describe(_model(["batch", 3, "height", "width"], ["batch", 3], meta.to_props()))
    assert (spec.input_name, spec.output_name) == ("images", "logits")
    assert spec.dims == (None, 3, None, None) and spec.dim_names[0] == "batch"
    assert spec.channels == 3 and spec.static_batch is None and spec.static_size is None
    assert spec.num_classes == 3 and spec.metadata.export_height == 64


def test_a_static_model_says_its_batch_and_size():
    spec = describe(_model([2, 1, 28, 28], [2, 1]))
    assert spec.static_batch == 2 and spec.static_size == (28, 28)
    assert spec.channels == 1 and spec.num_classes == 1
    assert spec.written_dims == (2, 1, 28, 28)


def test_a_file_is_described_like_the_model_it_holds(tmp_path):
    model = _model(["batch", 3, "height", "width"], ["batch", 3])
    onnx.save(model, tmp_path / "m.onnx")
    assert describe(tmp_path / "m.onnx").dims == describe(model).dims


def test_what_is_no_artifact_is_one_message(tmp_path):
    for source in (None, 3, object()):
        with pytest.raises(ArtifactError, match="a path or an onnx.ModelProto"):
            describe(source)
    (tmp_path / "m.tflite").write_bytes(b"x")  # a file that carries no description of its own
    with pytest.raises(ArtifactError, match="pass the bundle folder|bundle"):
        describe(tmp_path / "m.tflite")
