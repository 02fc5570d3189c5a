"""Optuna studies: a grid on sqlite with nested MLflow runs; two workers sharing one PostgreSQL study."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from conftest import free_port, run_cli

SMOKE = ["--profile", "smoke", "--set", "data_fraction=0.02", "--set", "val_fraction=0.01", "--set", "test_limit=300"]


def _study_runs(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xkd-cifar100")
    return client.search_runs([exp.experiment_id])


def test_grid_study_sqlite_nested_mlflow_runs(tmp_path, cifar_dir):
    res = run_cli(["study", "--task", "cifar100", "--method", "ours_feature", "--grid", "alpha=0.2,0.6",
                   "--grid", "margin=0.0,0.09", "--data-dir", str(cifar_dir), *SMOKE], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="cifar100-ours_feature-smoke", storage=f"sqlite:///{tmp_path / 'studies.db'}")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted((t.params["alpha"], t.params["margin"]) for t in trials) == [(0.2, 0.0), (0.2, 0.09), (0.6, 0.0), (0.6, 0.09)]
    runs = _study_runs(tmp_path)
    kinds = {}
    for r in runs:
        kinds.setdefault(r.data.tags["xkd.kind"], []).append(r)
    parent = kinds["study"][0]
    assert len(kinds["study"]) == 1 and len(kinds["trial"]) == 4 and len(kinds["train"]) == 4
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in kinds["trial"])
    trial_ids = {t.info.run_id: t for t in kinds["trial"]}
    for r in kinds["train"]:
        trial = trial_ids[r.data.tags["mlflow.parentRunId"]]
        assert float(r.data.params["hp.alpha"]) == float(trial.data.params["alpha"])
        assert trial.data.metrics["objective"] == r.data.metrics["best_val_top1"]  # objective = validation, not test
    by_number = {t.number: t.value for t in trials}
    for t in kinds["trial"]:
        assert by_number[int(t.data.params["trial_number"])] == t.data.metrics["objective"]


def test_study_rejects_unknown_grid_key(tmp_path, cifar_dir):
    res = run_cli(["study", "--method", "ours_feature", "--grid", "alpah=0.1", "--data-dir", str(cifar_dir), *SMOKE], tmp_path)
    assert res.returncode == 2 and "--grid key 'alpah'" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 (Debian's postgresql package), stopped afterwards."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
    bindir = bins[-1].parent
    import tempfile
    root = Path(tempfile.mkdtemp(prefix="xkd-pg-"))  # outside pytest's 0700 tree: the postgres user must reach it
    data = root / "data"
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(root, "postgres")
    port = free_port()
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-h 127.0.0.1 -p {port} -k {root}", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_pg, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgres_study(tmp_path, cifar_dir, postgres):
    res = run_cli(["study", "--task", "cifar100", "--method", "ours_feature", "--grid", "margin=0.0,0.01,0.04,0.09",
                   "--storage", postgres, "--study-name", "pg-grid", "--workers", "2", "--data-dir", str(cifar_dir),
                   *SMOKE], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name="pg-grid", storage=postgres).get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.params["margin"] for t in trials) == [0.0, 0.01, 0.04, 0.09]  # each planned point exactly once
    workers = {t.user_attrs["worker"] for t in trials}
    assert 1 <= len(workers) <= 2, workers
    train = [r for r in _study_runs(tmp_path) if r.data.tags["xkd.kind"] == "train"]
    assert sorted(float(r.data.params["hp.margin"]) for r in train) == [0.0, 0.01, 0.04, 0.09]


def test_tpe_study_samples_the_declared_space(tmp_path, cifar_dir):
    res = run_cli(["study", "--task", "cifar100", "--method", "pkt", "--n-trials", "2", "--data-dir", str(cifar_dir),
                   *SMOKE], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name="cifar100-pkt-smoke", storage=f"sqlite:///{tmp_path / 'studies.db'}").get_trials()
    assert len(trials) == 2 and all(1e3 <= t.params["pkt_weight"] <= 1e5 for t in trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
