"""The sweep's Optuna study: one trial per (grid point, seed), kept in an RDB storage so that workers on several
machines share it.

The study uses a GridSampler over the grid and the seeds; `kdzoo sweep` enqueues every point that has no
finished, running or waiting trial (so a restart re-runs failed and killed ones and skips finished ones), and
workers claim waiting trials one at a time through the storage's atomic WAITING -> RUNNING update, so every
trial runs exactly once however many workers join. A running trial records a heartbeat; one whose worker died
is failed after the grace period and re-enqueued (Optuna's heartbeat retry callback). A trial trains its own run
folder under <out>/runs/, which a re-run resumes from its last checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from kdzoo.errors import ConfigError, KdzooError
from kdzoo.sweep.config import SweepConfig
from kdzoo.sweep.storage import (  # noqa: F401 (open_storage: re-exported)
    load_optuna,
    not_started,
    open_storage,
    retrying,
)


def search_space(cfg: SweepConfig) -> dict[str, list]:
    return {**cfg.grid, "seed": list(cfg.seeds)}


def create_study(cfg: SweepConfig, storage):
    optuna = load_optuna()
    study = optuna.create_study(study_name=cfg.name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.GridSampler(search_space(cfg)))
    recorded = study.user_attrs.get("grid")
    if recorded is not None and recorded != json.loads(json.dumps(search_space(cfg))):
        raise ConfigError(f"sweep {cfg.name}: the storage holds this sweep with another grid or seeds; give the "
                          "sweep another name (or another out/storage)")
    study.set_user_attr("grid", search_space(cfg))
    return study


def join_study(cfg: SweepConfig, storage):
    optuna = load_optuna()
    try:
        return optuna.load_study(study_name=cfg.name, storage=storage,
                                 sampler=optuna.samplers.GridSampler(search_space(cfg)))
    except KeyError:
        raise not_started(cfg) from None


def params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def enqueue_missing(study, cfg: SweepConfig) -> int:
    """Enqueue every trial that is not finished, running or waiting; returns how many were enqueued."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    fail_stale_trials(study)
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    have = {params_key(_params(t)) for t in study.get_trials(deepcopy=False, states=live)}
    added = 0
    for params in cfg.trials():
        if params_key(params) not in have:
            study.enqueue_trial(params)
            added += 1
    return added


def _params(trial) -> dict[str, Any]:
    return trial.params or trial.system_attrs.get("fixed_params", {})


def claim(study) -> Optional[int]:
    """A waiting trial now marked running by this worker (atomically), or None when none waits."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    from sqlalchemy.exc import OperationalError

    storage = study._storage
    for attempt in range(20):
        try:
            for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                    return trial._trial_id
            return None
        except (OperationalError, UpdateFinishedTrialError):  # another worker got there first; look again
            time.sleep(0.05 * (1 + attempt % 5) + random.random() * 0.1)
    return None


def run_folder(cfg: SweepConfig, params: dict[str, Any]) -> Path:
    """<out>/runs/<readable point>-<hash of the point>/seed<k>: distinct for distinct points."""
    point = {k: v for k, v in params.items() if k != "seed"}
    slug = "_".join(f"{k.split('.')[-1]}-{Path(str(v)).parent.name}-{Path(str(v)).stem}" if k == "recipe"
                    else f"{k.split('.')[-1]}-{v}" for k, v in point.items())
    digest = hashlib.sha256(params_key(point).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "-", slug)[:80]
    return cfg.out / "runs" / f"{slug}-{digest}" / f"seed{params['seed']}"


def _record_params(storage, trial_id: int, cfg: SweepConfig, params: dict[str, Any]) -> None:
    """The trial's grid values as Optuna parameters (what the sampler would have suggested), once."""
    from optuna.distributions import CategoricalDistribution

    if storage.get_trial(trial_id).params:
        return
    for key, choices in search_space(cfg).items():
        distribution = CategoricalDistribution(choices)
        storage.set_trial_param(trial_id, key, distribution.to_internal_repr(params[key]), distribution)


