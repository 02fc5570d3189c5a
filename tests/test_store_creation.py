"""A new sqlite store is created whole or not at all (issue 29): an interrupt at any step of its first creation
leaves no store and no temporary file, and the next command creates it; a store that an older version left
half-made (no runs) is moved aside and created anew instead of failing every later command."""

import sqlite3

import pytest

from benchmark.sqlite_store import ensure_sqlite_store
from benchmark.tracking import Tracker


def _interrupt_after(monkeypatch, k: int):
    """KeyboardInterrupt at the k-th schema operation of MLflow's migrations (k = 0: in the initial create_all)."""
    import alembic.operations.base as ops
    import mlflow.store.db.utils as dbu

    calls = {"n": 0}
    real_invoke = ops.Operations.invoke

    def invoke(self, operation):
        calls["n"] += 1
        if calls["n"] >= k:
            raise KeyboardInterrupt()
        return real_invoke(self, operation)

    monkeypatch.setattr(ops.Operations, "invoke", invoke)
    if k == 0:
        monkeypatch.setattr(dbu.InitialBase.metadata, "create_all", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt()))


@pytest.mark.parametrize("k", [0, 1, 7, 40])
def test_an_interrupt_during_first_creation_leaves_nothing_and_the_next_command_creates_it(tmp_path, monkeypatch, k):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with monkeypatch.context() as m:
        _interrupt_after(m, k)
        with pytest.raises(KeyboardInterrupt):
            Tracker(uri, "xkd-test")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a half-made store or a temporary file was left"
    t = Tracker(uri, "xkd-test")  # the next command: a complete store
    run = t.client.create_run(t.experiment_id)
    t.client.set_terminated(run.info.run_id)
    assert [r.info.status for r in t.client.search_runs([t.experiment_id])] == ["FINISHED"]


def test_a_half_made_store_of_an_older_version_is_moved_aside_and_recreated(tmp_path, monkeypatch, capsys):
    import mlflow

    path = tmp_path / "mlflow.db"
    with monkeypatch.context() as m:  # what older versions did: MLflow's creation in place, interrupted
        _interrupt_after(m, 7)
        with pytest.raises(KeyboardInterrupt):
            mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    assert path.is_file()
    ensure_sqlite_store(f"sqlite:///{path}")
    out = capsys.readouterr().out
    assert "left half-created by an interrupted first command" in out and "moved aside" in out
    aside = [p for p in tmp_path.iterdir() if ".incomplete-" in p.name]
    assert len(aside) == 1  # kept, never deleted
    t = Tracker(f"sqlite:///{path}", "xkd-test")
    assert t.client.get_experiment_by_name("xkd-test") is not None


def test_a_complete_store_with_runs_is_never_moved(tmp_path):
    path = tmp_path / "mlflow.db"
    t = Tracker(f"sqlite:///{path}", "xkd-test")
    t.client.create_run(t.experiment_id)
    stamp = path.stat().st_mtime_ns
    ensure_sqlite_store(f"sqlite:///{path}")
    assert path.stat().st_mtime_ns == stamp and sorted(p.name for p in tmp_path.iterdir() if p.name != "mlruns") == ["mlflow.db"]
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def test_the_interrupt_message_says_what_was_interrupted(tmp_path):
    from benchmark.commands.run import interrupted_message

    msg = interrupted_message(tmp_path, "kd", 1, 0)
    assert "kd seed 1 ended KILLED before its first epoch finished (no checkpoint)" in msg and "kept" not in msg
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "kd-seed1-abc.pt").write_bytes(b"x")
    msg = interrupted_message(tmp_path, "kd", 1, 2)
    assert "its last epoch checkpoint kept" in msg and "2 finished run(s) and their tables kept" in msg


def test_tables_are_written_whole_or_not_at_all_under_names_of_their_own(tmp_path, monkeypatch):
    """A failing write (a full disk) leaves the old file and no temporary file; two writers never share a
    temporary name (two `report`s into one --out raced on `.runs.csv.tmp`)."""
    import errno

    from benchmark.results import write_atomic

    target = tmp_path / "runs.csv"
    write_atomic(target, "old\n")

    def full(tmp):
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, full)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["runs.csv"]
    names = set()
    monkeypatch.setattr("os.replace", lambda a, b: names.add(a.name))
    write_atomic(target, "a"), write_atomic(target, "b")
    assert len(names) == 2


