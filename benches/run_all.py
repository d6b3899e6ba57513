"""Every benchmark in turn (``make bench``), each table printed and collected into .peers/runs/RESULTS-<date>.md.

    PYTHONPATH=$PWD python benches/run_all.py [--samples 32] [--with-llmcompressor]

1. benches/bench_quality.py: SmolLM2-135M quantized with RTN / GPTQ / AWQ / AWQ+GPTQ, 4 and 3 bits, evaluated
   against the float model (with llama.cpp's GGUF rows when benches/bench_llamacpp_quality.py has run).
2. benches/bench_speed.py: the GPTQ int4 g32 checkpoint exported to ExecuTorch (XNNPACK 8da4w) and ONNX, each
   checked against the checkpoint and profiled; llama.cpp's speed on the same model when it is built.
3. with --with-llmcompressor: benches/bench_gptq.py, our GPTQ against llm-compressor's (needs
   benches/peers/setup_llmcompressor.sh; about half an hour at 32 samples on 2 cores).

Peers (llama.cpp, llm-compressor) are optional: without them their rows are left out and said so.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches.peers.common import MAIN_PYTHON, REPO, peers_dir, repo_env  # noqa: E402


def run(script: str, *args: str) -> str:
    print(f"\n## {script} {' '.join(args)}\n", flush=True)
    p = subprocess.run([MAIN_PYTHON, str(REPO / "benches" / script), *args], env=repo_env(), cwd=REPO, stdout=subprocess.PIPE, text=True)
    print(p.stdout, flush=True)
    if p.returncode:
        return f"## {script}\n\nfailed with exit code {p.returncode}\n"
    return f"## {script} {' '.join(args)}\n\n{p.stdout}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--with-llmcompressor", action="store_true")
    a = ap.parse_args()
    parts = [f"# edgequant benchmarks, {time.strftime('%Y-%m-%d %H:%M')} (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)\n"]
    if (peers_dir() / "gguf").is_dir() and (peers_dir() / "llama.cpp" / "bin").is_dir():
        parts.append(run("bench_llamacpp_quality.py"))
    parts.append(run("bench_quality.py", "--samples", str(a.samples)))
    parts.append(run("bench_speed.py"))
    if a.with_llmcompressor:
        parts.append(run("bench_gptq.py", "--samples", str(a.samples)))
    dest = peers_dir() / "runs" / f"RESULTS-{time.strftime('%Y%m%d-%H%M')}.md"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(parts))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
