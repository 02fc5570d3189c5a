"""Foreseeable bad input: one clear line, exit code 2, nothing left behind (no out folder, no MLflow store)."""

import contextlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from conftest import SMOKE, free_port, run_cli, run_cli_inprocess, start_cli, train_runs
from stores import fake_store, log_run


def _refused(res, tmp_path, *needles, keep=()):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)
    assert left == [], f"left behind: {left}"


@pytest.mark.parametrize(
    "sets,needle",
    [
        (["--set", "lr=-1"], "lr=-1.0 is out of range; valid: (0, inf]"),
        (["--set", "epochs=0"], "epochs=0 is out of range"),
        (["--set", "data_fraction=1.5"], "data_fraction=1.5 is out of range"),
        (["--methods", "ours_feature", "--set", "margin=-1"], "margin=-1.0 is out of range; valid: [0, inf]"),
        (["--methods", "ours_feature", "--set", "alpha=5"], "alpha=5.0 is out of range; valid: [0, 1]"),
        (["--methods", "kd", "--set", "temperature=0"], "temperature=0.0 is out of range"),
        (["--methods", "ours_feature", "--set", "alpha=nan"], "alpha=nan is out of range"),
    ],
)
def test_out_of_range_values_are_refused(tmp_path, cifar_dir, sets, needle):
    res = run_cli_inprocess(["run", "--data-dir", str(cifar_dir), *SMOKE, *sets], tmp_path)
    _refused(res, tmp_path, needle)


@pytest.fixture
def bad_cifar(tmp_path_factory, cifar_dir):
    """Copies of the real CIFAR-100 layout with one thing wrong each (made once per test)."""

    def make(kind):
        d = tmp_path_factory.mktemp(f"cifar-{kind}")
        meta = json.loads((cifar_dir / "meta.json").read_text())
        if kind == "truncated":
            raw = (cifar_dir / "cifar100_uint8.npz").read_bytes()
            (d / "cifar100_uint8.npz").write_bytes(raw[: len(raw) // 3])
        else:
            (d / "cifar100_uint8.npz").symlink_to(cifar_dir / "cifar100_uint8.npz")
        if kind == "ten_names":
            meta["fine_label_names"] = meta["fine_label_names"][:10]
        if kind != "no_meta":
            (d / "meta.json").write_text(json.dumps(meta))
        return d

    return make


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("truncated", "cifar100_uint8.npz cannot be read"),
        ("no_meta", "meta.json is missing"),
        ("ten_names", "meta.json names 10 classes"),
    ],
)
def test_broken_cifar_data_is_named(tmp_path, bad_cifar, kind, needle):
    d = bad_cifar(kind)
    cache = tmp_path / "cache"
    res = run_cli_inprocess(["run", "--methods", "baseline", "--data-dir", str(d), "--cache-dir", str(cache), *SMOKE], tmp_path)
    _refused(res, tmp_path, needle)  # no teacher-cache entry for a wrong class list either


def test_out_and_tracking_uri_are_checked_before_anything_is_written(tmp_path, cifar_dir):
    (tmp_path / "afile").write_text("x")
    res = run_cli_inprocess(
        ["run", "--methods", "baseline", "--data-dir", str(cifar_dir), *SMOKE, "--out", "afile/sub"], tmp_path
    )
    _refused(res, tmp_path, "--out afile/sub", "is a file", keep=("afile",))
    res = run_cli_inprocess(["run", "--methods", "baseline", "--data-dir", str(cifar_dir), *SMOKE, "--out", "afile"], tmp_path)
    _refused(res, tmp_path, "exists and is not a folder", keep=("afile",))
    res = run_cli_inprocess(
        ["run", "--methods", "baseline", "--data-dir", str(cifar_dir), *SMOKE, "--tracking-uri", "foo://x"], tmp_path
    )
    _refused(res, tmp_path, "unknown scheme 'foo'", keep=("afile",))


