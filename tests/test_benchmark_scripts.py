"""Every script under benchmarks/ still imports and parses its command line: a refactor that moves what a
benchmark imports breaks it here, not months later when someone reruns it."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def _load(path: Path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_imports_and_answers_help(path, capsys, monkeypatch):
    module = _load(path)
    main = getattr(module, "main", None)
    if main is None:
        return  # a helper module of the scripts
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])  # scripts whose main() reads sys.argv
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out

