"""The runtime interface every target implements, so check, profile and generate work on any artifact.

A runtime holds a loaded artifact with its KV cache and answers one question: the logits of ``tokens``
placed at positions ``start_pos ..``. Everything else (generation with a thinking budget, teacher-forced
parity, timing) is written once against this interface.
"""
from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class ArtifactMeta:
    """What a runner needs, stored inside (or beside) every artifact."""

    target: str
    vocab_size: int
    max_seq_len: int
    bos_id: int | None
    eos_ids: list[int]
    n_layers: int = 0
    scheme: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def for_decoder(cls, spec, *, target: str, scheme: str, source, extra: dict | None = None) -> "ArtifactMeta":
        """The metadata of an artifact lowered from a decoder with geometry ``spec`` (an ``LLMSpec``)."""
        return cls(
            target=target, vocab_size=spec.vocab_size, max_seq_len=spec.max_seq_len, bos_id=spec.bos_id,
            eos_ids=list(spec.eos_ids), n_layers=spec.n_layers, scheme=scheme, source=str(source), extra=extra or {},
        )

    @classmethod
    def from_json(cls, s: str) -> "ArtifactMeta":
        d = json.loads(s)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class LLMRuntime(abc.ABC):
    """A loaded decoder artifact with a KV cache."""

    meta: ArtifactMeta
    #: the most tokens one forward call takes (static-shape artifacts); None for any number
    max_chunk: int | None = None

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the cache (a new sequence starts at position 0)."""

    @abc.abstractmethod
    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Logits [T, vocab] (float32) for ``tokens`` [T] at positions ``start_pos .. start_pos + T - 1``;
        the cache keeps them for later calls."""

    def prefill(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """Logits for a long run of tokens, in chunks of at most ``max_chunk``."""
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        if start_pos + tokens.numel() > self.meta.max_seq_len:
            from edgequant.errors import EdgequantError

            raise EdgequantError(
                f"{start_pos + tokens.numel()} positions exceed the artifact's max sequence length {self.meta.max_seq_len}; "
                "export with a larger --max-seq-len or use shorter windows"
            )
        step = self.max_chunk or tokens.numel()
        outs = []
        for s in range(0, tokens.numel(), step):
            outs.append(self.forward(tokens[s : s + step], start_pos + s))
        return torch.cat(outs)

    def per_op_profile(self, tokens: torch.Tensor, gen: int) -> list[dict] | None:
        """Optional: time broken down by operator (rows of {op, calls, ms, share}); None if unsupported."""
        return None

    def close(self) -> None:
        pass


def tokenizer_dir_for(artifact: Path) -> Path:
    """Where an artifact's tokenizer lives: inside a directory artifact that has one (ONNX), else in the
    sidecar directory ``<stem>.tokenizer`` beside it (``model.pte`` -> ``model.tokenizer/``)."""
    artifact = Path(artifact)
    if artifact.is_dir() and (artifact / "tokenizer_config.json").is_file():
        return artifact
    return artifact.with_suffix(".tokenizer")


def load_artifact_tokenizer(artifact: Path, tokenizer: str | Path | None = None):
    from edgequant.errors import InputError
    from edgequant.models.loading import load_tokenizer

    path = Path(tokenizer) if tokenizer else tokenizer_dir_for(artifact)
    if not path.exists():
        raise InputError(f"no tokenizer for {artifact}: expected {path}; pass --tokenizer DIR (the quantized checkpoint directory works)")
    return load_tokenizer(path)