def test_a_folder_where_the_store_file_should_be_is_one_line_and_exit_2(tmp_path):
    """Was about 100 s of retries and a 186-line traceback."""
    import time

    from conftest import run_cli_inprocess

    (tmp_path / "store.db").mkdir()
    t0 = time.perf_counter()
    res = run_cli_inprocess(
        [
            "run",
            "--task",
            "synthetic",
            "--profile",
            "smoke",
            "--methods",
            "baseline",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'store.db'}",
        ],
        tmp_path,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "is a folder, not a store file" in res.stderr
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "runs").exists()


def test_a_full_disk_under_out_fails_each_run_in_one_line_and_leaves_nothing_partial(tmp_path, monkeypatch):
    """A checkpoint write that fails with ENOSPC (a full --out filesystem, simulated): each run ends FAILED in
    MLflow (not RUNNING), says "no space left" and the path in one line, leaves no temporary checkpoint, and
    the other methods still run; the command exits 3 (some runs failed)."""
    import errno

    import mlflow
    import torch

    from conftest import run_cli_inprocess

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    res = run_cli_inprocess(
        ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline,kd", "--out", str(tmp_path / "out")], tmp_path
    )
    assert res.returncode == 3, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: checkpoint")]
    assert len(lines) == 2 and all("no space left on its device" in line and str(tmp_path / "out") in line for line in lines)
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("xkd-synthetic").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED"]
    assert all("no space left" in r.data.tags["xkd.failure"] for r in runs)


def test_a_run_being_trained_by_another_process_is_refused_before_anything_is_written(tmp_path):
    """The lock of a run's checkpoint path: a second holder is refused in one line naming the process that
    trains it (the same command started twice at once used to train the same run in both processes)."""
    import multiprocessing as mp

    from benchmark.checkpoints import run_lock
    from benchmark.registry import UsageError

    ckpt = tmp_path / "checkpoints" / "kd-seed0-abc.pt"
    ready, done = mp.Event(), mp.Event()

    def hold():
        with run_lock(ckpt, "kd", 0):
            ready.set()
            done.wait(30)

    p = mp.get_context("fork").Process(target=hold)
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(UsageError, match=rf"kd seed 0 with these settings is being trained by process {p.pid}"):
            with run_lock(ckpt, "kd", 0):
                pass
    finally:
        done.set()
        p.join(30)
    with run_lock(ckpt, "kd", 0):  # released when its holder is done: the run can be trained again
        pass


def test_the_same_command_twice_at_once_trains_each_run_once(tmp_path):
    """Two identical `run` commands started together on one store: one trains the run, the other is refused
    in one line (exit 2) before it writes a run; the store holds one finished run."""
    import subprocess
    import sys

    import mlflow

    args = [
        sys.executable,
        "-m",
        "benchmark",
        "run",
        "--task",
        "synthetic",
        "--profile",
        "smoke",
        "--methods",
        "kd",
        "--set",
        "epochs=600",
        "--out",
        str(tmp_path / "o"),
    ]
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    first = subprocess.run(
        [*args[:-2], "--methods", "baseline", "--set", "epochs=1", "--out", str(tmp_path / "warm")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )  # the store and teacher made once
    assert first.returncode == 0, first.stderr[-2000:]
    # two --out folders: the run lock refuses the second (one --out would be refused by the folder's lock first)
    procs = [
        subprocess.Popen(
            [*args[:-1], str(tmp_path / f"o{i}")],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-1500:] for o in outs]
    refused = next(o[1] for p, o in zip(procs, outs) if p.returncode == 2)
    # the checkpoint's lock (one --out) or the store's RUNNING run of the same key (another --out) refuses it
    assert (
        "is being trained by process" in refused or "with the same settings is running in process" in refused
    ) and refused.count("\n") == 1, refused
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("xkd-synthetic").experiment_id], filter_string="params.method = 'kd'"
    )
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_a_full_disk_under_the_store_is_one_line(tmp_path, monkeypatch):
    """The store's disk fills during a run (sqlite: 'database or disk is full', simulated on the first metric
    write): one line naming the store and what becomes of the run, exit 1, no traceback."""
    import sqlite3

    from benchmark.tracking import Tracker
    from conftest import run_cli_inprocess

    def full(self, *a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Tracker, "log_metrics", full)
    res = run_cli_inprocess(
        ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "kd", "--out", str(tmp_path / "out")], tmp_path
    )
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: no space left on the device of the MLflow store")
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]


