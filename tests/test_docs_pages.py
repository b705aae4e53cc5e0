"""Every code block of the documentation runs, so the docs cannot rot: README.md and docs/**/*.md.

- ```python blocks run, page by page in one process each (a page's blocks share their names), in a fresh folder
  that holds `configs/`;
- ```bash blocks: each `kdzoo` line runs in order through the CLI, in a workspace with tiny data in the real
  on-disk formats (the one tests/test_docs_seeds.py builds; training runs get its tiny tail); the few shell
  lines that cannot run inside a test (`make`, `pip`, `torchrun` across GPUs, ...) are listed in SHELL_ONLY,
  each with why;
- ```yaml and ```toml blocks parse; a YAML block that is a whole recipe (it names a dataset and a loss) loads and
  validates as one;
- output and pictures are ```text blocks, never run.
docs/seeds.md has its own runner (tests/test_docs_seeds.py); the generated reference pages must equal what
docs/gen_reference.py writes now.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from kdzoo.config import config_from_data
from tests.conftest import REPO, run_cli
from tests.test_docs_seeds import tiny_tail, workspace
from tests.test_imagenet import WNIDS

DOCS = REPO / "docs"
PAGES = sorted([REPO / "README.md", *(p for p in DOCS.rglob("*.md") if p.name != "seeds.md")])
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
RUN_LANGS = {"python", "bash", "yaml", "toml", "text"}
# shell lines a test cannot run, by first word(s), with why
SHELL_ONLY = {
    "make": "builds the virtual environment and runs the whole suite (what CI runs)",
    "source": "activates a virtual environment in the user's shell",
    "pip": "installs packages from the network",
    "cd": "moves the user's shell",
    "torchrun": "starts several processes on several GPUs (tests/test_ddp_launch.py covers DDP on CPU)",
    "python benchmarks/": "benchmarks take minutes to hours (their scripts are imported in tests/test_benchmark_scripts.py)",
    "mkdocs": "builds this site (make docs)",
    "git": "clones or commits",
    "sudo": "installs and configures a system package (tests/pg_server.py starts the same PostgreSQL server)",
    "export": "sets a variable in the user's shell",
    "sbatch": "submits to a cluster's scheduler",
}
# kdzoo commands that run for hours as written, with the test that runs the same command on tiny input
TOO_LONG = {
    "kdzoo bench -c configs/bench/fashion_mnist.yaml": "the whole CPU leaderboard (hours); tests/test_bench.py "
                                                      "runs `kdzoo bench` on a tiny grid",
    "kdzoo report runs/bench/fashion_mnist": "reads that leaderboard's runs; tests/test_bench.py runs `kdzoo report`",
    "kdzoo import-checkpoint --format torchvision resnet34-b627a593.pth": "torchvision's published file, whose "
    "hash the importer checks; tests/test_imagenet.py imports torchvision-format files",
    "kdzoo sweep -c sweep.yaml": "needs a PostgreSQL server: tests/test_sweep_postgres.py runs these very lines "
                                 "against a real one",
}


def docs_workspace(folder: Path) -> None:
    """tests/test_docs_seeds.py's workspace, plus the files the guide pages name: RepDistiller's folder layout of
    a published teacher, and ImageNet's valprep.sh for the tiny val folder."""
    workspace(folder)
    (folder / "resnet32x4_vanilla").mkdir()
    (folder / "resnet32x4_vanilla" / "ckpt_epoch_240.pth").write_bytes((folder / "ckpt_epoch_240.pth").read_bytes())
    names = [(f"ILSVRC2012_val_{c * 2 + i + 1:08d}.JPEG", wnid) for c, wnid in enumerate(WNIDS) for i in range(2)]
    (folder / "valprep.sh").write_text("".join(f"mkdir -p {w}\n" for w in WNIDS) +
                                       "".join(f"mv {n} {w}/\n" for n, w in names))


def blocks(page: Path) -> list[tuple[str, str]]:
    return [(lang or "", body) for lang, body in FENCE.findall(page.read_text())]


def shell_lines(body: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.split(" #")[0].strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_block_has_a_language_the_runner_knows(page):
    for lang, body in blocks(page):
        assert lang in RUN_LANGS, f"{page.name}: a ```{lang or '(no language)'} block; use one of {sorted(RUN_LANGS)}"
        if lang == "bash":
            for line in shell_lines(body):
                assert line.startswith("kdzoo ") or any(line.startswith(p) for p in SHELL_ONLY), \
                    f"{page.name}: `{line}` is neither a kdzoo command nor a listed shell-only line"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_and_toml_blocks_parse_and_recipes_validate(page):
    for lang, body in blocks(page):
        if lang == "toml":
            tomllib.loads(body)
        if lang == "yaml":
            data = yaml.safe_load(body)
            if isinstance(data, dict) and "loss" in data and "dataset" in data and "imports" not in data:
                config_from_data(data)


def _kdzoo_lines(page: Path) -> list[str]:
    return [line for lang, body in blocks(page) if lang == "bash" for line in shell_lines(body)
            if line.startswith("kdzoo ") and not any(line.startswith(long) for long in TOO_LONG)]


RUNNABLE = [p for p in PAGES if _kdzoo_lines(p) or any(lang == "python" for lang, _ in blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(REPO)))
def test_the_commands_then_the_python_of_a_page_run(page, tmp_path, monkeypatch, capsys):
    """The page's kdzoo lines in order, then its python blocks in one process (they may read the runs made)."""
    docs_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    for line in _kdzoo_lines(page):
        argv = shlex.split(line)
        code = run_cli(*argv[1:], *tiny_tail(argv))
        said = capsys.readouterr()
        assert code == 0, f"{page.name}: `{line}` exited {code}\n{said.err[-2000:]}"
    source = "\n\n".join(body for lang, body in blocks(page) if lang == "python")
    if not source:
        return
    script = tmp_path / "page.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"{page.name}:\n{done.stderr[-3000:]}"


def test_the_generated_reference_pages_are_current():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (DOCS / "reference" / "recipes.md").read_text() == gen.recipes_page(), "run python docs/gen_reference.py"
    assert (DOCS / "reference" / "methods.md").read_text() == gen.methods_page(), "run python docs/gen_reference.py"


def test_the_readme_is_short_and_its_quickstart_runs():
    readme = REPO / "README.md"
    assert len(readme.read_bytes()) < 10_000
    assert _kdzoo_lines(readme) and any(lang == "python" for lang, _ in blocks(readme))


def test_every_page_is_in_the_site_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        assert str(page.relative_to(DOCS)) in nav, f"{page} is not in mkdocs.yml's nav"
