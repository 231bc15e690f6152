# ruff: noqa: F821  (the stubs' annotations name the bindings' types; they are read as text, never resolved)
"""Spec stubs for the TensorRT builder API, which the lean wheel (the only TensorRT installable here)
does not ship, and a fake TensorRT module for the builder wired from them.

The stubs below follow NVIDIA's TensorRT Python API reference, :data:`DOC_VERSION`; their annotations
are the documented parameter types, and tests/support/strict_signatures.py checks every call against them.
Classes the lean module has (IOptimizationProfile, ITimingCache, ICudaEngine, Runtime, the enums) are
taken from it instead, so those doubles are checked against the real bindings.
"""

from __future__ import annotations

import enum
import json
import types
from unittest import mock

from tests.support.strict_signatures import make_strict
from tests.support.trt_doubles import BINDING_TYPES, FakeDevice, make_engine, strict, trt

#: The one place that names the documentation the builder-only stubs were written from.
DOC_VERSION = "TensorRT 11.1 Python API reference (docs.nvidia.com/deeplearning/tensorrt/11.1.0)"


class Builder:
    def create_network(self, flags: int = 0): ...
    def create_builder_config(self): ...
    def create_optimization_profile(self): ...
    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig): ...


class INetworkDefinition:
    num_inputs = 0
    num_outputs = 0
    num_layers = 0
    def get_input(self, index: int): ...
    def get_layer(self, index: int): ...
    def mark_output(self, tensor: ITensor): ...


class ILayer:
    name = ""
    num_outputs = 0
    def get_output(self, index: int): ...


class ITensor:
    name = ""
    is_network_output = False  # ITensor.is_network_output (pyGraph.cpp): True for the parser's graph outputs


class IBuilderConfig:
    profiling_verbosity = None
    hardware_compatibility_level = None
    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int): ...
    def add_optimization_profile(self, profile: IOptimizationProfile) -> int: ...
    def create_timing_cache(self, serialized_timing_cache: Buffer): ...
    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool: ...
    def get_timing_cache(self): ...
    def set_flag(self, flag: BuilderFlag): ...
    def clear_flag(self, flag: BuilderFlag): ...
    def get_flag(self, flag: BuilderFlag) -> bool: ...


class IParserError:
    def code(self): ...
    def desc(self) -> str: ...
    def file(self) -> str: ...
    def func(self) -> str: ...
    def line(self) -> int: ...
    def node(self) -> int: ...
    def node_name(self) -> str: ...
    def node_operator(self) -> str: ...


class OnnxParser:
    num_errors = 0
    def parse_from_file(self, model: str) -> bool: ...
    def parse(self, model: Buffer, path: str = None) -> bool: ...
    def get_error(self, index: int): ...
    def clear_errors(self): ...


class IEngineInspector:
    def get_engine_information(self, format: LayerInformationFormat) -> str: ...
    def get_layer_information(self, layer_index: int, format: LayerInformationFormat) -> str: ...


class NetworkFlags10(enum.IntEnum):  # TensorRT 10.x: strong typing is opt-in
    EXPLICIT_BATCH = 0  # deprecated and ignored
    STRONGLY_TYPED = 1


class NetworkFlags11(enum.IntEnum):  # TensorRT 11.x: EXPLICIT_BATCH is gone, STRONGLY_TYPED is 0 and ignored
    STRONGLY_TYPED = 0


class Levels10Early(enum.IntEnum):  # TensorRT 10.0-10.8: no SAME_COMPUTE_CAPABILITY yet
    NONE = 0
    AMPERE_PLUS = 1


#: Per-layer ``Format/Datatype`` values as TensorRT writes them, 10.x and 11.x alike (Polygraphy in the
#: TensorRT 11.1 tree, polygraphy/backend/trt/util.py, reads ``elem["Format/Datatype"]``): a description for
#: library kernels, the bare type name for generated kernels.
FORMATS = {"Half": ("Channel major FP16 format where channel % 8 == 0", "Half"),
           "Int8": ("Thirty-two wide channel vectorized row major Int8 format", "Int8"),
           "Float": ("Row major linear FP32 format", "Float")}


def _layer(name: str, layer_type: str, value: str) -> dict:
    return {"Name": name, "LayerType": layer_type,
            "Inputs": [{"Name": f"{name}_in", "Location": "Device", "Dimensions": [-1, 8, -1, -1],
                        "Format/Datatype": value}],
            "Outputs": [{"Name": f"{name}_out", "Location": "Device", "Dimensions": [-1, 8, -1, -1],
                         "Format/Datatype": value}]}


