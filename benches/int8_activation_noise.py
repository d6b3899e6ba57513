"""How much int8 dynamic activations move a quantized model, and why no 8da4w program can agree with its
torch model at 99% top-1: the exported eager modules (the graphs ExecuTorch lowers) against the checkpoint's
float-activation numerics, and the 8da4w module against itself with its embeddings scaled by 1 + eps.

    python benches/int8_activation_noise.py QDIR [--max-tokens 2048] [--eps 1e-6]

Everything runs in eager torch (seconds per window); no program is lowered.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches.peers.common import print_table  # noqa: E402


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean KL(b || a) and top-1 agreement."""
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    return (lb.exp() * (lb - la)).sum(-1).mean().item(), (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("qdir", type=Path)
    ap.add_argument("--text", default="builtin:britannica")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--eps", type=float, default=1e-6)
    a = ap.parse_args()

    from edgequant.eval.evaluate import text_windows
    from edgequant.export.executorch import build_executorch_lm
    from edgequant.models.loading import load_model
    from edgequant.targets.torch_runtime import TorchRuntime

    loaded = load_model(a.qdir)
    windows = text_windows(loaded.tokenizer, a.text, a.seq_len, a.max_tokens)
    ref = TorchRuntime(a.qdir, max_seq_len=a.seq_len)
    lms = {s: build_executorch_lm(loaded, s, a.seq_len)[0] for s in ("8da4w", "8da4w-r")}

    def run(lm, w, scale: float = 1.0) -> torch.Tensor:
        emb = lm.embed_tokens
        forward = emb.forward
        if scale != 1.0:
            emb.forward = lambda ids: forward(ids) * scale
        try:
            with torch.no_grad():
                return lm(w[None], torch.arange(w.numel()))[0].float()
        finally:
            emb.forward = forward

    pairs: dict[str, list[tuple[float, float, int]]] = {}
    for w in windows:
        ref.reset()
        want = ref.prefill(w)
        got8 = run(lms["8da4w"], w)
        rows = {
            "8da4w module vs checkpoint": compare(got8, want),
            f"8da4w module vs itself, embeddings x (1 + {a.eps:g})": compare(run(lms["8da4w"], w, 1 + a.eps), got8),
            "8da4w-r module vs checkpoint": compare(run(lms["8da4w-r"], w), want),
        }
        for k, (kl, t1) in rows.items():
            pairs.setdefault(k, []).append((kl, t1, w.numel()))
    out = []
    for k, v in pairs.items():
        n = sum(x[2] for x in v)
        out.append({"pair": k, "kl": sum(x[0] * x[2] for x in v) / n, "top1": 100 * sum(x[1] * x[2] for x in v) / n, "tokens": n})
    print(f"{a.qdir.name}: eager modules exported for XNNPACK, {a.text}, windows of {a.seq_len}\n")
    print_table(out, [("pair", "pair", ""), ("kl", "mean KL", ".2e"), ("top1", "top-1 %", ".2f"), ("tokens", "tokens", "")])


if __name__ == "__main__":
    main()
