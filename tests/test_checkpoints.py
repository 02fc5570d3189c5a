"""benchmark/checkpoints.py and the run's resume: SIGTERM, Ctrl-C and kill -9 at three points end a run so
that --resume gives the uninterrupted numbers; an unreadable checkpoint falls back to the previous one; an
interrupt inside a checkpoint write stays an interrupt."""

import signal
import time

import pandas as pd
import pytest
import torch

from conftest import SMOKE, run_cli, start_cli, train_runs, wait_for_epoch


def _wait_for_run(tmp_path, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if train_runs(tmp_path):
                return
        except Exception:
            pass  # the store is being created
        time.sleep(0.1)
    raise AssertionError("no MLflow run in time")


RUN3 = ["run", "--methods", "ccl", "--set", "epochs=3", *SMOKE]


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_end_the_run_killed_and_resumable(tmp_path, cifar_dir, sig, code, word):
    args = [*RUN3, "--data-dir", str(cifar_dir), "--out", "o"]
    proc = start_cli(args, tmp_path)
    wait_for_epoch(tmp_path / "o" / "checkpoints", 1, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.strip() and "ep" not in line[:12]]
    assert lines[-1].startswith(word) and "Traceback" not in err, err[-2000:]
    assert "ccl seed 0 ended KILLED, its last epoch checkpoint kept" in lines[-1], lines[-1]
    (run,) = train_runs(tmp_path)
    assert run.info.status == "KILLED"
    if sig == signal.SIGINT:
        return  # the same KILLED state as SIGTERM; resuming it is checked once, below
    again = run_cli([*args, "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    (run2,) = train_runs(tmp_path)
    assert run2.info.run_id == run.info.run_id and run2.info.status == "FINISHED"


def test_kill_9_at_three_points_then_resume_is_identical_and_nothing_stays_running(tmp_path, cifar_dir):
    ref = run_cli([*RUN3, "--data-dir", str(cifar_dir), "--out", "ref"], tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    cols = ["test_top1", "test_top1_at_best_val", "match_acc", "best_val_top1"]
    want = pd.read_csv(tmp_path / "ref" / "runs.csv")[cols]
    args = [*RUN3, "--data-dir", str(cifar_dir), "--out", "k"]
    for epoch in (0, 1, 2):  # as soon as its MLflow run exists (no checkpoint yet), after the first, the second
        proc = start_cli([*args, "--resume"], tmp_path)
        if epoch == 0:
            _wait_for_run(tmp_path, proc)
        else:
            wait_for_epoch(tmp_path / "k" / "checkpoints", epoch, proc)
        proc.kill()
        proc.wait()
    done = run_cli([*args, "--resume"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert pd.read_csv(tmp_path / "k" / "runs.csv")[cols].equals(want)
    ref_id = pd.read_csv(tmp_path / "ref" / "runs.csv")["run_id"][0]
    runs = [r for r in train_runs(tmp_path) if r.data.params.get("run_key") and r.info.run_id != ref_id]
    assert "RUNNING" not in {r.info.status for r in runs}
    assert sum(r.info.status == "FINISHED" for r in runs) == 1
    # a rerun without --resume after a kill: the dead run is marked KILLED, a new one starts beside none RUNNING
    proc = start_cli([*args[:-2], "--out", "n"], tmp_path)
    wait_for_epoch(tmp_path / "n" / "checkpoints", 1, proc)
    proc.kill()
    proc.wait()
    fresh = run_cli([*args[:-2], "--out", "n"], tmp_path)
    assert fresh.returncode == 0 and "marked KILLED" in fresh.stdout, fresh.stderr[-2000:]
    assert "RUNNING" not in {r.info.status for r in train_runs(tmp_path)}


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    from benchmark.checkpoints import load_checkpoint
    from benchmark.checkpoints import save_atomic as _save_atomic

    path = tmp_path / "m-seed0-k.pt"
    _save_atomic({"epoch": 1}, path, keep_previous=True)
    _save_atomic({"epoch": 2}, path, keep_previous=True)
    assert load_checkpoint(path, "cpu")["epoch"] == 2
    path.write_bytes(path.read_bytes()[:10])  # truncated
    assert load_checkpoint(path, "cpu")["epoch"] == 1
    assert "cannot be read" in capsys.readouterr().out
    path.with_suffix(".prev").write_bytes(b"junk")
    assert load_checkpoint(path, "cpu") is None
    assert "starting this run from scratch" in capsys.readouterr().out


def test_an_interrupt_inside_a_checkpoint_write_stays_an_interrupt(tmp_path, monkeypatch):
    """A SIGTERM (Terminated) landing inside torch.save: its zip writer's clean-up raises a RuntimeError ("enforce
    fail at inline_container.cc") with the interrupt as its context. Before, that read as a failed write
    (CheckpointNotWritten: the study trial FAILED and its worker took the next one after its command was killed);
    now the interrupt goes on, and no temporary file is left."""
    from benchmark.checkpoints import CheckpointNotWritten, save_atomic
    from benchmark.trainer import Terminated

    def interrupted_save(obj, f):
        try:
            raise Terminated()
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:67] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(Terminated):
        save_atomic({"x": 1}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []

    def failed_save(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:67] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", failed_save)
    with pytest.raises(CheckpointNotWritten):
        save_atomic({"x": 1}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []
