"""GPTQ side by side: llm-compressor's GPTQModifier vs edgequant's GPTQ on SmolLM2-135M-Instruct, same scheme, same
calibration tokens, same evaluation.

    PYTHONPATH=$PWD python benches/bench_gptq.py [--samples 128] [--seq-len 512] [--group-size 64] [--json]

Needs .peers/llmc-venv (benches/peers/setup_llmcompressor.sh). Steps, all outputs under .peers/runs/gptq/:
  1. SmolLM2 as a Hugging Face safetensors directory (edgequant.models.loading.load_model('smollm2'), i.e. the Q4_1
     GGUF dequantized to float32, saved with save_pretrained plus the tokenizer): the input of BOTH tools.
  2. The calibration windows edgequant uses: calibration_windows(tok, read_sources('builtin:mix', tok), N, L, seed=0),
     saved as calib_NxL.safetensors (input_ids [N, L]) and fed to llm-compressor as a pre-tokenized dataset.
  3. llm-compressor (own venv, subprocess benches/peers/llmc_gptq_child.py): W4 symmetric, group 64, Linear targets,
     lm_head ignored; its weights are fake-quantized into a plain HF dir for evaluation.
  4. edgequant quantize HF_DIR --method gptq --group-size 64 --samples N --seq-len L (main venv, this worktree).
  5. edgequant eval of both (and optionally edgequant RTN) against the float model on builtin:britannica.
Each tool runs as its own process under /usr/bin/time -v: wall time and peak RSS cover the whole process (imports,
loading, calibration, solve, writing). Prints one table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches.peers.common import MAIN_PYTHON, REPO, peers_dir, print_table, repo_env  # noqa: E402

CHILD = REPO / "benches" / "peers" / "llmc_gptq_child.py"


def ensure_hf_dir(dest: Path) -> Path:
    if (dest / "config.json").is_file():
        return dest
    # transformers marks a model read from GGUF as "quantized with gguf" and refuses to save it; its weights are
    # plain float32 tensors by then, so the marks are dropped before saving.
    code = (
        "import sys; from edgequant.models.loading import load_model; m = load_model('smollm2'); "
        "m.model.hf_quantizer = None; m.model.config.__dict__.pop('quantization_config', None); "
        "m.model.save_pretrained(sys.argv[1]); m.tokenizer.save_pretrained(sys.argv[1])"
    )
    tmp = dest.with_name(dest.name + ".partial")
    subprocess.run([MAIN_PYTHON, "-c", code, str(tmp)], check=True, env=repo_env(), cwd=REPO)
    tmp.rename(dest)
    return dest


def ensure_calib(hf_dir: Path, samples: int, seq_len: int, seed: int, dest: Path) -> tuple[Path, str]:
    if not dest.is_file():
        code = (
            "import sys; from transformers import AutoTokenizer; from safetensors.torch import save_file\n"
            "from edgequant.calibration.sampling import calibration_windows\n"
            "from edgequant.calibration.sources import read_sources\n"
            "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
            "w = calibration_windows(tok, read_sources('builtin:mix', tok), int(sys.argv[2]), int(sys.argv[3]), seed=int(sys.argv[4]))\n"
            "save_file({'input_ids': w.contiguous()}, sys.argv[5])\n"
        )
        subprocess.run([MAIN_PYTHON, "-c", code, str(hf_dir), str(samples), str(seq_len), str(seed), str(dest)],
                       check=True, env=repo_env(), cwd=REPO)
    from safetensors.torch import load_file

    ids = load_file(str(dest))["input_ids"]
    assert tuple(ids.shape) == (samples, seq_len), ids.shape
    return dest, hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]


def timed(cmd: list[str], env: dict, log: Path) -> dict:
    """Run under /usr/bin/time -v; wall seconds, peak RSS (MB) and the last stdout line."""
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.time()
    load0 = os.getloadavg()[0]
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.time() - t0
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}), see {log}:\n{r.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", r.stderr).group(1))
    sys_t = float(re.search(r"System time \(seconds\): ([\d.]+)", r.stderr).group(1))
    out = r.stdout.strip().splitlines()
    return {"wall_s": wall, "cpu_s": user + sys_t, "peak_rss_mb": rss_kb / 1024, "loadavg_1m_before": load0,
            "command": " ".join(cmd), "stdout_json": json.loads(out[-1]) if out and out[-1].startswith("{") else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--actorder", default="static", help="llm-compressor's actorder (its default: static); 'none' to match edgequant's default")
    ap.add_argument("--our-args", default="", help="extra arguments for edgequant quantize, e.g. '--act-order --static-groups'")
    ap.add_argument("--with-rtn", action="store_true", help="add edgequant RTN at the same scheme as a baseline row")
    ap.add_argument("--ref", default=None, help="float reference for eval (default: the HF directory of step 1, = smollm2)")
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--only", choices=["llmc", "edgequant"], help="run one tool only")
    ap.add_argument("--force", action="store_true", help="redo quantization runs that already have results")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    work = peers_dir() / "runs" / "gptq"
    work.mkdir(parents=True, exist_ok=True)
    llmc_py = peers_dir() / "llmc-venv" / "bin" / "python"
    if a.only != "edgequant" and not llmc_py.is_file():
        raise SystemExit(f"{llmc_py} missing: run benches/peers/setup_llmcompressor.sh first")
    hf = ensure_hf_dir(work / "smollm2-hf")
    ref = a.ref or str(hf)
    calib, calib_hash = ensure_calib(hf, a.samples, a.seq_len, a.seed, work / f"calib_{a.samples}x{a.seq_len}_seed{a.seed}.safetensors")
    tag = f"g{a.group_size}_n{a.samples}x{a.seq_len}"
    runs = []

    evals: list[tuple[dict, Path, Path]] = []  # (run row, model to evaluate, eval cache file)

    def run_tool(name: str, out: Path, cmd: list[str], env: dict, model_for_eval: Path) -> None:
        res_file = work / f"{out.name}.run.json"
        if res_file.is_file() and not a.force:
            t = json.loads(res_file.read_text())
        else:
            t = timed(cmd, env, work / f"{out.name}.log")
            res_file.write_text(json.dumps(t, indent=1))
        row = {"tool": name, **t}
        runs.append(row)
        evals.append((row, model_for_eval, work / f"{out.name}.eval{a.eval_tokens}.json"))

    if a.only != "edgequant":
        out = work / f"llmc_gptq_{tag}_act{a.actorder}"
        run_tool(f"llm-compressor GPTQ (actorder={a.actorder})", out,
                 [str(llmc_py), str(CHILD), "--model", str(hf), "--calib", str(calib), "--out", str(out),
                  "--group-size", str(a.group_size), "--actorder", a.actorder],
                 {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, out / "dense")
    if a.only != "llmc":
        extra = a.our_args.split()
        suffix = "".join(x.strip("-").replace("-", "")[:6] for x in extra)
        out = work / f"edgequant_gptq_{tag}{('_' + suffix) if suffix else ''}"
        run_tool("edgequant GPTQ" + (f" ({a.our_args})" if extra else ""), out,
                 [MAIN_PYTHON, "-m", "edgequant.cli", "quantize", str(hf), "--method", "gptq", "--group-size", str(a.group_size),
                  "--samples", str(a.samples), "--seq-len", str(a.seq_len), "--seed", str(a.seed), *extra,
                  "--out", str(out), "--force", "--json"],
                 repo_env(), out)
        if a.with_rtn:
            out = work / f"edgequant_rtn_g{a.group_size}"
            run_tool("edgequant RTN (no calibration)", out,
                     [MAIN_PYTHON, "-m", "edgequant.cli", "quantize", str(hf), "--method", "rtn", "--group-size", str(a.group_size),
                      "--out", str(out), "--force", "--json"], repo_env(), out)

    # One evaluation process for all results: the reference's logits are computed once (benches/peers/eval_many.py).
    todo = [str(m) for _, m, c in evals if a.force or not c.is_file()]
    if todo:
        print(f"evaluating {len(todo)} model(s) against {ref}", file=sys.stderr, flush=True)
        from benches.peers.eval_many import eval_many

        done = eval_many(ref, todo, "builtin:britannica", a.eval_tokens, 512)
        for _, m, c in evals:
            if str(m) in done:
                c.write_text(json.dumps(done[str(m)], indent=1))
    for row, _, c in evals:
        ev = json.loads(c.read_text())
        row.update({"ppl": ev["ppl"], "ref_ppl": ev.get("ref_ppl"), "kl": ev.get("kl"), "kl_p99": ev.get("kl_p99"),
                    "top1": 100 * ev["top1"], "eval_tokens": ev["tokens"]})

    summary = {"samples": a.samples, "seq_len": a.seq_len, "group_size": a.group_size, "calib_sha256_16": calib_hash,
               "reference": ref, "runs": runs}
    (work / f"results_{tag}{'_' + a.only if a.only else ''}.json").write_text(json.dumps(summary, indent=1))
    if a.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"GPTQ int4 symmetric, group {a.group_size}, {a.samples} x {a.seq_len} calibration tokens from builtin:mix "
          f"(seed {a.seed}, sha256 {calib_hash}); eval on builtin:britannica, {runs[0]['eval_tokens']} tokens, "
          f"windows of 512, reference = float SmolLM2 (ppl {runs[0]['ref_ppl']:.4f})")
    print_table(runs, [("tool", "tool", ""), ("wall_s", "wall s", ".1f"), ("cpu_s", "CPU s", ".1f"), ("peak_rss_mb", "peak RSS MB", ".0f"),
                       ("ppl", "ppl", ".4f"), ("kl", "mean KL", ".5f"), ("kl_p99", "KL p99", ".4f"), ("top1", "top-1 %", ".2f"),
                       ("loadavg_1m_before", "load", ".1f")])


if __name__ == "__main__":
    main()
