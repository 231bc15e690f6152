"""runtime.metadata.ModelMetadata: what an artifact says about its model, and what a forged or edited map
makes of it (a metadata map is a file anyone can write)."""

from __future__ import annotations

import pytest

from gap_deploy.runtime.errors import MetadataError
from gap_deploy.runtime.metadata import ModelMetadata


def test_metadata_survives_its_string_map():
    meta = ModelMetadata(arch="GapCNN", in_channels=3, num_classes=2, class_names=("cat", "dog"),
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), min_height=4, min_width=6,
                         export_height=64, export_width=96, precision="fp16", fp32_layers=("head",),
                         extra={"author": "me"})
    props = meta.to_props()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
    assert ModelMetadata.from_props(props) == meta
    assert props["author"] == "me"  # foreign keys kept as they are


def test_a_foreign_model_gets_the_defaults():
    meta = ModelMetadata.from_props({"producer": "someone else"})
    assert (meta.in_channels, meta.num_classes, meta.min_height, meta.precision) == (None, None, 1, "fp32")
    assert meta.normalization() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # ImageNet's, for RGB
    assert ModelMetadata(in_channels=1).normalization() == ((0.5,), (0.5,))


@pytest.mark.parametrize("key, value, why", [
    ("gap.num_classes", "ten", "not a whole number"),
    ("gap.min_height", "0", "below 1"),
    ("gap.class_names", "[1, 2]", "not a list of strings"),
    ("gap.mean", "[0.5, NaN]", "not a list of finite numbers"),
    ("gap.std", "{\"a\": 1}", "not a JSON list"),
    ("gap.fp32_layers", "[unclosed", "not valid JSON"),
])
def test_a_forged_value_is_one_message_naming_the_key(key, value, why):
    with pytest.raises(MetadataError, match=f"{key}.*{why}"):
        ModelMetadata.from_props({key: value})


def test_a_class_outside_the_names_is_its_index():
    meta = ModelMetadata(class_names=("a", "b"))
    assert [meta.class_name(i) for i in (0, 1, 2, -1)] == ["a", "b", "2", "-1"]


def test_a_model_without_a_contract_gets_the_legacy_one_at_the_size_asked():
    meta = ModelMetadata(in_channels=3, mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    contract = meta.preprocessing((32, 48), channels=3)
    assert contract.resize == "stretch" and contract.target == (32, 48)
    assert contract.mean == (0.1, 0.2, 0.3)
