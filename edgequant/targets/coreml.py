"""Runtimes for Core ML packages.

- :class:`CoreMLRuntime` runs an ``.mlpackage`` through Core ML itself (``MLModel.predict`` with a
  ``make_state()`` KV cache). Core ML prediction exists on macOS only; elsewhere it raises a
  :class:`TargetError` that names the Linux alternative.
- :class:`MILRuntime` runs the same package through edgequant's evaluator of the saved ML Program
  (:mod:`edgequant.export.mil_eval`), so ``check`` and ``generate`` work on Linux; its numbers prove the
  conversion, its timings say nothing about a phone.

:func:`runtime_class` picks one for the current machine.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgequant.errors import InputError, TargetError
from edgequant.targets.runtime import ArtifactMeta, LLMRuntime

LINUX_HINT = (
    "Core ML prediction needs macOS 15 or later (or iOS 18); on this machine run the package through edgequant's "
    "ML Program evaluator instead: edgequant.targets.coreml.MILRuntime (what `edgequant check model.mlpackage` "
    "uses off macOS)"
)


def read_meta(path: Path, metadata: dict[str, str], target: str) -> ArtifactMeta:
    """The :class:`ArtifactMeta` an edgequant package carries in its user-defined metadata."""
    from edgequant.export.coreml import META_KEY

    raw = metadata.get(META_KEY)
    if raw is None:
        raise InputError(f"{path} has no edgequant metadata ('{META_KEY}'): export it with `edgequant export --target coreml`")
    meta = ArtifactMeta.from_json(raw)
    meta.target = target
    return meta


def _check_window(meta: ArtifactMeta, n: int, start_pos: int) -> None:
    if n < 1:
        raise InputError("forward needs at least one token")
    if start_pos < 0 or start_pos + n > meta.max_seq_len:
        raise InputError(
            f"positions {start_pos}..{start_pos + n - 1} exceed the package's max sequence length {meta.max_seq_len}; "
            "export with a larger --max-seq-len"
        )


class CoreMLRuntime(LLMRuntime):
    """An ``.mlpackage`` run by Core ML (macOS)."""

    def __init__(self, path: Path, threads: int | None = None, compute_units: str = "ALL") -> None:
        if sys.platform != "darwin":
            raise TargetError(LINUX_HINT)
        from edgequant.export.coreml import import_coremltools

        ct = import_coremltools()
        path = Path(path)
        try:
            units = getattr(ct.ComputeUnit, compute_units)
        except AttributeError:
            raise TargetError(f"unknown Core ML compute units '{compute_units}'; choose ALL, CPU_ONLY, CPU_AND_GPU or CPU_AND_NE") from None
        t0 = time.time()
        self.model = ct.models.MLModel(str(path), compute_units=units)
        self.load_seconds = time.time() - t0
        self.meta = read_meta(path, dict(self.model.user_defined_metadata), "coreml")
        self.meta.extra = dict(self.meta.extra, compute_units=compute_units)
        self.state = self.model.make_state()

    @classmethod
    def for_this_machine(cls) -> type[LLMRuntime]:
        """The runtime that can run a package here: Core ML on macOS, the evaluator elsewhere."""
        return runtime_class()

    def reset(self) -> None:
        self.state = self.model.make_state()

    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        from edgequant.export.coreml import INPUT_START, INPUT_TOKENS, OUTPUT_LOGITS

        tokens = torch.as_tensor(tokens).reshape(-1)
        _check_window(self.meta, tokens.numel(), start_pos)
        feed = {
            INPUT_TOKENS: tokens.numpy().astype(np.int32)[None],
            INPUT_START: np.array([start_pos], dtype=np.int32),
        }
        out = self.model.predict(feed, state=self.state)[OUTPUT_LOGITS]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).reshape(tokens.numel(), -1)


class MILRuntime(LLMRuntime):
    """An ``.mlpackage`` run by edgequant's ML Program evaluator (any OS; slow, exact to the program)."""

    def __init__(self, path: Path, threads: int | None = None, compute_units: str | None = None) -> None:
        """``compute_units`` is accepted (and ignored) so options meant for Core ML do not break the fallback."""
        from edgequant.export.mil_eval import MILProgram

        if threads:
            torch.set_num_threads(threads)
        path = Path(path)
        self.program = MILProgram(path)
        self.meta = read_meta(path, self.program.metadata, "coreml-mil-eval")
        self.state = self.program.make_state()

    def reset(self) -> None:
        self.state = self.program.make_state()

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        from edgequant.export.coreml import INPUT_START, INPUT_TOKENS, OUTPUT_LOGITS

        tokens = torch.as_tensor(tokens).reshape(-1)
        _check_window(self.meta, tokens.numel(), start_pos)
        out = self.program.predict(
            {INPUT_TOKENS: tokens.to(torch.int32)[None], INPUT_START: torch.tensor([start_pos], dtype=torch.int32)}, self.state
        )[OUTPUT_LOGITS]
        return out.float().reshape(tokens.numel(), -1)


def runtime_class() -> type[LLMRuntime]:
    """Core ML itself on macOS, the evaluator elsewhere."""
    return CoreMLRuntime if sys.platform == "darwin" else MILRuntime


def package_summary(path: Path) -> dict:
    """Inputs, outputs, states and metadata of a package, read from its spec (any OS)."""
    from edgequant.export.coreml import import_coremltools

    ct = import_coremltools()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()

    def arr(t):
        a = t.multiArrayType
        rng = [(r.lowerBound, r.upperBound) for r in a.shapeRange.sizeRanges]
        return {"shape": list(a.shape), "range": rng, "dtype": a.ArrayDataType.Name(a.dataType)}

    return {
        "spec_version": spec.specificationVersion,
        "inputs": {d.name: arr(d.type) for d in spec.description.input},
        "outputs": {d.name: arr(d.type) for d in spec.description.output},
        "states": {
            d.name: {"shape": list(d.type.stateType.arrayType.shape), "dtype": d.type.stateType.arrayType.ArrayDataType.Name(d.type.stateType.arrayType.dataType)}
            for d in spec.description.state
        },
        "metadata": json.loads(json.dumps(dict(spec.description.metadata.userDefined))),
    }
