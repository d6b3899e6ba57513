"""Accuracy of llama.cpp's GGUF quantizations of SmolLM2-135M-Instruct, measured by edgequant's evaluation.

    PYTHONPATH=$PWD python benches/bench_llamacpp_quality.py [--max-tokens 8192] [--seq-len 512] [--json]

Each GGUF (Q4_1 as shipped, which is the float reference once dequantized; Q8_0, Q4_K_M and Q4_0 made by
llama-quantize --allow-requantize from that Q4_1 file, see benches/peers/gguf_variants.py) is loaded through
transformers' GGUF reader (dequantized to float32) and scored with

    edgequant eval X.gguf --ref smollm2 --text builtin:britannica --max-tokens 8192 --seq-len 512 --json

so the numbers are the same metrics, text and windows as edgequant's own checkpoints. This measures the
weights' quantization error only (llama.cpp's kernels are not involved: they would add activation quantization
to 8 bits in its dot products; llama-perplexity --kl-divergence is llama.cpp's own yardstick for that).
Prints a table; results are cached under .peers/runs/quality/ (--force to redo).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches.peers.common import MAIN_PYTHON, REPO, gguf_bits_per_weight, peers_dir, print_table, repo_env  # noqa: E402
from benches.peers.gguf_variants import make_variants  # noqa: E402


def eval_cmd(model: str, ref: str, text: str, max_tokens: int, seq_len: int) -> list[str]:
    return [MAIN_PYTHON, "-m", "edgequant.cli", "eval", model, "--ref", ref, "--text", text,
            "--max-tokens", str(max_tokens), "--seq-len", str(seq_len), "--json"]


def run_eval(model: str, ref: str = "smollm2", text: str = "builtin:britannica", max_tokens: int = 8192, seq_len: int = 512,
             cache: Path | None = None, force: bool = False) -> dict:
    """edgequant eval as a subprocess (the worktree's package first on PYTHONPATH); the parsed JSON."""
    if cache is not None and cache.is_file() and not force:
        return json.loads(cache.read_text())
    cmd = eval_cmd(model, ref, text, max_tokens, seq_len)
    env = repo_env()
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"edgequant eval failed for {model}:\n{r.stderr[-3000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    d["command"] = " ".join(cmd)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(d, indent=1))
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["Q4_1", "Q8_0", "Q4_K_M", "Q4_0"])
    ap.add_argument("--text", default="builtin:britannica")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    files = make_variants(types=[t for t in a.types if t != "Q4_1"])
    rows = []
    for t in a.types:
        tag = f"{t}_{a.text.replace(':', '-')}_{a.max_tokens}_{a.seq_len}"
        d = run_eval(str(files[t]), "smollm2", a.text, a.max_tokens, a.seq_len, peers_dir() / "runs" / "quality" / f"{tag}.json", a.force)
        bpw = gguf_bits_per_weight(files[t])
        rows.append({"gguf": t + (" (reference)" if t == "Q4_1" else ""), "bpw": bpw["bpw"], "bpw_linears": bpw["bpw_linears"],
                     "ppl": d["ppl"], "ref_ppl": d.get("ref_ppl"), "kl": d.get("kl"), "kl_p99": d.get("kl_p99"),
                     "top1": 100 * d["top1"] if d.get("top1") is not None else None, "tokens": d["tokens"]})
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"SmolLM2-135M-Instruct GGUF quantizations, edgequant eval on {a.text}, {rows[0]['tokens']} tokens, "
          f"windows of {a.seq_len}; reference = the Q4_1 GGUF dequantized (ppl {rows[0]['ref_ppl']:.4f})")
    print_table(rows, [("gguf", "GGUF", ""), ("bpw", "bits/weight (all)", ".3f"), ("bpw_linears", "bits/weight (linears)", ".3f"),
                       ("ppl", "ppl", ".4f"), ("kl", "mean KL", ".6f"), ("kl_p99", "KL p99", ".5f"), ("top1", "top-1 %", ".2f")])


if __name__ == "__main__":
    main()
