"""Model metadata that travels with every artifact.

Stored as ONNX ``metadata_props`` (keys prefixed ``gap.``) and copied into an engine's manifest, so
the runtime knows the class names, the input normalization and the smallest accepted image size
without PyTorch or the training code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from gap_deploy.runtime.errors import MetadataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREFIX = "gap."


def default_normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for RGB models, 0.5/0.5 for any other channel count (pixels scaled to [0, 1])."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.5,) * channels


@dataclass(frozen=True)
class ModelMetadata:
    arch: str = "unknown"
    in_channels: int | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    min_height: int = 1
    min_width: int = 1
    #: the size the model was exported (and usually trained) at: gap-bench's default shape
    export_height: int | None = None
    export_width: int | None = None
    precision: str = "fp32"
    toolkit_version: str | None = None
    source_sha256: str | None = None
    #: FP16 models: the layers kept in float32 (by hand or by the automatic fallback)
    fp32_layers: tuple[str, ...] | None = None
    #: INT8 models: the graph layout ("tensorrt": symmetric; "cpu": asymmetric UINT8 activations)
    int8_layout: str | None = None
    #: the preprocessing contract's JSON (runtime.preprocess.Preprocess.to_json); mean and std are the fields above
    preprocess: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def class_name(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        return default_normalization(self.in_channels or 3)

    def preprocessing(self, size: tuple[int, int] | None = None, channels: int | None = None):
        """The model's preprocessing contract (runtime.preprocess), at ``size`` (``--imgsz``) when given, checked
        against the ``channels`` the model really takes when given. A model exported without one gets the legacy
        contract: its own size, or stretched to ``size``."""
        from gap_deploy.runtime.preprocess import Preprocess, legacy

        mean, std = self.normalization()
        if self.preprocess is None:
            contract = legacy(size, mean, std)
        else:
            contract = Preprocess.from_json(self.preprocess, mean=mean, std=std).sized(size)
        return contract.validate(channels) if channels is not None else contract

    def replace(self, **changes) -> ModelMetadata:
        values = asdict(self)
        values.update(changes)
        return ModelMetadata(**values)

    def to_props(self) -> dict[str, str]:
        """Flatten to the string->string map that ONNX metadata_props and manifests hold."""
        props: dict[str, str] = {}
        for key, value in asdict(self).items():
            if key == "extra" or value is None:
                continue
            props[PREFIX + key] = json.dumps(list(value)) if isinstance(value, tuple) else str(value)
        props.update(self.extra)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        """Read what ``to_props`` wrote; foreign models (no ``gap.`` keys) give the defaults."""
        known = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        extra = {k: v for k, v in props.items() if not k.startswith(PREFIX)}

        def bad(name: str, why: str) -> MetadataError:
            return MetadataError(f"the model's metadata '{PREFIX}{name}' = {known[name][:80]!r} is invalid: {why}.",
                                 hint="re-export the model with gap-export; metadata written by hand or edited "
                                      "afterwards is not trusted.")

        def ints(name: str, default, minimum: int = 1):
            if name not in known:
                return default
            try:
                value = int(known[name])
            except ValueError:
                raise bad(name, "not a whole number") from None
            if value < minimum:
                raise bad(name, f"below {minimum}")
            return value

        def json_list(name: str) -> list | None:
            if name not in known:
                return None
            try:
                values = json.loads(known[name])
            except ValueError:
                raise bad(name, "not valid JSON") from None
            if not isinstance(values, list):
                raise bad(name, "not a JSON list")
            return values

        def strings(name: str) -> tuple[str, ...] | None:
            values = json_list(name)
            if values is not None and not all(isinstance(v, str) for v in values):
                raise bad(name, "not a list of strings")
            return None if values is None else tuple(str(v) for v in values)

        def floats(name: str) -> tuple[float, ...] | None:
            values = json_list(name)
            if values is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in values):
                raise bad(name, "not a list of finite numbers")
            return None if values is None else tuple(float(v) for v in values)

        meta = cls(
            arch=known.get("arch", "unknown"),
            in_channels=ints("in_channels", None),
            num_classes=ints("num_classes", None),
            class_names=strings("class_names"),
            mean=floats("mean"),
            std=floats("std"),
            min_height=ints("min_height", 1),
            min_width=ints("min_width", 1),
            export_height=ints("export_height", None),
            export_width=ints("export_width", None),
            precision=known.get("precision", "fp32"),
            toolkit_version=known.get("toolkit_version"),
            source_sha256=known.get("source_sha256"),
            fp32_layers=strings("fp32_layers"),
            int8_layout=known.get("int8_layout"),
            preprocess=known.get("preprocess"),
            extra=extra,
        )
        meta.validate(bad)
        return meta

    def validate(self, bad) -> None:
        """Cross-field checks: counts agree with the channels and classes; std is positive."""
        channels = self.in_channels
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and channels is not None and len(values) not in (1, channels):
                raise bad(name, f"{len(values)} values for {channels} input channels")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise bad("std", "every std must be > 0 (a std of 0 divides by zero)")
        if self.preprocess is not None:
            from gap_deploy.runtime.preprocess import Preprocess

            def lie(why: str):
                return bad("preprocess", why)

            mean, std = self.normalization()
            Preprocess.from_json(self.preprocess, mean=mean, std=std, bad=lie).validate(channels, bad=lie)
        if self.class_names is not None and self.num_classes is not None and len(self.class_names) != self.num_classes:
            raise bad("class_names", f"{len(self.class_names)} names for {self.num_classes} classes")
