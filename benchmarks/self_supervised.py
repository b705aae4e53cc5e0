"""Self-supervised distillation, measured by linear probes (issue 14's benchmark), 3 seeds.

    python benchmarks/self_supervised.py [--seeds 0 1 2] [--part images|tabular|all] [--report]   (resumable)

Images (Fashion-MNIST, all 60k training images, no label read by any self-supervised run):
- `ss`: `kdzoo pretrain -c configs/fashion_mnist/self_supervised/dssrd.yaml` (BYOL + i-Mix, resnet20, 5 epochs)
  with its jointly trained resnet8 weak student (CRD against the target's pooled features, instance negatives);
- `offline`: a resnet8 distilled offline from that run's frozen target encoder (CRD + proto, 5 epochs;
  configs/fashion_mnist/self_supervised/offline.yaml);
- `supervised`: a resnet8 trained with labels (CE, 5 epochs, configs/fashion_mnist/student.yaml);
- random-init resnet20 and resnet8 (the seed's initialisation, BatchNorm statistics untouched).
Each encoder: `kdzoo linear-eval --no-augment` (i-Mix protocol, 100 epochs on cached features; best and last
top-1 on the 10k test images).

Tabular (covtype's on-disk format, but synthetic: the UCI file cannot be downloaded here): 20,120 rows from
scikit-learn's make_classification (10 continuous features, 8 informative, 7 classes) plus 4 + 40 one-hot
columns derived from them, written as covtype.data.gz and read by the real loader. Rows: the mlp5 teacher, an
mlp5_small student with labels only, the KD student (configs/tabular/covtype_{teacher,kd}.yaml, 30 epochs), and
self-supervised mlp5 + weak mlp5_small (configs/tabular/covtype_byol.yaml, 30 epochs) probed linearly.

Writes benchmarks/results/self_supervised/{results.json, report.md, command.txt}; runs live in
runs/bench/self_supervised (a finished run is skipped, an unfinished one resumed).
"""
from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "bench" / "self_supervised"
RESULTS = REPO / "benchmarks" / "results" / "self_supervised"
SS = "configs/fashion_mnist/self_supervised"
QUIET = ["engine.tensorboard=false"]
TABULAR_EPOCHS = 30


def kdzoo(*args: str) -> None:
    print("+ kdzoo", " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "kdzoo.cli", *args], cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kdzoo {args[0]} failed with exit code {done.returncode}")


def run(command: str, out: Path, *args: str) -> Path:
    """A training command into `out`: skipped when finished, resumed when a checkpoint exists."""
    if (out / "summary.json").is_file():
        return out
    if (out / "checkpoints" / "last.safetensors").is_file():
        kdzoo(command, "--resume", str(out), "--quiet")
    else:
        if out.exists():  # started but no checkpoint yet: nothing to keep
            import shutil

            shutil.rmtree(out)
        kdzoo(command, *args, *QUIET, "--out", str(out), "--quiet")
    return out


def probe(source: Path, out: Path, network: str = "student") -> dict:
    if not (out / "summary.json").is_file():
        if out.exists():
            import shutil

            shutil.rmtree(out)
        kdzoo("linear-eval", "--checkpoint", str(source), "--network", network, "--no-augment", "--out", str(out),
              "--quiet", "--", *QUIET)
    return json.loads((out / "summary.json").read_text())


def random_encoder(arch: str, seed: int, path: Path, dataset: str, in_channels: int, classes: int) -> Path:
    """The arch as the seed initialises it (what training starts from), saved as an ordinary checkpoint."""
    if path.is_file():
        return path
    import torch

    from kdzoo.checkpoints.format import save_weights
    from kdzoo.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=classes, in_channels=in_channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, model.state_dict(), {"arch": arch, "num_classes": classes, "in_channels": in_channels,
                                            "dataset": dataset})
    return path


