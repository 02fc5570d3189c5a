"""The study's shared storage (studies/storage.py) and its workers (studies/workers.py) under failure: an
interrupted or killed worker's point queued again and completed once, a store locked longer than sqlite waits,
kill -9 of the command, two identical commands creating one study at once."""

import os
import subprocess
import time

import mlflow
import optuna
import pytest

from conftest import SMOKE, child_pids, process_alive, run_cli, start_cli, wait_for_epoch

SLOW_GRID = [
    "study",
    "--task",
    "synthetic",
    "--method",
    "kd",
    "--profile",
    "smoke",
    "--set",
    "epochs=100",
    "--seeds",
    "2",
    "--grid",
]


def _running_trial(tmp_path, proc, timeout=300):
    """(study, a RUNNING trial that has recorded its worker), polled while the command runs."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        try:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            study = optuna.load_study(study_name=names[0], storage=storage) if names else None
        except Exception:  # noqa: BLE001 - the store is being created
            study = None
        if study is not None:
            for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
                if "worker" in t.user_attrs and "mlflow_run_id" in t.user_attrs:
                    return study, t
        time.sleep(0.1)
    raise AssertionError(f"no trial ran: {proc.communicate()[1][-2000:] if proc.poll() is not None else 'timeout'}")


def _every_point_complete(study, points):
    done = {t.params["temperature"] for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE}
    return done == set(points)


def _no_run_left_running(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("xkd-synthetic").experiment_id])
    return [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def test_an_interrupted_grid_point_is_run_again_by_the_same_command(tmp_path):
    """Ctrl-C during a grid trial, then the same command: the interrupted point (FAIL without a reason) is
    queued again and completes, the command says so and exits 0, the study's MLflow parent ends FINISHED
    (it used to exit 0 with the point still FAIL and the parent FAILED)."""
    import signal

    args = [*SLOW_GRID, "temperature=1,4"]
    proc = start_cli(args, tmp_path)
    study, trial = _running_trial(tmp_path, proc)
    t0 = time.time()  # into the trial's training: its first epoch's checkpoint is on disk (a file, not a database)
    while not list(tmp_path.glob("runs/study-*/checkpoints/*.pt")) and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"{out[-1500:]}\n--- stderr ---\n{err[:3000]}\n[...]\n{err[-3000:]}"
    res = run_cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        f"trial {trial.number} (temperature={trial.params['temperature']}) was interrupted: its point is queued again"
        in res.stdout
        and "recovered: 1 interrupted or lost trial(s)" in res.stdout
    )
    study = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'studies.db'}")
    assert _every_point_complete(study, [1.0, 4.0])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"
    assert _no_run_left_running(tmp_path) == []
    again = run_cli(args, tmp_path)  # nothing left to do: nothing queued, nothing recovered
    assert again.returncode == 0 and "recovered" not in again.stdout


def test_a_killed_worker_is_detected_and_its_point_run_in_the_same_command(tmp_path):
    """study --workers 2, one worker killed (SIGKILL) mid-trial: detected when its process exits (the
    heartbeat limit is 60 s, far away), its trial failed and its point queued again and run in the same
    command, its MLflow runs KILLED (not RUNNING forever); the command ends with the study's table, a
    one-line account of what was recovered, and exit 0."""
    import signal

    proc = start_cli([*SLOW_GRID, "temperature=1,2,4,8", "--workers", "2"], tmp_path)
    study, trial = _running_trial(tmp_path, proc)
    pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"worker {pid} ended (signal 9) in trial {trial.number}: its point was queued again" in out
    assert "recovered: 1 interrupted or lost trial(s)" in out and "params_temperature" in out, (
        f"{out}\n--- stderr ---\n{err[-6000:]}"
    )
    study = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'studies.db'}")
    assert _every_point_complete(study, [1.0, 2.0, 4.0, 8.0])
    assert _no_run_left_running(tmp_path) == []


def _hold_write_lock(path, seconds):
    """Another process's write on the sqlite file at `path` (a reserved lock), held `seconds`, then committed."""
    import sqlite3
    import threading

    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(seconds, lambda: (con.execute("COMMIT"), con.close()))
    timer.start()
    return timer


def test_a_store_locked_longer_than_sqlites_wait_delays_a_claim_and_a_log_without_failing_them(tmp_path):
    """A worker claiming a grid point and a run logging a metric while another process holds the store's write
    lock for 6 s (past sqlite's own 5-s wait, what a loaded machine with several workers can do): both wait and
    succeed. (CI once lost a study worker to 'database is locked' in a claim: it exited 1 outside a trial.)"""
    from benchmark.tracking import Tracker
    from studies.storage import pop_queued_trial

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="s", storage=url).enqueue_trial({"x": 1})
    storage = optuna.storages.get_storage(url)
    study = optuna.load_study(study_name="s", storage=storage)
    timer, t0 = _hold_write_lock(tmp_path / "studies.db", 6.0), time.monotonic()
    trial = pop_queued_trial(study, storage)
    timer.join()
    assert trial is not None and trial.params == {} and time.monotonic() - t0 >= 5.9
    assert study.get_trials()[0].state == optuna.trial.TrialState.RUNNING
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "xkd-locked")
    run = tracker.start("r", {"xkd.kind": "train"})
    timer, t0 = _hold_write_lock(tmp_path / "mlflow.db", 6.0), time.monotonic()
    tracker.log_metrics(run, {"top1": 1.5}, step=0)
    timer.join()
    assert time.monotonic() - t0 >= 5.9
    assert tracker.client.get_run(run).data.metrics["top1"] == 1.5


