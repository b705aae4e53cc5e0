"""The command-line guide's first block (docs/usage.md, the README's Usage section before it moved) runs as written,
in order, in a fresh working directory, `torchrun` included (tests/test_docs_pages.py runs the other blocks).

Each `kdzoo ...` / `torchrun ...` line of that block runs as a subprocess; fresh train/distill runs
get `epochs=1` and quiet engine overrides appended (everything else stays exactly as the README writes it), so a
README command that breaks (a refused --out, a --resume that makes no sense, a recipe nobody created a teacher
for) fails this test.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "docs" / "usage.md"
# Appended to fresh train/distill runs only (resume accepts just epochs= and engine.*; eval and list take none).
FAST = ["epochs=1", "engine.progress=false", "engine.tensorboard=false", "engine.precision=fp32"]


def usage_commands(text: str) -> list[list[str]]:
    """The kdzoo/torchrun command lines of the page's first shell block, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith(("kdzoo ", "torchrun ")):
            commands.append(shlex.split(line, comments=True))
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_subprocess(argv: list[str]) -> list[str]:
    """The README command as the test runs it: this interpreter, plus FAST on fresh training runs."""
    if argv[0] == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--master_port", str(_free_port()), *argv[1:]]
        kdzoo_args = argv[argv.index("kdzoo.cli") + 1:]
    else:
        cmd = [sys.executable, "-m", "kdzoo.cli", *argv[1:]]
        kdzoo_args = argv[1:]
    if kdzoo_args[0] in ("train", "distill") and "--resume" not in kdzoo_args:
        cmd += FAST
    return cmd


def test_usage_block_lists_the_newcomer_path():
    commands = usage_commands(README.read_text())
    verbs = [c[1] if c[0] == "kdzoo" else "torchrun" for c in commands]
    for verb in ("list", "train", "distill", "eval", "torchrun"):
        assert verb in verbs, f"the usage page's first block lost its `{verb}` example"
    assert any("--resume" in c for c in commands)


def test_readme_usage_commands_run_in_order(tmp_path):
    (tmp_path / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for argv in usage_commands(README.read_text()):
        cmd = to_subprocess(argv)
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (f"README command failed (exit {proc.returncode}): {shlex.join(argv)}\n"
                                      f"ran: {shlex.join(cmd)}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
        if "--out" in argv:  # a training run the README creates is finished
            out = tmp_path / argv[argv.index("--out") + 1]
            assert (out / "summary.json").is_file(), f"{shlex.join(argv)} left no finished run in {out}"


if __name__ == "__main__":  # print what the test runs
    for argv in usage_commands(README.read_text()):
        print(shlex.join(to_subprocess(argv)))
    sys.exit(pytest.main([__file__, "-q"]))
