"""`kdzoo report RUN_DIR...`: tables and plots over runs grouped by recipe, and teacher-student linear CKA."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from kdzoo.bench.cka import linear_cka
from kdzoo.bench.leaderboard import mean_pm, mean_std
from kdzoo.config import load_config
from kdzoo.errors import KdzooError


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (holding summary.json and config.yaml) given directly or anywhere below a bench folder."""
    runs = []
    for path in paths:
        if not path.is_dir():
            raise KdzooError(f"report: no such folder: {path}")
        found = [path] if (path / "summary.json").is_file() else sorted(p.parent for p in path.rglob("summary.json"))
        found = [p for p in found if (p / "config.yaml").is_file()]
        if not found:
            raise KdzooError(f"report: no finished run in {path} (expected summary.json and config.yaml)")
        runs += found
    return list(dict.fromkeys(runs))


def load_run(folder: Path) -> dict[str, Any]:
    cfg = load_config(folder / "config.yaml")
    summary = json.loads((folder / "summary.json").read_text())
    epochs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    curve = [(e["epoch"], e["test_top1"]) for e in epochs if e.get("phase") == "main" and "test_top1" in e]
    return {"folder": folder, "label": f"{cfg.name} ({cfg.student.arch})", "cfg": cfg, "summary": summary,
            "curve": curve, "distilled": bool(cfg.teacher.checkpoint)}


@torch.inference_mode()
def pooled_features(model: torch.nn.Module, loader) -> torch.Tensor:
    from kdzoo.models import FeatureModel, Needs

    fm = FeatureModel(model, Needs(pooled=True))
    model.eval()
    out = [fm(raw[0]).pooled.float() for raw in loader]
    fm.remove_hooks()
    return torch.cat(out)


def cka_of_run(run: dict[str, Any], cache: dict) -> float | None:
    """Linear CKA between teacher and student pooled features on the test set (last checkpoint)."""
    from kdzoo.checkpoints.load import load_model
    from kdzoo.data import build_dataset, make_loader

    student, meta, _ = load_model(run["folder"], "last")
    teacher_path = run["cfg"].teacher.checkpoint
    key = (teacher_path, meta["dataset"])
    if key not in cache:
        teacher, _, _ = load_model(teacher_path)
        test = build_dataset(meta["dataset"], "test", root=meta.get("dataset_root"), augment=False,
                             image_size=meta.get("image_size"))
        loader = make_loader(test, batch_size=500, train=False, seed=0)
        cache[key] = (loader, pooled_features(teacher, loader))
    loader, teacher_feats = cache[key]
    try:
        student_feats = pooled_features(student, loader)
    except KdzooError:
        return None  # an inference wrapper without a feature spec
    return linear_cka(teacher_feats, student_feats)


def build_report(paths: list[Path], out: Path, with_cka: bool = True, log=print) -> str:
    runs = [load_run(f) for f in find_runs(paths)]
    cache: dict = {}
    for run in runs:
        run["cka"] = cka_of_run(run, cache) if with_cka and run["distilled"] else None
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["label"]].append(run)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, members in groups.items():
        ckas = [m["cka"] for m in members if m["cka"] is not None]
        rows.append({"label": label, "n": len(members),
                     "best": mean_std([m["summary"]["best_top1"] for m in members]),
                     "last": mean_std([m["summary"]["last_top1"] for m in members]),
                     "cka": mean_std(ckas) if ckas else None, "n_cka": len(ckas)})
    rows.sort(key=lambda r: -r["best"][0])
    lines = ["| run | seeds | best top-1 | last top-1 | linear CKA (teacher, student) |", "|---|---|---|---|---|"]
    for r in rows:
        cka = "" if r["cka"] is None else mean_pm(r["cka"], r["n_cka"], digits=3)
        lines.append(f"| {r['label']} | {r['n']} | {mean_pm(r['best'], r['n'])} | {mean_pm(r['last'], r['n'])} | "
                     f"{cka} |")
    table = "\n".join(lines)
    plot_curves(groups, out / "accuracy_curves.png")
    plot_bars(rows, out / "accuracy_bars.png")
    (out / "report.md").write_text("# Report\n\nMean ± sample std over seeds; CKA on the test set's pooled "
                                   "features, last checkpoint.\n\n" + table +
                                   "\n\n![accuracy per epoch](accuracy_curves.png)\n\n"
                                   "![best top-1](accuracy_bars.png)\n")
    (out / "report.json").write_text(json.dumps(
        [{"label": r["label"], "n": r["n"], "best": r["best"], "last": r["last"], "cka": r["cka"]} for r in rows],
        indent=1) + "\n")
    log(table)
    return table


def plot_curves(groups: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, members in sorted(groups.items()):
        curves = [dict(m["curve"]) for m in members if m["curve"]]
        if not curves:
            continue
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(epochs, [sum(c[e] for c in curves) / len(curves) for e in epochs], label=label, linewidth=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 5))
    xs = range(len(rows))
    ax.bar(xs, [r["best"][0] for r in rows], yerr=[r["best"][1] for r in rows], capsize=3, color="#4c72b0")
    ax.set_xticks(list(xs), [r["label"] for r in rows], rotation=60, ha="right", fontsize=7)
    low = min(r["best"][0] - r["best"][1] for r in rows)
    high = max(r["best"][0] + r["best"][1] for r in rows)
    ax.set_ylim(max(0, low - (high - low) * 0.5 - 1), min(100, high + (high - low) * 0.2 + 0.5))
    ax.set_ylabel("best test top-1 (%), mean ± std")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
