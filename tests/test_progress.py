"""benchmark/progress.py: progress lines with elapsed time and ETA, in a log as on a terminal; --quiet."""

import re

from conftest import run_cli


def test_a_line_for_the_first_unit_then_at_most_one_per_interval_with_an_eta(monkeypatch, capsys):
    from benchmark import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    monkeypatch.delenv("XKD_QUIET", raising=False)
    p = progress.Progress("kd seed 0", 10, "epoch", every=10)
    for done, t in ((1, 104.0), (2, 108.0), (3, 112.0), (4, 130.0)):
        clock[0] = t
        p.update(done, "loss 1.000")
    lines = capsys.readouterr().out.splitlines()
    # 4 s an epoch: after 1 epoch, 9 left -> ETA 36 s; epochs 2 and 3 come within 10 s of that line; after 4
    # epochs in 30 s, 6 left -> 45 s
    assert lines == [
        "kd seed 0: epoch 1/10 loss 1.000 [elapsed 4s, ETA 36s]",
        "kd seed 0: epoch 4/10 loss 1.000 [elapsed 30s, ETA 45s]",
    ]
    steps = progress.Progress("kd seed 0", 100, "epoch 1/3 step", every=30, first=False)
    clock[0] += 5
    steps.update(1)
    assert capsys.readouterr().out == ""  # a step line only once 30 s have passed
    clock[0] += 30
    steps.update(50)
    assert capsys.readouterr().out.startswith("kd seed 0: epoch 1/3 step 50/100 [elapsed 35s, ETA 35s]")
    resumed = progress.Progress("kd seed 0", 10, "epoch", start=8)  # the ETA's rate counts this process's epochs
    clock[0] += 6
    resumed.update(9)
    assert capsys.readouterr().out.strip().endswith("[elapsed 6s, ETA 6s]")
    monkeypatch.setenv("XKD_QUIET", "1")
    progress.Progress("x", 2, "epoch").update(1)
    assert capsys.readouterr().out == ""
    assert progress.duration(59) == "59s" and progress.duration(150) == "2.5 min" and progress.duration(7200) == "2.0 h"


def test_a_run_in_a_log_says_its_epochs_and_the_tables_progress_and_quiet_says_neither(tmp_path):
    args = ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline,kd", "--set", "epochs=3"]
    res = run_cli([*args, "--out", "a"], tmp_path)  # stdout is a pipe: no bar, plain lines
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.search(
        r"^baseline seed 0: epoch 1/3 train loss [\d.]+, val_top1 [\d.]+ \[elapsed \d+s, ETA \d+s\]$", res.stdout, re.M
    ), res.stdout
    assert re.search(r"^\[1/2 done, 1 left, elapsed \d+s, ETA \d+s\]$", res.stdout, re.M)
    assert re.search(r"^\[2/2 done, 0 left, elapsed \d+s\]$", res.stdout, re.M)
    quiet = run_cli([*args, "--out", "b", "--quiet"], tmp_path)
    assert quiet.returncode == 0 and "epoch 1/3" not in quiet.stdout and "done," not in quiet.stdout
    assert "kd                     seed 0: test top-1" in quiet.stdout  # results as always
    assert "one seed: the table has no spread and no confidence interval; --seeds 3" in quiet.stdout
