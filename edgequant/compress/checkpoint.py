"""The quantized checkpoint on disk, and loading it back into a torch model.

A quantized checkpoint is a directory:

- ``config.json`` and the tokenizer files, as the source checkpoint had them;
- ``model.safetensors``: for every quantized module ``NAME``, ``NAME.qweight`` (uint8, the codes of each
  output row packed as a little-endian bit stream: two 4-bit codes per byte, low nibble first),
  ``NAME.scales`` (float16, [rows, groups]), ``NAME.qzeros`` (uint8, [rows, groups], asymmetric schemes
  only; symmetric ones have the implicit zero point 2^(bits-1)) and ``NAME.bias`` where the layer has one;
  every other tensor under its usual name, in float;
- ``quantization.json``: the format version, the method and its settings, the scheme of every quantized
  module, the calibration that was used, and the per-layer reconstruction errors.

The weight a module computes with is ``(code - zero) * scale`` for each group of ``group_size`` input
channels. Every exporter reads these codes and scales; none re-quantizes.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgequant.compress.grid import pack_codes, unpack_codes
from edgequant.compress.qlinear import QuantizedEmbedding, QuantizedLinear, set_submodule
from edgequant.compress.scheme import QuantScheme
from edgequant.errors import InputError

FORMAT_NAME = "edgequant-quantized"
FORMAT_VERSION = 1
INFO_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class ModuleQuant:
    """One quantized module. For a linear, ``in_features`` are the input channels (the grouped axis);
    for an embedding, ``in_features`` is the vocabulary size and ``out_features`` the hidden size (the
    grouped axis). ``tied_to`` names a module whose tensors this one shares (a tied embedding and
    lm_head are stored once, under the lm_head's name)."""

    kind: str  # "linear" or "embedding"
    scheme: QuantScheme
    in_features: int
    out_features: int
    tied_to: str | None = None

    def to_dict(self) -> dict:
        d = {"kind": self.kind, **self.scheme.to_dict(), "in_features": self.in_features, "out_features": self.out_features}
        if self.tied_to:
            d["tied_to"] = self.tied_to
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModuleQuant":
        scheme = QuantScheme(bits=d["bits"], group_size=d["group_size"], symmetric=d["symmetric"])
        return cls(kind=d["kind"], scheme=scheme, in_features=d["in_features"], out_features=d["out_features"], tied_to=d.get("tied_to"))


@dataclass
class QuantizationInfo:
    """What ``quantization.json`` holds."""

    method: str
    default_scheme: QuantScheme
    modules: dict[str, ModuleQuant]
    source: dict = field(default_factory=dict)
    calibration: dict | None = None
    settings: dict = field(default_factory=dict)
    errors: dict[str, dict] = field(default_factory=dict)
    recipe: dict | None = None

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "default_scheme": self.default_scheme.to_dict(),
            "source": self.source,
            "calibration": self.calibration,
            "settings": self.settings,
            "recipe": self.recipe,
            "modules": {k: v.to_dict() for k, v in self.modules.items()},
            "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "QuantizationInfo":
        if d.get("format") != FORMAT_NAME:
            raise InputError(f"{INFO_FILE} is not an edgequant quantization record (format={d.get('format')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"quantized checkpoint format version {d.get('format_version')} is not supported "
                f"(this edgequant reads version {FORMAT_VERSION})"
            )
        return cls(
            method=d["method"],
            default_scheme=QuantScheme.from_dict(d["default_scheme"]),
            modules={k: ModuleQuant.from_dict(v) for k, v in d["modules"].items()},
            source=d.get("source", {}),
            calibration=d.get("calibration"),
            settings=d.get("settings", {}),
            errors=d.get("errors", {}),
            recipe=d.get("recipe"),
        )


def is_quantized_dir(path: Path) -> bool:
    return path.is_dir() and (path / INFO_FILE).is_file()


def quantized_modules(model: nn.Module) -> dict[str, QuantizedLinear | QuantizedEmbedding]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantizedLinear, QuantizedEmbedding))}


def checkpoint_tensors(model: nn.Module, info: "QuantizationInfo | None" = None) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` for a model whose quantized modules are in place."""
    qmods = quantized_modules(model)
    tied = {n for n, mq in (info.modules.items() if info else ()) if mq.tied_to}
    tensors: dict[str, torch.Tensor] = {}
    for name, m in qmods.items():
        if name in tied:
            continue
        tensors[f"{name}.qweight"] = pack_codes(m.codes, m.scheme.bits)
        tensors[f"{name}.scales"] = m.scales.contiguous()
        if not m.scheme.symmetric:
            tensors[f"{name}.qzeros"] = m.zeros.contiguous()
        if getattr(m, "bias", None) is not None:
            tensors[f"{name}.bias"] = m.bias.contiguous()
    seen: set[int] = set()
    for key, t in model.state_dict(keep_vars=False).items():
        if key.rpartition(".")[0] in qmods:
            continue
        ptr = t.data_ptr()
        if ptr in seen:  # tied (lm_head shares the embedding); the config re-ties it on load
            continue
        seen.add(ptr)
        tensors[key] = t.detach().contiguous()
    return tensors


def save_quantized(model: nn.Module, tokenizer, info: QuantizationInfo, out_dir: Path) -> None:
    """Write the checkpoint into ``out_dir`` (an empty directory the caller renames into place)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    # one metadata key only: safetensors writes the metadata map in hash order, which varies between calls, so
    # a second key would make the bytes of the same checkpoint differ (the format version is in quantization.json)
    save_file(checkpoint_tensors(model, info), str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # e.g. the GGUF loader's marker: our weights are plain tensors now
        del config.quantization_config
    config.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    (out_dir / INFO_FILE).write_text(json.dumps(info.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_info(path: Path) -> QuantizationInfo:
    try:
        d = json.loads((Path(path) / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {Path(path) / INFO_FILE}: {e}") from None
    return QuantizationInfo.from_dict(d)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = Path(path) / WEIGHTS_FILE
    if not f.is_file():
        raise InputError(f"{f} is missing")
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{f} is not a readable safetensors file: {e}") from None


def build_quantized_module(name: str, mq: ModuleQuant, tensors: dict[str, torch.Tensor]) -> nn.Module:
    src = mq.tied_to or name  # a tied module reads the tensors of the one it shares them with
    try:
        packed = tensors[f"{src}.qweight"]
        scales = tensors[f"{src}.scales"]
    except KeyError as e:
        raise InputError(f"quantized checkpoint lacks tensor {e.args[0]}") from None
    s = mq.scheme
    rows = mq.out_features if mq.kind == "linear" else mq.in_features
    cols = mq.in_features if mq.kind == "linear" else mq.out_features
    codes = unpack_codes(packed, s.bits, cols)
    if codes.shape != (rows, cols) or scales.shape != (rows, s.n_groups(cols)):
        raise InputError(f"quantized tensors of {name} have shapes {tuple(packed.shape)}/{tuple(scales.shape)}, not what {INFO_FILE} says")
    if s.symmetric:
        zeros = torch.full(scales.shape, s.implicit_zero, dtype=torch.uint8)
    else:
        zeros = tensors[f"{src}.qzeros"]
    if mq.kind == "embedding":
        return QuantizedEmbedding(codes, scales, zeros, s)
    return QuantizedLinear(codes, scales, zeros, s, bias=tensors.get(f"{name}.bias"))


def load_quantized_weights(model: nn.Module, info: QuantizationInfo, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Put the quantized modules and the float tensors of a checkpoint into a freshly built model."""
    for name, mq in info.modules.items():
        set_submodule(model, name, build_quantized_module(name, mq, tensors))
    for name, mq in info.modules.items():
        if mq.tied_to:  # share the very tensors, as the source model did
            a, b = model.get_submodule(name), model.get_submodule(mq.tied_to)
            a.codes, a.scales, a.zeros, a.weight = b.codes, b.scales, b.zeros, b.weight
    qnames = set(info.modules)
    floats = {k: v for k, v in tensors.items() if k.rpartition(".")[0] not in qnames}
    result = model.load_state_dict(floats, strict=False)
    if result.unexpected_keys:
        raise InputError(f"quantized checkpoint has tensors the model does not: {', '.join(result.unexpected_keys[:5])}")
    missing = [k for k in result.missing_keys if k.rpartition(".")[0] not in qnames]
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing:
        raise InputError(f"quantized checkpoint lacks tensors: {', '.join(missing[:5])}")
    if tied and not any(mq.tied_to for mq in info.modules.values()):
        model.tie_weights()
    return model