def images(seed: int) -> dict:
    root = OUT / "images" / f"seed{seed}"
    ss = run("pretrain", root / "ss", "-c", f"{SS}/dssrd.yaml", f"seed={seed}")
    offline = run("distill", root / "offline", "-c", f"{SS}/offline.yaml", f"seed={seed}",
                  f"teacher.checkpoint={ss / 'checkpoints' / 'target.last.safetensors'}")
    supervised = run("train", root / "supervised", "-c", "configs/fashion_mnist/student.yaml", f"seed={seed}",
                     "epochs=5")
    probes = root / "probes"
    rows = {
        "ss_teacher_resnet20": probe(ss, probes / "ss_teacher", "target"),
        "ss_weak_resnet8": probe(ss, probes / "ss_weak", "weak"),
        "offline_resnet8": probe(offline, probes / "offline"),
        "supervised_resnet8": probe(supervised, probes / "supervised"),
    }
    for arch in ("resnet20", "resnet8"):
        encoder = random_encoder(arch, seed, root / "random" / f"{arch}.safetensors", "fashion_mnist", 1, 10)
        rows[f"random_{arch}"] = probe(encoder, probes / f"random_{arch}")
    out = {name: {"best_top1": s.get("best_value", s["best_top1"]), "last_top1": s["last_top1"]} for name, s in rows.items()}
    out["ss_knn_top1"] = _last_metric(ss, "test_knn_top1")
    out["offline_knn_top1"] = _last_metric(offline, "test_knn_top1")
    out["wall_s"] = {name: json.loads((path / "summary.json").read_text())["wall_time_s"]
                     for name, path in (("ss", ss), ("offline", offline), ("supervised", supervised))}
    return out


def synthetic_covtype(root: Path) -> Path:
    """covtype.data.gz in UCI's format from make_classification (see the module docstring)."""
    path = root / "covtype.data.gz"
    if path.is_file():
        return root
    import numpy as np
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=20_120, n_features=10, n_informative=8, n_redundant=1, n_classes=7,
                               n_clusters_per_class=2, class_sep=1.0, random_state=0)
    rng = np.random.default_rng(0)
    area = np.eye(4, dtype=int)[np.argmax(x @ rng.normal(size=(10, 4)), axis=1)]
    soil = np.eye(40, dtype=int)[np.argmax(x @ rng.normal(size=(10, 40)) + rng.gumbel(size=(len(x), 40)), axis=1)]
    cont = np.round(x * 100 + 1000).astype(int)  # integer columns like covtype's
    rows = np.concatenate([cont, area, soil, (y + 1)[:, None]], axis=1)
    root.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with gzip.open(partial, "wt") as f:
        f.writelines(",".join(map(str, r)) + "\n" for r in rows)
    partial.replace(path)
    return root


def tabular(seed: int) -> dict:
    data = synthetic_covtype(OUT / "tabular" / "data")
    root = OUT / "tabular" / f"seed{seed}"
    common = [f"seed={seed}", f"dataset.root={data}", f"epochs={TABULAR_EPOCHS}"]
    teacher = run("train", root / "teacher", "-c", "configs/tabular/covtype_teacher.yaml", *common)
    student = run("train", root / "student", "-c", "configs/tabular/covtype_teacher.yaml", *common,
                  "student.arch=mlp5_small")
    kd = run("distill", root / "kd", "-c", "configs/tabular/covtype_kd.yaml", *common,
             f"teacher.checkpoint={teacher}")
    ss = run("pretrain", root / "ss", "-c", "configs/tabular/covtype_byol.yaml", *common)
    out = {name: {"best_top1": _summary(path)["best_top1"], "last_top1": _summary(path)["last_top1"]}
           for name, path in (("teacher_mlp5", teacher), ("student_mlp5_small", student), ("kd_mlp5_small", kd))}
    for name, network in (("ss_teacher_mlp5_probe", "target"), ("ss_weak_mlp5_small_probe", "weak")):
        s = probe(ss, root / "probes" / name, network)
        out[name] = {"best_top1": s.get("best_value", s["best_top1"]), "last_top1": s["last_top1"]}
    return out


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def _last_metric(path: Path, key: str) -> float:
    lines = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in lines if key in r][-1]


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


