"""llm-compressor GPTQ on a Hugging Face checkpoint with given calibration windows. Runs INSIDE the llm-compressor
venv (.peers/llmc-venv), started by benches/bench_gptq.py:

    .peers/llmc-venv/bin/python benches/peers/llmc_gptq_child.py --model HF_DIR --calib windows.safetensors \
        --out OUT [--group-size 64] [--actorder static|none] [--bits 4]

GPTQModifier: int weights, `bits` bits, symmetric, group strategy with `group_size`, targets the Linear layers,
lm_head ignored, dampening 0.01, block 128 (llm-compressor's defaults but for the scheme). The calibration set is
the token windows in --calib (tensor input_ids [N, L]), given to oneshot() as a pre-tokenized dataset, unshuffled.

Writes OUT/compressed (llm-compressor's own saved format, compressed-tensors pack-quantized), OUT/dense (the same
weights fake-quantized to float32, in a plain HF directory any transformers can load: the weights are taken from
the model after oneshot and checked against fake_quantize(weight, scale, zero_point)), and OUT/result.json with the
phase times and versions. Wall time and peak RSS of the whole process are measured by the parent.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

T0 = time.time()

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--calib", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--actorder", default="static", help="static (llm-compressor's default), group, weight or none")
    ap.add_argument("--no-compressed", action="store_true", help="skip writing OUT/compressed")
    a = ap.parse_args()

    import importlib.metadata as md

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    torch.manual_seed(0)
    t_import = time.time() - T0
    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(a.model)
    ids = load_file(a.calib)["input_ids"].long()
    n, seq_len = ids.shape
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    t_load = time.time() - t

    recipe = GPTQModifier(
        config_groups={
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": a.bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": a.group_size},
            }
        },
        ignore=["lm_head"],
        dampening_frac=0.01,
        block_size=128,
        actorder=None if a.actorder == "none" else a.actorder,
    )
    t = time.time()
    oneshot(model=model, tokenizer=tok, dataset=ds, recipe=recipe, num_calibration_samples=n, max_seq_length=seq_len,
            shuffle_calibration_samples=False, batch_size=1)
    t_oneshot = time.time() - t

    # Dense copy: the quantized layers' weights after oneshot, checked against their own grid.
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    t = time.time()
    dense = a.out / "dense"
    dense.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    n_quant, max_dev = 0, 0.0
    fq: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        scheme = getattr(mod, "quantization_scheme", None)
        if scheme is None or scheme.weights is None or not hasattr(mod, "weight_scale"):
            continue
        w = mod.weight.detach().float()
        zp = getattr(mod, "weight_zero_point", None)
        g_idx = getattr(mod, "weight_g_idx", None)
        if g_idx is not None and g_idx.numel() and not torch.equal(g_idx.long(), torch.arange(w.shape[1]) // a.group_size):
            raise SystemExit(f"{name}: permuted groups (g_idx) are not handled by this script; use --actorder static or none")
        q = fake_quantize(w, mod.weight_scale.detach(), zp.detach() if zp is not None else None, scheme.weights)
        max_dev = max(max_dev, float((q - w).abs().max()))
        fq[f"{name}.weight"] = q
        n_quant += 1
    src_files = sorted(a.model.glob("*.safetensors"))
    keys = [k for f in src_files for k in safe_open(str(f), "pt").keys()]
    state = {}
    for k in keys:
        v = fq.get(k)
        if v is None:
            v = (params.get(k) if k in params else buffers[k]).detach()
        state[k] = v.to(torch.float32).contiguous().clone()
    save_file(state, str(dense / "model.safetensors"), metadata={"format": "pt"})
    for f in a.model.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy2(f, dense / f.name)
    t_dense = time.time() - t

    t_comp = None
    if not a.no_compressed:
        t = time.time()
        model.save_pretrained(a.out / "compressed", save_compressed=True)
        tok.save_pretrained(a.out / "compressed")
        t_comp = time.time() - t

    res = {
        "samples": n, "seq_len": seq_len, "bits": a.bits, "group_size": a.group_size, "actorder": a.actorder,
        "quantized_linears": n_quant, "max_abs_dev_weight_vs_fake_quant": max_dev,
        "seconds": {"import": t_import, "load": t_load, "oneshot": t_oneshot, "write_dense": t_dense, "write_compressed": t_comp,
                    "total_in_process": time.time() - T0},
        "versions": {p: md.version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch", "datasets")},
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }
    (a.out / "result.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
