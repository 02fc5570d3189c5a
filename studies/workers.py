"""A study's worker processes on this machine, watched by the command that started them: a worker that dies has
its trial failed and its point queued again at once; points left when every worker ended get a new round."""

from __future__ import annotations

import socket
import subprocess
import sys

import optuna

from benchmark.fanout import end_with_parent
from benchmark.interrupts import patiently
from studies.runner import stale_trial_handler


def spawn_workers(argv: list[str], n: int, on_exit, pending, rounds: int = 3) -> list[str]:
    """Start n worker processes that join the (already created) study and watch them: when one exits with an
    error or a signal, on_exit(pid, code) fails its running trial and queues its point again at once (not
    only once its heartbeat is stale). When every worker has ended and points are still queued
    (pending() > 0), a new round of workers runs them. Returns one line per recovery."""
    import time

    account: list[str] = []
    for _ in range(rounds):
        procs = {
            p.pid: p
            for p in (
                subprocess.Popen([sys.executable, "-m", "benchmark", *argv, "--join"], preexec_fn=_stop_with_parent)
                for _ in range(n)
            )
        }
        while procs:
            for pid, p in list(procs.items()):
                code = p.poll()
                if code is None:
                    continue
                del procs[pid]
                if code != 0:
                    account += on_exit(pid, code)
            time.sleep(0.2)
        if not pending():
            break
    return account


def _stop_with_parent() -> None:
    """A study worker: stopped (SIGTERM) when the command that started it dies; a terminal's Ctrl-C reaches it."""
    end_with_parent(ignore_ctrl_c=False)


def wait_for_other_workers(study: optuna.Study, unfinished, say, poll_s: float = 2.0) -> None:
    """Before a command calls grid points unfinished: wait while any of them is RUNNING in a live worker of
    another command (on this machine or another). A worker whose heartbeat went stale is dead: its trial is
    failed and its point queued again (Optuna's stale-trial check, through the study's heartbeat storage), and
    the wait ends for it. `unfinished()` lists the trials of points without a COMPLETE trial."""
    import time

    told = False
    while True:
        optuna.storages.fail_stale_trials(study)
        running = [t for t in unfinished() if t.state == optuna.trial.TrialState.RUNNING]
        if not running:
            return
        if not told:
            say(
                f"waiting for {len(running)} grid point(s) that other live workers are running (trial(s) "
                + ", ".join(f"{t.number} by {t.user_attrs.get('worker', '?')}" for t in running)
                + ")"
            )
            told = True
        time.sleep(poll_s)


def recover_worker(study: optuna.Study, storage, tracker, pid: int, code: int) -> list[str]:
    """A worker process that ended with `code`: its RUNNING trial (by the worker it recorded) fails and its
    point is queued again, through the same handler as a stale heartbeat. Returns one line per trial queued
    again (none when the worker ended outside a trial)."""
    worker = f"{socket.gethostname()}:{pid}"
    how = f"signal {-code}" if code < 0 else f"exit {code}"
    lines = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == worker:
            try:
                patiently(storage.set_trial_state_values, t._trial_id, state=optuna.trial.TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # its heartbeat went stale first: already failed and queued again
            stale_trial_handler(tracker)(study, storage.get_trial(t._trial_id))
            lines.append(f"worker {pid} ended ({how}) in trial {t.number}: its point was queued again")
    if not lines:  # no trial lost (its error, if any, is above): said here, not counted as a recovery
        print(f"worker {pid} ended ({how}) outside a trial: no trial of it was lost", flush=True)
    return lines
