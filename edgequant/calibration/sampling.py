"""Token streams and reproducible sampling of fixed-length windows."""
from __future__ import annotations

import torch

from edgequant.calibration.sources import Source
from edgequant.errors import CalibrationError


def tokenize_source(tokenizer, source: Source) -> torch.Tensor:
    """One stream of token ids: the source's documents, each followed by the end-of-sequence token."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in source.documents:
        ids.extend(tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def split_counts(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def sample_windows(streams: list[torch.Tensor], names: list[str], n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens, spread evenly over the streams, without overlap.

    The same streams, counts and seed give the same windows.
    """
    if n_samples < 1 or seq_len < 2:
        raise CalibrationError(f"need at least 1 sample of 2 tokens (asked for {n_samples} x {seq_len})")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for stream, name, want in zip(streams, names, split_counts(n_samples, len(streams))):
        if want == 0:
            continue
        available = stream.numel() // seq_len
        if available < want:
            raise CalibrationError(
                f"calibration text too short: {name} has {stream.numel():,} tokens, {available} windows of "
                f"{seq_len}, but {want} are needed; add text or lower --samples / --seq-len"
            )
        picks = torch.randperm(available, generator=gen)[:want]
        out.extend(stream[i * seq_len : (i + 1) * seq_len] for i in picks.tolist())
    return torch.stack(out)


def calibration_windows(tokenizer, sources: list[Source], n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    streams = [tokenize_source(tokenizer, s) for s in sources]
    return sample_windows(streams, [s.name for s in sources], n_samples, seq_len, seed)
