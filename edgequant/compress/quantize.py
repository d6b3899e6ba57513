"""``quantize()``: a float checkpoint in, a quantized checkpoint directory out."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from edgequant._io import atomic_output, check_output, peak_rss_mb, sha256_of
from edgequant.compress.checkpoint import ModuleQuant, QuantizationInfo, save_quantized
from edgequant.compress.gptq import GPTQConfig
from edgequant.compress.scheme import QuantScheme, fitting_group_sizes
from edgequant.compress.awq import AWQConfig
from edgequant.compress.grid import quantize_weight
from edgequant.compress.qlinear import QuantizedEmbedding, QuantizedLinear, set_submodule
from edgequant.compress.recipe import Recipe, load_recipe
from edgequant.compress.sequential import METHODS, SequentialSettings, calibrated_quantize_model, rtn_quantize_model
from edgequant.errors import EdgequantError, SchemeError

DEFAULT_CALIB = ("builtin:mix",)


@dataclass
class QuantizeResult:
    out: str
    method: str
    scheme: str
    seconds: float
    peak_rss_mb: float
    linears: int
    size_mb: float
    mean_error: float | None = None
    chosen: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgequantError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def check_scheme_fits(widths: dict[str, int], schemes: dict[str, QuantScheme]) -> None:
    """Fail before any work when a group size does not divide a layer's input width."""
    bad = {n: w for n, w in widths.items() if not schemes[n].fits(w)}
    if not bad:
        return
    sizes = sorted({schemes[n].group_size for n in bad})
    kinds = sorted({n.split(".")[-1] + f" (width {w})" for n, w in bad.items()})
    fit_all = sorted(set.intersection(*(set(fitting_group_sizes(w)) for w in widths.values())), key=lambda g: (g == -1, g))
    raise SchemeError(
        f"group size {', '.join(map(str, sizes))} does not divide the input width of {len(bad)} layers: "
        f"{', '.join(kinds)}; group sizes that fit every layer: {', '.join(map(str, fit_all))}"
    )


def source_record(path: Path) -> dict:
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    return {"name": path.name, "format": "gguf" if path.is_file() else "safetensors", "sha256": sha256_of(files)}


