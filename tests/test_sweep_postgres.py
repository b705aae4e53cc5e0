"""`kdzoo sweep` on a real PostgreSQL server (tests/pg_server.py): two "machines" (worker processes with their
own working folders and run roots, no shared file system) share one study; a killed worker's trial is re-run by
the other; a server restart is waited out; bad URLs are one line each. The commands are those of
docs/sweeps-across-machines.md, read from the page."""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdzoo.sweep.config import load_sweep
from kdzoo.sweep.study import join_study, open_storage
from tests.conftest import CONFIGS, REPO, run_cli
from tests.pg_server import PASSWORD, PostgresServer

STUDENT = CONFIGS / "digits" / "student.yaml"
TINY = {"dataset.subset.size": 120, "engine.tensorboard": False, "dataset.eval_batch_size": 60}
PAGE = REPO / "docs" / "sweeps-across-machines.md"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pg = PostgresServer(tmp_path_factory.mktemp("pg"))
    yield pg
    pg.close()


@pytest.fixture
def url(server, request):
    """A database of its own for each test, on the shared server."""
    name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    server.sql(f"CREATE DATABASE {name} OWNER kdzoo")
    return server.url_with(database=name)


def page_commands() -> dict[str, str]:
    """The page's three `kdzoo sweep` commands: start, worker, report."""
    lines = [line.split("#")[0].strip() for line in PAGE.read_text().splitlines() if line.startswith("kdzoo sweep")]
    found = {"start": [c for c in lines if "--worker" not in c and "--report" not in c],
             "worker": [c for c in lines if "--worker" in c], "report": [c for c in lines if "--report" in c]}
    assert all(len(v) == 1 for v in found.values()), found
    return {k: v[0] for k, v in found.items()}


def machine(root: Path, **changes) -> Path:
    """A machine's working folder: its copy of the sweep file, whose `out` is relative (its own run root)."""
    root.mkdir(parents=True, exist_ok=True)
    data = {"name": "tiny", "recipe": str(STUDENT), "grid": {"optim.lr": [0.1, 0.05, 0.02]}, "seeds": [0, 1],
            "overrides": {**TINY, "epochs": 1}, "out": "runs/sweeps/tiny", "heartbeat": {"interval": 1, "grace": 3}}
    data.update(changes)
    (root / "sweep.yaml").write_text(yaml.safe_dump(data))
    return root


def argv_of(command: str, url: str) -> list[str]:
    """The page's command as the shell would run it (its "$KDZOO_STORAGE" expanded), through this Python."""
    argv = [sys.executable, "-m", "kdzoo.cli", *shlex.split(command)[1:]]
    return [url if a == "$KDZOO_STORAGE" else a for a in argv]


ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def launch(command: str, cwd: Path, url: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv_of(command, url), cwd=cwd, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            text=True)


def trials_of(sweep_file: Path, url: str):
    cfg = load_sweep(sweep_file, storage=url)
    return join_study(cfg, open_storage(cfg, create=False)).get_trials(deepcopy=False)


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def run_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / "runs" / "sweeps" / "tiny" / "runs").glob("*/seed*") if p.is_dir())


def epochs_done(folder: Path) -> list[int]:
    import json

    metrics = folder / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return [json.loads(x)["epoch"] for x in lines if '"at_best"' not in x]


