"""Spec classes for the TensorRT builder API, which the lean wheel (the only TensorRT installable here)
does not ship. Method names and arities follow NVIDIA's Python API reference for TensorRT 10/11;
classes the lean module has (IOptimizationProfile, ITimingCache, ICudaEngine, Runtime, the enums) are
taken from it instead, so those doubles are spec'd from the real bindings.
"""

from __future__ import annotations

import enum
import json
import types
from unittest import mock

from tests.trt_doubles import make_engine, trt


class Builder:
    def create_network(self, flags=0): ...
    def create_builder_config(self): ...
    def create_optimization_profile(self): ...
    def build_serialized_network(self, network, config): ...


class INetworkDefinition:
    num_inputs = 0
    num_outputs = 0
    def get_input(self, index): ...


class IBuilderConfig:
    profiling_verbosity = None
    hardware_compatibility_level = None
    def set_memory_pool_limit(self, pool, pool_size): ...
    def add_optimization_profile(self, profile): ...
    def create_timing_cache(self, serialized_timing_cache): ...
    def set_timing_cache(self, cache, ignore_mismatch): ...
    def get_timing_cache(self): ...
    def set_flag(self, flag): ...
    def clear_flag(self, flag): ...
    def get_flag(self, flag): ...


class IParserError:
    def code(self): ...
    def desc(self): ...
    def file(self): ...
    def func(self): ...
    def line(self): ...
    def node(self): ...
    def node_name(self): ...
    def node_operator(self): ...


class OnnxParser:
    num_errors = 0
    def parse_from_file(self, model): ...
    def parse(self, model, path=None): ...
    def get_error(self, index): ...
    def clear_errors(self): ...


class IEngineInspector:
    def get_engine_information(self, format): ...
    def get_layer_information(self, layer_index, format): ...


class NetworkFlags10(enum.IntEnum):  # TensorRT 10.x
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 5


class NetworkFlags11(enum.IntEnum):  # TensorRT 11.x: EXPLICIT_BATCH is gone
    STRONGLY_TYPED = 5


def inspector_json(datatype: str = "Half") -> str:
    layer = {"Name": "conv1", "LayerType": "CaskConvolution",
             "Outputs": [{"Name": "x", "Format/Datatype": f"Row major linear {datatype} format"}]}
    gap = {"Name": "gap", "LayerType": "Reduce", "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}]}
    return json.dumps({"Layers": [layer, layer, gap], "Bindings": ["images", "logits"]})


class FakeBuild:
    """A TensorRT module for the builder: spec'd doubles wired together, calls recorded."""

    def __init__(self, version="11.4.0.106", datatype="Half", compute=None, profiles=None):
        self.builder = mock.create_autospec(Builder, instance=True)
        self.network = mock.create_autospec(INetworkDefinition, instance=True)
        self.config = mock.create_autospec(IBuilderConfig, instance=True)
        self.parser = mock.create_autospec(OnnxParser, instance=True)
        self.profiles: list = []
        self.cache = mock.create_autospec(trt.ITimingCache, instance=True)
        self.cache.serialize.return_value = b"timing-cache-v2"
        self.builder.create_network.return_value = self.network
        self.builder.create_builder_config.return_value = self.config
        self.builder.create_optimization_profile.side_effect = self._profile
        self.builder.build_serialized_network.return_value = b"PLAN" * 64
        self.config.create_timing_cache.return_value = self.cache
        self.config.get_timing_cache.return_value = self.cache
        self.parser.parse_from_file.return_value = True
        kwargs = {"compute": compute} if compute else {}
        if profiles:
            kwargs["profiles"] = profiles
        self.engine, self.context = make_engine(**kwargs)
        self.inspector = mock.create_autospec(IEngineInspector, instance=True)
        self.inspector.get_engine_information.return_value = inspector_json(datatype)
        self.engine.create_engine_inspector.return_value = self.inspector
        self.runtime = mock.create_autospec(trt.Runtime, instance=True)
        self.runtime.deserialize_cuda_engine.return_value = self.engine
        flags = NetworkFlags11 if version.startswith("11") else NetworkFlags10
        self.module = types.SimpleNamespace(
            __name__="tensorrt", __version__=version, Logger=trt.Logger, TensorIOMode=trt.TensorIOMode,
            nptype=trt.nptype, MemoryPoolType=trt.MemoryPoolType, ProfilingVerbosity=trt.ProfilingVerbosity,
            BuilderFlag=trt.BuilderFlag, HardwareCompatibilityLevel=trt.HardwareCompatibilityLevel,
            LayerInformationFormat=trt.LayerInformationFormat, NetworkDefinitionCreationFlag=flags,
            Builder=mock.Mock(return_value=self.builder), OnnxParser=mock.Mock(return_value=self.parser),
            Runtime=mock.Mock(return_value=self.runtime))

    def _profile(self):
        profile = mock.create_autospec(trt.IOptimizationProfile, instance=True)
        self.profiles.append(profile)
        return profile
