"""Core ML package of a quantized checkpoint, proven on Linux: conversion time, sizes against a float16
package, the weight round-trip, and the saved program's logits (run by edgequant's ML Program evaluator)
against the quantized torch model on held-out text. Prints a table and a JSON line; asserts nothing.

    python benches/coreml_report.py /work/artifacts/smollm2-rtn-g32 --out /tmp/coreml-bench \
        [--max-seq-len 1024] [--seq-len 512] [--max-tokens 2048] [--decode 64]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("qdir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--decode", type=int, default=64, help="the first window's last N tokens go one at a time (decode path)")
    ap.add_argument("--text", default="builtin:britannica")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from edgequant._io import dir_size_mb
    from edgequant.eval.evaluate import text_windows
    from edgequant.export.coreml import decoder_for, export_coreml, verify_package
    from edgequant.models.loading import load_model
    from edgequant.targets.coreml import MILRuntime
    from edgequant.targets.torch_runtime import TorchRuntime

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.qdir)
    res: dict = {"checkpoint": str(args.qdir)}
    pkgs = {}
    for weights in ("quantized", "float16"):
        p = out / f"{weights}.mlpackage"
        shutil.rmtree(p, ignore_errors=True)
        t = time.time()
        d = export_coreml(loaded, p, max_seq_len=args.max_seq_len, weights=weights, verify=False)
        res[f"{weights}_export_s"] = round(time.time() - t, 1)
        res[f"{weights}_convert_s"] = d["convert_seconds"]
        res[f"{weights}_size_mb"] = round(dir_size_mb(p), 2)
        res[f"{weights}_stored"] = d["stored_tensors"]
        pkgs[weights] = p
    lm, names = decoder_for(loaded, args.max_seq_len)
    t = time.time()
    proof = verify_package(pkgs["quantized"], lm, names)
    res["roundtrip"] = {k: proof[k] for k in ("weights_checked", "blockwise_weights", "exact", "max_abs_vs_float32_weight")}
    res["roundtrip_s"] = round(time.time() - t, 1)
    del lm

    rt = MILRuntime(pkgs["quantized"], threads=args.threads)
    ref = TorchRuntime(Path(args.qdir), max_seq_len=args.max_seq_len)
    windows = text_windows(loaded.tokenizer, args.text, min(args.seq_len, args.max_seq_len), args.max_tokens)
    same, kls, max_abs, n, t_eval = [], [], 0.0, 0, 0.0
    first_logits = None
    for i, w in enumerate(windows):
        rt.reset()
        t = time.time()
        if i == 0 and args.decode and w.numel() > args.decode:
            p = w.numel() - args.decode
            got = torch.cat([rt.forward(w[:p], 0)] + [rt.forward(w[j : j + 1], j) for j in range(p, w.numel())])
        else:
            got = rt.prefill(w, 0)
        t_eval += time.time() - t
        if i == 0:
            first_logits = got
        ref.reset()
        want = ref.forward(w, 0)
        lg, lw = torch.log_softmax(got, -1), torch.log_softmax(want, -1)
        kls.append((lw.exp() * (lw - lg)).sum(-1).clamp(min=0))
        same.append(got.argmax(-1) == want.argmax(-1))
        max_abs = max(max_abs, (got - want).abs().max().item())
        n += w.numel()
        print(f"window {i}: {w.numel()} tokens, top-1 {same[-1].float().mean():.4f}, max |dlogit| {(got - want).abs().max():.4f}", flush=True)
    kl = torch.cat(kls)
    res.update(
        tokens=n,
        windows=len(windows),
        top1=round(torch.cat(same).float().mean().item(), 5),
        kl_mean=float(kl.mean()),
        kl_p99=float(kl.quantile(0.99)),
        max_abs_logit_diff=round(max_abs, 4),
        evaluator_s=round(t_eval, 1),
    )
    # the float16 package computes with the same float16 weights: its logits must be identical
    f16 = MILRuntime(pkgs["float16"], threads=args.threads)
    w = windows[0]
    got16 = f16.prefill(w[: w.numel() - args.decode], 0) if args.decode else f16.prefill(w, 0)
    res["float16_package_vs_quantized_max_abs"] = (got16 - first_logits[: got16.shape[0]]).abs().max().item()

    rows = [
        ("package (int4 block-wise)", f"{res['quantized_size_mb']} MB"),
        ("package (float16 weights)", f"{res['float16_size_mb']} MB"),
        ("conversion (int4)", f"{res['quantized_convert_s']} s"),
        ("weights round-trip", f"{proof['weights_checked']} weights, {proof['blockwise_weights']} block-wise, exact={proof['exact']}"),
        ("tokens compared", str(n)),
        ("top-1 agreement", f"{100 * res['top1']:.2f}%"),
        ("mean KL", f"{res['kl_mean']:.2e} (p99 {res['kl_p99']:.2e})"),
        ("max |logit diff|", str(res["max_abs_logit_diff"])),
        ("float16 pkg vs int4 pkg", str(res["float16_package_vs_quantized_max_abs"])),
    ]
    for k, v in rows:
        print(f"{k:>28}  {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
