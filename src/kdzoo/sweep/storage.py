"""The sweep's storage: an Optuna RDBStorage (SQLite in the sweep folder unless a URL is given), whose failures
(a read-only file or folder, a bad URL, a lost server) are one-line errors naming it."""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

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
    url = driver_url(url)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
            retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback()}
        else:
            retry = {"failed_trial_callback": storages.RetryFailedTrialCallback()}
        storage = storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=cfg.heartbeat,
                                      grace_period=cfg.grace, **retry)
    except Exception as err:  # SQLAlchemy's errors (bad URL, missing driver, unreachable server)
        raise StorageError(f"storage {storage_name(cfg)}: cannot be opened ({_cause(err, cfg)}){_hint(err)}") \
            from None
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


def driver_url(url: str) -> str:
    """`postgresql://` means psycopg 2 to SQLAlchemy; kdzoo's `postgres` extra installs psycopg 3, so a URL without
    a driver uses it when psycopg 2 is absent."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _cause(err: BaseException, cfg: Optional[SweepConfig] = None) -> str:
    """The first line of the innermost cause: sqlite3's "attempt to write a readonly database", not the
    wrappers' (Optuna's, SQLAlchemy's) text around it; never the URL's password."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if line.startswith("connection failed: ") and len(text.splitlines()) > 1:  # psycopg: the reason is below
        line = " ".join(part.strip() for part in text.splitlines()[:2])
    password = _password(cfg.storage_url) if cfg is not None else None
    return line.replace(password, "***") if password else line


def _hint(err: BaseException) -> str:
    text = str(err)
    if "No module named 'psycopg" in text or "No module named 'psycopg2'" in text:
        return "; install the driver: pip install 'kdzoo[postgres]'"
    if "password authentication failed" in text:
        return "; check the user and password in the URL"
    if "does not exist" in text and "database" in text:
        return "; create it first (createdb, or CREATE DATABASE)"
    if "Connection refused" in text or "could not connect" in text or "No such file or directory" in text:
        return "; is the server running and reachable from this machine?"
    return ""


def _password(url: str) -> Optional[str]:
    found = re.match(r"[^:]+://[^:/@]+:([^@]*)@", url)
    return found.group(1) if found and found.group(1) else None


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


T = TypeVar("T")


def retrying(cfg: SweepConfig, fn: Callable[[], T], log: Callable[[str], None] = print) -> T:
    """fn(), retried while a database server is unreachable (restarted, a network cut), for up to `cfg.retry`
    seconds with one line per retry; then the error stands. A SQLite file is not retried: its errors (read-only,
    gone) do not pass by waiting."""
    deadline = time.monotonic() + cfg.retry
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as err:
            left = deadline - time.monotonic()
            if storage_file(cfg) is not None or not lost_connection(err) or left <= 0:
                raise
            attempt += 1
            wait = max(0.5, min(2.0 ** attempt, 30.0, left))
            log(f"sweep {cfg.name}: storage {storage_name(cfg)} unreachable ({_cause(err, cfg)}); retry {attempt} "
                f"in {wait:.0f} s (gives up {cfg.retry:.0f} s after the first failure)")
            time.sleep(wait)


def lost_connection(err: BaseException) -> bool:
    """Whether `err` (or what it wraps) is a lost or refused database connection."""
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, (OperationalError, InterfaceError, DisconnectionError)):
            return True
        if type(err).__module__.startswith("psycopg") and type(err).__name__ in ("OperationalError",
                                                                                 "InterfaceError"):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False
