"""Behaviour fingerprint: sha256 of the trained weights of short digits runs, per method, for one or more code
revisions, so that a refactor can show it changed no number.

Each revision runs with its own code (a temporary `git worktree` on PYTHONPATH; `HEAD` = the working tree as it
is): a 2-epoch resnet8x4 digits teacher, then `kdzoo distill` of each method's digits recipe for a few epochs
with seed 0, num_workers 0, fp32. The hash covers the tensors of `last.safetensors` (names, dtypes, shapes and
bytes in name order), not the file, whose metadata may legitimately change. Same machine kind for all revisions:
fp32 kernels differ between CPUs.

    python benchmarks/behaviour_hashes.py --revs c4b0282 HEAD --out benchmarks/results/behaviour_hashes
    python benchmarks/behaviour_hashes.py --against benchmarks/results/behaviour_hashes.json   # HEAD vs stored
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.numpy import load_file

from kdzoo.engine.run_log import cpu_model

REPO = Path(__file__).resolve().parents[1]
METHODS = ("kd", "crd", "reviewkd", "simkd", "ab", "ft")
FIXED = ["seed=0", "dataset.num_workers=0", "engine.precision=fp32", "engine.progress=false",
         "engine.tensorboard=false"]


def tensors_sha256(path: Path) -> str:
    state = load_file(str(path))
    digest = hashlib.sha256()
    for key in sorted(state):
        array = state[key]
        digest.update(f"{key}|{array.dtype}|{tuple(array.shape)}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def kdzoo(src: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-m", "kdzoo.cli", *map(str, args)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"kdzoo {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")


def fingerprint(tree: Path, work: Path, methods: tuple[str, ...], epochs: int) -> dict[str, str]:
    src, configs = tree / "src", tree / "configs" / "digits"
    teacher = work / "teacher"
    kdzoo(src, "train", "-c", configs / "teacher.yaml", "--out", teacher, "epochs=2", "student.arch=resnet8x4", *FIXED)
    hashes = {"teacher": tensors_sha256(teacher / "checkpoints" / "last.safetensors")}
    for method in methods:
        out = work / method
        started = time.time()
        kdzoo(src, "distill", "-c", configs / f"{method}.yaml", "--out", out, f"epochs={epochs}",
              f"teacher.checkpoint={teacher}", *FIXED)
        hashes[method] = tensors_sha256(out / "checkpoints" / "last.safetensors")
        print(f"  {method}: {hashes[method][:16]}  ({time.time() - started:.0f} s)", flush=True)
    return hashes


def resolve(rev: str) -> str:
    if rev == "HEAD":
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revs", nargs="+", default=["HEAD"], help="git revisions; HEAD = the working tree")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="writes <out>.json and <out>.md")
    parser.add_argument("--against", type=Path, help="a results .json from an earlier run: its revisions are "
                        "compared too (e.g. benchmarks/results/behaviour_hashes.json)")
    args = parser.parse_args()
    results = {}
    if args.against:
        stored = json.loads(args.against.read_text())["revs"]
        results.update({f"{rev} (stored)": {m: h for m, h in hashes.items() if m in ("teacher", *args.methods)}
                        for rev, hashes in stored.items()})
    with tempfile.TemporaryDirectory(prefix="kdzoo-hashes-") as tmp:
        for rev in args.revs:
            name = resolve(rev)
            print(f"{rev} ({name})", flush=True)
            if rev == "HEAD":
                tree = REPO
            else:
                tree = Path(tmp) / f"tree-{name}"
                subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), rev], cwd=REPO, check=True)
            try:
                results[name] = fingerprint(tree, Path(tmp) / f"runs-{name}", tuple(args.methods), args.epochs)
            finally:
                if tree != REPO:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO)
    names = list(results)
    rows = ["teacher", *args.methods]
    same = {row: len({results[n][row] for n in names}) == 1 for row in rows}
    lines = [f"# Behaviour fingerprint: sha256 of last.safetensors tensors ({args.epochs}-epoch digits runs)", "",
             f"Command: `python {' '.join(sys.argv)}`",
             f"Hardware: {cpu_model()}, {os.cpu_count()} cores, fp32, "
             f"torch {_torch_version()}", "",
             "| run | " + " | ".join(names) + " | equal |", "|---|" + "---|" * len(names) + "---|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(f"`{results[n][row][:16]}`" for n in names)
                     + f" | {'yes' if same[row] else 'NO'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"revs": results, "equal": same,
                                                             "epochs": args.epochs}, indent=2) + "\n")
    if not all(same.values()):
        raise SystemExit(1)


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
