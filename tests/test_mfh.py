"""The MFH task (tasks/mfh_data.py): the generator's definition holds, and baseline/KD run end to end."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli
from tasks.mfh_data import HYPERPLANE_DIM, draw, gamma_of
from tasks.synthetic_data import child


def test_labels_come_from_the_hyperplane_over_the_decisive_features():
    root = np.random.SeedSequence(7)
    a = np.random.default_rng(child(root, 0)).standard_normal(HYPERPLANE_DIM)
    for mode, d_dec in (("increase_gamma", 20), ("increase_alpha", 50)):
        d = draw(mode, 4 if mode == "increase_gamma" else 20, 300, root, 0)
        assert torch.equal(d.y, torch.from_numpy((d.decisive.double().numpy() @ a[:d_dec] > 0).astype(np.int64)))
        assert 0.3 < d.y.float().mean() < 0.7  # two classes, both present


def test_the_students_input_is_the_same_at_every_gamma_and_the_teachers_window_slides():
    root = np.random.SeedSequence(3)
    ref = draw("increase_gamma", 0, 100, root, 0)
    for overlap in range(11):
        d = draw("increase_gamma", overlap, 100, root, 0)
        assert torch.equal(d.x_student, ref.x_student) and torch.equal(d.y, ref.y)  # the baseline never moves
        assert torch.equal(d.x_student[:, :10], d.decisive[:, :10])
        window = d.x_teacher[:, 10 - overlap : 20 - overlap]
        assert torch.equal(window, d.decisive[:, 10 - overlap : 20 - overlap])  # overlap of them are the student's
        shared = set(range(10 - overlap, 20 - overlap)) & set(range(10))
        assert len(shared) == overlap
        assert gamma_of("increase_gamma", overlap) == pytest.approx(overlap / (20 - overlap))
    # increase_alpha: the teacher sees the student's 10 and k of its own
    d = draw("increase_alpha", 30, 50, root, 0)
    assert torch.equal(d.x_teacher[:, :40], d.decisive[:, :40]) and torch.equal(d.x_student[:, :10], d.decisive[:, :10])
    assert gamma_of("increase_alpha", 30) == pytest.approx(0.25)


def test_mfh_baseline_and_kd_run(tmp_path):
    res = run_cli(
        [
            "run",
            "--task",
            "mfh",
            "--methods",
            "baseline,kd",
            "--profile",
            "smoke",
            "--seeds",
            "2",
            "--set",
            "mfh_dim=6",
            "--out",
            "o",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "o" / "runs.csv")
    assert len(runs) == 4 and runs["test_top1"].between(30, 100).all()
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xkd-mfh")
    params = [r.data.params for r in client.search_runs([exp.experiment_id])]
    assert {p["mfh_gamma"] for p in params} == {str(round(6 / 14, 4))}
    kd = [p for p in params if p["method"] == "kd"]
    assert {(p["hp.temperature"], p["hp.ce_weight"], p["hp.kd_weight"]) for p in kd} == {("1.0", "1.0", "0.5")}
