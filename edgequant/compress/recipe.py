"""Recipes: the default scheme and per-module overrides, as a YAML file.

```yaml
method: gptq            # optional; the command line's --method wins when given
default:                # every decoder linear
  bits: 4
  group_size: 64
  symmetric: true
overrides:              # later entries win; a pattern is a glob on full module names, or re:REGEX
  - match: lm_head
    bits: 8
    group_size: -1
  - match: model.embed_tokens
    bits: 8
    group_size: 64
  - match: "re:model\\.layers\\.(0|29)\\.mlp\\.down_proj"
    bits: 8
  - match: "model.layers.*.self_attn.k_proj"
    float: true         # left in float
```

The embedding table and the output projection stay in float unless an override names them. Unknown
keys, patterns that match nothing and impossible schemes are errors before any work starts.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgequant.compress.scheme import QuantScheme
from edgequant.errors import EdgequantError, RecipeError

RECIPE_KEYS = {"method", "default", "overrides"}
SCHEME_KEYS = {"bits", "group_size", "symmetric"}
OVERRIDE_KEYS = SCHEME_KEYS | {"match", "float"}


@dataclass
class Override:
    match: str
    scheme: dict = field(default_factory=dict)  # partial scheme: keys given override the default
    keep_float: bool = False

    def matches(self, name: str) -> bool:
        if self.match.startswith("re:"):
            return re.fullmatch(self.match[3:], name) is not None
        return fnmatch.fnmatchcase(name, self.match)

    def to_dict(self) -> dict:
        d = {"match": self.match, **self.scheme}
        if self.keep_float:
            d["float"] = True
        return d


@dataclass
class Recipe:
    default: QuantScheme
    overrides: list[Override] = field(default_factory=list)
    method: str | None = None

    def to_dict(self) -> dict:
        d = {"default": self.default.to_dict(), "overrides": [o.to_dict() for o in self.overrides]}
        if self.method:
            d["method"] = self.method
        return d

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def resolve(self, linears: list[str], extra: list[str]) -> dict[str, QuantScheme | None]:
        """Scheme (or None for float) of every module: the block ``linears`` start at the default, the
        ``extra`` ones (embedding, lm_head) in float."""
        out: dict[str, QuantScheme | None] = {n: self.default for n in linears}
        out.update({n: None for n in extra})
        for ov in self.overrides:
            hit = [n for n in out if ov.matches(n)]
            if not hit:
                raise RecipeError(f"recipe pattern '{ov.match}' matches no module (module names look like {linears[0]}, {', '.join(extra)})")
            for n in hit:
                if ov.keep_float:
                    out[n] = None
                else:
                    base = out[n] or self.default
                    try:
                        out[n] = QuantScheme(**{**base.to_dict(), **ov.scheme})
                    except EdgequantError as e:
                        raise RecipeError(f"recipe override '{ov.match}': {e}") from None
        return out


def _scheme_part(d: dict, where: str) -> dict:
    bad = set(d) - SCHEME_KEYS
    if bad:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(sorted(bad))}; a scheme has bits, group_size, symmetric")
    return dict(d)


def parse_recipe(data, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe is a mapping with 'default' and 'overrides'")
    bad = set(data) - RECIPE_KEYS
    if bad:
        raise RecipeError(f"{where}: unknown key(s) {', '.join(sorted(bad))}; a recipe has {', '.join(sorted(RECIPE_KEYS))}")
    default = data.get("default") or {}
    if not isinstance(default, dict):
        raise RecipeError(f"{where}: 'default' must be a mapping of bits, group_size, symmetric")
    try:
        scheme = QuantScheme(**_scheme_part(default, f"{where} default"))
    except EdgequantError as e:
        raise RecipeError(f"{where} default: {e}") from None
    overrides = []
    for i, o in enumerate(data.get("overrides") or []):
        w = f"{where} override {i + 1}"
        if not isinstance(o, dict) or "match" not in o:
            raise RecipeError(f"{w}: each override needs a 'match' pattern")
        bad = set(o) - OVERRIDE_KEYS
        if bad:
            raise RecipeError(f"{w}: unknown key(s) {', '.join(sorted(bad))}; an override has {', '.join(sorted(OVERRIDE_KEYS))}")
        pattern = str(o["match"])
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as e:
                raise RecipeError(f"{w}: bad regular expression {pattern[3:]!r}: {e}") from None
        part = {k: v for k, v in o.items() if k in SCHEME_KEYS}
        if part:
            try:
                QuantScheme(**{**scheme.to_dict(), **part})
            except EdgequantError as e:
                raise RecipeError(f"{w} ('{pattern}'): {e}") from None
        overrides.append(Override(pattern, part, bool(o.get("float", False))))
    method = data.get("method")
    return Recipe(scheme, overrides, method)


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_recipe(data, str(p))
