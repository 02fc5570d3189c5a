"""Optuna studies: a grid on sqlite with nested MLflow runs; two workers sharing one PostgreSQL study."""

import mlflow
import optuna
import pytest

from conftest import run_cli, run_cli_inprocess

SMOKE = ["--profile", "smoke", "--set", "data_fraction=0.02", "--set", "val_fraction=0.01", "--set", "test_limit=300"]


def _study_runs(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xkd-cifar100")
    return client.search_runs([exp.experiment_id])


def test_grid_study_sqlite_nested_mlflow_runs(tmp_path, cifar_dir):
    res = run_cli(
        [
            "study",
            "--task",
            "cifar100",
            "--method",
            "ours_feature",
            "--grid",
            "alpha=0.2,0.6",
            "--grid",
            "margin=0.0,0.09",
            "--data-dir",
            str(cifar_dir),
            *SMOKE,
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ExperimentalWarning" not in res.stderr  # Optuna's notes on its heartbeat API are not the user's business
    study = optuna.load_study(study_name=_study_names(tmp_path)[0], storage=f"sqlite:///{tmp_path / 'studies.db'}")
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
    res = run_cli_inprocess(
        ["study", "--method", "ours_feature", "--grid", "alpah=0.1", "--data-dir", str(cifar_dir), *SMOKE], tmp_path
    )
    assert res.returncode == 2 and "--grid key 'alpah'" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_two_workers_share_one_postgres_study(tmp_path, cifar_dir, postgres):
    res = run_cli(
        [
            "study",
            "--task",
            "cifar100",
            "--method",
            "ours_feature",
            "--grid",
            "margin=0.0,0.01,0.04,0.09",
            "--storage",
            postgres,
            "--study-name",
            "pg-grid",
            "--workers",
            "2",
            "--data-dir",
            str(cifar_dir),
            *SMOKE,
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name="pg-grid", storage=postgres).get_trials()
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.params["margin"] for t in trials) == [0.0, 0.01, 0.04, 0.09]  # each planned point exactly once
    workers = {t.user_attrs["worker"] for t in trials}
    assert 1 <= len(workers) <= 2, workers
    train = [r for r in _study_runs(tmp_path) if r.data.tags["xkd.kind"] == "train"]
    assert sorted(float(r.data.params["hp.margin"]) for r in train) == [0.0, 0.01, 0.04, 0.09]


def test_tpe_study_samples_the_declared_space(tmp_path, cifar_dir):
    res = run_cli(
        ["study", "--task", "cifar100", "--method", "pkt", "--n-trials", "2", "--data-dir", str(cifar_dir), *SMOKE], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name=_study_names(tmp_path)[0], storage=f"sqlite:///{tmp_path / 'studies.db'}").get_trials()
    assert len(trials) == 2 and all(1e3 <= t.params["pkt_weight"] <= 1e5 for t in trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def _study_names(tmp_path):
    return sorted(s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'studies.db'}"))


def test_paper_study_applies_and_logs_its_fixed_values(tmp_path, cifar_dir):
    res = run_cli(["study", "--paper", "table10", "--data-dir", str(cifar_dir), *SMOKE], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # the quick/smoke student is 64-d and MiniLM 384-d: the alpha path is a learned map, and the study says so
    assert "warning: this study varies alpha" in res.stderr and "learned 384->64" in res.stderr
    (name,) = _study_names(tmp_path)
    assert name.startswith("table10-smoke-") and len(name) == len("table10-smoke-") + 8
    runs = _study_runs(tmp_path)
    trials = [r for r in runs if r.data.tags["xkd.kind"] == "trial"]
    train = [r for r in runs if r.data.tags["xkd.kind"] == "train"]
    assert len(trials) == 5 and len(train) == 5
    assert all(float(r.data.params["fixed.margin"]) == 0.04 for r in trials)
    assert all(float(r.data.params["hp.margin"]) == 0.04 for r in train)  # applied, not only declared
    assert sorted(float(r.data.params["hp.alpha"]) for r in train) == [0.2, 0.4, 0.5, 0.6, 0.8]
    assert {r.data.params["alpha_path"] for r in train} == {"learned_linear_384to64"}
    parent = next(r for r in runs if r.data.tags["xkd.kind"] == "study")
    assert parent.info.status == "FINISHED" and float(parent.data.params["fixed.margin"]) == 0.04


def test_study_name_carries_its_definition_and_join_checks_it(tmp_path, cifar_dir):
    common = ["study", "--paper", "table12", "--data-dir", str(cifar_dir), *SMOKE, "--create-only"]
    a = run_cli(common, tmp_path)
    b = run_cli([*common, "--student", "resnet8"], tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-2000:] + b.stderr[-2000:]
    names = _study_names(tmp_path)
    assert len(names) == 2 and all(n.startswith("table12-smoke-") for n in names)  # another student: another study
    for n in names:
        trials = optuna.load_study(study_name=n, storage=f"sqlite:///{tmp_path / 'studies.db'}").get_trials()
        assert len(trials) == 5 and all(t.state == optuna.trial.TrialState.WAITING for t in trials)
    # joining a study with a definition that differs from the stored one fails with one line
    first = next(n for n in names if n in a.stdout)
    bad = run_cli(
        [
            "study",
            "--paper",
            "table12",
            "--data-dir",
            str(cifar_dir),
            *SMOKE,
            "--set",
            "epochs=2",
            "--study-name",
            first,
            "--join",
        ],
        tmp_path,
    )
    assert bad.returncode == 2 and "created with another definition" in bad.stderr and "epochs" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # resuming under the same explicit name with another definition is refused too
    again = run_cli([*common, "--set", "lr=0.01", "--study-name", first], tmp_path)
    assert again.returncode == 2 and "created with another definition" in again.stderr
    missing = run_cli(
        ["study", "--paper", "table12", "--data-dir", str(cifar_dir), *SMOKE, "--study-name", "nope", "--join"], tmp_path
    )
    assert missing.returncode == 2 and "study 'nope' does not exist" in missing.stderr


def test_paper_study_refuses_a_set_that_contradicts_a_fixed_value(tmp_path, cifar_dir):
    res = run_cli_inprocess(
        ["study", "--paper", "table10", "--data-dir", str(cifar_dir), *SMOKE, "--set", "margin=0.09"], tmp_path
    )
    assert res.returncode == 2 and "fixes margin=0.04" in res.stderr
    assert not (tmp_path / "studies.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("search", [["--grid", "kd_weight=0.9,1e30"], ["--n-trials", "2"]])
def test_a_diverging_trial_fails_alone_and_the_study_goes_on(tmp_path, search):
    """One trial's loss is not finite (kd_weight=1e30): that trial ends FAILED with its reason (Optuna and
    MLflow), the other trial completes, and the command exits 3 (some trials failed). TPE: lr=1e30 makes
    every trial diverge; each fails alone and the study still runs its two trials."""
    args = ["study", "--task", "synthetic", "--method", "kd", "--profile", "smoke", *search]
    if search[0] == "--n-trials":
        args += ["--set", "lr=1e30"]
    res = run_cli(args, tmp_path)
    assert res.returncode == 3, res.stderr[-3000:]
    assert "trial ended FAILED, the study goes on" in res.stderr and "trials failed: trial" in res.stderr
    study = optuna.load_study(study_name=_study_names(tmp_path)[0], storage=f"sqlite:///{tmp_path / 'studies.db'}")
    states = sorted(t.state.name for t in study.get_trials())
    assert states == (["COMPLETE", "FAIL"] if search[0] == "--grid" else ["FAIL", "FAIL"])
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert all("not finite" in t.user_attrs["fail_reason"] for t in failed)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("xkd-synthetic").experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("xkd.kind") == "trial"]
    assert sorted(r.info.status for r in trial_runs) == sorted("FINISHED" if s == "COMPLETE" else "FAILED" for s in states)
    assert all("not finite" in r.data.tags["xkd.failure"] for r in trial_runs if r.info.status == "FAILED")
