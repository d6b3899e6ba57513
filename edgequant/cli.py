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
        recipe=args.recipe,
        calib=args.calib or ["builtin:mix"],
        think_mix=args.think_mix,
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

    r, seconds = evaluate(args.model, args.text, ref=args.ref, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=not args.json and not args.quiet, think_mix=args.think_mix)
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
    if r.parts:
        lines.append("")
        lines.append(f"{'part':>10} {'tokens':>8} {'ppl':>10}" + (f" {'mean KL':>10} {'top-1':>8}" if r.kl is not None else ""))
        for name in ("think", "answer"):
            p = r.parts[name]
            row = f"{name:>10} {p['tokens']:>8} {p['ppl']:>10.4f}"
            if r.kl is not None and p["tokens"]:
                row += f" {p['kl']:>10.6f} {100 * p['top1']:>7.2f}%"
            lines.append(row)
        lines.append(f"({r.parts['records']} records, {r.parts['thinking_records']} rendered in thinking mode)")
    _print(args, d, lines)
    return 0


def cmd_export(args) -> int:
    from edgequant.export.api import export

    r = export(args.qdir, args.target, args.out, scheme=args.scheme, max_seq_len=args.max_seq_len, force=args.force)
    _print(args, r.to_dict(), [f"wrote {r.out}: {r.target} ({r.scheme}), {r.size_mb:.1f} MB, max sequence {r.max_seq_len}, {r.seconds:.1f} s"])
    return 0


def cmd_generate(args) -> int:
    from edgequant.eval.generate import generate
    from edgequant.targets.registry import open_runtime
    from edgequant.targets.runtime import load_artifact_tokenizer

    runtime = open_runtime(args.artifact, threads=args.threads)
    tok = load_artifact_tokenizer(args.artifact, args.tokenizer)
    stream = None if args.json else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    r = generate(
        runtime, tok, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, think=args.think, think_budget=args.think_budget, chat=not args.raw, on_text=stream,
    )
    if args.json:
        print(json.dumps(r.to_dict()))
    else:
        print()
        print(
            f"[{r.prompt_tokens} prompt tokens, {r.new_tokens} new ({r.thinking_tokens} thinking"
            f"{', end of thinking forced' if r.forced_think_end else ''}), stop: {r.stop_reason}; "
            f"ttft {r.ttft_s * 1000:.0f} ms, prefill {r.prefill_tok_s:.1f} tok/s, decode {r.decode_tok_s:.1f} tok/s]",
            file=sys.stderr,
        )
    return 0


def cmd_check(args) -> int:
    from edgequant.targets.parity import check

    r, info = check(args.artifact, args.ref, args.text, seq_len=args.seq_len, max_tokens=args.max_tokens, tokenizer=args.tokenizer, progress=not args.json and not args.quiet)
    d = {"artifact": str(args.artifact), "ref": str(args.ref), **r.to_dict(), **info}
    _print(
        args,
        d,
        [
            f"{'target':>10} {info['target']}",
            f"{'tokens':>10} {r.tokens}",
            f"{'ppl':>10} {r.ppl:.4f}   (reference {r.ref_ppl:.4f})",
            f"{'mean KL':>10} {r.kl:.6f}   (p99 {r.kl_p99:.6f})",
            f"{'top-1':>10} {100 * r.top1:.2f}%",
        ],
    )
    return 0


def cmd_profile(args) -> int:
    from edgequant.targets.profile import profile

    r = profile(args.artifact, prompt_len=args.prompt_len, gen=args.gen, runs=args.runs, warmup=args.warmup, threads=args.threads, per_op=args.per_op)
    lines = [
        f"{'target':>14} {r.target}   ({r.threads} threads, medians of {r.runs} runs after {args.warmup} warm-up)",
        f"{'size':>14} {r.size_mb:.2f} MB",
        f"{'load':>14} {r.load_s * 1000:.0f} ms",
        f"{'prefill':>14} {r.prefill_tok_s:.1f} tok/s  ({r.prompt_len} tokens)",
        f"{'decode':>14} {r.decode_tok_s:.1f} tok/s  ({r.gen} tokens)",
        f"{'first token':>14} {r.ttft_s * 1000:.1f} ms",
        f"{'peak memory':>14} {r.peak_rss_mb:.0f} MB",
    ]
    if r.per_op:
        lines.append("")
        lines.append(f"{'operator':<48} {'calls':>7} {'ms':>10} {'share':>7}")
        for row in r.per_op[:25]:
            lines.append(f"{row['op'][:48]:<48} {row['calls']:>7} {row['ms']:>10.2f} {100 * row['share']:>6.1f}%")
    _print(args, r.to_dict(), lines)
    return 0


