"""llama.cpp's CPU speed on a GGUF, measured with llama-bench: prefill and decode tokens per second.

    PYTHONPATH=$PWD python benches/peers/llamacpp_speed.py [GGUF or type ...] [--threads 2] [--json]

With no argument it times the Q4_0, Q4_1 and Q8_0 files of SmolLM2-135M-Instruct (benches/peers/gguf_variants.py).
Each file runs ``llama-bench -m FILE -t THREADS -p 128 -n 64 -r 5 -o json``: prefill = one 128-token prompt,
decode = 64 tokens generated one at a time; the reported rates are the medians of the 5 repetitions (llama-bench's
own warm-up run is not counted). ``llamacpp_speed(path)`` is the function the speed tables call.

The machine is shared: the 1-minute load average before and after each run is returned with the numbers, and a
loaded machine (load above the core count) gives numbers that mean little.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benches.peers.common import llamacpp_bin, median, print_table  # noqa: E402


def llamacpp_speed(gguf: str | os.PathLike, threads: int = 2, n_prompt: int = 128, n_gen: int = 64, reps: int = 5,
                   timeout: float = 900) -> dict:
    """{prefill_tok_s, decode_tok_s} (medians over ``reps``) plus the samples, llama-bench's mean/stddev, the
    command and the load average around the run."""
    cmd = [str(llamacpp_bin("llama-bench")), "-m", str(gguf), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
           "-r", str(reps), "-o", "json"]
    load0 = os.getloadavg()[0]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    load1 = os.getloadavg()[0]
    if r.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({r.returncode}): {r.stderr[-2000:]}")
    tests = json.loads(r.stdout)
    out: dict = {"file": str(gguf), "threads": threads, "n_prompt": n_prompt, "n_gen": n_gen, "reps": reps,
                 "command": " ".join(cmd), "loadavg_1m_before": load0, "loadavg_1m_after": load1}
    for t in tests:
        key = "prefill" if t["n_prompt"] > 0 and t["n_gen"] == 0 else "decode" if t["n_gen"] > 0 and t["n_prompt"] == 0 else None
        if key is None:
            continue
        out[f"{key}_tok_s"] = median(t["samples_ts"])
        out[f"{key}_samples_tok_s"] = t["samples_ts"]
        out[f"{key}_mean_tok_s"] = t["avg_ts"]
        out[f"{key}_stddev_tok_s"] = t["stddev_ts"]
        out["model_size_bytes"] = t["model_size"]
        out["model_type"] = t["model_type"]
        out["build_commit"] = t["build_commit"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["Q4_0", "Q4_1", "Q8_0"], help="GGUF paths or variant types")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    paths = {}
    for m in a.models:
        if Path(m).is_file():
            paths[Path(m).name] = Path(m)
        else:
            from benches.peers.gguf_variants import make_variants

            paths[m] = make_variants(types=[m] if m != "Q4_1" else [])[m]
    res = {name: llamacpp_speed(p, a.threads, a.prompt, a.gen, a.reps) for name, p in paths.items()}
    if a.json:
        print(json.dumps(res, indent=1))
        return
    rows = [{"model": k, "size_mb": v["model_size_bytes"] / 2**20, **v} for k, v in res.items()]
    print(f"llama.cpp {rows[0]['build_commit']}, llama-bench -t {a.threads} -p {a.prompt} -n {a.gen} -r {a.reps}, medians")
    print_table(rows, [("model", "GGUF", ""), ("size_mb", "MB", ".1f"), ("prefill_tok_s", f"prefill tok/s (pp{a.prompt})", ".1f"),
                       ("prefill_stddev_tok_s", "± sd", ".1f"), ("decode_tok_s", f"decode tok/s (tg{a.gen})", ".1f"),
                       ("decode_stddev_tok_s", "± sd", ".1f"), ("loadavg_1m_before", "load before", ".1f")])


if __name__ == "__main__":
    main()
