"""The report is rebuilt from an MLflow store alone: a fixture store with known runs."""
import re

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pytest

from reports.generate import build_report

PNG = b"\x89PNG\r\n\x1a\n"


def _log_run(client, exp, method, seed, metrics, params=None, tags=None, history=None, features=False, tmp=None):
    run = client.create_run(exp, run_name=f"{method}/seed{seed}",
                            tags={"xkd.kind": "train", **(tags or {})})
    rid = run.info.run_id
    p = {"task": "cifar100", "method": method, "seed": seed, "student": "resnet8_w16", "profile": "quick",
         "data_fraction": 1.0, "teacher_id": "minilm-l6-v2/raw-meanpool", "hp.feat_dist": "l2sq_norm_sum",
         "n_train": 45000, "n_val": 5000, "n_test": 10000, **(params or {})}
    for k, v in p.items():
        client.log_param(rid, k, v)
    for k, v in metrics.items():
        client.log_metric(rid, k, v)
    for step, (tr, va) in enumerate(history or [], start=1):
        client.log_metric(rid, "train_top1", tr, step=step)
        client.log_metric(rid, "val_top1", va, step=step)
    if features:
        g = np.random.default_rng(seed)
        arrays = {k: g.normal(size=(60, 8)) for k in ("teacher_embedding", "teacher_common", "projected_teacher",
                                                      "student_embedding")}
        path = tmp / f"features-{seed}.npz"
        np.savez(path, **arrays, label=np.arange(60) % 10, group=np.arange(60) % 4)
        client.log_artifact(rid, str(path))
        # the report looks for features.npz
        client.log_artifact(rid, str(_rename(path, tmp)))
    client.set_terminated(rid)
    return rid


def _rename(path, tmp):
    d = tmp / f"art-{path.stem}"
    d.mkdir()
    target = d / "features.npz"
    target.write_bytes(path.read_bytes())
    return target


@pytest.fixture
def fixture_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fixture.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("xkd-cifar100", artifact_location=(tmp_path / "artifacts").as_uri())
    ids = {}
    base = {0: 30.0, 1: 32.0}
    ours = {0: 33.0, 1: 36.0}
    for seed in (0, 1):
        ids[("baseline", seed)] = _log_run(client, exp, "baseline", seed,
                                           {"test_top1": base[seed], "test_top1_at_best_val": base[seed] - 1},
                                           history=[(10, 12), (20, 25)])
        ids[("ours_feature", seed)] = _log_run(client, exp, "ours_feature", seed,
                                               {"test_top1": ours[seed], "test_top1_at_best_val": ours[seed],
                                                "match_acc": 40.0 + seed}, history=[(11, 13), (22, 27)],
                                               features=True, tmp=tmp_path)
    for margin, acc in ((0.0, 20.0), (0.04, 24.0)):
        ids[("t12", margin)] = _log_run(client, exp, "ours_feature", 0, {"test_top1": acc, "best_val_top1": acc + 1},
                                        params={"hp.margin": margin},
                                        tags={"xkd.study": "table12-quick", "xkd.paper_table": "table12"})
    # a failed run must not appear
    bad = client.create_run(exp, tags={"xkd.kind": "train"})
    client.log_param(bad.info.run_id, "method", "baseline")
    client.set_terminated(bad.info.run_id, status="FAILED")
    return uri, ids


def test_report_from_fixture_store(tmp_path, fixture_store):
    uri, ids = fixture_store
    out = tmp_path / "report"
    report = build_report(uri, out).read_text()
    for n in range(1, 13):
        assert re.search(rf"^## Table {n}:", report, re.M), f"Table {n} heading missing"
    table7 = report.split("## Table 7:")[1].split("## Table 8:")[0]
    assert "| baseline | Baseline (w/o dist.) | 75.43 | 77.07 |" in table7
    assert "| ours_classifier | Ours (classifier) | 77.44 | 79.14 |" in table7
    # ours: baseline seeds 30, 32 -> 31.00 ± 1.41; ours_feature 33, 36 -> 34.50 ± 2.12
    assert "31.00 ± 1.41 (n=2)" in table7 and "34.50 ± 2.12 (n=2)" in table7
    # paired difference over matched seeds: diffs 3, 4 -> mean 3.5, t(0.975, 1) * 0.7071 / sqrt 2 = 6.353
    assert "+3.50 [-2.85, +9.85] (n=2)" in table7
    assert "| fitnet | FitNet [36] | 75.97 | 77.65 | not run" in table7
    table8 = report.split("## Table 8:")[1].split("## Table 9:")[0]
    assert "40.50 ± 0.71 (n=2)" in table8 and "| chance | chance | 1.00 |" in table8
    table12 = report.split("## Table 12:")[1].split("## Figures")[0]
    assert "| ours_feature | 0.2^2 | 0.04 | 0.2 | 75.99 | 78.33 | 24.00 ± 0.00 (n=1)" in table12
    assert "| ours_feature | 0 | 0.0 | 0.0 | 75.62 | 77.96 | 20.00 ± 0.00 (n=1)" in table12
    assert "0.1^2" in table12 and table12.count("not run") >= 3
    assert "31.00" not in table12  # the main runs are not mixed into the ablation
    table1 = report.split("## Table 1:")[1].split("## Table 2:")[0]
    assert "1.71" in table1 and "not run" in table1
    # every cell is traceable: footnotes name the fixture runs
    for key in (("baseline", 0), ("ours_feature", 1), ("t12", 0.04)):
        assert ids[key] in report
    figures = sorted(out.glob("*.png"))
    names = {p.name for p in figures}
    assert {"fig6_training_curves.png", "fig8_tsne.png", "table12_ablation.png"} <= names
    for p in figures:
        assert p.read_bytes()[:8] == PNG and plt.imread(p).shape[0] > 100
        assert f"]({p.name})" in report
    assert "profile" in report and "quick" in report and "hp.feat_dist | l2sq_norm_sum" in report
