"""The ``edgequant`` command. Each subcommand is a thin call into the API; user errors print one line
and exit 2."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _scheme(args):
    from edgequant.compress.scheme import QuantScheme

    return QuantScheme(bits=args.bits, group_size=args.group_size, symmetric=not args.asym)


def _print(args, data: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(data))
    else:
        print("\n".join(lines))


def cmd_quantize(args) -> int:
    from edgequant.compress.gptq import GPTQConfig
    from edgequant.compress.quantize import quantize

    r = quantize(
        args.model,
        args.out,
        method=args.method,
        scheme=_scheme(args),
        calib=args.calib or ["builtin:mix"],
        samples=args.samples,
        seq_len=args.seq_len,
        seed=args.seed,
        gptq=GPTQConfig(damp=args.damp, block_size=args.block_size, act_order=args.act_order, static_groups=args.static_groups, mse=args.mse),
        guard=args.guard,
        guard_samples=args.guard_samples,
        rtn_mse=args.mse,
        true_sequential=not args.no_true_sequential,
        batch_size=args.batch_size,
        device=args.device,
        force=args.force,
        progress=not args.json and not args.quiet,
    )
    d = r.to_dict()
    _print(
        args,
        d,
        [
            f"wrote {r.out}: {r.method} {r.scheme}, {r.linears} linears, {r.size_mb:.1f} MB",
            f"time {r.seconds:.1f} s, peak memory {r.peak_rss_mb:.0f} MB"
            + (f", mean relative output error {r.mean_error:.5f}" if r.mean_error is not None else "")
            + (f", kept {r.chosen}" if len(r.chosen) > 1 else ""),
        ],
    )
    return 0


def cmd_eval(args) -> int:
    from edgequant.eval.evaluate import evaluate

    r, seconds = evaluate(args.model, args.text, ref=args.ref, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=not args.json and not args.quiet)
    d = {"model": str(args.model), "text": str(args.text), **r.to_dict(), "seconds": round(seconds, 2)}
    lines = [f"{'tokens':>10} {r.tokens}", f"{'ppl':>10} {r.ppl:.4f}"]
    if r.kl is not None:
        lines += [
            f"{'ref ppl':>10} {r.ref_ppl:.4f}",
            f"{'ln ratio':>10} {r.ln_ppl_ratio:+.5f}",
            f"{'mean KL':>10} {r.kl:.6f}",
            f"{'KL p99':>10} {r.kl_p99:.6f}",
            f"{'top-1':>10} {100 * r.top1:.2f}%",
        ]
    _print(args, d, lines)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgequant", description="Quantize LLM checkpoints and prove the phone-ready files.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    q = sub.add_parser("quantize", help="quantize a checkpoint (RTN or GPTQ) into a quantized checkpoint directory")
    q.add_argument("model", help="HF directory, .gguf file, or 'embedded' / 'smollm2'")
    q.add_argument("--method", default="gptq", choices=["rtn", "gptq"])
    q.add_argument("--bits", type=int, default=4)
    q.add_argument("--group-size", type=int, default=128, help="input channels per scale; -1 for per channel")
    q.add_argument("--asym", action="store_true", help="asymmetric (zero point per group)")
    q.add_argument("--calib", action="append", help="calibration text: .txt, .jsonl, a directory or builtin:NAME; repeat to mix (default builtin:mix)")
    q.add_argument("--samples", type=int, default=128)
    q.add_argument("--seq-len", type=int, default=512)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, a fraction of the mean Hessian diagonal")
    q.add_argument("--block-size", type=int, default=128, help="GPTQ lazy-update block")
    q.add_argument("--act-order", action="store_true", help="GPTQ columns in decreasing Hessian order (static groups)")
    q.add_argument("--static-groups", action="store_true")
    q.add_argument("--mse", action="store_true", help="choose each group's range by error search, not min-max")
    q.add_argument("--guard", action="append", help="held-out text unlike the calibration set: per layer keep GPTQ or RTN, whichever errs less on it")
    q.add_argument("--guard-samples", type=int, default=32)
    q.add_argument("--no-true-sequential", action="store_true", help="solve all linears of a block from one pass")
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--device", default="auto", help="auto, cpu or cuda")
    q.add_argument("--out", required=True)
    q.add_argument("--force", action="store_true", help="replace --out if it exists")
    common(q)
    q.set_defaults(func=cmd_quantize)

    e = sub.add_parser("eval", help="perplexity on a text; with --ref, KL and top-1 against a reference model")
    e.add_argument("model", help="quantized directory, HF directory, .gguf, or 'embedded' / 'smollm2'")
    e.add_argument("--text", required=True, help=".txt, .jsonl, a directory or builtin:NAME")
    e.add_argument("--ref", help="reference model (usually the float checkpoint)")
    e.add_argument("--seq-len", type=int, default=512)
    e.add_argument("--max-tokens", type=int)
    common(e)
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    from edgequant.errors import EdgequantError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgequantError as e:
        print(f"edgequant: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgequant: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
