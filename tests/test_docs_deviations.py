"""docs/deviations.md: the one table of every deviation from the seed codebases. Every recipe key its last column
names (to get the original's behaviour back) must exist, with a value the schema or the method accepts."""
from __future__ import annotations

import dataclasses
import re
import typing

import yaml

from kdzoo.config.schema import Config
from kdzoo.distillers import METHODS
from kdzoo.regimes import REGIMES
from tests.conftest import REPO

TABLE = REPO / "docs" / "deviations.md"
OPTION = re.compile(r"`([A-Za-z_][\w.]*): ([^`]+)`")


def table_rows() -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in TABLE.read_text().splitlines() if line.startswith("| ")]
    return [r for r in rows[1:] if not set(r[0]) <= set("-")]


def field_type(cls, name: str):
    found = {f.name: f for f in dataclasses.fields(cls)}
    assert name in found, f"{cls.__name__} has no field {name!r}"
    return typing.get_type_hints(cls)[name]


def test_the_table_has_a_row_per_seed_and_six_cells_each():
    rows = table_rows()
    assert all(len(r) == 6 for r in rows), [r[:2] for r in rows if len(r) != 6]
    seeds = {r[0] for r in rows}
    assert {"000 DS-SRD", "001 distillers", "002 HSAKD", "004 CKD"} <= seeds


def test_every_named_option_exists():
    options = [m for r in table_rows() for m in OPTION.findall(r[-1])]
    assert len(options) >= 5
    for key, value in options:
        parts = key.split(".")
        if parts[0] == "methods":
            params = METHODS.get(parts[1]).Params
            tp = field_type(params, parts[2])
        elif parts[0] in REGIMES:  # a regime's own section: its Params
            tp = field_type(REGIMES.get(parts[0]).Params, parts[1])
        else:
            cls = Config
            for part in parts:
                tp = field_type(cls, part)
                cls = tp
        parsed = yaml.safe_load(value)
        assert parsed is not None, key
        if tp in (bool, float, int, str):
            assert isinstance(parsed, tp) or (tp is float and isinstance(parsed, int)), (key, value)
