"""results.json of a bench: one entry per finished cell, read back from its run folder."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from kdzoo.bench.leaderboard import read_json
from kdzoo.config import load_config, to_dict


def collect_results(cells: list[tuple[Any, Path]], out: Path) -> list[dict[str, Any]]:
    """(cell, run folder) pairs -> the entries of finished cells (written to `out`/results.json)."""
    results = []
    for cell, folder in cells:
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        main = [e for e in epochs if e.get("phase") == "main"]
        results.append({
            "row": cell.row, "student": cell.student, "seed": cell.seed,
            "best_top1": summary["best_top1"], "best_epoch": summary["best_epoch"],
            "last_top1": summary["last_top1"], "wall_time_s": summary["wall_time_s"],
            "precision": summary.get("precision"),
            "hardware": machine(read_json(folder / "env.json")),
            "epoch_time_s": statistics.mean(e["epoch_time_s"] for e in main) if main else None,
            "run_dir": str(folder.relative_to(out)),
            "config": to_dict(load_config(folder / "config.yaml")),
        })
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def machine(env: dict[str, Any]) -> str | None:
    """What a run's times depend on: its GPU when it ran on one, else its CPU model (None: not recorded)."""
    return env.get("cuda") if str(env.get("device", "")).startswith("cuda") else env.get("cpu_model")
