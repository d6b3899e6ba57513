"""``profile()``: load time, prefill and decode speed, time to first token, peak memory and size.

Each measurement runs in a fresh process (``python -m edgequant.targets.profile``) so peak resident
memory is the artifact's and its runtime's, not whatever the caller had loaded before.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from edgequant._io import dir_size_mb
from edgequant.errors import EdgequantError


@dataclass
class ProfileResult:
    artifact: str
    target: str
    prompt_len: int
    gen: int
    runs: int
    threads: int
    load_s: float
    prefill_tok_s: float
    decode_tok_s: float
    ttft_s: float
    peak_rss_mb: float
    size_mb: float
    per_run: list = field(default_factory=list)
    per_op: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_tokens(vocab_size: int, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed prompt of ``n`` token ids; the speed of a decoder does not depend on which tokens."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, max(4, vocab_size), (n,), generator=g)


def measure(artifact: Path, prompt_len: int, gen: int, runs: int, warmup: int, threads: int, per_op: bool, options: dict) -> dict:
    """Run inside the worker process."""
    from edgequant._io import peak_rss_mb
    from edgequant.targets.registry import open_runtime

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    rt = open_runtime(artifact, threads=threads, **options)
    load_s = time.perf_counter() - t0
    if prompt_len + gen > rt.meta.max_seq_len:
        raise EdgequantError(f"--prompt-len + --gen = {prompt_len + gen} exceeds the artifact's max sequence length {rt.meta.max_seq_len}")
    prompt = prompt_tokens(rt.meta.vocab_size, prompt_len)
    results = []
    for r in range(warmup + runs):
        rt.reset()
        t = time.perf_counter()
        logits = rt.prefill(prompt)[-1]
        tok = int(torch.argmax(logits))
        ttft = time.perf_counter() - t
        t_dec = time.perf_counter()
        pos = prompt_len
        for _ in range(gen - 1):
            logits = rt.forward(torch.tensor([tok]), pos)[-1]
            tok = int(torch.argmax(logits))
            pos += 1
        dec = time.perf_counter() - t_dec
        if r >= warmup:
            results.append({"ttft_s": ttft, "prefill_tok_s": prompt_len / ttft, "decode_tok_s": (gen - 1) / dec if gen > 1 else 0.0})
    ops = rt.per_op_profile(prompt, gen) if per_op else None
    rt.close()
    return {"target": rt.meta.target, "load_s": load_s, "runs": results, "peak_rss_mb": peak_rss_mb(), "per_op": ops}


def profile(
    artifact: str | Path,
    prompt_len: int = 128,
    gen: int = 64,
    runs: int = 3,
    warmup: int = 1,
    threads: int = 2,
    per_op: bool = False,
    **options,
) -> ProfileResult:
    from edgequant.targets.registry import detect_target

    artifact = Path(artifact)
    target = detect_target(artifact)
    if prompt_len < 1 or gen < 1 or runs < 1:
        raise EdgequantError("--prompt-len, --gen and --runs must be at least 1")
    req = json.dumps({"artifact": str(artifact), "prompt_len": prompt_len, "gen": gen, "runs": runs, "warmup": warmup, "threads": threads, "per_op": per_op, "options": options})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([sys.executable, "-m", "edgequant.targets.profile"], input=req, capture_output=True, text=True, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        err = [l for l in p.stderr.splitlines() if l.startswith("edgequant: error:")]
        raise EdgequantError(err[-1].split("error: ", 1)[1] if err else f"the profiling process failed: {p.stderr.strip().splitlines()[-1:] or p.returncode}")
    d = json.loads(lines[-1])
    runs_ = d["runs"]

    def med(k: str) -> float:
        return round(statistics.median(r[k] for r in runs_), 4)

    return ProfileResult(
        artifact=str(artifact), target=d["target"] or target.name, prompt_len=prompt_len, gen=gen, runs=runs, threads=threads,
        load_s=round(d["load_s"], 4), prefill_tok_s=med("prefill_tok_s"), decode_tok_s=med("decode_tok_s"), ttft_s=med("ttft_s"),
        peak_rss_mb=round(d["peak_rss_mb"], 1), size_mb=round(dir_size_mb(artifact), 3), per_run=runs_, per_op=d["per_op"],
    )


def _worker() -> int:
    from edgequant.errors import EdgequantError as _E

    req = json.loads(sys.stdin.read())
    try:
        out = measure(Path(req["artifact"]), req["prompt_len"], req["gen"], req["runs"], req["warmup"], req["threads"], req["per_op"], req["options"])
    except _E as e:
        print(f"edgequant: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
