"""The sweep's table: per grid point the seeds done, mean +- std of the best validation top-1 and of the test
top-1 at that point, the failed trials, and the best setting (highest mean validation top-1)."""
from __future__ import annotations

import json
import statistics
from typing import Any

from kdzoo.core.atomic import atomic_write_text
from kdzoo.sweep.config import SweepConfig


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = _mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def sweep_rows(study, cfg: SweepConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from optuna.trial import TrialState

    from kdzoo.sweep.study import _params, params_key

    done: dict[str, dict[str, Any]] = {}
    failed = []
    for t in study.get_trials(deepcopy=False):
        params = _params(t)
        if t.state == TrialState.COMPLETE:
            done[params_key(params)] = {"val": t.value, "test": t.user_attrs.get("test_top1"),
                                       "run": t.user_attrs.get("run")}
        elif t.state == TrialState.FAIL and t.user_attrs.get("error"):  # the latest failure of each trial
            failed = [f for f in failed if params_key(f["params"]) != params_key(params)]
            failed.append({"number": t.number, "params": params, "error": t.user_attrs["error"]})
    rows = []
    for point in cfg.points():
        got = [done[params_key({**point, "seed": s})] for s in cfg.seeds if params_key({**point, "seed": s}) in done]
        rows.append({"point": point, "seeds_done": len(got), "seeds": len(cfg.seeds),
                     "val": [g["val"] for g in got], "test": [g["test"] for g in got if g["test"] is not None]})
    finished = {params_key(_params(t)) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    failed = [f for f in failed if params_key(f["params"]) not in finished]  # re-run since: not failed any more
    return rows, failed


def write_report(study, cfg: SweepConfig) -> str:
    rows, failed = sweep_rows(study, cfg)
    keys = list(cfg.grid)
    lines = [f"# Sweep {cfg.name}", "",
             f"Value: the best validation top-1 of each run (its selection metric); test: the test top-1 at that "
             f"point. Mean ± sample std over seeds {', '.join(map(str, cfg.seeds))}.", "",
             "| " + " | ".join([*keys, "seeds", "val top-1", "test top-1"]) + " |",
             "|" + "---|" * (len(keys) + 3)]
    for r in rows:
        cells = [str(r["point"][k]) for k in keys]
        lines.append("| " + " | ".join([*cells, f"{r['seeds_done']}/{r['seeds']}", _fmt(r["val"]),
                                        _fmt(r["test"])]) + " |")
    ranked = [r for r in rows if r["val"]]
    if ranked:
        best = max(ranked, key=lambda r: _mean_std(r["val"])[0])
        lines += ["", f"Best setting: {json.dumps(best['point'])}: val {_fmt(best['val'])}, test {_fmt(best['test'])}"
                  f" ({best['seeds_done']}/{best['seeds']} seeds)."]
    if failed:
        lines += ["", "Failed trials:"] + [f"- trial {f['number']} {json.dumps(f['params'])}: {f['error']}"
                                           for f in failed]
    text = "\n".join(lines) + "\n"
    atomic_write_text(cfg.out / "report.md", text)
    atomic_write_text(cfg.out / "results.json", json.dumps({"rows": rows, "failed": failed}, indent=1))
    return text
