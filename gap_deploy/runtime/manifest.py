"""The sidecar manifest ``ENGINE.plan.json`` that gap-build writes and the runtime checks.

A plan is executable code and runs only on the GPU model and TensorRT version it was built for
(unless built compatible). The manifest records both, the plan's SHA-256 and the model metadata, and
is checked before any byte of the plan reaches TensorRT. The plan itself is never modified.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gap_deploy.runtime.errors import ArtifactError, ManifestMismatchError
from gap_deploy.runtime.naming import manifest_path  # noqa: F401 (the engine's sidecar, named in runtime.naming)
from gap_deploy.runtime.publish import publish_text

FORMAT = 1
HARDWARE_COMPAT = ("none", "ampere+", "same-cc")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


#: major version of the runtime -> majors whose version-compatible engines it runs (NVIDIA's 11.x support
#: matrix: engines built version-compatible with TensorRT 10 run on TensorRT 11)
_CROSS_MAJOR = {11: (10, 11)}


def version_compatible_runs(built: tuple[int, ...], here: tuple[int, ...]) -> bool:
    """Whether a version-compatible engine built with TensorRT ``built`` may run on TensorRT ``here``."""
    if not built or not here or here < built:
        return False
    return built[0] in _CROSS_MAJOR.get(here[0], (here[0],))


@dataclass(frozen=True)
class EngineManifest:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    plan_sha256: str
    onnx_sha256: str
    profiles: list[dict[str, list[list[int]]]]
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    metadata: dict[str, str] = field(default_factory=dict)
    builder: str = "gap-deploy"
    format: int = FORMAT
    #: whether FP32 layers may compute in TF32 (gap-build --tf32); None in manifests written before gap-deploy
    #: recorded it, whose engines kept TensorRT's default (TF32 on)
    tf32: bool | None = None
    #: the HMAC-SHA256 that manifests carried before signatures moved to runtime.signing (``<plan>.sig`` and
    #: ``<plan>.json.sig`` under a public key): read only to say such a plan must be re-signed; never written
    signature: str | None = None

    def fields(self) -> dict:
        return asdict(self)

    def check_types(self) -> None:
        """ValueError naming the field whose JSON type is not the one gap-build writes (a manifest is a file anyone
        can write: a string where the metadata map belongs must be a message, not an AttributeError later)."""
        for name in ("tensorrt_version", "gpu_name", "compute_capability", "precision", "plan_sha256", "onnx_sha256"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f'"{name}" is {type(getattr(self, name)).__name__}, not a string')
        if not isinstance(self.metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in self.metadata.items()):
            raise ValueError('"metadata" is not a map of names to strings')
        if not isinstance(self.profiles, list) or not all(isinstance(p, dict) for p in self.profiles):
            raise ValueError('"profiles" is not a list of objects')
        for name in ("version_compatible",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'"{name}" is not true or false')

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def write(self, plan: str | Path) -> Path:
        return publish_text(manifest_path(plan), self.to_json())

    @classmethod
    def read(cls, plan: str | Path) -> EngineManifest:
        path = manifest_path(plan)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            manifest = cls(**data)
            manifest.check_types()
            return manifest
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"cannot read engine manifest {path}: {exc}",
                                hint="rebuild the engine with gap-build, which writes the manifest.") from None

    def check(self, *, plan: Path, plan_sha256: str, tensorrt_version: str, gpu_name: str,
              compute_capability: str, lean: bool = False) -> None:
        """Raise ManifestMismatchError when the plan may not run here; the message says how to rebuild."""
        rebuild = f"rebuild it on this machine: gap-build MODEL.onnx -o {plan}"
        if plan_sha256 != self.plan_sha256:
            raise ManifestMismatchError(f"engine {plan} does not match its manifest (SHA-256 differs): the plan was "
                                        "modified or replaced after it was built.", hint=rebuild)
        here, built = _version_tuple(tensorrt_version), _version_tuple(self.tensorrt_version)
        if lean and not self.version_compatible:
            raise ManifestMismatchError(
                f"engine {plan} is not version-compatible, so the TensorRT lean runtime cannot run it.",
                hint=f"rebuild with gap-build --version-compatible, or install the full TensorRT "
                     f"{self.tensorrt_version}.")
        if self.version_compatible:
            if lean and built[:1] != here[:1] and version_compatible_runs(built, here):
                # NVIDIA's 11.x support matrix says TensorRT 10 version-compatible engines run with a TensorRT 11
                # runtime, without naming the lean runtime; unverified, so not assumed (gpu-review-4, risk 3)
                raise ManifestMismatchError(
                    f"engine {plan} was built version-compatible with TensorRT {self.tensorrt_version}; the TensorRT "
                    f"lean runtime {tensorrt_version} is not known to load another major version's engines.",
                    note="NVIDIA's support matrix promises TensorRT 10 -> 11 for the full runtime only.",
                    hint=f"install the full TensorRT {tensorrt_version} (gap-deploy[gpu]), or {rebuild} "
                         "--version-compatible.")
            if not version_compatible_runs(built, here):
                raise ManifestMismatchError(
                    f"engine {plan} was built version-compatible with TensorRT {self.tensorrt_version}; this machine "
                    f"runs {tensorrt_version}, which cannot load it.",
                    note="a version-compatible engine runs on the same or a newer TensorRT of its major version, and "
                         "one built with TensorRT 10 also on TensorRT 11 (NVIDIA's support matrix); never on an "
                         "older TensorRT.", hint=rebuild)
        elif here != built:
            raise ManifestMismatchError(f"engine {plan} was built with TensorRT {self.tensorrt_version}; this machine "
                                        f"runs {tensorrt_version}. Engines only run on the version that built them.",
                                        hint=rebuild + " (or build with --version-compatible).")
        cc_here, cc_built = _version_tuple(compute_capability), _version_tuple(self.compute_capability)
        if self.hardware_compatibility == "ampere+":
            if cc_here < (8, 0):
                raise ManifestMismatchError(f"engine {plan} targets Ampere or newer GPUs; this GPU ({gpu_name}) has "
                                            f"compute capability {compute_capability}.", hint=rebuild)
        elif cc_here != cc_built:
            raise ManifestMismatchError(
                f"engine {plan} was built for compute capability {self.compute_capability} ({self.gpu_name}); this GPU "
                f"({gpu_name}) has {compute_capability}.", hint=rebuild + " (or build with --hardware-compat ampere+).")
        elif self.hardware_compatibility == "none" and gpu_name != self.gpu_name:
            raise ManifestMismatchError(
                f"engine {plan} was built on a {self.gpu_name}; this GPU is a {gpu_name}.",
                hint=rebuild + " (or build with --hardware-compat same-cc to share engines between GPUs "
                               "of one compute capability).")