def quantize(
    model: str | Path,
    out: str | Path,
    *,
    method: str | None = None,
    scheme: QuantScheme = QuantScheme(),
    recipe=None,
    calib=DEFAULT_CALIB,
    think_mix: float | None = None,
    samples: int = 128,
    seq_len: int = 512,
    seed: int = 0,
    gptq: GPTQConfig = GPTQConfig(),
    awq: AWQConfig = AWQConfig(),
    guard=None,
    guard_samples: int = 32,
    rtn_mse: bool = False,
    true_sequential: bool = True,
    batch_size: int = 8,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
) -> QuantizeResult:
    """Quantize ``model`` (HF directory, GGUF file or a built-in name) and write the checkpoint to ``out``.

    ``recipe`` (a :class:`Recipe` or a YAML path) sets the default scheme and per-module overrides;
    without one every decoder linear gets ``scheme``. ``method`` defaults to the recipe's, else GPTQ.
    """
    from edgequant.calibration.sampling import calibration_windows
    from edgequant.calibration.sources import read_sources
    from edgequant.models.loading import load_model

    t0 = time.time()
    rec = recipe if isinstance(recipe, Recipe) else (load_recipe(recipe) if recipe is not None else Recipe(default=scheme))
    method = method or rec.method or "gptq"
    if method not in METHODS:
        raise EdgequantError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    out = check_output(Path(out), force)
    device = resolve_device(device)
    torch.manual_seed(seed)
    loaded = load_model(model)
    if loaded.is_quantized:
        raise EdgequantError(f"{loaded.path} is already quantized; quantize the float checkpoint it came from")
    adapter, net = loaded.adapter, loaded.model
    block_linears = adapter.all_linear_names(net)
    resolved = rec.resolve(block_linears, [adapter.embed, adapter.lm_head])
    embed = net.get_submodule(adapter.embed)
    tied = bool(getattr(net.config, "tie_word_embeddings", False)) and net.get_submodule(adapter.lm_head).weight is embed.weight
    widths = {n: net.get_submodule(n).in_features for n in resolved if n != adapter.embed}
    widths[adapter.embed] = embed.embedding_dim
    check_scheme_fits({n: widths[n] for n, s in resolved.items() if s}, {n: s for n, s in resolved.items() if s})
    schemes = {n: s for n, s in resolved.items() if s is not None and n != adapter.embed}
    names = list(schemes)
    embed_scheme = resolved[adapter.embed]

    calibration = None
    if method != "rtn":
        sources = read_sources(calib, loaded.tokenizer, think_mix=think_mix, seed=seed)
        windows = calibration_windows(loaded.tokenizer, sources, samples, seq_len, seed)
        guard_windows = None
        if guard is not None:
            guard_windows = calibration_windows(loaded.tokenizer, read_sources(guard, loaded.tokenizer, seed=seed), guard_samples, seq_len, seed + 1)
        calibration = {
            "sources": [s.name for s in sources],
            "samples": samples,
            "seq_len": seq_len,
            "seed": seed,
            "think_mix": think_mix,
            "guard": None if guard is None else {"sources": [str(g) for g in ([guard] if isinstance(guard, (str, Path)) else guard)], "samples": guard_samples},
        }
        settings = SequentialSettings(method=method, gptq=gptq, awq=awq, rtn_mse=rtn_mse, true_sequential=true_sequential, batch_size=batch_size, device=device)
        errors = calibrated_quantize_model(net, adapter, schemes, windows, settings, guard_windows, progress)
        settings_record = settings.to_dict()
    else:
        errors = rtn_quantize_model(net, schemes, mse=rtn_mse, progress=progress)
        settings_record = {"method": "rtn", "rtn_mse": rtn_mse}

    modules = {n: ModuleQuant("linear", schemes[n], widths[n], net.get_submodule(n).out_features) for n in names}
    if embed_scheme is not None:
        head = net.get_submodule(adapter.lm_head)
        if tied and isinstance(head, QuantizedLinear) and head.scheme == embed_scheme:
            # one tensor in the source, one in the checkpoint: the embedding reads the head's codes
            codes, scales, zeros = head.codes, head.scales, head.zeros
            modules[adapter.embed] = ModuleQuant("embedding", embed_scheme, embed.num_embeddings, embed.embedding_dim, tied_to=adapter.lm_head)
        else:
            codes, scales, zeros = quantize_weight(embed.weight.detach().float(), embed_scheme, mse=rtn_mse)
            modules[adapter.embed] = ModuleQuant("embedding", embed_scheme, embed.num_embeddings, embed.embedding_dim)
            tied = False
        set_submodule(net, adapter.embed, QuantizedEmbedding(codes, scales, zeros, embed_scheme))
        errors[adapter.embed] = {"chosen": "tied to " + adapter.lm_head if modules[adapter.embed].tied_to else "rtn"}
    elif adapter.lm_head in modules:
        tied = False
    net.config.tie_word_embeddings = tied  # untied once only one of the two is quantized, or differently

    info = QuantizationInfo(
        method=method,
        default_scheme=rec.default,
        modules=modules,
        source=source_record(loaded.path),
        calibration=calibration,
        settings=settings_record,
        errors=errors,
        recipe=rec.to_dict() if recipe is not None else None,
    )
    with atomic_output(out, force=force) as tmp:
        save_quantized(loaded.model, loaded.tokenizer, info, tmp)
        size_mb = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 1e6
    chosen: dict[str, int] = {}
    for e in errors.values():
        chosen[e["chosen"]] = chosen.get(e["chosen"], 0) + 1
    calib_errs = [e["gptq_calib"] for e in errors.values() if "gptq_calib" in e]
    return QuantizeResult(
        out=str(out),
        method=method,
        scheme=rec.default.describe() + (" + recipe overrides" if rec.overrides else ""),
        seconds=round(time.time() - t0, 2),
        peak_rss_mb=round(peak_rss_mb(), 1),
        linears=len(modules),
        size_mb=round(size_mb, 3),
        mean_error=round(sum(calib_errs) / len(calib_errs), 6) if calib_errs else None,
        chosen=chosen,
    )
