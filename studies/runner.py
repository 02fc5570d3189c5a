"""Optuna studies over the harness: grid (the paper's ablations) or TPE with a median pruner.

Grids: every grid point is enqueued as a trial when the study is created; workers (processes on one
machine or many, sharing the storage) claim queued trials atomically, so each point runs exactly once.
Optuna's GridSampler alone can re-evaluate a point when workers race (it warns about it), which a
benchmark cannot accept. A worker that dies mid-trial stops its heartbeat; the next worker to look for work
fails that stale trial and re-queues its point (Optuna's RetryHeartbeatStaleTrialCallback): every point
completes exactly once. The command's own worker processes: studies/workers.py."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
import threading
import warnings
from dataclasses import replace
from statistics import mean

import optuna

from benchmark.interrupts import interrupted_by, patiently, uninterrupted
from benchmark.recorder import run_one
from benchmark.registry import UsageError
from benchmark.tracking import safe_uri
from benchmark.trainer import Diverged, resolve_hparams

# the heartbeat and stale-trial recovery this runner relies on are marked experimental by Optuna; its
# ExperimentalWarning on every study command is noise to the user (tested behaviour, pinned version)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def parse_grid(items: list[str], hp_types: dict) -> dict[str, list]:
    from benchmark.resolve import convert

    grid = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--grid expects key=v1,v2,..., got '{item}'")
        k, vals = item.split("=", 1)
        if k not in hp_types:
            raise UsageError(f"--grid key '{k}' is not a hyperparameter of this method; known: {', '.join(hp_types)}")
        grid[k] = [convert(k, v.strip(), hp_types[k].type) for v in vals.split(",") if v.strip()]
        if not grid[k]:
            raise UsageError(f"--grid {k}: no values")
    return grid


def suggest(trial: optuna.trial.Trial, name: str, spec: tuple):
    """spec: ("float"|"log", low, high) or ("choice", [options]), as methods declare in search_space."""
    if spec[0] == "choice":
        return trial.suggest_categorical(name, spec[1])
    return trial.suggest_float(name, spec[1], spec[2], log=spec[0] == "log")


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


def end_parent_if_done(study: optuna.Study, tracker) -> None:
    """End the study's MLflow parent run once no trial is waiting or running: FAILED when a failed trial
    was not retried, else FINISHED."""
    trials = study.get_trials(deepcopy=False)
    if {t.state for t in trials} & {optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING}:
        return
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    retried |= {t.user_attrs["rerun_of"] for t in trials if "rerun_of" in t.user_attrs}
    unresolved = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and t.number not in retried]
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        tracker.end(parent, status="FAILED" if unresolved else "FINISHED")


def _trial_runs(tracker, trial: optuna.trial.FrozenTrial) -> list:
    """A study trial's MLflow runs: its trial run and the training runs under it."""
    run = trial.user_attrs.get("mlflow_run_id")
    if not run:
        return []
    return [
        *tracker.client.search_runs(
            [tracker.experiment_id], filter_string=(f"tags.mlflow.parentRunId = '{run}' and attributes.status = 'RUNNING'")
        ),
        tracker.client.get_run(run),
    ]