def test_a_ctrl_c_during_a_store_write_waits_for_the_write_to_end(tmp_path):
    """A Ctrl-C that arrives inside a tracker call is raised after the call has written whole (a Ctrl-C cut
    into an sqlite write could leave its lock held: every later write of the command, the one that ends the
    run included, then failed 'database is locked', and a study read the interrupt as a trial's error). The
    store takes the next write at once."""
    import os
    import signal

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "x")
    run = tracker.start("r", {})
    inner = tracker.client._client
    real = inner.set_tag

    def set_tag_with_a_ctrl_c_inside(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once: Python would raise at its next instruction
        for _ in range(1000):
            pass
        return real(*a, **k)

    inner.set_tag = set_tag_with_a_ctrl_c_inside
    with pytest.raises(KeyboardInterrupt):
        tracker.set_tag(run, "k", "v")
    inner.set_tag = real
    assert tracker.client.get_run(run).data.tags["k"] == "v"  # written whole before the interrupt was raised
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    tracker.end(run, "KILLED")
    assert tracker.client.get_run(run).info.status == "KILLED"


RUN = ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline", "--set", "epochs=2"]


def test_a_write_cut_by_kill_9_is_rolled_back_not_called_damaged(tmp_path):
    """A process killed inside an sqlite write leaves its hot journal beside the store. Before: the read-only
    check of the next command could not roll it back ('attempt to write a readonly database') and called the store
    damaged (a fanned-out table's replacement worker failed so in CI). Now sqlite's own roll-back runs first: the
    store is as before the cut write, and the command runs."""
    import subprocess
    import sys

    import mlflow

    from conftest import run_cli_inprocess

    assert run_cli_inprocess(RUN, tmp_path).returncode == 0
    db = tmp_path / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    (before,) = client.search_runs([client.get_experiment_by_name("xkd-synthetic").experiment_id])
    cut = (
        "import os, sqlite3, sys; con = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "con.execute('PRAGMA cache_size=1'); con.execute('BEGIN IMMEDIATE'); "
        "[con.execute(f'UPDATE {t} SET value = value || 1') for t in ('metrics', 'params', 'tags')]; "
        "os.kill(os.getpid(), 9)"
    )
    assert subprocess.run([sys.executable, "-c", cut, str(db)]).returncode == -9
    assert db.with_name("mlflow.db-journal").stat().st_size > 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # what the old check met
        sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True).execute("PRAGMA quick_check").fetchone()
    res = run_cli_inprocess(RUN[:-2] + ["--set", "epochs=3"], tmp_path)
    assert res.returncode == 0 and "damaged" not in res.stderr, res.stderr
    after = client.get_run(before.info.run_id).data  # the cut write was rolled back
    assert (after.metrics, after.params, after.tags) == (before.data.metrics, before.data.params, before.data.tags)


def test_a_sigterm_while_a_run_is_being_set_up_ends_it_killed(tmp_path, monkeypatch):
    """SIGTERM between the run's creation in MLflow and its first epoch (its parameters, config and dataset being
    logged) ends the run KILLED. Before: those writes came before the trainer's clean-up began, and a worker of a
    fanned-out table or a study stopped there left its run RUNNING."""
    import mlflow

    from benchmark.tracking import Tracker as T
    from benchmark.trainer import Terminated
    from conftest import run_cli_inprocess

    def stopped(self, *a, **k):
        raise Terminated()  # what the command's SIGTERM handler raises

    monkeypatch.setattr(T, "log_dataset", stopped)
    res = run_cli_inprocess(RUN, tmp_path)
    assert res.returncode == 143, res.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("xkd-synthetic").experiment_id])
    assert run.info.status == "KILLED"
