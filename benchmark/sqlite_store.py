"""A local sqlite MLflow store (`--tracking-uri sqlite:///FILE`, the default): refused read-only when damaged,
created whole (built in a temporary file and moved into place, so an interrupt leaves no half-made store), by one
process at a time when several start together, its artifacts beside the file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from benchmark.interrupts import process_alive


def check_sqlite_store(path: Path) -> None:
    """A damaged (truncated, overwritten) sqlite store is refused before anything runs, read-only: it is
    never written to (bar sqlite's own roll-back of a killed process's unfinished write: see _read_only). A
    missing or empty file is a new store."""
    import sqlite3

    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        result = _read_only(path, lambda con: con.execute("PRAGMA quick_check").fetchone()[0])
    except sqlite3.DatabaseError as e:
        result = str(e)
    if result != "ok":
        from benchmark.registry import UsageError

        raise UsageError(
            f"tracking store {path} is damaged ({result}); it was not touched: move it aside (or "
            "restore a backup) and run again, or name another store with --tracking-uri"
        )


def artifact_root(uri: str) -> str | None:
    """Artifacts of a local sqlite store go beside the database file (not into the current directory)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlruns").as_uri()
    return None  # the server's or MLflow's default


@contextlib.contextmanager
def store_lock(uri: str):
    """Processes starting together on one local sqlite store take turns creating its schema and experiment
    (MLflow's migrations are not safe to run twice at once): an exclusive flock on the store's folder."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    fd = os.open(Path(uri[len("sqlite:///") :]).expanduser().resolve().parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_only(path: Path, query):
    """query(connection) on the sqlite file, read-only. A write that a killed process left half done (its hot
    journal beside the file) cannot be rolled back read-only ('attempt to write a readonly database'): it is rolled
    back first as any writing connection would, waiting up to 60 s for the processes writing to the store now."""
    import sqlite3

    def ask():
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            return query(con)
        finally:
            con.close()

    try:
        return ask()
    except sqlite3.OperationalError as e:
        if "readonly" not in str(e) or not path.with_name(path.name + "-journal").exists():
            raise
    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the first read rolls the journal back
    finally:
        con.close()
    return ask()


def _schema_state(path: Path) -> tuple[str | None, int]:
    """(the store's MLflow schema revision or None, its number of runs; -1 when it has no runs table)."""

    def state(con):
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rev = con.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
        runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else -1
        return (rev[0] if rev else None), runs

    return _read_only(path, state)


def _forget_engine(db_uri: str) -> None:
    """Drop MLflow's cached database engine of a URI (its file was moved or replaced): the process's next
    client opens the file now at that path. Defensive: the cache is MLflow's internal."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(db_uri, None)
    except (ImportError, AttributeError):
        return
    if engine is not None:
        engine.dispose()


def ensure_sqlite_store(uri: str, say=print) -> None:
    """A new sqlite store is built whole in a temporary file beside it and moved into place, so an interrupt
    during its first creation (MLflow's schema migrations take seconds and are not transactional) leaves no
    half-made store. One that an older version left half-made (its schema never reached MLflow's head and it
    holds no run) is moved aside, said in one line, and built anew. Called under store_lock."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :]).expanduser().resolve()
    if path.is_file() and path.stat().st_size > 0:
        from mlflow.store.db.utils import _get_latest_schema_revision

        rev, runs = _schema_state(path)
        if rev == _get_latest_schema_revision() or runs > 0:
            return  # complete (or an older schema holding runs: MLflow's own upgrade path, untouched)
        aside = path.with_name(f"{path.name}.incomplete-{os.getpid()}")
        os.replace(path, aside)
        _forget_engine(uri)
        say(
            f"tracking store {path} was left half-created by an interrupted first command (schema {rev or 'none'}, "
            f"no runs); moved aside to {aside.name} and created anew",
            flush=True,
        )
    for stale in path.parent.glob(f".{path.name}.new-*"):  # a creation killed outright (SIGKILL) left this
        owner = stale.name.split(".new-", 1)[1].split("-", 1)[0]
        if owner.isdigit() and process_alive(f"{socket.gethostname()}:{owner}") is False:
            stale.unlink(missing_ok=True)
    # a name of its own per attempt: MLflow caches a database engine per URI, and a retry in the same process
    # must not reach the engine of a file deleted by the attempt before
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        import mlflow

        mlflow.MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)  # builds the whole schema
        _forget_engine(f"sqlite:///{tmp}")
        os.replace(tmp, path)
        _forget_engine(uri)
    finally:
        _forget_engine(f"sqlite:///{tmp}")
        tmp.unlink(missing_ok=True)