def cmd_sensitivity(args) -> int:
    from edgequant._io import check_output
    from edgequant.compress.sensitivity import sensitivity, write_text_atomic

    for path in (args.out, args.recipe_out):
        if path:
            check_output(path, args.force)
    if args.recipe_out and args.budget_mb is None:
        from edgequant.errors import EdgequantError

        raise EdgequantError("--recipe-out needs --budget-mb")
    try:
        bits = tuple(int(b) for b in args.bits.split(","))
    except ValueError:
        from edgequant.errors import SchemeError

        raise SchemeError(f"--bits takes a comma-separated list like 4,8, not {args.bits!r}") from None
    rep = sensitivity(
        args.model, calib=args.calib or ["builtin:mix"], bits=bits, group_size=args.group_size, symmetric=not args.asym,
        samples=args.samples, seq_len=args.seq_len, seed=args.seed, positions=args.positions, budget_mb=args.budget_mb,
        method=args.method, progress=not args.json and not args.quiet,
    )
    d = rep.to_dict()
    if args.out:
        write_text_atomic(args.out, json.dumps(d, indent=1) + "\n")
    if args.recipe_out:
        write_text_atomic(args.recipe_out, rep.recipe.to_yaml())
    lines = [f"{'module':<44} " + " ".join(f"{'KL@' + str(b) + 'b':>11}" for b in sorted(set(bits)))]
    by = {}
    for r in rep.rows:
        by.setdefault(r.module, {})[r.scheme.bits] = r.kl
    worst = sorted(by.items(), key=lambda kv: -max(kv[1].values()))
    for m, kls in worst[: args.top]:
        lines.append(f"{m:<44} " + " ".join(f"{kls.get(b, float('nan')):>11.5f}" for b in sorted(set(bits))))
    if len(worst) > args.top:
        lines.append(f"... {len(worst) - args.top} more modules (--top N to show more, --out FILE for all)")
    if rep.plan is not None:
        lines.append(f"plan for {args.budget_mb} MB: {rep.plan_bytes / 1e6:.3f} MB of weights, estimated total KL {rep.plan_kl:.4f}")
        if args.recipe_out:
            lines.append(f"wrote {args.recipe_out}: use it with `edgequant quantize --recipe {args.recipe_out}`")
    _print(args, d, lines)
    return 0


def cmd_convert(args) -> int:
    from edgequant.models.loading import convert

    out = convert(args.model, args.out, dtype=args.dtype, force=args.force)
    _print(args, {"out": str(out)}, [f"wrote {out}"])
    return 0