def test_two_machines_share_one_study_and_a_third_reports_from_the_storage_alone(tmp_path, url):
    from optuna.trial import TrialState

    commands = page_commands()
    # trials long enough (600 images, 2 epochs: several seconds each) that b, starting later, gets some of them
    slow = {"overrides": {**TINY, "dataset.subset.size": 600, "epochs": 2}}
    a, b, c = (machine(tmp_path / m, **slow) for m in "abc")
    first = launch(commands["start"], a, url, tmp_path / "a.log")
    wait_for(lambda: "to run" in (tmp_path / "a.log").read_text() or first.poll() is not None, 120, "the start")
    second = launch(commands["worker"], b, url, tmp_path / "b.log")
    assert first.wait(600) == 0 and second.wait(600) == 0, (tmp_path / "a.log").read_text()
    trials = trials_of(a / "sweep.yaml", url)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trials) == len(complete) == 6  # every trial ran exactly once
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 6
    ran_a, ran_b = run_folders(a), run_folders(b)
    assert len(ran_a) + len(ran_b) == 6 and ran_a and ran_b  # each machine trained in its own root
    assert {t.user_attrs["run"] for t in complete} == {str(p.relative_to(m)) for m, ps in ((a, ran_a), (b, ran_b))
                                                       for p in ps}
    report = subprocess.run(argv_of(commands["report"], url), cwd=c, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr
    assert not run_folders(c)  # the report trains nothing and reads no run folder: machine c has none
    cells = [line for line in report.stdout.splitlines() if re.match(r"\| 0\.\d+ \|", line)]
    assert len(cells) == 3 and all(re.search(r"\| 2/2 \| \d+\.\d+ ± \d+\.\d+ \| \d+\.\d+ ± \d+\.\d+ \|$", row)
                                   for row in cells), report.stdout
    assert PASSWORD not in report.stdout + report.stderr + (tmp_path / "a.log").read_text()


@pytest.mark.parametrize("shared", [False, True], ids=["own-disks", "shared-disk"])
def test_a_killed_workers_trial_is_rerun_by_the_other_after_the_grace(tmp_path, url, shared):
    from optuna.trial import TrialState

    commands = page_commands()
    # epochs of several seconds, so that the kill lands inside the first trial's training
    changes = {"grid": {"optim.lr": [0.1]}, "overrides": {**TINY, "dataset.subset.size": 600, "epochs": 4}}
    a = machine(tmp_path / "a", **changes)
    b = machine(tmp_path / "b", **changes, **({"out": str(a / "runs/sweeps/tiny")} if shared else {}))
    first = launch(commands["start"], a, url, tmp_path / "a.log")
    wait_for(lambda: any(len(epochs_done(f)) >= 1 for f in run_folders(a)), 300, "a's first epoch")
    first.send_signal(signal.SIGKILL)  # mid-trial, no chance to say anything
    first.wait(30)
    (killed,) = [f for f in run_folders(a) if epochs_done(f)]
    before, at_kill = (killed / "metrics.jsonl").read_text().splitlines()[0], epochs_done(killed)
    second = launch(commands["worker"], b, url, tmp_path / "b.log")
    assert second.wait(600) == 0, (tmp_path / "b.log").read_text()
    trials = trials_of(a / "sweep.yaml", url)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == [0, 1]  # no duplicate results
    assert [t.state for t in trials].count(TrialState.FAIL) == 1  # the killed one, failed by its heartbeat
    if shared:  # the retry continued the killed trial's folder from its last checkpoint
        assert epochs_done(killed) == [1, 2, 3, 4]
        assert (killed / "metrics.jsonl").read_text().splitlines()[0] == before
    else:  # its folder is not on this machine: from scratch, in b's own root
        assert epochs_done(killed) == at_kill  # a's folder stays as the kill left it
        (redone,) = [f for f in run_folders(b) if f.relative_to(b) == killed.relative_to(a)]
        assert epochs_done(redone) == [1, 2, 3, 4]


def test_a_server_restart_is_waited_out_with_one_line_per_retry(tmp_path, server, url):
    from optuna.trial import TrialState

    commands = page_commands()
    a = machine(tmp_path / "a", grid={"optim.lr": [0.1]}, overrides={**TINY, "epochs": 2},
                heartbeat={"interval": 1, "grace": 120}, retry=120)
    log = tmp_path / "a.log"
    worker = launch(commands["start"], a, url, log)
    wait_for(lambda: any(run_folders(a)), 300, "the first trial")
    server.stop()
    try:
        wait_for(lambda: "unreachable" in log.read_text() or worker.poll() is not None, 300, "a retry line")
    finally:
        server.start()
    assert worker.wait(600) == 0, log.read_text()
    assert all(t.state == TrialState.COMPLETE for t in trials_of(a / "sweep.yaml", url))
    retries = [line for line in log.read_text().splitlines() if "unreachable" in line]
    assert retries and all(re.match(r"sweep tiny: storage postgresql://kdzoo:\*\*\*@127\.0\.0\.1:\d+/\w+ unreachable "
                                    r"\(.+\); retry \d+ in \d+ s", line) for line in retries), retries
    assert "Traceback" not in log.read_text() and PASSWORD not in log.read_text()


def test_a_server_that_stays_down_ends_the_worker_in_one_line_after_the_bound(tmp_path, server, url):
    commands = page_commands()
    a = machine(tmp_path / "a", grid={"optim.lr": [0.1]}, seeds=[0, 1], overrides={**TINY, "epochs": 2},
                heartbeat={"interval": 1, "grace": 120}, retry=3)
    log = tmp_path / "a.log"
    worker = launch(commands["start"], a, url, log)
    wait_for(lambda: any(run_folders(a)), 300, "the first trial")
    server.stop()
    try:
        code = worker.wait(600)
    finally:
        server.start()
    text = log.read_text()
    assert code == 2, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("kdzoo: error: storage postgresql://kdzoo:***@127.0.0.1:") and "Traceback" not in text
    assert PASSWORD not in text


@pytest.mark.parametrize("what,says", [("password", "password authentication failed"),
                                       ("database", "does not exist"), ("down", "is the server running")])
def test_bad_storage_urls_are_one_line_errors_without_the_password(tmp_path, server, capsys, monkeypatch, what,
                                                                   says):
    from tests.pg_server import _free_port

    bad = {"password": server.url_with(password="not-" + PASSWORD), "database": server.url_with(database="nosuch"),
           "down": server.url_with(port=_free_port())}[what]
    a = machine(tmp_path / "a")
    monkeypatch.chdir(a)
    assert run_cli("sweep", "-c", "sweep.yaml", "--storage", bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kdzoo: error: storage postgresql://kdzoo:***@"), err
    assert says in err and PASSWORD not in err
    assert not (a / "runs").exists()  # nothing created
