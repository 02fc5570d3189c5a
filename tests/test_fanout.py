"""`run --workers N` (benchmark/fanout.py): the table's points in worker processes give the sequential command's
numbers per run; killed workers, Ctrl-C and kill -9 of the parent are handled as a sequential run's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd

from conftest import child_pids, process_alive, run_cli

TABLE = ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline,kd,pkt", "--seeds", "2"]
SLOW = ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline,kd", "--seeds", "1", "--set", "epochs=400"]
METRICS = ["test_top1", "match_acc", "test_top1_at_best_val", "match_acc_at_best_val", "best_val_epoch", "best_val_top1"]


def _table(path):
    return pd.read_csv(path).set_index(["method", "seed"]).sort_index()


def _runs(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xkd-synthetic")
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("xkd.kind") == "train"]


def test_two_workers_give_the_sequential_commands_numbers_per_run(tmp_path):
    (tmp_path / "a").mkdir()
    seq = run_cli([*TABLE, "--out", "seq"], tmp_path / "a")  # its own store: two runs of one key are refused
    assert seq.returncode == 0, seq.stderr[-2000:]
    par = run_cli([*TABLE, "--workers", "2", "--out", "par"], tmp_path)
    assert par.returncode == 0, par.stderr[-2000:]
    a, b = _table(tmp_path / "a" / "seq" / "runs.csv"), _table(tmp_path / "par" / "runs.csv")
    assert list(a.index) == list(b.index) and a[METRICS].equals(b[METRICS])
    ra, rb = (pd.read_csv(d / "results.csv") for d in (tmp_path / "a" / "seq", tmp_path / "par"))
    cols = [c for c in ra if not c.startswith("wall_s")]
    assert ra[cols].equals(rb[cols])
    assert "fan-out: 6 run(s) in 2 worker processes, 1 thread(s) each" in par.stdout
    assert "[6/6 done, 0 left" in par.stdout and par.stdout.count("seed 1: test top-1") == 3
    assert sorted(p.name for p in (tmp_path / "par" / "logs").glob("*.log")) == ["worker-0.log", "worker-1.log"]
    runs = _runs(tmp_path)
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["num_threads"] for r in runs} == {"1"}


def _start(args, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    with open(tmp_path / "parent.log", "w") as log:  # a file: nobody dies of writing to a closed pipe
        return subprocess.Popen(
            [sys.executable, "-m", "benchmark", *args],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def _wait_for(cond, timeout=120, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def _logs(tmp_path) -> str:
    """The parent's output and each worker's log (their ends), for a failed assertion to show."""
    logs = [tmp_path / "parent.log", *sorted((tmp_path / "o" / "logs").glob("*.log"))]
    return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.is_file())


def _wait_or_dump(proc, workers, tmp_path, timeout=120):
    """The parent's exit code; past the timeout, every process's Python stacks (`kill -USR1`) in its log, shown."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *workers]:
            if process_alive(pid):
                os.kill(pid, signal.SIGUSR1)
        time.sleep(2)
        raise AssertionError(f"the parent had not ended {timeout} s after its Ctrl-C\n{_logs(tmp_path)}") from None


def _lsof_locks(out):
    """'PID path' for each checkpoint lock file a process holds open (a run in training holds its lock)."""
    lines = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(str(out / "checkpoints")) and target.endswith(".lock"):
                    lines.append(f"{proc.name} {Path(target).name}")
        except OSError:
            continue
    return lines


