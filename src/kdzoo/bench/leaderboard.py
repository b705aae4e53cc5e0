"""The markdown leaderboard of a bench folder: mean +- std over seeds, gain over the baseline, relative cost."""
from __future__ import annotations

import json
import platform
import statistics
from collections import defaultdict
from typing import Any


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value: format it with `mean_pm`, which then says so)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_pm(pair: tuple[float, float], n: int, digits: int = 2) -> str:
    """`81.07 ± 0.62` over several seeds; `81.07 (1 seed)` for one, which has no spread to show."""
    if n < 2:
        return f"{pair[0]:.{digits}f} ({n} seed)"
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def leaderboard_rows(results: list[dict[str, Any]], baseline: str = "student") -> dict[str, list[dict]]:
    """Per student arch, one summary per row, the baseline first and then by mean best top-1."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["student"], r["row"])].append(r)
    by_student: dict[str, list[dict]] = defaultdict(list)
    for (student, row), runs in groups.items():
        best = mean_std([r["best_top1"] for r in runs])
        last = mean_std([r["last_top1"] for r in runs])
        times = [r["epoch_time_s"] for r in runs if r.get("epoch_time_s")]
        by_student[student].append({"row": row, "n": len(runs), "best": best, "last": last,
                                    "epoch_time_s": statistics.mean(times) if times else None,
                                    "seeds": sorted(r["seed"] for r in runs),
                                    "hardware": sorted({str(r.get("hardware") or "") for r in runs})})
    for student, rows in by_student.items():
        base = next((r for r in rows if r["row"] == baseline), None)
        for r in rows:
            r["gain"] = r["best"][0] - base["best"][0] if base else None
            # a time ratio only against a baseline timed on the same machine (rows merged from another are blank);
            # runs that did not record their machine ("") are taken to be the baseline's
            known = base is not None and "" not in r["hardware"] + base["hardware"]
            r["other_machine"] = known and r["hardware"] != base["hardware"]
            r["rel_time"] = (r["epoch_time_s"] / base["epoch_time_s"]
                             if base and not r["other_machine"] and base["epoch_time_s"] and r["epoch_time_s"]
                             else None)
        rows.sort(key=lambda r: (r["row"] != baseline, -r["best"][0]))
    return dict(by_student)


def format_leaderboard(by_student: dict[str, list[dict]]) -> str:
    lines = []
    for student, rows in by_student.items():
        lines += [f"### student {student}", "",
                  "| rank | method | seeds | best top-1 (mean ± std) | last top-1 (mean ± std) | gain vs student "
                  "(best) | time/epoch vs student |",
                  "|---|---|---|---|---|---|---|"]
        rank = 0
        for r in rows:
            rank_text = "–" if r["row"] == "student" else str(rank := rank + 1)
            lines.append(f"| {rank_text} | {r['row']} | {r['n']} | {mean_pm(r['best'], r['n'])} | "
                         f"{mean_pm(r['last'], r['n'])} | "
                         f"{_signed(r['gain'])} | {_ratio(r['rel_time'])} |")
        lines.append("")
    return "\n".join(lines)


def _row_teachers(bench) -> list[str]:
    """A line per teacher that rows have of their own (e.g. HSAKD's _aux teachers)."""
    lines = []
    for label, folder, _ in bench.teachers()[1:]:
        summary = read_json(folder / "summary.json")
        rows = ", ".join(r.name for r in bench.cfg.rows if r.teacher == label)
        if not summary:
            lines.append(f"- Teacher of {rows}: {label}, not trained yet (its rows are not run).")
            continue
        result = summary.get("result") or {}
        epochs = _epochs(folder)
        label = f"{label}, {epochs} epoch{'' if epochs == '1' else 's'}"
        if result:  # selected on another metric (an HSAKD teacher on its best head): the backbone at that epoch
            heads = {k: v for k, v in (summary.get("best_metrics") or {}).items()
                     if k.endswith("_top1") and "head" in k}
            lines.append(f"- Teacher of {rows}: {summary.get('student', '?')} ({label}) — test top-1 "
                         f"{_num(result.get('value'))} at the best {summary.get('selected_by')} (epoch "
                         f"{result.get('epoch')}; " + ", ".join(f"{k[5:]} {v:.2f}" for k, v in heads.items()) + ").")
            continue
        lines.append(f"- Teacher of {rows}: {summary.get('student', '?')} ({label}) — test top-1 "
                     f"{_num(summary.get('best_top1'))} (best) / {_num(summary.get('last_top1'))} (last).")
    return lines


def _epochs(folder) -> str:
    """The epochs a teacher was trained for (its run's config), or '?'."""
    import yaml

    try:
        return str(yaml.safe_load((folder / "config.yaml").read_text())["epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return "?"


def write_leaderboard(bench, results: list[dict[str, Any]]) -> str:
    cfg = bench.cfg
    teacher = bench.teacher_summary()
    env = read_json(bench.teacher_dir() / "env.json") or _first_run_env(bench, results)
    by_student = leaderboard_rows(results)
    total = sum(r["wall_time_s"] for r in results)
    head = [f"# Leaderboard: {cfg.name}", ""]
    if cfg.description:
        head += [cfg.description.strip(), ""]
    if bench.command:
        head += [f"- Command: `{bench.command}`"]
    head += [
        f"- Teacher: {teacher.get('student', '?')} — test top-1 {_num(teacher.get('best_top1'))} (best) / "
        f"{_num(teacher.get('last_top1'))} (last), trained once on the full training set." if teacher else
        "- Teacher: not trained in this folder (the rows run needed none of it).",
        *_row_teachers(bench),
        f"- Budget per student run: {', '.join(f'{k}={v}' for k, v in cfg.overrides.items())}.",
        f"- Students: {', '.join(cfg.students)}; seeds: {', '.join(map(str, cfg.seeds))}; "
        f"{len(results)} runs, {total / 3600:.2f} h of training in total.",
        "- Accuracy: test top-1 on the full test set; 'best' is the best epoch, 'last' the final one; "
        "mean ± sample std over seeds. Gain is the mean best top-1 minus the student baseline's.",
        f"- Hardware: {env.get('processor') or platform.machine()}, {env.get('cpu_count')} CPU cores, "
        f"torch {env.get('torch')}, precision {_precision(results)}.",
        *_other_machines(by_student),
        "",
    ]
    text = "\n".join(head) + "\n" + format_leaderboard(by_student) + format_failures(bench)
    (bench.out / "leaderboard.md").write_text(text)
    return text


def _first_run_env(bench, results: list[dict[str, Any]]) -> dict:
    """The environment of the first result's run (the bench teacher was not trained here), or this process's."""
    for r in results:
        env = read_json(bench.out / r["run_dir"] / "env.json") if r.get("run_dir") else {}
        if env:
            return env
    from kdzoo.engine.run_log import environment

    return environment()


def _other_machines(by_student: dict[str, list[dict]]) -> list[str]:
    """A line naming the rows timed on another machine than their baseline (their time ratio is left blank)."""
    rows = {f"{r['row']} ({', '.join(h or 'unnamed CPU' for h in r['hardware'])})"
            for rows in by_student.values() for r in rows if r["other_machine"]}
    if not rows:
        return []
    return [f"- Rows timed on another machine than the baseline (time/epoch left blank): {'; '.join(sorted(rows))}."]


def format_failures(bench) -> str:
    """Cells that stopped with an error (their failed.txt), so that a missing row is never silent."""
    lines = []
    for cell in bench.cells():
        folder = bench.run_dir(cell)
        if (folder / "failed.txt").is_file() and not (folder / "summary.json").is_file():
            reason = (folder / "failed.txt").read_text().splitlines()[0]
            lines.append(f"- {cell.key}: {reason}")
    return "\n".join(["### Failed runs (not in the tables)", "", *lines, ""]) if lines else ""


def _precision(results: list[dict]) -> str:
    values = sorted({str(r.get("precision")) for r in results})
    return "/".join(values) or "?"


def read_json(path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"
