"""The end-to-end demo on the embedded model (a small Llama trained on Shakespeare by
scripts/train_embedded.py): quantize it with RTN and GPTQ, evaluate against the float model on two
plays it never saw, export the GPTQ checkpoint to every target, prove each artifact and time it.

    python scripts/demo.py [--out runs/demo] [--quick]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgequant  # noqa: E402,F401  (sets the determinism environment before torch loads)


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(c) for c in cells)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--quick", action="store_true", help="fewer calibration samples and evaluation tokens")
    args = ap.parse_args()

    from edgequant.compress.quantize import quantize
    from edgequant.compress.scheme import QuantScheme
    from edgequant.eval.evaluate import evaluate
    from edgequant.models.loading import EMBEDDED_MODEL

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    samples = 32 if args.quick else 128
    eval_tokens = 4096 if args.quick else 16384
    text = "builtin:shakespeare-heldout"
    calib = "builtin:shakespeare"
    print(f"embedded model: {EMBEDDED_MODEL}  (held-out text: Hamlet and The Tempest, {eval_tokens} tokens)\n")

    rows = []
    float_res, _ = evaluate(EMBEDDED_MODEL, text, seq_len=256, max_tokens=eval_tokens, progress=False)
    rows.append(["float16 weights", "-", f"{16:.2f}", float_res.ppl, 0.0, 1.0, "-"])
    runs = [
        ("RTN int3 g128", "rtn", QuantScheme(3, 128, True)),
        ("GPTQ int3 g128", "gptq", QuantScheme(3, 128, True)),
        ("RTN int4 g128", "rtn", QuantScheme(4, 128, True)),
        ("GPTQ int4 g128", "gptq", QuantScheme(4, 128, True)),
    ]
    qdirs = {}
    for label, method, scheme in runs:
        qdir = out / label.lower().replace(" ", "-")
        t = time.time()
        quantize(EMBEDDED_MODEL, qdir, method=method, scheme=scheme, calib=calib, samples=samples, seq_len=256, progress=False)
        secs = time.time() - t
        res, _ = evaluate(qdir, text, ref=EMBEDDED_MODEL, seq_len=256, max_tokens=eval_tokens, progress=False)
        rows.append([label, method, f"{scheme.bits_per_weight(256):.2f}", res.ppl, res.kl, res.top1, f"{secs:.1f}"])
        qdirs[label] = qdir
    print(table(["model", "method", "bits/weight", "ppl", "mean KL", "top-1", "quantize s"], rows))
    (out / "quality.json").write_text(json.dumps(rows, indent=1))

    # the GPTQ int4 checkpoint, lowered to every target, proved against the checkpoint and timed
    from edgequant.errors import EdgequantError
    from edgequant.export.api import export
    from edgequant.targets.parity import check
    from edgequant.targets.profile import profile

    src = qdirs["GPTQ int4 g128"]
    print(f"\n{src.name} exported, checked against the checkpoint ({eval_tokens // 4} tokens) and profiled (2 threads, "
          "prompt 128, 64 new tokens):\n")
    targets = [("xnnpack", "8da4w", ".pte"), ("xnnpack", "8da4w-r", "-r.pte"), ("xnnpack", "4w", "-4w.pte"), ("onnx", None, "-onnx"), ("coreml", None, ".mlpackage")]
    speed = []
    for target, scheme, suffix in targets:
        art = out / f"{src.name}{suffix}"
        label = target + (f" {scheme}" if scheme else "")
        try:
            ex = export(src, target, art, scheme=scheme, max_seq_len=512)
        except (EdgequantError, ImportError) as e:
            speed.append([label, "-", "-", "-", "-", "-", f"not exported: {str(e)[:60]}"])
            continue
        row = [label, f"{ex.size_mb:.2f}"]
        try:
            r, _ = check(art, src, text, seq_len=256, max_tokens=eval_tokens // 4)
            row += [f"{100 * r.top1:.2f}%", f"{r.kl:.2e}"]
        except EdgequantError as e:
            row += ["-", "-"]
            speed.append(row + ["-", "-", f"exported; {str(e)[:70]}"])
            continue
        if target == "coreml" and sys.platform != "darwin":
            speed.append(row + ["-", "-", "checked with the MIL evaluator; Core ML itself runs on Apple OSes"])
            continue
        try:
            p = profile(art, prompt_len=128, gen=64, runs=3, threads=2)
            row += [f"{p.prefill_tok_s:.0f}", f"{p.decode_tok_s:.0f}", ""]
        except EdgequantError as e:
            row += ["-", "-", f"not timed: {str(e)[:60]}"]
        speed.append(row)
    print(table(["target", "size MB", "top-1 vs ckpt", "mean KL", "prefill tok/s", "decode tok/s", "note"], speed))
    (out / "targets.json").write_text(json.dumps(speed, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
