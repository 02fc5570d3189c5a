"""`run --queue URL` (benchmark/table_queue.py): a table's points in a database queue that workers on any machine
claim. Here the "machines" are processes with folders of their own on one sqlite queue (the PostgreSQL path is
the same Optuna storage as `study`'s, tested there)."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pandas as pd
import pytest

from conftest import run_cli, run_cli_inprocess

TABLE = ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline,kd", "--seeds", "2", "--set", "num_threads=1"]
METRICS = ["test_top1", "match_acc", "test_top1_at_best_val", "best_val_epoch"]


@pytest.fixture
def procs():
    """Start commands; whatever is still running when the test ends is killed (a failed test leaves nothing)."""
    started = []

    def start(args, tmp_path, name):
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
        with open(tmp_path / f"{name}.log", "w") as log:  # a file: nobody dies of writing to a closed pipe
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
        return started[-1]

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def _log(tmp_path, *names):
    return "\n".join(f"== {n}\n{(tmp_path / f'{n}.log').read_text()[-3000:]}" for n in names)


def _trials(url):
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url).trials


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_workers_that_join_the_queue_run_each_point_once_with_the_sequential_numbers(tmp_path, procs, db, request):
    """Two workers joined before the command that waits for the table has made the queue (whoever comes first
    makes it); on PostgreSQL as a lab's machines would share it."""
    (tmp_path / "a").mkdir()
    seq = run_cli([*TABLE, "--out", "seq"], tmp_path / "a")
    assert seq.returncode == 0, seq.stderr[-2000:]
    url = request.getfixturevalue("postgres") if db == "postgresql" else f"sqlite:///{tmp_path / 'q.db'}"
    queue = ["--queue", url]
    joined = [procs([*TABLE, *queue, "--join", "--out", f"machine{k}"], tmp_path, f"machine{k}") for k in (1, 2)]
    boss = procs([*TABLE, *queue, "--workers", "0", "--out", "table"], tmp_path, "boss")
    assert boss.wait(timeout=300) == 0, _log(tmp_path, "boss", "machine1", "machine2")
    assert all(p.wait(timeout=120) == 0 for p in joined), _log(tmp_path, "machine1", "machine2")
    a = pd.read_csv(tmp_path / "a" / "seq" / "runs.csv").set_index(["method", "seed"]).sort_index()
    b = pd.read_csv(tmp_path / "table" / "runs.csv").set_index(["method", "seed"]).sort_index()
    assert list(a.index) == list(b.index) and a[METRICS].equals(b[METRICS])
    trials = _trials(url)
    assert sorted((t.params["method"], t.params["seed"], t.state.name) for t in trials) == [
        ("baseline", 0, "COMPLETE"),
        ("baseline", 1, "COMPLETE"),
        ("kd", 0, "COMPLETE"),
        ("kd", 1, "COMPLETE"),
    ]
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} <= {str(p.pid) for p in joined}
    boss_log = (tmp_path / "boss.log").read_text()
    assert "[4/4 done" in boss_log and "4 point(s)" in boss_log


def test_a_killed_workers_point_is_queued_again_and_the_waiting_command_tables_it(tmp_path, procs):
    slow = [*TABLE[:6], "baseline", "--seeds", "1", "--set", "epochs=400", "--set", "num_threads=1"]
    queue = ["--queue", f"sqlite:///{tmp_path / 'q.db'}", "--heartbeat", "1"]
    boss = procs([*slow, *queue, "--workers", "0", "--out", "table"], tmp_path, "boss")
    first = procs([*slow, *queue, "--join", "--out", "m1"], tmp_path, "m1")
    deadline = time.time() + 120
    while not list((tmp_path / "m1" / "checkpoints").glob("*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second = procs([*slow, *queue, "--join", "--out", "m2"], tmp_path, "m2")  # another machine: no checkpoint
    assert boss.wait(timeout=300) == 0, _log(tmp_path, "boss", "m1", "m2")
    assert second.wait(timeout=60) == 0, _log(tmp_path, "m2")
    boss_log = (tmp_path / "boss.log").read_text()
    assert "baseline seed 0: its worker" in boss_log and "the point is queued again" in boss_log
    assert "[1/1 done" in boss_log
    trials = _trials(f"sqlite:///{tmp_path / 'q.db'}")
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "FAIL"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("xkd-synthetic").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]  # the dead worker's run marked, not left
    assert len(pd.read_csv(tmp_path / "table" / "results.csv")) == 1


def test_a_worker_with_other_settings_and_queue_misuse_are_refused_in_one_line(tmp_path):
    queue = ["--queue", f"sqlite:///{tmp_path / 'q.db'}"]
    made = run_cli_inprocess([*TABLE, *queue, "--set", "epochs=2", "--queue-name", "t"], tmp_path)
    assert made.returncode == 0, made.stderr
    other = run_cli_inprocess([*TABLE, *queue, "--set", "epochs=3", "--queue-name", "t", "--join"], tmp_path)
    assert other.returncode == 2 and "created with another definition" in other.stderr and "epochs" in other.stderr
    res = run_cli_inprocess([*TABLE, "--workers", "0"], tmp_path)
    assert res.returncode == 2 and "0 with --queue" in res.stderr, res.stderr
    res = run_cli_inprocess([*TABLE, *queue, "--workers", "2"], tmp_path)
    assert res.returncode == 2 and "--join" in res.stderr
    res = run_cli_inprocess([*TABLE, "--join"], tmp_path)
    assert res.returncode == 2 and "--queue" in res.stderr
