"""The sweep's storage: an Optuna RDBStorage (SQLite in the sweep folder unless a URL is given), whose failures
(a read-only file or folder, a bad URL, a lost server) are one-line errors naming it."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from kdzoo.errors import ConfigError, KdzooError
from kdzoo.sweep.config import SweepConfig


def load_optuna():
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat API
    return optuna


class StorageError(KdzooError):
    """The sweep's storage cannot be created, read or written (a read-only file or folder, a lost server)."""


def storage_file(cfg: SweepConfig) -> Optional[Path]:
    url = cfg.storage_url
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def storage_name(cfg: SweepConfig) -> str:
    """The storage as messages name it: the SQLite file, or the URL without its password."""
    file = storage_file(cfg)
    return str(file) if file is not None else _safe(cfg.storage_url)


def open_storage(cfg: SweepConfig, create: bool = True):
    """The sweep's storage; `create=False` (a worker, a report) refuses a SQLite file that does not exist yet
    rather than creating it and its folders."""
    load_optuna()
    import optuna.storages as storages

    url, file = cfg.storage_url, storage_file(cfg)
    if file is not None and not create and not file.is_file():
        raise not_started(cfg)
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"storage {file}: cannot create its folder ({err.strerror or err})") from None
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
            retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback()}
        else:
            retry = {"failed_trial_callback": storages.RetryFailedTrialCallback()}
        storage = storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=cfg.heartbeat,
                                      grace_period=cfg.grace, **retry)
    except Exception as err:  # SQLAlchemy's errors (bad URL, missing driver, unreachable server)
        raise StorageError(f"storage {storage_name(cfg)}: cannot be opened ({_cause(err)})") from None
    if url.startswith("sqlite"):
        _immediate_transactions(storage.engine)
    return storage


def not_started(cfg: SweepConfig) -> KdzooError:
    return ConfigError(f"sweep {cfg.name} has not started (no trials in storage {storage_name(cfg)}); start it "
                       "with `kdzoo sweep -c FILE`, then add workers or ask for --report")


@contextmanager
def storage_errors(cfg: SweepConfig) -> Iterator[None]:
    """A storage that fails under a running sweep (read-only, locked, gone) is a one-line error naming it."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (StorageInternalError, SQLAlchemyError) as err:
        hint = " (the file and its folder must be writable)" if storage_file(cfg) is not None else ""
        raise StorageError(f"storage {storage_name(cfg)}: {_cause(err)}{hint}") from None


def _cause(err: BaseException) -> str:
    """The first line of the innermost cause: sqlite3's "attempt to write a readonly database", not the
    wrappers' (Optuna's, SQLAlchemy's) text around it."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _immediate_transactions(engine) -> None:
    """SQLite takes its write lock only at the first write, so two workers could both read a trial as WAITING and
    both mark it RUNNING (row locks do not exist there). BEGIN IMMEDIATE takes the lock when the transaction
    starts: check-and-set becomes atomic, the other worker waits (busy timeout) and then sees RUNNING."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners are dropped


def _safe(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)  # no password in messages
