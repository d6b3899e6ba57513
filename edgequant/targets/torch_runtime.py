"""The reference runtime: the quantized checkpoint run eagerly in torch through :class:`DecoderLM`.

Its "artifact" is the quantized checkpoint directory itself, so every command that takes an artifact
also takes a checkpoint, and the generation loop can be tested without any backend installed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from edgequant.targets.runtime import ArtifactMeta, LLMRuntime


class TorchRuntime(LLMRuntime):
    def __init__(self, path: Path, max_seq_len: int = 2048, threads: int | None = None) -> None:
        from edgequant.export.llm import DecoderLM
        from edgequant.models.loading import load_model

        if threads:
            torch.set_num_threads(threads)
        loaded = load_model(path)
        self.lm = DecoderLM.from_loaded(loaded, max_seq_len=max_seq_len)
        spec = self.lm.spec
        info = loaded.quant_info
        self.meta = ArtifactMeta.for_decoder(spec, target="torch", scheme=info.default_scheme.describe() if info else "float", source=path)

    def reset(self) -> None:
        self.lm.reset_cache()

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1)
        pos = torch.arange(start_pos, start_pos + tokens.shape[1])
        return self.lm(tokens, pos)[0].float()