def test_a_lock_that_never_ends_fails_after_the_wait_with_sqlites_error():
    """patiently gives up after its wait, with the store's own error; any other error is not retried."""
    from benchmark.interrupts import patiently

    calls = []

    def locked_call():
        calls.append(1)
        raise RuntimeError("commit failed") from Exception("(sqlite3.OperationalError) database is locked")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="commit failed"):
        patiently(locked_call, wait_s=0.5)
    assert 0.5 <= time.monotonic() - t0 < 3 and len(calls) >= 3
    calls.clear()
    with pytest.raises(ValueError):
        patiently(lambda: calls.append(1) or (_ for _ in ()).throw(ValueError("bad")), wait_s=5)
    assert len(calls) == 1


def test_kill_9_of_the_study_command_stops_its_workers(tmp_path):
    """Before: kill -9 of `study --workers 2` left both workers training to the end, unannounced. Now the kernel
    sends each worker SIGTERM when the command dies (PR_SET_PDEATHSIG): within seconds (its trial had minutes
    to go) it ends its trial as an interrupted one (FAIL without a reason, which the next command queues again)
    and its MLflow runs KILLED, none left RUNNING."""
    import signal
    import sys

    args = [
        "study",
        "--task",
        "synthetic",
        "--method",
        "kd",
        "--profile",
        "smoke",
        "--set",
        "epochs=3000",
        "--grid",
        "temperature=1,2",
        "--workers",
        "2",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    with open(tmp_path / "out.log", "w") as log:  # a file, not a pipe: a worker never dies of writing to it
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    study, trial = _running_trial(tmp_path, proc)
    workers = child_pids(proc.pid)
    assert int(trial.user_attrs["worker"].rsplit(":", 1)[1]) in workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    t0 = time.time()
    while any(map(process_alive, workers)) and time.time() - t0 < 60:  # 3000 epochs: minutes if they ran on
        time.sleep(0.2)
    assert not any(map(process_alive, workers)), "a worker outlived the killed command"
    study = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'studies.db'}")
    t = study.get_trials()[trial.number]
    assert t.state == optuna.trial.TrialState.FAIL and "fail_reason" not in t.user_attrs
    # the killed trial's MLflow run and its training run ended with it (a worker stopped between trials may
    # leave a run it had just opened RUNNING: the next command on the store marks such runs KILLED)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mine = t.user_attrs["mlflow_run_id"]
    children = client.search_runs([client.get_run(mine).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{mine}'")
    assert [r.info.status for r in [client.get_run(mine), *children]].count("RUNNING") == 0


@pytest.mark.parametrize("attempt", range(2))
def test_two_identical_study_commands_at_once_on_a_new_storage_both_end_clean(tmp_path, attempt):
    """Before, 1 in 4 tries: one command died on Optuna's schema creation ('UNIQUE constraint failed:
    alembic_version'), or exited 1 calling a point 'did not complete' that the other command's live worker was
    running. Now: both exit 0, one study, every point COMPLETE exactly once."""
    args = ["study", "--task", "synthetic", "--method", "kd", "--profile", "smoke", "--grid", "temperature=1,2,4"]
    procs = [start_cli(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert sorted(t.params["temperature"] for t in trials) == [1.0, 2.0, 4.0]
    assert {t.state.name for t in trials} == {"COMPLETE"}


def test_a_study_worker_killed_mid_trial_is_requeued_and_every_point_completes_once(tmp_path, cifar_dir):
    base = [
        "study",
        "--method",
        "ours_feature",
        "--grid",
        "margin=0.0,0.09",
        "--data-dir",
        str(cifar_dir),
        *SMOKE,
        "--set",
        "epochs=2",
        "--heartbeat",
        "1",
        "--study-name",
        "s",
    ]
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    proc = start_cli(base, tmp_path)
    wait_for_epoch(tmp_path / "runs" / "study-s" / "checkpoints", 1, proc)
    proc.kill()
    proc.wait()
    time.sleep(3)  # > 2 heartbeats: the trial is stale
    join = run_cli([*base, "--join"], tmp_path)
    assert join.returncode == 0, join.stderr[-2000:]
    assert "lost its worker" in join.stdout
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    complete = [t.params["margin"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(complete) == [0.0, 0.09]
    assert [t.state for t in trials].count(optuna.trial.TrialState.FAIL) == 1
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xkd-cifar100")
    runs = client.search_runs([exp.experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}
    (parent,) = [r for r in runs if r.data.tags["xkd.kind"] == "study"]
    assert parent.info.status == "FINISHED"
    assert sum(r.data.tags["xkd.kind"] == "train" and r.info.status == "FINISHED" for r in runs) == 2
