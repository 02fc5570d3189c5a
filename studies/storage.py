"""The Optuna storage the study workers share: its lock, the study's creation and stored definition, the queue
of enqueued trials that workers claim atomically (each grid point runs exactly once), interrupted points queued
again, and each running trial's heartbeat. The trials themselves run in studies/runner.py."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import warnings

import optuna

from benchmark.interrupts import patiently
from benchmark.registry import UsageError
from benchmark.tracking import safe_uri

# the heartbeat and stale-trial recovery the study workers rely on are marked experimental by Optuna; its
# ExperimentalWarning on every study command is noise to the user (tested behaviour, pinned version)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@contextlib.contextmanager
def storage_lock(url: str):
    """Commands starting together on one new storage take turns creating its schema and the study (Optuna's
    schema creation and the study's set-up are not safe to run twice at once: 'UNIQUE constraint failed:
    alembic_version'). sqlite: an exclusive flock on a file beside the database (`<file>.lock`); PostgreSQL: a
    session advisory lock, which serialises commands on any machine that reaches the server."""
    if url.startswith("sqlite:///"):
        import fcntl
        from pathlib import Path

        db = Path(url[len("sqlite:///") :]).expanduser().absolute()
        if not db.parent.is_dir():
            yield  # opening the storage fails with its own message
            return
        fd = os.open(f"{db}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
    elif url.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(7162534)"))  # one key: the harness's studies
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(7162534)"))
        engine.dispose()
    else:
        yield


def check_storage(url: str) -> None:
    """Fail with one line when the study storage cannot be opened (unreachable server, bad URL)."""
    try:
        with storage_lock(url):
            optuna.storages.get_storage(url)
    except Exception as e:
        raise UsageError(
            f"cannot open the study storage {safe_uri(url)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def _differences(stored: dict, wanted: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(stored) | set(wanted)):
        a, b = stored.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: stored {a!r}, now {b!r}")
    return out


def check_definition(name: str, storage: str, definition: dict) -> None:
    """The study must exist and have been created with the same definition as this command's."""
    import json

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UsageError(
            f"study '{name}' does not exist in {safe_uri(storage)}; create it first "
            "(the same command without --join, or with --create-only)"
        ) from None
    stored = study.user_attrs.get("definition")
    wanted = json.loads(json.dumps(definition, default=str))  # as stored: JSON types
    if stored is not None and stored != wanted:
        diff = _differences(stored, wanted)
        raise UsageError(
            f"study '{name}' was created with another definition ({'; '.join(diff[:3])}"
            f"{' ...' if len(diff) > 3 else ''}); use another --study-name or the original options"
        )


@contextlib.contextmanager
def heartbeat(storage, trial_id: int, every: int):
    """Record the trial's heartbeat now and every `every` seconds until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            patiently(storage.record_heartbeat, trial_id)

    patiently(storage.record_heartbeat, trial_id)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def create_study(
    name: str, storage: str, direction: str, grid: dict[str, list] | None, tracker, tags: dict, definition: dict, fixed: dict
):
    """Create the study (schema included) and its MLflow parent run, before any worker starts; an existing study
    of this name is reused only when its stored definition is the same. Under the storage's lock: two commands
    creating the same study at once make one study, one parent run and one queue of grid points."""
    with storage_lock(storage):
        return _create_study(name, storage, direction, grid, tracker, tags, definition, fixed)


def _create_study(
    name: str, storage: str, direction: str, grid: dict[str, list] | None, tracker, tags: dict, definition: dict, fixed: dict
):
    import json

    try:
        exists = name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    except Exception:
        exists = False
    if exists:
        check_definition(name, storage, definition)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        sampler=make_sampler(grid),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3),
        load_if_exists=True,
    )
    if "mlflow_parent_run_id" not in study.user_attrs:
        parent = tracker.start(f"study:{name}", {**tags, "xkd.kind": "study", "study_name": name})
        tracker.log_params(
            parent,
            {
                "storage": safe_uri(storage),
                "direction": direction,
                **tags,
                "grid_mechanism": "enqueued trials, claimed atomically" if grid else "TPE",
                **({f"grid.{k}": v for k, v in grid.items()} if grid else {}),
                **{f"fixed.{k}": v for k, v in fixed.items()},
            },
        )
        tracker.log_dict(parent, definition, "study_definition.json")
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr("definition", json.loads(json.dumps(definition, default=str)))
        study.set_user_attr("fixed", json.loads(json.dumps(fixed, default=str)))
        study.set_user_attr("grid", grid or {})
        study.set_user_attr("paper_table", tags.get("paper_table", ""))
        if grid:
            keys = list(grid)
            for values in itertools.product(*(grid[k] for k in keys)):
                study.enqueue_trial(dict(zip(keys, values)), skip_if_exists=True)
    return study


def make_sampler(grid: dict | None):
    # Grid studies only run enqueued trials (all parameters fixed), so the sampler never samples.
    return optuna.samplers.RandomSampler(seed=0) if grid else optuna.samplers.TPESampler(seed=0)


def load_study(name: str, storage_url: str, grid: dict | None, heartbeat_s: int, on_stale):
    """The study and the storage object it reads through (trial claims must use the same object), with
    heartbeats: a trial whose worker is silent for 2 x heartbeat_s is failed and handed to on_stale."""
    storage = optuna.storages.get_storage(
        optuna.storages.RDBStorage(  # the cached wrapper the study itself uses
            storage_url, heartbeat_interval=heartbeat_s, heartbeat_stale_trial_callback=on_stale
        )
    )
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=make_sampler(grid), pruner=optuna.pruners.MedianPruner(n_startup_trials=3)
    )
    return study, storage


def requeue_unfinished(study: optuna.Study) -> list[str]:
    """A grid point is done only when one of its trials is COMPLETE: a point whose trials were interrupted
    (FAIL without a fail_reason: Ctrl-C, SIGTERM, a worker gone) and that has none WAITING or RUNNING is
    queued again. A point that failed with a reason (a diverging loss, an exception) fails the same way
    again and is left as it is. Returns one line per point queued again."""
    S = optuna.trial.TrialState
    by_point: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        by_point.setdefault(repr(sorted(t.params.items())), []).append(t)
    lines = []
    for trials in by_point.values():
        states = {t.state for t in trials}
        if states & {S.COMPLETE, S.WAITING, S.RUNNING, S.PRUNED}:
            continue
        interrupted = [t for t in trials if t.state == S.FAIL and "fail_reason" not in t.user_attrs]
        if interrupted and len(interrupted) == len(trials):
            last = max(interrupted, key=lambda t: t.number)
            study.enqueue_trial(dict(last.params), user_attrs={"rerun_of": last.number})
            lines.append(
                f"trial {last.number} ({', '.join(f'{k}={v}' for k, v in last.params.items())}) was "
                "interrupted: its point is queued again"
            )
    return lines


def pop_queued_trial(study: optuna.Study, storage) -> optuna.trial.Trial | None:
    """Atomically claim a WAITING (enqueued) trial; None when the queue is empty. Never creates a trial. A
    store locked by another process is waited for (see patiently)."""
    return patiently(_claim, study, storage)


def _claim(study: optuna.Study, storage) -> optuna.trial.Trial | None:
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=optuna.trial.TrialState.RUNNING):
                return optuna.trial.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None