IMAGE_ROWS = [
    ("ss_teacher_resnet20", "BYOL + i-Mix teacher, resnet20 (target encoder), no labels"),
    ("ss_weak_resnet8", "DS-SRD weak student, resnet8, trained jointly (CRD, instance negatives), no labels"),
    ("offline_resnet8", "resnet8 distilled offline from the frozen BYOL target (CRD + proto), no labels"),
    ("supervised_resnet8", "supervised resnet8 (CE with labels, 5 epochs)"),
    ("random_resnet20", "random-init resnet20"),
    ("random_resnet8", "random-init resnet8"),
]
TABULAR_ROWS = [
    ("teacher_mlp5", "mlp5 teacher (CE), end to end"),
    ("student_mlp5_small", "mlp5_small student (CE only), end to end"),
    ("kd_mlp5_small", "mlp5_small KD student (0.1 CE + 0.9 KD), end to end"),
    ("ss_teacher_mlp5_probe", "self-supervised mlp5 (BYOL + i-Mix, tabular views), linear probe"),
    ("ss_weak_mlp5_small_probe", "its weak mlp5_small (CRD, instance negatives), linear probe"),
]


def report(results: dict) -> str:
    lines = [f"# Self-supervised distillation, {_cpu()}, torch {_torch()}", "",
             "Command: `python benchmarks/self_supervised.py` (see its docstring for every run). Linear probes:",
             "`kdzoo linear-eval --no-augment` (i-Mix protocol: frozen encoder in eval mode, a new linear layer, "
             "100 epochs on cached features), top-1 on the test set, mean ± std over seeds "
             f"{', '.join(sorted(results.get('images', {}) or results.get('tabular', {})))}.",
             "Runs: OMP_NUM_THREADS=1, three or four processes at once on the 2 cores (the wall times below are",
             "what they took so, not speed figures).", ""]
    for part, rows, title in (("images", IMAGE_ROWS, "Fashion-MNIST (all 60k training images, 10k test)"),
                              ("tabular", TABULAR_ROWS, "Synthetic covtype-format data (make_classification; "
                                                        "15,120 train / 5,000 test rows; not UCI covtype)")):
        seeds = results.get(part, {})
        if not seeds:
            continue
        lines += [f"## {title}", "", "| row | best top-1 | last top-1 |", "|---|---|---|"]
        for key, label in rows:
            best = [s[key]["best_top1"] for s in seeds.values() if key in s]
            last = [s[key]["last_top1"] for s in seeds.values() if key in s]
            lines.append(f"| {label} | {_cell(best)} | {_cell(last)} |")
        if part == "images":
            knn = [s["ss_knn_top1"] for s in seeds.values()]
            off = [s["offline_knn_top1"] for s in seeds.values()]
            lines += ["", f"kNN monitor (20 neighbours, cosine, last epoch): BYOL target {_cell(knn)}, offline "
                          f"student {_cell(off)}.", ""]
            for name in ("ss", "offline", "supervised"):
                walls = [s["wall_s"][name] for s in seeds.values()]
                lines.append(f"- `{name}` wall time per seed: {statistics.fmean(walls) / 60:.1f} min")
        lines.append("")
    return "\n".join(lines)


def _cpu() -> str:
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _torch() -> str:
    import torch

    return torch.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--part", choices=["images", "tabular", "all"], default="all")
    parser.add_argument("--report", action="store_true", help="only collect finished seeds and write the report")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stored = RESULTS / "results.json"
    results = json.loads(stored.read_text()) if stored.is_file() else {}
    parts = ["images", "tabular"] if args.part == "all" else [args.part]
    if not args.report:
        for part in parts:
            for seed in args.seeds:
                got = (images if part == "images" else tabular)(seed)
                results = json.loads(stored.read_text()) if stored.is_file() else {}  # another process may add
                results.setdefault(part, {})[str(seed)] = got
                stored.write_text(json.dumps(results, indent=1))
    (RESULTS / "report.md").write_text(report(results))
    (RESULTS / "command.txt").write_text(
        "# OMP_NUM_THREADS=1 for each; seed 2 ran in its own process (the first one stopped at its lock)\n"
        "python benchmarks/self_supervised.py --part images --seeds 0 2 &\n"
        "python benchmarks/self_supervised.py --part images --seeds 1 && python benchmarks/self_supervised.py "
        "--part tabular &\n"
        "python benchmarks/self_supervised.py --part images --seeds 2\n"
        "python benchmarks/self_supervised.py --report\n")
    print(report(results))


if __name__ == "__main__":
    main()
