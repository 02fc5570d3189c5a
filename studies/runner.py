"""Optuna studies over the harness: grid (the paper's ablations) or TPE with a median pruner.

Grids: every grid point is enqueued as a trial when the study is created; workers (processes on one
machine or many, sharing the storage) claim queued trials atomically, so each point runs exactly once.
Optuna's GridSampler alone can re-evaluate a point when workers race (it warns about it), which a
benchmark cannot accept. A worker that dies mid-trial stops its heartbeat; the next worker to look for work
fails that stale trial and re-queues its point (Optuna's RetryHeartbeatStaleTrialCallback): every point
completes exactly once. The storage, its queue and heartbeats: studies/storage.py; the command's own worker
processes: studies/workers.py."""

from __future__ import annotations

import sys
from dataclasses import replace
from statistics import mean

import optuna

from benchmark.interrupts import interrupted_by, patiently, process_id, uninterrupted
from benchmark.recorder import run_one
from benchmark.registry import UsageError
from benchmark.trainer import Diverged, resolve_hparams
from studies.storage import heartbeat, pop_queued_trial


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
                patiently(trial.set_user_attr, "worker", process_id())
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