def test_unreachable_study_storage_is_one_line(tmp_path, cifar_dir):
    url = f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/optuna"
    res = run_cli_inprocess(["study", "--paper", "table12", "--data-dir", str(cifar_dir), *SMOKE, "--storage", url], tmp_path)
    _refused(res, tmp_path, "cannot open the study storage", "***@127.0.0.1")


def test_a_corrupt_teacher_cache_entry_is_rebuilt_not_used(tmp_path, capfd):

    from benchmark.teacher_cache import TeacherCache

    class Counting:
        id = "counting-teacher"
        calls = 0

        def encode(self, texts):
            Counting.calls += 1
            return torch.arange(len(texts) * 3, dtype=torch.float32).reshape(len(texts), 3)

    prompts = ["a photo of a cat.", "a photo of a dog."]
    good, key = TeacherCache(tmp_path).embeddings(Counting(), prompts)
    entry = TeacherCache(tmp_path).path_for(key)
    whole = entry.read_bytes()
    for damage in (whole[: len(whole) // 2], b"not a tensor"):
        entry.write_bytes(damage)
        again, _ = TeacherCache(tmp_path).embeddings(Counting(), prompts)
        assert torch.equal(again, good) and entry.read_bytes() == whole  # rebuilt whole, never used
        assert "teacher cache entry" in capfd.readouterr().err
    assert Counting.calls == 3


def test_speaker_trial_list_without_both_labels_is_refused(tmp_path, vox_dir):
    d = tmp_path / "vox"
    shutil.copytree(vox_dir, d)
    (d / "vox1_test" / "veri_test.txt").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    res = run_cli(["run", "--task", "voxceleb", "--methods", "baseline", "--profile", "smoke", "--data-dir", str(d)], work)
    _refused(res, work, "veri_test.txt needs target (1) and non-target (0) trials")


# ---- divergence, signals, kills, concurrency: the run ends in a known state, nothing is lost ----


def test_a_diverging_method_fails_alone_and_the_others_are_tabled(tmp_path, cifar_dir):
    res = run_cli(
        ["run", "--methods", "baseline,kd,pkt", "--data-dir", str(cifar_dir), *SMOKE, "--set", "kd_weight=1e30", "--out", "o"],
        tmp_path,
    )
    assert res.returncode == 3, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "kd seed 0: loss is not finite at epoch 1, step" in errors[0] and "terms: " in errors[0]
    assert "Traceback" not in res.stderr
    table = pd.read_csv(tmp_path / "o" / "results.csv")
    assert list(table["method"]) == ["baseline", "kd", "pkt"]
    assert table.set_index("method").loc["kd", "failed"].startswith("seed 0: loss is not finite")
    assert table.set_index("method").loc["pkt", "seeds"] == 1  # ran after the failure
    status = {r.data.params["method"]: (r.info.status, r.data.tags.get("xkd.failure", "")) for r in train_runs(tmp_path)}
    assert status["baseline"][0] == status["pkt"][0] == "FINISHED"
    assert status["kd"][0] == "FAILED" and "not finite" in status["kd"][1]
    assert not list((tmp_path / "o" / "checkpoints").glob("kd-*"))  # no good epoch, no checkpoint


SYNTH = ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "baseline,kd,pkt", "--seeds", "2"]


def test_a_method_whose_runs_all_failed_keeps_its_row_and_its_place_in_holms_family(tmp_path):
    """kd diverges on both seeds: the run's table and the report still count its comparison in the Holm family
    (untested, never rejected), so pkt's p_Holm equals the store's where kd finished (m = 2 in both); the report
    has a row 'kd ... 0 of 2 finished (2 diverged)', names it in the summary and exports its runs with their
    status; a report rebuilt from that export gives the same numbers."""
    from reports.generate import build_report

    ok, bad = tmp_path / "ok", tmp_path / "bad"
    ok.mkdir(), bad.mkdir()
    res = run_cli([*SYNTH, "--out", "o"], ok)
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli([*SYNTH, "--set", "kd.kd_weight=1e38", "--out", "o"], bad)
    assert res.returncode == 3, res.stderr[-2000:]
    t_ok, t_bad = (pd.read_csv(d / "o" / "results.csv").set_index("method") for d in (ok, bad))
    assert t_bad.loc["kd", "seeds"] == 0 and math.isnan(t_bad.loc["kd", "p_holm"])
    assert t_bad.loc["pkt", "p"] == t_ok.loc["pkt", "p"]  # the same runs: pkt and the baseline do not depend on kd
    assert t_bad.loc["pkt", "p_holm"] == pytest.approx(2 * t_bad.loc["pkt", "p"], rel=1e-12)  # m = 2, kd untested
    assert t_bad.loc["pkt", "p_holm"] == pytest.approx(t_ok.loc["pkt", "p_holm"], rel=1e-12)
    reports = {}
    for d in (ok, bad):
        text = build_report(f"sqlite:///{d / 'mlflow.db'}", d / "rep").read_text()
        reports[d] = (text, pd.read_csv(d / "rep" / "report.csv").set_index("method"))
    text, rec = reports[bad]
    assert rec.loc["pkt", "p_holm"] == pytest.approx(reports[ok][1].loc["pkt", "p_holm"], rel=1e-12)
    assert rec.loc["kd", "not_finished"] == "0 of 2 finished (2 diverged)" and math.isnan(rec.loc["kd", "p_holm"])
    assert "| kd[^" in text and "not tested: 0 of 2 finished (2 diverged)" in text
    assert "**Not finished**: kd: 0 of 2 finished (2 diverged). Its comparison stays in Holm's family" in text
    assert "4 finished training runs, and 2 that did not finish (2 diverged" in text
    assert "1 of 2 comparisons with the baseline tested, Holm over all 2" in text
    assert "not_finished" not in reports[ok][1] and "status" not in pd.read_csv(ok / "rep" / "runs.csv")
    exported = pd.read_csv(bad / "rep" / "runs.csv")
    assert sorted(exported["status"]) == ["FAILED"] * 2 + ["FINISHED"] * 4
    build_report(None, bad / "again", files=[bad / "rep" / "runs.csv"])
    for name in ("report.csv", "runs.csv"):
        assert (bad / "again" / name).read_bytes() == (bad / "rep" / name).read_bytes(), name


def test_killed_and_running_runs_are_named_and_a_partly_finished_method_says_how_many(tmp_path):

    from reports.generate import build_report

    uri, client, exp = fake_store(tmp_path / "mlflow.db", "xkd-cifar100")
    for seed in range(3):
        log_run(client, exp, "baseline", seed, {"test_top1": 30.0 + seed})
        log_run(client, exp, "kd", seed, {"test_top1": 33.0 + seed * 1.1})
    killed = log_run(client, exp, "pkt", 0, {})
    client.set_terminated(killed, status="KILLED")
    running = log_run(client, exp, "pkt", 1, {})
    client.update_run(running, status="RUNNING")
    log_run(client, exp, "pkt", 2, {"test_top1": 35.0})
    text = build_report(uri, tmp_path / "rep").read_text()
    rec = pd.read_csv(tmp_path / "rep" / "report.csv").set_index("method")
    assert rec.loc["pkt", "not_finished"] == "1 of 3 finished (1 killed, 1 running)"
    assert rec.loc["pkt", "test_top1_n"] == 1 and "6 finished training runs" not in text
    assert "7 finished training runs, and 2 that did not finish (1 killed, 1 running" in text
    assert "**Not finished**: pkt: 1 of 3 finished (1 killed, 1 running)" in text
    # pkt's one paired seed gives no test, and it still counts: kd's p_Holm is over m = 2
    assert rec.loc["kd", "p_holm"] == pytest.approx(2 * rec.loc["kd", "p"], rel=1e-12)


def test_methods_get_a_did_you_mean_and_a_busy_out_folder_is_refused(tmp_path):
    import fcntl

    res = run_cli_inprocess(["run", "--task", "synthetic", "--profile", "smoke", "--methods", "kd,fitnett"], tmp_path)
    _refused(res, tmp_path, "--methods kd,fitnett: unknown method 'fitnett'; did you mean 'fitnet'?")
    out = tmp_path / "o"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another command writing its tables there
    try:
        res = run_cli_inprocess([*SYNTH, "--out", "o"], tmp_path)
    finally:
        os.close(fd)
    assert res.returncode == 2 and res.stderr.startswith(
        "error: --out o is in use: another command is writing its results tables there"
    ), res.stderr
    assert list(out.iterdir()) == []
    res = run_cli_inprocess([*SYNTH, "--methods", "baseline", "--seeds", "1", "--out", "o"], tmp_path)
    assert res.returncode == 0 and (out / "results.csv").is_file(), res.stderr[-2000:]


@contextlib.contextmanager
def _small_disk(tmp_path, size: str):
    """A small tmpfs (root only; the test is skipped with the reason elsewhere), unmounted afterwards."""
    mnt = tmp_path / f"disk-{size}"
    mnt.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if got.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({got.stderr.strip()[:200]}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def tiny_disk(tmp_path):
    with _small_disk(tmp_path, "400k") as mnt:
        yield mnt


def test_the_stores_full_disk_is_one_line_and_resume_continues(tmp_path):
    """Before: about 45 lines of SQLAlchemy traceback per failed write from MLflow's logger, then the line."""
    with _small_disk(tmp_path, "3m") as disk:
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{disk / 'mlflow.db'}"}
        args = ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "kd", "--set", "epochs=8", "--out", "o"]
        assert run_cli([*args[:-2], "--out", "first", "--methods", "baseline"], tmp_path, env).returncode == 0
        free_kb = shutil.disk_usage(disk).free // 1024
        (disk / "filler").write_bytes(b"\0" * (free_kb - 20) * 1024)
        res = run_cli(args, tmp_path, env)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith(f"error: no space left on the device of the MLflow store sqlite:///{disk}")
        assert "MLflow's report of the error: " in line and Path(line.rsplit(": ", 1)[1]).is_file()
        (disk / "filler").unlink()
        again = run_cli([*args, "--resume"], tmp_path, env)
        assert again.returncode == 0, again.stderr[-3000:]
        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        (run,) = [
            r
            for r in client.search_runs([client.get_experiment_by_name("xkd-synthetic").experiment_id])
            if r.data.params["method"] == "kd" and r.info.status == "FINISHED"
        ]
        steps = [h.step for h in client.get_metric_history(run.info.run_id, "val_top1")]
        assert steps == list(range(1, 9))


def test_a_resumed_run_never_logs_a_step_twice(tmp_path):
    """Metrics of an epoch logged before its checkpoint was written (the process died between them) are not
    logged again when --resume trains that epoch again. Before: two rows at that step."""
    from benchmark.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "xkd-test")
    rid = tracker.start("kd/seed0", {"xkd.kind": "train"})
    for step in (1, 2, 3):
        tracker.log_metrics(rid, {"val_top1": 10.0 * step, "train_loss": 1.0 / step}, step=step)
    resumed = Tracker(uri, "xkd-test")  # the next process, resuming from the checkpoint of epoch 2
    resumed.start("", {}, run_id=rid)
    for step in (3, 4):
        resumed.log_metrics(rid, {"val_top1": 10.0 * step, "train_loss": 1.0 / step}, step=step)
    client = mlflow.MlflowClient(uri)
    for key in ("val_top1", "train_loss"):
        assert [h.step for h in client.get_metric_history(rid, key)] == [1, 2, 3, 4]