def inspector_json(datatype: str = "Half", schema: int = 11) -> str:
    """Engine inspector JSON: a library-kernel conv and a generated-kernel conv in ``datatype``, and an FP32
    global average; the top level in the 11.x (``I/O Tensors`` objects) or 10.x (``Bindings`` names) schema."""
    described, bare = FORMATS[datatype]
    layers = [_layer("conv1", "CaskConvolution", described), _layer("conv2", "kgen", bare),
              _layer("gap", "CaskPooling", "Row major linear FP32 format")]
    if schema >= 11:
        profile = {"MinShape": [1, 3, 4, 4], "OptShape": [1, 3, 224, 224], "MaxShape": [16, 3, 1024, 1024]}
        io = [{"Name": "images", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, 3, -1, -1],
               "Location": "Device", "Format": "Row major linear", "ProfileInfo": [profile]},
              {"Name": "logits", "IOMode": "Output", "DataType": "Float", "Dimensions": [-1, 10],
               "Location": "Device", "Format": "Row major linear"}]
        return json.dumps({"Layers": layers, "I/O Tensors": io})
    return json.dumps({"Layers": layers, "Bindings": ["images", "logits"]})


def stub(cls):
    return make_strict(mock.create_autospec(cls, instance=True), cls, types=BINDING_TYPES, stub=True)


class FakeBuild:
    """A TensorRT module for the builder: strict doubles wired together, calls recorded."""

    def __init__(self, version="11.4.0.106", datatype="Half", compute=None, profiles=None, schema=None,
                 device: FakeDevice | None = None, extra=None):
        self.builder = stub(Builder)
        self.network = stub(INetworkDefinition)
        self.config = stub(IBuilderConfig)
        self.parser = stub(OnnxParser)
        self.profiles: list = []
        self.cache = strict(trt.ITimingCache, instance=True)
        self.cache.serialize.return_value = b"timing-cache-v2"
        self.builder.create_network.return_value = self.network
        self.builder.create_builder_config.return_value = self.config
        self.builder.create_optimization_profile.side_effect = self._profile
        self.builder.build_serialized_network.return_value = b"PLAN" * 64
        self.config.create_timing_cache.return_value = self.cache
        self.config.get_timing_cache.return_value = self.cache
        self.config.set_timing_cache.return_value = True
        # addOptimizationProfile returns the new profile's index, or -1 for an invalid profile (NvInfer.h,
        # IBuilderConfig::addOptimizationProfile); ``invalid_profile`` makes it refuse
        self.invalid_profile = False
        self.config.add_optimization_profile.side_effect = self._add_profile
        # markOutput on a tensor that is already an output is an API error in TensorRT ("Tensor ... is already set
        # as an output", logged by TensorRT; Polygraphy unmarks every output before marking, polygraphy/backend/trt/
        # util.py mark_outputs): the double raises, so code that does it fails here as its log fails on a GPU
        self.network.mark_output.side_effect = self._mark_output
        self.parser.parse_from_file.return_value = True
        kwargs = {"compute": compute} if compute else {}
        if profiles:
            kwargs["profiles"] = profiles
        self.engine, self.context = make_engine(device=device, extra=extra, **kwargs)
        self.inspector = stub(IEngineInspector)
        major = int(version.split(".")[0])
        self.inspector.get_engine_information.return_value = inspector_json(datatype, schema or major)
        self.engine.create_engine_inspector.return_value = self.inspector
        self.runtime = strict(trt.Runtime, instance=True)
        self.runtime.deserialize_cuda_engine.return_value = self.engine
        early_10 = major == 10 and int(version.split(".")[1]) < 9
        self.module = types.SimpleNamespace(
            __name__="tensorrt", __version__=version, Logger=trt.Logger, TensorIOMode=trt.TensorIOMode,
            nptype=trt.nptype, MemoryPoolType=trt.MemoryPoolType, ProfilingVerbosity=trt.ProfilingVerbosity,
            BuilderFlag=trt.BuilderFlag, LayerInformationFormat=trt.LayerInformationFormat,
            HardwareCompatibilityLevel=Levels10Early if early_10 else trt.HardwareCompatibilityLevel,
            NetworkDefinitionCreationFlag=NetworkFlags11 if major >= 11 else NetworkFlags10,
            Builder=mock.Mock(return_value=self.builder), OnnxParser=mock.Mock(return_value=self.parser),
            Runtime=mock.Mock(return_value=self.runtime))

    def _add_profile(self, profile) -> int:
        if self.invalid_profile:
            return -1
        self._added = getattr(self, "_added", 0) + 1
        return self._added - 1

    @staticmethod
    def _mark_output(tensor) -> None:
        if tensor.is_network_output:
            raise RuntimeError(f"TensorRT API error: tensor {tensor.name} is already set as an output")
        tensor.is_network_output = True

    def _profile(self):
        profile = strict(trt.IOptimizationProfile, instance=True)
        self.profiles.append(profile)
        return profile
