"""A table's (method, seed) points as a work queue in a database that many machines reach (`run --queue URL`).

The queue is an Optuna study in the storage the studies already use (PostgreSQL for many machines; an sqlite file
on one machine or a shared disk): each point is an enqueued trial with the parameters method and seed. A worker
(`run ... --queue URL`, or `--join` for a worker that tables nothing: a Slurm array task, a second machine)
claims a trial atomically, trains the point with a heartbeat, and stores the run's result in the trial. A worker
that dies stops beating: the next worker or the waiting command fails its trial, marks its MLflow run KILLED and
queues the point again (Optuna's stale-trial retry, as `study` does), so every point ends COMPLETE exactly once
or FAILED with its reason. The command that created the queue waits until every point has ended and writes the
table from the results stored in the queue, whichever machine ran them. The queue is named by a hash of what
decides the table's numbers; workers given other settings are refused in one line."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import optuna

from benchmark.interrupts import interrupted_by, patiently, process_id, uninterrupted
from studies import runner
from studies.storage import check_definition, heartbeat, make_sampler, pop_queued_trial, requeue_unfinished, storage_lock

S = optuna.trial.TrialState
optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-study INFO lines are not the user's business


def definition(cfg, methods: list[str], hp: dict[str, Any], seeds: int) -> dict[str, Any]:
    from benchmark.config import defining_fields

    config = {k: getattr(cfg, k) for k in defining_fields() if hasattr(cfg, k)}
    return {
        "kind": "table",
        "config": config,
        "hparams": dict(sorted(hp.items())),
        "methods": methods,
        "first_seed": cfg.seed,
        "seeds": seeds,
    }


def queue_name(cfg, spec: dict[str, Any]) -> str:
    from benchmark.config import definition_hash

    return f"table-{cfg.task}-{cfg.profile}-{definition_hash(spec)}"


def create(url: str, name: str, spec: dict[str, Any], points: list[tuple[str, int]]) -> list[str]:
    """The queue with every point enqueued once (an existing queue of this name is checked and reused: points
    interrupted by a Ctrl-C or SIGTERM are queued again). Returns a line per point queued again."""
    with storage_lock(url):
        exists = name in {s.study_name for s in optuna.get_all_study_summaries(url)}
        if exists:
            check_definition(name, url, spec)
        study = optuna.create_study(
            study_name=name, storage=url, direction="maximize", load_if_exists=True, sampler=make_sampler({"grid": True})
        )
        if not exists:
            study.set_user_attr("definition", json.loads(json.dumps(spec, default=str)))
            for method, seed in points:
                study.enqueue_trial({"method": method, "seed": seed}, skip_if_exists=True)
            return []
        return requeue_unfinished(study)


def stale_handler(tracker, name: str, max_retry: int = 3):
    """A point whose worker stopped beating: its RUNNING MLflow run ends KILLED, the point is queued again
    (the study's stale-trial handler, finding the run by the point's tag)."""

    def runs_of(tracker, trial):
        return tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string=(f"tags.`xkd.queue_point` = '{_point_tag(name, trial.params)}' and attributes.status = 'RUNNING'"),
        )

    return runner.stale_trial_handler(
        tracker,
        max_retry,
        runs_of=runs_of,
        who="queue worker",
        said=lambda t: (
            f"{t.params.get('method')} seed {t.params.get('seed')}: its worker "
            f"({t.user_attrs.get('worker', '?')}) stopped; the point is queued again"
        ),
    )


def _point_tag(name: str, params: dict) -> str:
    return f"{name}:{params.get('method')}:{params.get('seed')}"


def work(
    study: optuna.Study, storage, name: str, run_point: Callable[..., dict], heartbeat_s: int, on_result: Callable[[dict], None]
) -> int:
    """Claim and run points until none is queued; on_result(record) after each. Returns the points run here."""

    from benchmark.checkpoints import CheckpointNotWritten
    from benchmark.trainer import Diverged

    done = 0
    while True:
        with uninterrupted():
            patiently(optuna.storages.fail_stale_trials, study)
            trial = pop_queued_trial(study, storage)
        if trial is None:
            return done
        try:
            spec = study.user_attrs["definition"]
            frozen = storage.get_trial(trial._trial_id)
            with uninterrupted():  # the enqueued values (the choices only declare them)
                method = patiently(trial.suggest_categorical, "method", spec["methods"])
                seed = patiently(trial.suggest_int, "seed", spec["first_seed"], spec["first_seed"] + spec["seeds"] - 1)
                patiently(trial.set_user_attr, "worker", process_id())
            # a point queued again (its worker died, or was interrupted) resumes from its checkpoint where it has one
            again = "failed_trial" in frozen.system_attrs or "rerun_of" in frozen.user_attrs
            with heartbeat(storage, trial._trial_id, heartbeat_s):
                r = run_point(method, seed, again, {"xkd.queue_point": _point_tag(name, {"method": method, "seed": seed})})
            record = json.loads(json.dumps(r, default=float))
        except (Diverged, CheckpointNotWritten) as e:  # that point fails alone, with its reason
            record = {"method": method, "seed": seed, "failure": str(e)}
        except Exception as e:  # any other error fails this point alone, with its reason (said, and in the table)
            if interrupted_by(e):
                with uninterrupted():
                    patiently(study.tell, trial, state=S.FAIL)
                raise KeyboardInterrupt from e
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:1000]
            print(f"error: trial {trial.number}: {reason}", file=sys.stderr, flush=True)
            record = {"method": trial.params.get("method"), "seed": trial.params.get("seed"), "failure": reason}
        except BaseException:
            with uninterrupted():  # interrupted: FAIL without a reason; the next command queues it again
                patiently(study.tell, trial, state=S.FAIL)
            raise
        with uninterrupted():
            patiently(trial.set_user_attr, "result", record)
            if "failure" in record:
                patiently(trial.set_user_attr, "fail_reason", record["failure"])
                patiently(study.tell, trial, state=S.FAIL)
            else:
                patiently(study.tell, trial, 0.0)
        on_result(record)
        done += 1


def ended(study: optuna.Study) -> dict[tuple[str, int], dict]:
    """Each point's result: the COMPLETE trial's, or a failure (a FAILED trial with its reason), by (method, seed)."""
    out: dict[tuple[str, int], dict] = {}
    for t in study.get_trials(deepcopy=False):
        key = (str(t.params.get("method", "")), int(t.params.get("seed", -1)))
        if t.state == S.COMPLETE:
            out[key] = t.user_attrs["result"]
        elif t.state == S.FAIL and "fail_reason" in t.user_attrs and key not in out:
            out[key] = t.user_attrs.get("result") or {"method": key[0], "seed": key[1], "failure": t.user_attrs["fail_reason"]}
    return out


def collect(study: optuna.Study, on_result: Callable[[dict], None], seen: set) -> int:
    """Hand each point that ended since the last call (here or on another machine) to on_result; returns how
    many points have ended."""
    results = ended(study)
    for key in [k for k in results if k not in seen]:
        seen.add(key)
        on_result(results[key])
    return len(results)


def wait(study: optuna.Study, total: int, on_result: Callable[[dict], None], seen: set, poll_s: float = 2.0) -> None:
    """Until every point has ended: dead workers' points queued again (their heartbeats stale), each newly ended
    point handed to on_result, and a line whenever the queue's state changes."""
    last = None
    while True:
        patiently(optuna.storages.fail_stale_trials, study)
        n = patiently(collect, study, on_result, seen)
        if n >= total:
            return
        trials = study.get_trials(deepcopy=False)
        state = (sum(t.state == S.WAITING for t in trials), sum(t.state == S.RUNNING for t in trials))
        if state != last:
            print(f"queue: {n}/{total} point(s) ended, {state[1]} running, {state[0]} waiting for a worker", flush=True)
            last = state
        time.sleep(poll_s)