def test_a_full_disk_under_out_names_that_disk_frees_its_space_and_the_other_runs_go_on(tmp_path, tiny_disk):
    """Before: the checkpoint's deleted temporary file stayed open (held by the kept exception), its space never
    came back, the results tables failed and the command exited 1 blaming the MLflow store's disk (elsewhere)."""
    res = run_cli([*SYNTH, "--out", str(tiny_disk / "o")], tmp_path)
    assert res.returncode == 3, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "MLflow store" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    lost = [e for e in errors if "could not be written (no space left on its device)" in e and str(tiny_disk) in e]
    assert len(lost) == 6 and errors[-1] == "error: 6 of 6 runs failed (see the 'failed' column)", errors
    assert not list(tiny_disk.glob("o/checkpoints/*.tmp*"))
    assert shutil.disk_usage(tiny_disk).used < 64 * 1024  # every temporary file's space came back
    assert len(pd.read_csv(tiny_disk / "o" / "results.csv")) == 3
    assert {r.info.status for r in train_runs(tmp_path, "xkd-synthetic")} == {"FAILED"}


def test_three_runs_starting_together_on_a_new_sqlite_store(tmp_path, cifar_dir):
    procs = [
        start_cli(
            ["run", "--methods", m, "--data-dir", str(cifar_dir), *SMOKE, "--set", "test_limit=100", "--out", f"o{i}"], tmp_path
        )
        for i, m in enumerate(("baseline", "kd", "pkt"))
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-1500:] for o in outs]
    runs = train_runs(tmp_path)
    assert sorted(r.data.params["method"] for r in runs) == ["baseline", "kd", "pkt"]
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--task", "synthetic", "--methods", "baseline", "--profile", "smoke"],
        ["report", "--out", "rep"],
        ["study", "--task", "synthetic", "--method", "kd", "--profile", "smoke", "--grid", "temperature=2,4"],
    ],
)
def test_a_damaged_tracking_store_is_one_line_and_never_written(tmp_path, command):
    """A truncated mlflow.db (half of a real store): one line naming the file, exit 2, its bytes unchanged."""
    import hashlib
    import sqlite3

    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.executescript("create table t (x); " + "".join(f"insert into t values ({'x' * 40!r}); " for _ in range(3000)))
    con.close()
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    res = run_cli_inprocess(command, tmp_path)
    _refused(res, tmp_path, str(db), "damaged", keep=("mlflow.db",))
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_command_that_tables_nothing_leaves_no_folder_and_resume_says_what_it_finds(tmp_path):
    """Before: every invocation made runs/<task>-<profile>/<time>-<pid>/ and pointed `latest` at it at once, so an
    early Ctrl-C left an empty folder that `latest` named; `--resume` with nothing to resume said nothing."""
    args = ["run", "--task", "synthetic", "--profile", "smoke", "--methods", "kd", "--set", "epochs=3"]
    base = tmp_path / "runs" / "synthetic-smoke"
    stop = run_cli([*args, "--set", "stop_after_epochs=1"], tmp_path)
    assert stop.returncode == 0 and "stopped after epoch 1" in stop.stdout, stop.stderr[-2000:]
    assert sorted(p.name for p in base.iterdir()) == ["checkpoints"]  # no tables folder, no `latest`
    again = run_cli([*args, "--resume"], tmp_path)
    assert again.returncode == 0 and "kd seed 0: resuming after epoch 1 of 3" in again.stdout, again.stderr[-2000:]
    (folder,) = [p for p in base.iterdir() if p.name not in ("checkpoints", "latest")]
    assert (base / "latest").resolve() == folder.resolve() and (folder / "results.csv").is_file()
    done = run_cli([*args, "--resume"], tmp_path)
    assert "kd seed 0: finished before; its result is read from its checkpoint" in done.stdout
    new = run_cli([*args[:-4], "--methods", "pkt", "--set", "epochs=3", "--resume"], tmp_path)
    assert new.returncode == 0 and "pkt seed 0: nothing to resume (no checkpoint): starting" in new.stdout