TrialFn = Callable[[str, list[str], Path], dict[str, Any]]


def work(study, cfg: SweepConfig, train: TrialFn, log=print, wait: bool = True) -> int:
    """Run waiting trials until none is left (and, with `wait`, none runs elsewhere); returns how many ran."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    ran = 0

    def db(fn):  # a database server that went away: wait for it (cfg.retry), one line per retry
        return retrying(cfg, fn, log)

    while True:
        trial_id = db(lambda: claim(study))
        if trial_id is None:
            db(lambda: fail_stale_trials(study))  # a dead worker's trial comes back as a waiting copy
            if db(lambda: _has_waiting(study)):
                continue
            if wait and db(lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
                time.sleep(min(cfg.heartbeat, 5))
                continue
            return ran
        run_trial(study, cfg, trial_id, train, log)
        ran += 1


def _has_waiting(study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def run_trial(study, cfg: SweepConfig, trial_id: int, train: TrialFn, log=print) -> None:
    """Train a claimed trial and record its result; stopped (Ctrl-C, SIGTERM), it is failed, so that the next
    `kdzoo sweep` enqueues it again and its run folder resumes."""
    try:
        _run_claimed(study, cfg, trial_id, train, log)
    except KeyboardInterrupt:
        retrying(cfg, lambda: _fail(study._storage, trial_id, "interrupted"), log)
        raise


def _fail(storage, trial_id: int, error: str) -> None:
    """Record why, then fail the trial (a finished trial takes no attributes); one failed meanwhile as stale
    (no heartbeat) is left as it is: its retry is already waiting."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        storage.set_trial_user_attr(trial_id, "error", error)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass


def _run_claimed(study, cfg: SweepConfig, trial_id: int, train: TrialFn, log) -> None:
    from optuna.trial import TrialState

    storage = study._storage

    def db(fn):
        return retrying(cfg, fn, log)

    frozen = db(lambda: storage.get_trial(trial_id))
    params = _params(frozen)
    number = frozen.number
    folder = run_folder(cfg, params)
    db(lambda: _record_params(storage, trial_id, cfg, params))
    db(lambda: storage.set_trial_user_attr(trial_id, "run", str(folder)))
    db(lambda: storage.set_trial_user_attr(trial_id, "host", socket.gethostname()))
    beating = threading.Event()

    def beat():
        while not beating.wait(cfg.heartbeat / 2):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as err:  # a busy database: beat again next time, well inside the grace period
                log(f"sweep {cfg.name}: trial {number}: heartbeat not recorded ({type(err).__name__})")

    db(lambda: storage.record_heartbeat(trial_id))
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    log(f"sweep {cfg.name}: trial {number} {params_key(params)} -> {folder}")
    try:
        summary = train(cfg.recipe_of(params), cfg.overrides_of(params), folder)
    except (KdzooError, RuntimeError, ValueError, OSError) as err:
        error = str(err).splitlines()[0] if str(err) else type(err).__name__
        db(lambda: _fail(storage, trial_id, error))
        log(f"sweep {cfg.name}: trial {number} failed: {err}")
        return
    finally:
        beating.set()
        thread.join()
    result = summary.get("result") or {}
    # the test top-1 at the best selected metric (summaries before `best_value`: best_top1 was the selected value)
    test = result.get("value") if result else summary.get("best_top1")
    selected = summary.get("best_value", summary["best_top1"])
    from optuna.exceptions import UpdateFinishedTrialError

    def record() -> None:
        for key, value in (("test_top1", test), ("best_epoch", summary.get("best_epoch")),
                           ("selected_by", summary.get("selected_by", "test_top1"))):
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE, values=[float(selected)])

    try:
        db(record)
    except UpdateFinishedTrialError:  # failed meanwhile as stale (no heartbeat): its retry resumes the folder
        log(f"sweep {cfg.name}: trial {number} finished after it was failed as stale; its retry will reuse {folder}")