def stale_trial_handler(
    tracker,
    max_retry: int = 3,
    runs_of=_trial_runs,
    who: str = "study worker",
    said=lambda trial: f"trial {trial.number} lost its worker: its point is queued again",
):
    """Called for a trial whose worker stopped beating: its MLflow runs (runs_of(tracker, trial)) that are still
    RUNNING end KILLED, and its point is queued again (up to max_retry times); said(trial) is printed."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def handle(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        for r in runs_of(tracker, trial):
            if r.info.status == "RUNNING":
                tracker.set_tag(r.info.run_id, "xkd.failure", f"its {who} stopped")
                tracker.end(r.info.run_id, status="KILLED")
        patiently(retry, study, trial)
        print(said(trial), flush=True)

    return handle


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


class Objective:
    """One trial = the method trained on `seeds` seeds; value = mean best validation metric."""

    def __init__(self, cfg, task, data, tables, method, base_hp, tracker, out, seeds, grid, prune, fixed=None):
        self.__dict__.update(
            cfg=cfg,
            task=task,
            data=data,
            tables=tables,
            method=method,
            base_hp=base_hp,
            tracker=tracker,
            out=out,
            seeds=seeds,
            grid=grid,
            prune=prune,
            fixed=fixed or {},
        )

    def params_for(self, trial: optuna.trial.Trial) -> dict:
        if self.grid:
            return {k: trial.suggest_categorical(k, v) for k, v in self.grid.items()}
        cls, hp = resolve_hparams(self.method, self.task, self.cfg, self.base_hp)
        space = cls.tunable(hp)
        if not space:
            raise UsageError(f"method '{self.method}' declares no search space; use --grid")
        return {k: suggest(trial, k, spec) for k, spec in space.items()}

    def __call__(self, trial: optuna.trial.Trial) -> float:
        with uninterrupted():  # suggesting a value writes it to the study's storage
            params = patiently(self.params_for, trial)
        key = f"best_{self.task.selection_metric}"
        values, run = [], None
        try:
            with uninterrupted():  # the trial's bookkeeping is written whole (a Ctrl-C waits for its end)
                paper_table = trial.study.user_attrs.get("paper_table", "")
                patiently(trial.set_user_attr, "worker", f"{socket.gethostname()}:{os.getpid()}")
                run = self.tracker.start(
                    f"trial-{trial.number}",
                    {"xkd.kind": "trial", "trial_number": str(trial.number), "study_name": trial.study.study_name},
                    parent_run_id=trial.study.user_attrs["mlflow_parent_run_id"],
                )
                patiently(trial.set_user_attr, "mlflow_run_id", run)
                self.tracker.log_params(
                    run,
                    {
                        "trial_number": trial.number,
                        "method": self.method,
                        "n_seeds": self.seeds,
                        **{f"fixed.{k}": v for k, v in self.fixed.items()},
                        **params,
                    },
                )
            for seed in range(self.cfg.seed, self.cfg.seed + self.seeds):

                def report(epoch, m, first=seed == self.cfg.seed):
                    if self.prune and first:
                        with uninterrupted():
                            patiently(trial.report, m[self.task.selection_metric], epoch)
                            pruned = patiently(trial.should_prune)
                        if pruned:
                            raise optuna.TrialPruned()

                from benchmark.teacher_cache import TeacherCache

                self.data, self.tables = self.task.data_for_seed(
                    replace(self.cfg, seed=seed), self.data, self.tables, TeacherCache()
                )
                r = run_one(
                    replace(self.cfg, seed=seed),
                    self.task,
                    self.data,
                    self.tables,
                    self.method,
                    {**self.base_hp, **params},
                    self.tracker,
                    self.out,
                    parent_run_id=run,
                    on_epoch=report,
                    tags={"xkd.study": trial.study.study_name, "study": trial.study.study_name, "xkd.paper_table": paper_table},
                )
                values.append(r[key])
        except optuna.TrialPruned:
            self.tracker.end(run, "KILLED")
            raise
        except Exception as e:
            if interrupted_by(e):  # a Ctrl-C a library wrapped: an interrupt, not this point's failure
                _end_quietly(self.tracker, run)
                raise KeyboardInterrupt from e
            # a diverging loss or any error fails this trial alone, with its reason
            reason = str(e) if isinstance(e, Diverged) else f"{type(e).__name__}: {e}".splitlines()[0][:1000]
            with uninterrupted():
                patiently(trial.set_user_attr, "fail_reason", reason)
            if run:
                self.tracker.set_tag(run, "xkd.failure", reason[:5000])
                self.tracker.end(run, "FAILED")
            print(f"error: trial {trial.number}: {reason}; trial ended FAILED, the study goes on", file=sys.stderr, flush=True)
            raise
        except BaseException:  # interrupted: the trial is not a result; a rerun of the command queues it again
            _end_quietly(self.tracker, run)
            raise
        value = mean(values)
        self.tracker.log_metrics(run, {"objective": value, "n_seeds": len(values)}, step=0)
        self.tracker.end(run)
        return value


def _end_quietly(tracker, run: str | None) -> None:
    """End an interrupted trial's run FAILED, best effort: the interrupt, not a failure to record it, is what
    the command reports."""
    try:
        if run:
            tracker.end(run, "FAILED")
    except Exception as e:  # noqa: BLE001
        print(
            f"warning: trial run {run} could not be marked FAILED ({type(e).__name__}); the next command on this store marks it",
            file=sys.stderr,
            flush=True,
        )


def work(study: optuna.Study, storage, objective: Objective, n_trials: int | None, heartbeat_s: int) -> int:
    """Run trials: queued grid points until none is left (stale trials of dead workers re-queued first),
    or n_trials TPE trials (Optuna's optimize beats and re-queues itself). Trial claims and results are
    written whole: a Ctrl-C waits for them (a claimed trial that is interrupted ends FAIL without a reason,
    which the next run of the command queues again)."""
    S = optuna.trial.TrialState
    done = 0
    if objective.grid:
        while True:
            trial = None
            try:
                with uninterrupted():
                    patiently(optuna.storages.fail_stale_trials, study)
                    trial = pop_queued_trial(study, storage)
            except BaseException:
                if trial is not None:
                    with uninterrupted():
                        patiently(study.tell, trial, state=S.FAIL)
                raise
            if trial is None:
                break
            try:
                with heartbeat(storage, trial._trial_id, heartbeat_s):
                    value = objective(trial)
            except optuna.TrialPruned:
                with uninterrupted():
                    patiently(study.tell, trial, state=S.PRUNED)
            except BaseException as e:  # failed alone (its reason recorded by the objective), or interrupted
                with uninterrupted():
                    patiently(study.tell, trial, state=S.FAIL)
                if not isinstance(e, Exception) or interrupted_by(e):
                    raise
            else:
                with uninterrupted():
                    patiently(study.tell, trial, value)
            done += 1
        return done
    study.optimize(objective, n_trials=n_trials or 10, catch=(Exception,))
    return n_trials or 10