def test_a_killed_worker_has_its_point_run_again_and_the_table_completes(tmp_path):
    out = tmp_path / "o"
    proc = _start([*SLOW, "--workers", "2", "--out", "o"], tmp_path)
    ckpts = lambda: list((out / "checkpoints").glob("kd-*.pt")) if (out / "checkpoints").exists() else []  # noqa: E731
    _wait_for(ckpts, what="kd checkpoint")  # kd has trained an epoch or more
    kd_worker = _wait_for(
        lambda: next((int(line.split()[0]) for line in _lsof_locks(out) if "kd-" in line), None),
        what="the process holding kd's run lock",
    )
    os.kill(kd_worker, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, _logs(tmp_path)
    log = (tmp_path / "parent.log").read_text()
    assert "kd seed 0: its worker was killed (signal 9); running it again with --resume in a new worker" in log
    assert "[2/2 done, 0 left" in log
    runs = _runs(tmp_path)
    assert sorted((r.data.params["method"], r.info.status) for r in runs) == [("baseline", "FINISHED"), ("kd", "FINISHED")]
    assert len(pd.read_csv(out / "results.csv")) == 2


def test_ctrl_c_of_the_parent_ends_the_workers_runs_killed_and_resume_gives_the_uninterrupted_numbers(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    full = run_cli([*SLOW, "--set", "epochs=150", "--out", "o"], ref)
    assert full.returncode == 0, full.stderr[-2000:]
    args = [*SLOW, "--set", "epochs=150", "--workers", "2", "--out", "o"]
    proc = _start(args, tmp_path)
    _wait_for(
        lambda: (
            len(list((tmp_path / "o" / "checkpoints").glob("*.pt"))) >= 2 if (tmp_path / "o" / "checkpoints").exists() else False
        ),
        what="both runs' checkpoints",
    )
    workers = child_pids(proc.pid)
    proc.send_signal(signal.SIGINT)  # the parent alone (a terminal's Ctrl-C reaches the workers too)
    assert _wait_or_dump(proc, workers, tmp_path) == 130, _logs(tmp_path)
    assert not any(process_alive(p) for p in workers)
    statuses = [r.info.status for r in _runs(tmp_path)]
    assert "KILLED" in statuses and "RUNNING" not in statuses, statuses  # a run may have finished before the Ctrl-C
    again = run_cli([*args, "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = _table(ref / "o" / "runs.csv"), _table(tmp_path / "o" / "runs.csv")
    assert a[METRICS].equals(b[METRICS])
    assert {r.info.status for r in _runs(tmp_path)} == {"FINISHED"}


def test_kill_9_of_the_parent_stops_its_workers(tmp_path):
    proc = _start([*SLOW, "--set", "epochs=3000", "--workers", "2", "--out", "o"], tmp_path)
    workers = _wait_for(lambda: child_pids(proc.pid) if len(child_pids(proc.pid)) == 2 else None, what="two workers")
    _wait_for(lambda: len(_runs(tmp_path)) == 2 if (tmp_path / "mlflow.db").exists() else False, what="two runs")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    _wait_for(lambda: not any(process_alive(p) for p in workers), timeout=30, what="the workers' end")
    time.sleep(1)
    assert {r.info.status for r in _runs(tmp_path)} == {"KILLED"}, _logs(tmp_path)


def test_a_ctrl_c_in_the_parents_pass_acts_after_it_and_every_worker_is_stopped(tmp_path, monkeypatch):
    """A Ctrl-C acts between two passes of the parent's loop: one inside Popen.poll could leave the Popen's wait
    lock held, and the parent then waited 120 s for a worker that had ended (a CI failure)."""
    from types import SimpleNamespace

    from benchmark import fanout

    spawned, reads = [], []

    def spawn(slot, argv, logs, gpus):
        proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE, text=True)
        spawned.append(proc)
        return fanout.Worker(slot, proc, logs / f"worker-{slot}.log")

    def read(path):
        reads.append(path)
        if len(reads) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # in the middle of the pass
        return None

    monkeypatch.setattr(fanout, "_spawn", spawn)
    monkeypatch.setattr(fanout, "_read", read)
    args = SimpleNamespace(workers=2, argv=[], resume=False, seeds=1)
    cfg = SimpleNamespace(num_threads=1, device="cpu", seed=0)
    t0, before = time.time(), signal.signal(signal.SIGINT, signal.default_int_handler)  # a test worker ignores it
    try:
        fanout.run_table(args, cfg, ["baseline", "kd"], tmp_path / "t", on_result=lambda rec: None)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the Ctrl-C was lost")
    finally:
        signal.signal(signal.SIGINT, before)
    assert len(reads) == 2  # the pass went on to its end: both workers' points were looked at
    assert all(p.returncode == -signal.SIGTERM for p in spawned) and time.time() - t0 < 30
    assert all(p._waitpid_lock.acquire(False) for p in spawned)
