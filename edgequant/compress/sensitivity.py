"""Sensitivity analysis: what quantizing one module alone costs, and a mixed-precision plan for a size budget.

For every quantizable module (each decoder linear, the embedding table and the output projection) and
every candidate scheme, the module alone is rounded to nearest and the model's next-token distributions on
calibration text are compared with the float model's (mean KL). Blocks before the module are not re-run:
the float inputs of every block are cached once. The planner then picks, per module, the scheme that keeps
the total (assumed additive) KL lowest within a size budget, by repeatedly taking the upgrade with the
best KL saved per byte. Sizes are exact: the bytes of the tensors the quantized checkpoint will store.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgequant.calibration.capture import capture_block_inputs
from edgequant.compress.grid import dequantize_weight, quantize_weight
from edgequant.compress.recipe import Override, Recipe
from edgequant.compress.scheme import QuantScheme
from edgequant.errors import EdgequantError
from edgequant.models.loading import LoadedModel


@dataclass
class SensitivityRow:
    module: str
    kind: str  # linear, embedding
    scheme: QuantScheme
    kl: float
    bytes: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scheme"] = self.scheme.to_dict()
        return d


def tensor_bytes(scheme: QuantScheme | None, rows: int, cols: int, float_bytes: int = 4) -> int:
    """Bytes the checkpoint stores for a [rows, cols] weight (codes + scales + zeros, or the float tensor)."""
    if scheme is None:
        return rows * cols * float_bytes
    groups = scheme.n_groups(cols)
    codes = rows * math.ceil(cols * scheme.bits / 8)
    return codes + rows * groups * 2 + (0 if scheme.symmetric else rows * groups)


def _module_shape(model: nn.Module, name: str) -> tuple[str, int, int, int]:
    m = model.get_submodule(name)
    if isinstance(m, nn.Embedding):
        return "embedding", m.num_embeddings, m.embedding_dim, m.weight.element_size()
    return "linear", m.out_features, m.in_features, m.weight.element_size()


def estimate_checkpoint_bytes(loaded: LoadedModel, plan: dict[str, QuantScheme | None]) -> int:
    """Exact bytes of tensor data in ``model.safetensors`` for a plan covering the block linears, the
    embedding and the output projection (None = float)."""
    model, ad = loaded.model, loaded.adapter
    covered = set(plan)
    tied = getattr(model.config, "tie_word_embeddings", False)
    # a tied pair stays one tensor when both halves get the same treatment (float, or the same scheme)
    shared = tied and plan.get(ad.embed) == plan.get(ad.lm_head)
    total = 0
    for name, scheme in plan.items():
        kind, rows, cols, fb = _module_shape(model, name)
        if name == ad.lm_head and shared:
            continue  # stored once
        total += tensor_bytes(scheme, rows, cols, fb)
        bias = getattr(model.get_submodule(name), "bias", None)
        if bias is not None:
            total += bias.numel() * 4
    seen: set[int] = set()
    for key, t in model.state_dict().items():
        mod = key.rpartition(".")[0]
        if mod in covered or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _kl(ref_logp: torch.Tensor, logits: torch.Tensor) -> float:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())


@torch.inference_mode()
def measure(
    loaded: LoadedModel,
    windows: torch.Tensor,
    candidates: list[QuantScheme],
    positions: int = 256,
    batch_size: int = 4,
    progress: bool = True,
) -> list[SensitivityRow]:
    """KL against the float model of quantizing each module alone, for each candidate scheme."""
    from tqdm.auto import tqdm

    model, ad = loaded.model, loaded.adapter
    blocks = ad.block_list(model)
    norm = model.get_submodule(ad.final_norm)
    head = model.get_submodule(ad.lm_head)
    # the float inputs of every block, and where the KL is taken (a fixed subset of positions per window)
    batches = capture_block_inputs(model, blocks[0], windows, batch_size, "cpu")
    inputs = [[b.hidden for b in batches]]
    for blk in blocks:
        inputs.append([_out(blk(h, **b.kwargs)) for h, b in zip(inputs[-1], batches)])
    L = windows.shape[1]
    pick = torch.linspace(0, L - 1, min(positions, L)).long()
    ref = [torch.log_softmax(head(norm(h[:, pick])).float(), -1) for h in inputs[-1]]

    def tail_kl(start: int, hidden: list[torch.Tensor]) -> float:
        kls = []
        for h, b, r in zip(hidden, batches, ref):
            for blk in blocks[start:]:
                h = _out(blk(h, **b.kwargs))
            kls.append(_kl(r, head(norm(h[:, pick]))))
        return sum(kls) / len(kls)

    names = [ad.embed] + ad.all_linear_names(model) + [ad.lm_head]
    rows: list[SensitivityRow] = []
    for name in tqdm(names, desc="sensitivity", disable=not progress, unit="module"):
        kind, r_, c_, _ = _module_shape(model, name)
        module = model.get_submodule(name)
        original = module.weight.data
        for scheme in candidates:
            if not scheme.fits(c_):
                continue
            q = dequantize_weight(*quantize_weight(original.float(), scheme)).to(original.dtype)
            # the embedding and lm_head may share one tensor: quantize each alone without touching it
            if name == ad.embed:
                hidden = [nn.functional.embedding(windows[i : i + batch_size], q) for i in range(0, windows.shape[0], batch_size)]
                kl = tail_kl(0, hidden)
            elif name == ad.lm_head:
                kl = sum(_kl(r, nn.functional.linear(norm(h[:, pick]), q)) for h, r in zip(inputs[-1], ref)) / len(ref)
            else:
                module.weight.data = q
                try:
                    kl = tail_kl(int(name[len(ad.blocks) + 1 :].split(".")[0]), inputs[int(name[len(ad.blocks) + 1 :].split(".")[0])])
                finally:
                    module.weight.data = original
            rows.append(SensitivityRow(name, kind, scheme, max(kl, 0.0), tensor_bytes(scheme, r_, c_)))
    return rows


def _out(y):
    return y[0] if isinstance(y, tuple) else y


def plan_budget(loaded: LoadedModel, rows: list[SensitivityRow], budget_bytes: int) -> tuple[dict[str, QuantScheme], float, int]:
    """Per-module schemes with the least total KL whose checkpoint fits ``budget_bytes``.

    Returns the plan, its estimated total KL and its exact size in bytes. Starts from every module at its
    smallest candidate and keeps taking the upgrade that saves the most KL per added byte while it fits.
    """
    by_module: dict[str, list[SensitivityRow]] = {}
    for r in rows:
        by_module.setdefault(r.module, []).append(r)
    for opts in by_module.values():
        opts.sort(key=lambda r: (r.bytes, r.kl))
    choice = {m: 0 for m in by_module}

    def plan() -> dict[str, QuantScheme]:
        return {m: by_module[m][i].scheme for m, i in choice.items()}

    size = estimate_checkpoint_bytes(loaded, plan())
    if size > budget_bytes:
        raise EdgequantError(
            f"the budget of {budget_bytes / 1e6:.2f} MB is below the smallest plan ({size / 1e6:.2f} MB with every module at its narrowest candidate)"
        )
    while True:
        best = None
        for m, i in choice.items():
            cur = by_module[m][i]
            for j in range(i + 1, len(by_module[m])):
                nxt = by_module[m][j]
                dbytes = nxt.bytes - cur.bytes
                gain = cur.kl - nxt.kl
                if gain <= 0 or size + dbytes > budget_bytes:
                    continue
                ratio = gain / max(dbytes, 1)
                if best is None or ratio > best[0]:
                    best = (ratio, m, j)
        if best is None:
            break
        _, m, j = best
        choice[m] = j
        size = estimate_checkpoint_bytes(loaded, plan())
    chosen = plan()
    total_kl = sum(by_module[m][i].kl for m, i in choice.items())
    return chosen, total_kl, size


def plan_to_recipe(plan: dict[str, QuantScheme], float_by_default: list[str], method: str | None = None) -> Recipe:
    """A recipe whose default is the most common scheme among the block linears and whose overrides name
    every other module exactly (``float_by_default``: the embedding and lm_head, which a recipe leaves in
    float unless named)."""
    counts: dict[QuantScheme, int] = {}
    for m, s in plan.items():
        if m not in float_by_default:
            counts[s] = counts.get(s, 0) + 1
    default = max(counts, key=lambda s: (counts[s], -s.bits))
    overrides = [Override(m, s.to_dict()) for m, s in plan.items() if s != default or m in float_by_default]
    return Recipe(default=default, overrides=overrides, method=method)


@dataclass
class SensitivityReport:
    rows: list[SensitivityRow]
    float_bytes: int
    plan: dict[str, QuantScheme] | None = None
    plan_kl: float | None = None
    plan_bytes: int | None = None
    recipe: Recipe | None = None

    def to_dict(self) -> dict:
        d = {"rows": [r.to_dict() for r in self.rows], "float_mb": round(self.float_bytes / 1e6, 4)}
        if self.plan is not None:
            d.update(
                plan_kl=round(self.plan_kl, 6),
                plan_mb=round(self.plan_bytes / 1e6, 6),
                plan_bytes=self.plan_bytes,
                recipe=self.recipe.to_dict(),
            )
        return d


def write_text_atomic(path, text: str) -> None:
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def sensitivity(
    model,
    calib=("builtin:mix",),
    bits: tuple[int, ...] = (4, 8),
    group_size: int = 64,
    symmetric: bool = True,
    samples: int = 2,
    seq_len: int = 512,
    seed: int = 0,
    positions: int = 256,
    budget_mb: float | None = None,
    method: str | None = None,
    progress: bool = True,
) -> SensitivityReport:
    """Measure every module's sensitivity; with ``budget_mb`` also plan a recipe that fits."""
    from edgequant.calibration.sampling import calibration_windows
    from edgequant.calibration.sources import read_sources
    from edgequant.compress.quantize import check_scheme_fits
    from edgequant.models.loading import load_model

    candidates = [QuantScheme(b, group_size, symmetric) for b in sorted(set(bits))]
    loaded = load_model(model)
    if loaded.is_quantized:
        raise EdgequantError(f"{loaded.path} is already quantized; measure the float checkpoint")
    ad = loaded.adapter
    names = [ad.embed] + ad.all_linear_names(loaded.model) + [ad.lm_head]
    widths = {n: _module_shape(loaded.model, n)[2] for n in names}
    check_scheme_fits(widths, {n: candidates[0] for n in names})
    windows = calibration_windows(loaded.tokenizer, read_sources(calib, loaded.tokenizer, seed=seed), samples, seq_len, seed)
    rows = measure(loaded, windows, candidates, positions=positions, progress=progress)
    report = SensitivityReport(rows, estimate_checkpoint_bytes(loaded, {n: None for n in names}))
    if budget_mb is not None:
        plan, kl, size = plan_budget(loaded, rows, int(budget_mb * 1e6))
        report.plan, report.plan_kl, report.plan_bytes = plan, kl, size
        report.recipe = plan_to_recipe(plan, [ad.embed, ad.lm_head], method)
    return report
