"""Train the embedded default model: a small Llama on the Shakespeare plays shipped in the repo.

Run from the repository root:  python scripts/train_embedded.py [--steps N] [--out DIR]

It trains a byte-level BPE tokenizer on edgequant/assets/text/shakespeare_train.txt, then a
Llama-architecture decoder (transformers' LlamaForCausalLM) on the same text, and writes a Hugging
Face checkpoint directory (config.json, model.safetensors in float16, tokenizer.json,
tokenizer_config.json with a chat template that has a thinking switch). Held-out perplexity on
shakespeare_heldout.txt (two plays the model never sees) is printed beside a unigram model's.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "edgequant" / "assets" / "text"
DEFAULT_OUT = ROOT / "edgequant" / "assets" / "shakespeare-llama"

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<think>", "</think>"]

# A Qwen3-style template: `enable_thinking` switches the reasoning block on or off. With thinking off the
# assistant turn starts with an empty think block, so the model answers directly.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n"
    "{% if message.get('reasoning') %}<think>\n{{ message['reasoning'] }}\n</think>\n\n{% endif %}"
    "{{ message['content'] }}</s>\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}"
    "{% endif %}"
)


def train_tokenizer(text: str, vocab_size: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1024
    fast.save_pretrained(out)
    return fast


def batches(ids: torch.Tensor, seq_len: int, batch: int, gen: torch.Generator):
    n = ids.numel() - seq_len - 1
    while True:
        starts = torch.randint(0, n, (batch,), generator=gen)
        x = torch.stack([ids[s : s + seq_len + 1] for s in starts.tolist()])
        yield x


@torch.no_grad()
def heldout_ppl(model, ids: torch.Tensor, seq_len: int) -> float:
    model.eval()
    nll, count = 0.0, 0
    for s in range(0, ids.numel() - 1, seq_len):
        chunk = ids[s : s + seq_len + 1]
        if chunk.numel() < 2:
            break
        logits = model(chunk[None, :-1]).logits[0].float()
        nll += torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum").item()
        count += chunk.numel() - 1
    model.train()
    return math.exp(nll / count)


def unigram_ppl(train_ids: torch.Tensor, test_ids: torch.Tensor, vocab: int) -> float:
    counts = Counter(train_ids.tolist())
    total = train_ids.numel() + vocab  # add-one smoothing
    logp = sum(math.log((counts.get(t, 0) + 1) / total) for t in test_ids.tolist())
    return math.exp(-logp / test_ids.numel())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    train_text = (TEXT / "shakespeare_train.txt").read_text(encoding="utf-8")
    test_text = (TEXT / "shakespeare_heldout.txt").read_text(encoding="utf-8")
    tok = train_tokenizer(train_text, args.vocab, args.out)
    train_ids = torch.tensor(tok(train_text)["input_ids"], dtype=torch.long)
    test_ids = torch.tensor(tok(test_text)["input_ids"], dtype=torch.long)
    print(f"tokens: train {train_ids.numel():,}  held-out {test_ids.numel():,}  vocab {len(tok)}")

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=640,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float16",
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params / 1e6:.2f} M")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(args.seed)
    data = batches(train_ids, args.seq_len, args.batch, gen)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = next(data)
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {lr_at(step):.2e}  {time.time() - t0:7.0f}s", flush=True)

    ppl = heldout_ppl(model, test_ids, args.seq_len)
    uni = unigram_ppl(train_ids, test_ids, len(tok))
    print(f"held-out perplexity: model {ppl:.2f}  unigram {uni:.2f}")
    model.half().save_pretrained(args.out, safe_serialization=True)
    (args.out / "TRAINING.json").write_text(
        json.dumps(
            {
                "script": "scripts/train_embedded.py",
                "train_text": "edgequant/assets/text/shakespeare_train.txt",
                "heldout_text": "edgequant/assets/text/shakespeare_heldout.txt",
                "steps": args.steps,
                "batch": args.batch,
                "seq_len": args.seq_len,
                "lr": args.lr,
                "seed": args.seed,
                "parameters": n_params,
                "train_tokens": train_ids.numel(),
                "heldout_ppl_fp32": round(ppl, 3),
                "heldout_unigram_ppl": round(uni, 3),
                "seconds": round(time.time() - t0),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
