import json

import pytest
from safetensors import safe_open

from conftest import run_cli, user_error_line
from edgequant.compress.quantize import quantize
from edgequant.compress.sensitivity import estimate_checkpoint_bytes, sensitivity
from edgequant.models.loading import load_model


def checkpoint_tensor_bytes(qdir) -> int:
    total = 0
    with safe_open(str(qdir / "model.safetensors"), "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            total += t.numel() * t.element_size()
    return total


@pytest.fixture(scope="module")
def report(tiny_llama):
    return sensitivity(tiny_llama, calib="builtin:shakespeare", bits=(2, 4, 8), group_size=32, samples=2, seq_len=64, positions=32, progress=False)


def test_every_module_and_width_is_measured(report):
    mods = {r.module for r in report.rows}
    assert len(mods) == 16  # embedding, 14 block linears, lm_head
    by = {(r.module, r.scheme.bits): r.kl for r in report.rows}
    for m in mods:
        assert by[(m, 2)] > by[(m, 8)] >= 0  # fewer bits cost more
        assert by[(m, 8)] < 1e-3


def test_budget_is_met_and_the_estimate_matches_the_checkpoint(tiny_llama, report, tmp_path):
    loaded = load_model(tiny_llama)
    rows = report.rows
    smallest = estimate_checkpoint_bytes(loaded, {r.module: min((x for x in rows if x.module == r.module), key=lambda x: x.bytes).scheme for r in rows})
    largest = estimate_checkpoint_bytes(loaded, {r.module: max((x for x in rows if x.module == r.module), key=lambda x: x.bytes).scheme for r in rows})
    budget = (smallest + largest) // 2
    from edgequant.compress.sensitivity import plan_budget, plan_to_recipe

    plan, kl, size = plan_budget(loaded, rows, budget)
    assert smallest < size <= budget
    assert len({s.bits for s in plan.values()}) >= 2  # a budget between the extremes needs mixed widths
    recipe = plan_to_recipe(plan, ["model.embed_tokens", "lm_head"], method="rtn")
    (tmp_path / "plan.yaml").write_text(recipe.to_yaml())
    quantize(tiny_llama, tmp_path / "q", recipe=tmp_path / "plan.yaml", progress=False)
    assert checkpoint_tensor_bytes(tmp_path / "q") == size
    info = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert {n: m["bits"] for n, m in info["modules"].items()} == {n: s.bits for n, s in plan.items()}


def test_estimate_matches_for_plain_and_tied_checkpoints(tiny_llama, tmp_path):
    from edgequant.compress.scheme import QuantScheme

    loaded = load_model(tiny_llama)
    names = loaded.adapter.all_linear_names(loaded.model)
    quantize(tiny_llama, tmp_path / "plain", method="rtn", scheme=QuantScheme(4, 32, False), progress=False)
    plan = {n: QuantScheme(4, 32, False) for n in names}
    plan.update({"model.embed_tokens": None, "lm_head": None})
    assert checkpoint_tensor_bytes(tmp_path / "plain") == estimate_checkpoint_bytes(loaded, plan)


def test_cli_budget_too_small_and_recipe_out(tiny_llama, tmp_path):
    code, _, stderr = run_cli("sensitivity", tiny_llama, "--calib", "builtin:milton", "--group-size", "32", "--samples", "1", "--seq-len", "32", "--positions", "8", "--budget-mb", "0.01", "--recipe-out", tmp_path / "r.yaml")
    assert code == 2 and "below the smallest plan" in user_error_line(stderr)
    assert not (tmp_path / "r.yaml").exists()
    code, out, stderr = run_cli("sensitivity", tiny_llama, "--calib", "builtin:milton", "--group-size", "32", "--samples", "1", "--seq-len", "32", "--positions", "8", "--budget-mb", "0.5", "--recipe-out", tmp_path / "r.yaml", "--json")
    assert code == 0, stderr
    d = json.loads(out)
    assert d["plan_mb"] <= 0.5 and (tmp_path / "r.yaml").is_file()
