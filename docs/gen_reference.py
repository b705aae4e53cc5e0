"""Writes docs/reference/recipes.md (every recipe key, from the config schema) and docs/reference/methods.md
(every method, from the registry). `make docs` runs it; tests/test_docs_pages.py fails when the committed pages
differ from what it writes, so the reference cannot fall behind the code.

    python docs/gen_reference.py
"""
from __future__ import annotations

import ast
import dataclasses
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "src" / "kdzoo" / "config" / "schema.py"
OUT = ROOT / "docs" / "reference"
SECTIONS = {"Config": "", "DatasetConfig": "dataset", "SubsetConfig": "dataset.subset",
            "ModelConfig": "student / teacher",
            "OptimConfig": "optim", "ScheduleConfig": "schedule", "EngineConfig": "engine", "LoggingConfig": "logging"}


def field_comments() -> dict[tuple[str, str], str]:
    """(class, field) -> the comment above the field and the one after it in schema.py."""
    lines = SCHEMA.read_text().splitlines()
    found = {}
    for node in ast.parse(SCHEMA.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
                continue
            above, row = [], item.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, lines[row].strip().lstrip("# "))
                row -= 1
            tail = lines[item.end_lineno - 1].partition("  # ")[2].strip()
            found[(node.name, item.target.id)] = " ".join([*above, tail]).strip()
    return found


def _type_name(tp) -> str:
    text = str(tp).replace("typing.", "").replace("NoneType", "None")
    return text.replace("<class '", "").replace("'>", "")


def _range(meta) -> str:
    marks = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{mark} {meta[key]}" for key, mark in marks.items() if key in meta]
    if "each" in meta:
        parts.append("each " + _range(meta["each"]))
    return ", ".join(parts)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "required"
    return "null" if value is None else f"`{value!r}`".replace("True", "true").replace("False", "false")


def recipes_page() -> str:
    from kdzoo.config import schema

    notes = field_comments()
    out = ["# Recipe keys", "", "Every key a recipe may hold, generated from `kdzoo/config/schema.py` by "
           "`docs/gen_reference.py`. A recipe is YAML; any key can be overridden on the command line as "
           "`section.key=value`. Ranges are checked when the recipe loads (one-line errors, exit 2).", ""]
    for cls_name, prefix in SECTIONS.items():
        cls = getattr(schema, cls_name)
        hints = typing.get_type_hints(cls)
        out += [f"## `{prefix}`" if prefix else "## top level", "",
                "| key | type | default | range | what it does |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            what = notes.get((cls_name, f.name), "").replace("|", "\\|")
            hint = f.metadata.get("hint", "")
            out.append(f"| `{f.name}` | `{_type_name(hints[f.name])}` | {_default(f)} | {_range(f.metadata)} | "
                       f"{what}{' (' + hint + ')' if hint and hint not in what else ''} |")
        out.append("")
    out += ["## Regimes' own sections", "", "A regime's parameters are the recipe section named after it "
            "(`regime: double_student` reads `double_student:`; mutual's `peers:` sits at the top level); a "
            "method's are `methods.<name>` (see [Methods](methods.md)).", ""]
    from kdzoo.regimes import REGIMES

    for name in sorted(REGIMES.names()):
        params = REGIMES.get(name).Params
        fields = dataclasses.fields(params) if dataclasses.is_dataclass(params) else ()
        if not fields:
            continue
        out += [f"### `{name}`", "", "| key | default |", "|---|---|"]
        out += [f"| `{'peers' if f.name == 'peers' else name + '.' + f.name}` | {_default(f)} |" for f in fields]
        out.append("")
    return "\n".join(out)


def methods_page() -> str:
    from kdzoo.bench.anchors import published
    from kdzoo.distillers import METHODS

    out = ["# Methods", "", "Every method kdzoo registers, generated from the registry by `docs/gen_reference.py`. "
           "A recipe's `loss:` weighs a method's terms; `methods.<name>:` sets its parameters. The published "
           "CIFAR-100 top-1 is resnet32x4 -> resnet8x4 (`bench/anchors.py`); the reference is the original code "
           "kdzoo's parity tests compare against on identical inputs.", "",
           "| method | terms | paper | reference implementation | published weights | CIFAR-100 (32x4 -> 8x4) |",
           "|---|---|---|---|---|---|"]
    details = []
    for name in sorted(METHODS.names()):
        cls = METHODS.get(name)
        weights = ", ".join(f"{k}: {v:g}" for k, v in cls.recipes.loss.items()) or "-"
        anchor = published(name, "resnet32x4", "resnet8x4")
        out.append(f"| [`{name}`](#{name}) | {', '.join(cls.term_names())} | {cls.paper or '-'} | "
                   f"{cls.reference or '-'} | {weights} | {f'{anchor[0]:.2f}' if anchor else '-'} |")
        params = [f for f in dataclasses.fields(cls.Params)] if dataclasses.is_dataclass(cls.Params) else []
        details += [f"## {name}", "", (cls.description or (cls.__doc__ or "").strip().splitlines()[0]) + ".", ""]
        if params:
            details += ["| parameter | default |", "|---|---|"]
            details += [f"| `methods.{name}.{f.name}` | {_default(f)} |" for f in params]
        else:
            details.append("No parameters.")
        details.append("")
    return "\n".join([*out, "", *details])


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "recipes.md").write_text(recipes_page())
    (OUT / "methods.md").write_text(methods_page())
    print(f"wrote {OUT / 'recipes.md'} and {OUT / 'methods.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
