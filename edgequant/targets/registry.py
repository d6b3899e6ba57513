"""Targets: a format, a default scheme, a runtime and a device.

Exporters and runtimes are named by import path and imported only when used, so a target whose
backend is not installed costs nothing until it is asked for, and then its error names the extra.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from edgequant.errors import MissingDependencyError, TargetError


@dataclass(frozen=True)
class Target:
    name: str
    format: str
    suffix: str  # what the artifact's name ends with ("" for a directory)
    default_scheme: str
    schemes: tuple[str, ...]
    runtime: str  # "module:Class" implementing LLMRuntime
    exporter: str  # "module:function"
    extra: str  # pip extra that installs the backend
    device: str = "local"
    description: str = ""


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "xnnpack", "executorch", ".pte", "8da4w", ("8da4w", "8da4w-r", "4w", "8w"),
            "edgequant.targets.executorch:ExecuTorchRuntime", "edgequant.export.executorch:export_executorch", "executorch",
            description="ExecuTorch .pte lowered to XNNPACK (Android and iOS CPUs)",
        ),
        Target(
            "onnx", "onnx", "", "matmulnbits", ("matmulnbits", "qdq"),
            "edgequant.targets.onnx:OnnxRuntime", "edgequant.export.onnx:export_onnx", "onnx",
            description="ONNX with MatMulNBits (or blocked DequantizeLinear) run in ONNX Runtime",
        ),
        Target(
            "coreml", "coreml", ".mlpackage", "blockwise", ("blockwise",),
            "edgequant.targets.coreml:CoreMLRuntime", "edgequant.export.coreml:export_coreml", "coreml",
            description="Core ML .mlpackage with block-wise int4/int8 weights and a stateful KV cache (iOS 18 / macOS 15)",
        ),
        Target(
            "torch", "torch", "", "checkpoint", ("checkpoint",),
            "edgequant.targets.torch_runtime:TorchRuntime", "", "",
            description="the quantized checkpoint itself, run eagerly in torch (the reference)",
        ),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target '{name}'; known targets: {', '.join(TARGETS)}") from None


def detect_target(artifact: Path) -> Target:
    """The target an artifact belongs to, from what it is."""
    from edgequant.compress.checkpoint import is_quantized_dir
    from edgequant.errors import InputError

    artifact = Path(artifact)
    if not artifact.exists():
        raise InputError(f"artifact not found: {artifact}")
    if artifact.suffix == ".pte":
        return TARGETS["xnnpack"]
    if artifact.suffix == ".mlpackage":
        return TARGETS["coreml"]
    if artifact.suffix == ".onnx" or (artifact.is_dir() and (artifact / "model.onnx").is_file()):
        return TARGETS["onnx"]
    if is_quantized_dir(artifact):
        return TARGETS["torch"]
    raise InputError(f"{artifact} is not an artifact edgequant knows (.pte, .mlpackage, an ONNX directory, or a quantized checkpoint)")


def load_object(spec: str, extra: str):
    module, _, name = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{e.name or module} is not installed: pip install 'edgequant[{extra}]'") from None
    return getattr(mod, name)


def open_runtime(artifact: Path, **options):
    target = detect_target(Path(artifact))
    cls = load_object(target.runtime, target.extra)
    # a runtime whose backend cannot run on this machine may name one that can (Core ML off macOS)
    if hasattr(cls, "for_this_machine"):
        cls = cls.for_this_machine()
    return cls(Path(artifact), **options)
