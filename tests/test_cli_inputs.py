"""Files given to the CLI that are no recipe (empty, a directory) or no text, and a stdout its reader closed: one
line each, nothing created."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import FAST, REPO, run_cli

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdzoo: error: ") and "\n" not in err, err
    return err


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "comments.yaml").write_text("# nothing here yet\n\n")
    (tmp_path / "folder.yaml").mkdir()
    return tmp_path


@pytest.mark.parametrize("name, says", [("empty.yaml", "is empty"), ("comments.yaml", "is empty"),
                                        ("folder.yaml", "is a directory")])
@pytest.mark.parametrize("verb", ["train", "distill", "pretrain"])
def test_a_recipe_that_is_empty_or_a_directory_is_refused(inputs, capsys, verb, name, says):
    out = inputs / "run"
    assert run_cli(verb, "-c", inputs / name, "--out", out, "epochs=1", *FAST) == 2  # (1 epoch: if it runs)
    assert f"recipe {inputs / name} {says}" in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("name, says", [("empty.yaml", "is empty"), ("folder.yaml", "is a directory")])
def test_sweep_and_bench_files_that_are_empty_or_a_directory_are_refused(inputs, capsys, name, says):
    assert run_cli("sweep", "-c", inputs / name) == 2
    assert f"sweep file {inputs / name} {says}" in one_line_error(capsys)
    assert run_cli("bench", "-c", inputs / name) == 2
    assert f"bench file {inputs / name} {says}" in one_line_error(capsys)
    sweep = inputs / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"recipe": str(inputs / name), "grid": {"optim.lr": [0.1]},
                                     "out": str(inputs / "sweep_out")}))
    assert run_cli("sweep", "-c", sweep) == 2
    assert str(inputs / name) in one_line_error(capsys)
    assert sorted(p.name for p in inputs.iterdir()) == ["comments.yaml", "empty.yaml", "folder.yaml", "sweep.yaml"]


def test_import_checkpoint_of_a_directory_or_an_empty_file(inputs, capsys):
    (inputs / "empty.pth").write_bytes(b"")
    for name, says in (("folder.yaml", "is a directory"), ("empty.pth", "is empty")):
        assert run_cli("import-checkpoint", inputs / name, "--arch", "resnet8", "--num-classes", "10", "--dataset",
                       "digits", "--out", inputs / "imported") == 2
        assert says in one_line_error(capsys)


def test_valprep_labels_that_are_not_utf8_or_a_directory(tmp_path, capsys):
    (tmp_path / "imagenet" / "val").mkdir(parents=True)
    labels = tmp_path / "labels.txt"
    labels.write_bytes("ILSVRC2012_val_00000001.JPEG n01751748\n".encode("utf-16"))
    assert run_cli("imagenet-valprep", tmp_path / "imagenet", "--labels", labels) == 2
    assert f"label file {labels} is not a text file" in one_line_error(capsys)
    assert run_cli("imagenet-valprep", tmp_path / "imagenet", "--labels", tmp_path) == 2
    assert f"label file {tmp_path} is a directory" in one_line_error(capsys)


def test_a_closed_stdout_ends_quietly():
    """The reader left before kdzoo wrote (deterministic: the pipe's read end is closed before it starts)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "kdzoo.cli", "list", "methods"], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")  # 128 + SIGPIPE, as `yes | head -1` ends


def test_list_piped_into_head():
    shell = f"{sys.executable} -m kdzoo.cli list methods | head -1; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env={**ENV, "PYTHONUNBUFFERED": "1"},
                          timeout=120)
    assert proc.stdout.startswith("ab ") and proc.stdout.count("\n") == 1
    assert proc.stderr == "" and proc.returncode in (0, 141)  # 0: head read everything before leaving
