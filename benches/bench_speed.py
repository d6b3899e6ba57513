"""Speed, size and parity of the exported SmolLM2-135M artifacts on this CPU, beside llama.cpp on the same model.

    PYTHONPATH=$PWD python benches/bench_speed.py [--qdir DIR] [--targets xnnpack,onnx] [--threads 2] [--json]

From one quantized checkpoint (default: the GPTQ int4 g32 checkpoint benches/bench_quality.py writes; it is made
here with the same command when missing) it exports each target with ``edgequant export``, proves it with
``edgequant check`` against the checkpoint (teacher-forced on builtin:britannica, --check-tokens tokens), and times
it with ``edgequant profile`` (a fresh process per artifact: load time, prefill of a 128-token prompt, 64 decoded
tokens, medians of 3 runs after a warm-up, peak RSS). llama.cpp's Q4_0 and Q8_0 GGUFs of the same model are timed
with llama-bench (benches/peers/llamacpp_speed.py) when llama.cpp is built. Cached under .peers/runs/speed/.

The machine is shared and has 2 cores: each row carries the 1-minute load average before it ran.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches.peers.common import MAIN_PYTHON, REPO, peers_dir, print_table, repo_env  # noqa: E402

TARGETS = {
    "xnnpack": (["--target", "xnnpack", "--scheme", "8da4w"], ".pte", "ExecuTorch XNNPACK 8da4w"),
    "xnnpack-r": (["--target", "xnnpack", "--scheme", "8da4w-r"], "-r.pte", "ExecuTorch XNNPACK 8da4w-r"),
    "onnx": (["--target", "onnx"], "-onnx", "ONNX Runtime MatMulNBits"),
    "coreml": (["--target", "coreml"], ".mlpackage", "Core ML (macOS only to run)"),
}


def cli(*args: str, timeout: float = 3600) -> dict:
    p = subprocess.run([MAIN_PYTHON, "-m", "edgequant.cli", *args, "--json"], env=repo_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"edgequant {' '.join(args)} failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def cached(path: Path, fn, force: bool) -> dict:
    if path.is_file() and not force:
        return json.loads(path.read_text())
    d = fn()
    path.write_text(json.dumps(d, indent=1))
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qdir", type=Path)
    ap.add_argument("--targets", default="xnnpack,xnnpack-r,onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-tokens", type=int, default=2048)
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--export-only", action="store_true", help="export (cached) and stop: exports need no quiet machine, timings do")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    out = peers_dir() / "runs" / "speed"
    out.mkdir(parents=True, exist_ok=True)
    qdir = a.qdir
    if qdir is None:
        qdir = peers_dir() / "runs" / "quality" / "gptq-4b-g32_n32x512"
        if not (qdir / "quantization.json").is_file():
            subprocess.run([MAIN_PYTHON, str(REPO / "benches" / "bench_quality.py"), "--only", "gptq-4b-g32"], env=repo_env(), cwd=REPO, check=True)
    rows = []
    for t in a.targets.split(","):
        if t not in TARGETS:
            raise SystemExit(f"unknown target '{t}': choose from {', '.join(TARGETS)}")
        args, suffix, label = TARGETS[t]
        art = out / f"{qdir.name}{suffix}"
        load = os.getloadavg()[0]
        print(f"[{time.strftime('%H:%M:%S')}] {t}: export (load {load:.1f})", file=sys.stderr, flush=True)
        ex = cached(out / f"{art.name}.export.json", lambda: cli("export", str(qdir), *args, "--out", str(art), "--force", "--quiet"), a.force)
        row = {"artifact": label, "size_mb": ex.get("size_mb"), "export_s": ex.get("seconds"), "load": round(load, 1)}
        if a.export_only:
            continue
        try:
            print(f"[{time.strftime('%H:%M:%S')}] {t}: check", file=sys.stderr, flush=True)
            ck = cached(out / f"{art.name}.check{a.check_tokens}.json",
                        lambda: cli("check", str(art), "--ref", str(qdir), "--text", "builtin:britannica", "--max-tokens", str(a.check_tokens), "--quiet"), a.force)
            print(f"[{time.strftime('%H:%M:%S')}] {t}: profile", file=sys.stderr, flush=True)
            pr = cached(out / f"{art.name}.profile-t{a.threads}.json",
                        lambda: cli("profile", str(art), "--threads", str(a.threads), "--quiet"), a.force)
        except RuntimeError as e:  # e.g. a Core ML package on Linux: exported, not runnable here
            row["note"] = str(e).split(": ", 1)[-1][:80]
        else:
            row.update(top1=100 * ck["top1"], kl=ck["kl"], prefill=pr["prefill_tok_s"], decode=pr["decode_tok_s"], ttft_ms=1000 * pr["ttft_s"],
                       load_s=pr["load_s"], rss=pr["peak_rss_mb"])
        rows.append(row)
    if a.export_only:
        return
    if not a.no_llamacpp:
        try:
            from benches.peers.llamacpp_speed import llamacpp_speed

            for g in ("Q4_0", "Q8_0"):
                f = peers_dir() / "gguf" / f"SmolLM2-135M-Instruct.{g}.gguf"
                if not f.is_file():
                    continue
                load = os.getloadavg()[0]
                print(f"[{time.strftime('%H:%M:%S')}] llama.cpp {g}: llama-bench", file=sys.stderr, flush=True)
                sp = cached(out / f"llamacpp-{g}-t{a.threads}.json", lambda: llamacpp_speed(f, threads=a.threads), a.force)
                rows.append({"artifact": f"llama.cpp {g} (llama-bench)", "size_mb": f.stat().st_size / 2**20, "prefill": sp["prefill_tok_s"],
                             "decode": sp["decode_tok_s"], "load": round(sp.get("loadavg_1m_before", load), 1),
                             "note": "other checkpoint (requantized GGUF): speed only"})
        except SystemExit as e:  # llama.cpp not built
            print(f"llama.cpp rows skipped: {e}", file=sys.stderr)
    if a.json:
        print(json.dumps({"qdir": str(qdir), "threads": a.threads, "rows": rows}, indent=1))
        return
    print(f"SmolLM2-135M-Instruct from {qdir.name}; {a.threads} threads; prompt 128, 64 decoded tokens; "
          f"parity against the checkpoint on {a.check_tokens} tokens of builtin:britannica\n")
    print_table(rows, [("artifact", "artifact", ""), ("size_mb", "size MB", ".1f"), ("top1", "top-1 % vs ckpt", ".2f"), ("kl", "mean KL", ".2e"),
                       ("prefill", "prefill tok/s", ".0f"), ("decode", "decode tok/s", ".1f"), ("ttft_ms", "TTFT ms", ".0f"),
                       ("load_s", "load s", ".2f"), ("rss", "peak RSS MB", ".0f"), ("export_s", "export s", ".0f"), ("load", "load avg", ".1f"),
                       ("note", "note", "")])


if __name__ == "__main__":
    main()