def cmd_targets(args) -> int:
    from edgequant.targets.registry import TARGETS

    rows = [{"name": t.name, "format": t.format, "default_scheme": t.default_scheme, "schemes": list(t.schemes), "device": t.device, "extra": t.extra, "description": t.description} for t in TARGETS.values()]
    _print(args, {"targets": rows}, [f"{r['name']:<9} {r['format']:<11} {r['default_scheme']:<12} {r['description']}" for r in rows])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgequant", description="Quantize LLM checkpoints and prove the phone-ready files.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    q = sub.add_parser("quantize", help="quantize a checkpoint (RTN or GPTQ) into a quantized checkpoint directory")
    q.add_argument("model", help="HF directory, .gguf file, or 'embedded' / 'smollm2'")
    q.add_argument("--method", choices=["rtn", "gptq", "awq", "awq+gptq"], help="default: the recipe's, else gptq")
    q.add_argument("--recipe", help="YAML recipe: default scheme and per-module overrides (see README)")
    q.add_argument("--bits", type=int, default=4)
    q.add_argument("--group-size", type=int, default=128, help="input channels per scale; -1 for per channel")
    q.add_argument("--asym", action="store_true", help="asymmetric (zero point per group)")
    q.add_argument("--calib", action="append", help="calibration text: .txt, .jsonl, a directory or builtin:NAME; repeat to mix (default builtin:mix)")
    q.add_argument("--think-mix", type=float, help="chat JSONL calibration: share of records rendered in thinking mode")
    q.add_argument("--samples", type=int, default=128)
    q.add_argument("--seq-len", type=int, default=512)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, a fraction of the mean Hessian diagonal")
    q.add_argument("--block-size", type=int, default=128, help="GPTQ lazy-update block")
    q.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True, help="GPTQ columns in decreasing Hessian order with static groups (default on; --no-act-order for the natural order)")
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
    e.add_argument("--think-mix", type=float, help="chat JSONL: share of records rendered in thinking mode (default: those with reasoning)")
    common(e)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="lower a quantized checkpoint to a target's artifact")
    x.add_argument("qdir", help="quantized checkpoint directory")
    x.add_argument("--target", required=True, help="xnnpack, onnx or coreml (see `edgequant targets`)")
    x.add_argument("--out", required=True, help="model.pte, an ONNX directory, or model.mlpackage")
    x.add_argument("--scheme", help="the target's weight/activation scheme (default: the target's own)")
    x.add_argument("--max-seq-len", type=int, default=1024)
    x.add_argument("--force", action="store_true")
    common(x)
    x.set_defaults(func=cmd_export)

    g = sub.add_parser("generate", help="generate text with an artifact (streams to stdout)")
    g.add_argument("artifact", help=".pte, ONNX directory, .mlpackage, or a quantized checkpoint")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--think", choices=["on", "off"], help="render the chat template in thinking or non-thinking mode")
    g.add_argument("--think-budget", type=int, help="most thinking tokens before the runner closes the think block")
    g.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    g.add_argument("--tokenizer", help="tokenizer directory (default: the one exported beside the artifact)")
    g.add_argument("--threads", type=int, default=2)
    common(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help="parity of an artifact with a reference model, teacher-forced on a text")
    c.add_argument("artifact")
    c.add_argument("--ref", required=True, help="the quantized checkpoint (proves lowering) or the float model (shows quantization's cost)")
    c.add_argument("--text", required=True)
    c.add_argument("--seq-len", type=int, default=512)
    c.add_argument("--max-tokens", type=int)
    c.add_argument("--tokenizer")
    common(c)
    c.set_defaults(func=cmd_check)

    f = sub.add_parser("profile", help="load time, prefill/decode tokens per second, first-token time, peak memory, size")
    f.add_argument("artifact")
    f.add_argument("--prompt-len", type=int, default=128)
    f.add_argument("--gen", type=int, default=64)
    f.add_argument("--runs", type=int, default=3)
    f.add_argument("--warmup", type=int, default=1)
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--per-op", action="store_true", help="break the time down by operator (ExecuTorch ETDump, ONNX Runtime profiler)")
    common(f)
    f.set_defaults(func=cmd_profile)

    s_ = sub.add_parser("sensitivity", help="per-module KL cost of quantization, and a mixed-precision recipe for a size budget")
    s_.add_argument("model")
    s_.add_argument("--calib", action="append")
    s_.add_argument("--bits", default="4,8", help="candidate widths, comma-separated")
    s_.add_argument("--group-size", type=int, default=64)
    s_.add_argument("--asym", action="store_true")
    s_.add_argument("--samples", type=int, default=2)
    s_.add_argument("--seq-len", type=int, default=512)
    s_.add_argument("--seed", type=int, default=0)
    s_.add_argument("--positions", type=int, default=256, help="positions per window where the KL is taken")
    s_.add_argument("--budget-mb", type=float, help="weights budget in MB (tensor bytes of the quantized checkpoint)")
    s_.add_argument("--method", choices=["rtn", "gptq", "awq", "awq+gptq"], help="method written into the recipe")
    s_.add_argument("--recipe-out", help="write the planned recipe (YAML)")
    s_.add_argument("--out", help="write the whole table (JSON)")
    s_.add_argument("--top", type=int, default=20)
    s_.add_argument("--force", action="store_true")
    common(s_)
    s_.set_defaults(func=cmd_sensitivity)

    v = sub.add_parser("convert", help="write a GGUF (or other float) checkpoint as a safetensors directory, for fast loading")
    v.add_argument("model")
    v.add_argument("--out", required=True)
    v.add_argument("--dtype", default="float32")
    v.add_argument("--force", action="store_true")
    common(v)
    v.set_defaults(func=cmd_convert)

    t = sub.add_parser("targets", help="list the targets")
    common(t)
    t.set_defaults(func=cmd_targets)
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
