"""The report is rebuilt from an MLflow store alone: a fixture store with known runs."""

import re

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pytest

from reports.generate import build_report
from stores import fake_store, log_run

PNG = b"\x89PNG\r\n\x1a\n"


def _section(report, n):
    return report.split(f"## Table {n}:")[1].split("\n## ")[0]


def test_report_from_fixture_store(tmp_path, fixture_store):
    uri, ids = fixture_store
    out = tmp_path / "report"
    report = build_report(uri, out).read_text()
    for n in range(1, 13):  # only the paper's tables with runs: 7, 8 (cifar100) and the table12 study
        assert bool(re.search(rf"^## Table {n}:", report, re.M)) == (n in (7, 8, 12)), n
    assert "for want of runs (rebuild with `--with-paper` to see them): Table 1, Table 2" in report
    assert "table05_ablation.png" not in report
    everything = build_report(uri, tmp_path / "all", with_paper=True).read_text()
    for n in range(1, 13):
        assert re.search(rf"^## Table {n}:", everything, re.M), f"Table {n} heading missing with --with-paper"
    table7 = _section(report, 7)
    assert "| baseline | Baseline (w/o dist.) | 75.43 | 77.07 |" in table7
    assert "| ours_classifier | Ours (classifier) | 77.44 | 79.14 | not run" in table7
    # ours: baseline seeds 30, 32 -> 31.00 ± 1.41; ours_feature 33, 36 -> 34.50 ± 2.12
    assert "31.00 ± 1.41 (n=2)" in table7 and "34.50 ± 2.12 (n=2)" in table7
    # paired difference over matched seeds: diffs 3, 4 -> mean 3.5, t(0.975, 1) * 0.7071 / sqrt 2 = 6.353
    # p = 2 t_1.sf(7.0) = 0.090, the only comparison of its column: Holm leaves it; no '*'
    assert "+3.50 [-2.85, +9.85] (n=2) p_Holm=0.09 |" in table7
    assert "| fitnet | FitNet [36] | 75.97 | 77.65 | not run" in table7
    # the study runs are left out of the main table, and the table says so
    assert "Note: 2 finished cifar100 runs of Optuna studies are not shown" in table7
    table8 = _section(report, 8)
    assert "40.50 ± 0.71 (n=2)" in table8 and "| chance | chance | 1.00 | — | — |" in table8
    # the baseline ran but has no matching metric: its row says so instead of "not run"
    assert "| baseline | - | - | n/a (2 runs without this metric)" in table8
    table12 = _section(report, 12)
    assert "| ours_feature | 0.2^2 | 0.04 | 0.2 | 75.99 | 78.33 | 24.00 ± n/a (n=1)" in table12
    assert "| ours_feature | 0 | 0.0 | 0.0 | 75.62 | 77.96 | 20.00 ± n/a (n=1)" in table12
    assert "best validation val_top1" in table12 and "25.00 ± n/a (n=1)" in table12  # objective from the task
    assert "0.1^2" in table12 and table12.count("not run") >= 3
    assert "31.00" not in table12  # the main runs are not mixed into the ablation
    table1 = _section(everything, 1)
    assert "1.71" in table1 and "no finished runs of task `voxceleb`" in table1
    # every cell is traceable: footnotes name the fixture runs
    for key in (("baseline", 0), ("ours_feature", 1), ("t12", 0.04)):
        assert ids[key] in report
    figures = sorted(out.glob("*.png"))
    names = {p.name for p in figures}
    assert {"curves_cifar100.png", "tsne.png", "table12_ablation.png"} <= names
    assert report.count("How to read it:") == 2 and "metrics.term_*" in report and "open triangles" in report
    for p in figures:
        assert p.read_bytes()[:8] == PNG and plt.imread(p).shape[0] > 100
        assert f"]({p.name})" in report
    assert "profile" in report and "quick" in report and "hp.feat_dist | l2sq_norm_sum" in report


def test_report_rows_are_runs_not_pooled(tmp_path, fixture_store):
    """A method the paper table lacks gets a row; two configurations are two rows; seeds are counted once."""
    uri, ids = fixture_store
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("xkd-cifar100").experiment_id
    for seed, acc in ((0, 31.0), (1, 34.0)):  # KD is not in the paper's Table 7
        log_run(client, exp, "kd", seed, {"test_top1": acc}, params={"hp.temperature": 4.0})
    log_run(client, exp, "kd", 0, {"test_top1": 50.0}, params={"hp.temperature": 1.0})  # another configuration
    log_run(client, exp, "baseline", 1, {"test_top1": 32.0})  # a rerun of seed 1: not a third sample
    # another teacher is another setting: its own column block, never averaged with the first
    log_run(client, exp, "baseline", 0, {"test_top1": 60.0}, params={"teacher_id": "open_clip/ViT-B-16/openai"})
    # a smaller data fraction than the profile's is left out of Table 7, and counted
    log_run(client, exp, "baseline", 0, {"test_top1": 10.0}, params={"data_fraction": 0.25})
    # a run off its profile's values is its own setting, and the header names the deviation
    log_run(client, exp, "baseline", 0, {"test_top1": 70.0}, params={"epochs": 2})
    table7 = _section(build_report(uri, tmp_path / "r").read_text(), 7)
    assert "[resnet8_w16, quick, epochs=2, teacher_id=minilm-l6-v2/raw-meanpool]" in _header(table7)
    assert "70.00 ± n/a (n=1)" in table7
    kd_rows = [line for line in table7.splitlines() if line.startswith("| kd")]
    assert len(kd_rows) == 2, kd_rows
    t4 = next(r for r in kd_rows if "temperature=4.0" in r)
    t1 = next(r for r in kd_rows if "temperature=1.0" in r)
    assert "| - | - |" in t4 and "32.50 ± 2.12 (n=2)" in t4 and "50.00 ± n/a (n=1)" in t1
    assert "+1.50" in t4  # paired with the baseline's seeds 0, 1: (31 - 30, 34 - 32)
    base = next(line for line in table7.splitlines() if line.startswith("| baseline"))
    assert "31.00 ± 1.41 (n=2)" in base and "60.00 ± n/a (n=1)" in base
    assert "teacher_id=open_clip/ViT-B-16/openai" in _header(table7)
    assert "10.00" not in table7 and "1 finished runs at a data fraction other than their profile's (0.25)" in table7


def test_synthetic_sweep_table_pairs_by_seed_per_gamma(tmp_path):
    """Gains against gamma: each cell is the paired difference over the seeds of that gamma only (hand values),
    with the teacher's and the baseline's accuracy; a run at another beta is not pooled in."""
    uri, client, exp = fake_store(tmp_path / "syn.db", "xkd-synthetic")
    common = {
        "task": "synthetic",
        "student": "mlp",
        "teacher_id": "mlp-teacher/x",
        "n_train": 2000,
        "n_val": 1000,
        "n_test": 2000,
        "synth_beta": 0.25,
    }
    acc = {  # (gamma, seed) -> (teacher, baseline, kd)
        (0.0, 0): (70.0, 20.0, 18.0),
        (0.0, 1): (72.0, 22.0, 21.0),
        (0.0, 2): (71.0, 21.0, 19.0),
        (1.0, 0): (70.0, 60.0, 64.0),
        (1.0, 1): (72.0, 62.0, 65.0),
        (1.0, 2): (71.0, 61.0, 66.0),
    }
    for (gamma, seed), (t, b, k) in acc.items():
        for method, v in (("baseline", b), ("kd", k)):
            log_run(client, exp, method, seed, {"test_top1": v}, params={**common, "synth_gamma": gamma, "teacher_test_acc": t})
    log_run(
        client,
        exp,
        "kd",
        0,
        {"test_top1": 99.0},
        params={**common, "synth_gamma": 1.0, "synth_beta": 1.0, "teacher_test_acc": 70.0},
    )
    out = tmp_path / "r"
    report = build_report(uri, out).read_text()
    section = report.split("### Synthetic task: gain over the baseline against gamma")[1].split("\n### ")[0]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| gamma")
    }
    assert rows["teacher (own test acc.)"] == ["71.00 ± 1.00 (n=3)"] * 2 + [""]
    assert rows["baseline (test top-1)"] == ["21.00 ± 1.00 (n=3)", "61.00 ± 1.00 (n=3)", ""]
    # kd - baseline: gamma 0: -2, -1, -2 (mean -1.67); gamma 1: +4, +3, +5 (mean +4.00, sd 1, CI +-2.48)
    # p: gamma 0 t=-5.0 -> 0.0377, gamma 1 t=6.93 -> 0.0202; Holm over the table's 2 cells: 2 x 0.0202 = 0.040,
    # then max(0.040, 1 x 0.0377) = 0.040: both keep their star
    assert rows["kd"][0].startswith("-1.67 [") and rows["kd"][0].endswith("p_Holm=0.04 *")
    assert rows["kd"][1] == "+4.00 [+1.52, +6.48] (n=3) p_Holm=0.04 *"
    # slope per seed (two points each): 4 - (-2) = 6, 3 - (-1) = 4, 5 - (-2) = 7; mean 5.67, sd 1.53, n 3
    half = 4.302653 * np.std([6, 4, 7], ddof=1) / np.sqrt(3)
    assert rows["kd"][2] == f"+5.67 [{17 / 3 - half:+.2f}, {17 / 3 + half:+.2f}] (n=3) p_Holm=0.023 *"
    assert "beta=" not in section.split("Setting:")[1].split("\n")[0] or "synth_beta=0.25" in section
    assert (out / "synthetic_gamma.png").read_bytes()[:8] == PNG
    # the training curves show the primary comparison's setting (gamma = 1), not the sweep's first (gamma = 0,
    # where nothing can transfer), though both are equally populated
    curves = next(line for line in report.splitlines() if "Training curves, synthetic" in line)
    assert "synth_gamma=1.0" in curves and "synth_gamma=0.0" not in curves, curves
    # the beta = 1 run has no baseline of its setting: its beta section shows no gain for it, never a pooled one
    beta = report.split("### Synthetic task: gain over the baseline against beta")[1].split("\n### ")[0]
    kd_row = next(line for line in beta.splitlines() if line.startswith("| kd |"))
    assert kd_row.split("|")[2:-1][1].strip() == "—" and "99" not in beta


def _header(section: str) -> str:
    return next(line for line in section.splitlines() if line.startswith("| method"))


def test_holm_adjustment_and_no_spread():
    """Holm's step-down by hand: p = (0.01, 0.04, 0.03) in a family of 3 -> 0.03, 0.06, 0.06. A comparison with
    the same difference on every seed has no interval, no p-value, no star; it and a comparison without runs
    (None) are untested members that still count in m: in a family of 5, 0.01 x 5, 0.03 x 4, 0.04 x 3."""
    from benchmark.stats import Paired, holm, paired_difference

    fam = [Paired(1, 0.5, 2, 3, p) for p in (0.01, 0.04, 0.03)]
    holm(fam)
    assert [round(x.p_adj, 10) for x in fam] == [0.03, 0.06, 0.06]
    assert [x.significant for x in fam] == [True, False, False] and fam[0].raw_significant
    same = paired_difference(pd.Series([5.0, 7.0, 9.0], index=list("abc")), pd.Series([3.0, 5.0, 7.0], index=list("abc")))
    holm(fam + [same, None])
    assert [round(x.p_adj, 10) for x in fam] == [0.05, 0.12, 0.12] and not any(x.significant for x in fam)
    assert str(same) == "+2.00 (n=3, no spread)" and not same.significant and same.p_adj is None


def _two_settings_store(tmp_path, params_b):
    uri, client, exp = fake_store(tmp_path / "pool.db", "xkd-cifar100")
    fact_a = {"precision_resolved": "fp32", "world_size": 1, "code_version": "0.1.0+gaaaa"}
    for seed in (0, 1):
        log_run(client, exp, "baseline", seed, {"test_top1": 30.0 + seed}, params=fact_a)
        log_run(client, exp, "kd", seed, {"test_top1": 50.0 + seed}, params={**fact_a, **params_b})
    return build_report(uri, tmp_path / "r").read_text()


@pytest.mark.parametrize("other", [{"precision_resolved": "bf16"}, {"code_version": "0.1.0+gbbbb"}, {"world_size": 8}])
def test_runs_of_another_precision_world_size_or_code_version_never_pair(tmp_path, other):
    """The kd runs differ from the baseline's only in the resolved precision, the world size or the code
    version: they form a setting of their own, with no baseline to pair with (never a Δ of +20)."""
    table7 = _section(_two_settings_store(tmp_path, other), 7)
    assert "+20.00" not in table7
    key = next(iter(other))
    assert f"{key}={other[key]}" in _header(table7)  # the setting is named by what differs


def test_sweep_rows_are_method_configurations(tmp_path):
    """Two configurations of one method in a sweep are two rows (today's bug: +1 and -5 pooled into one)."""
    uri, client, exp = fake_store(tmp_path / "syn.db", "xkd-synthetic")
    common = {"task": "synthetic", "student": "mlp", "teacher_id": "mlp-teacher/x", "synth_beta": 0.25}
    for gamma in (0.0, 1.0):
        for seed in (0, 1, 2):
            log_run(client, exp, "baseline", seed, {"test_top1": 50.0}, params={**common, "synth_gamma": gamma})
            for t, d in ((2.0, 1.0 + 0.1 * seed), (4.0, -5.0 + 0.1 * seed)):
                log_run(
                    client, exp, "kd", seed, {"test_top1": 50.0 + d}, params={**common, "synth_gamma": gamma, "hp.temperature": t}
                )
    text = build_report(uri, tmp_path / "r").read_text()
    section = text.split("### Synthetic task: gain over the baseline against gamma (")[1].split("\n## ")[0]
    kd = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| kd")}
    assert set(kd) == {"kd (temperature=2.0)", "kd (temperature=4.0)"}
    assert "+1.10 [" in kd["kd (temperature=2.0)"] and "-4.90 [" in kd["kd (temperature=4.0)"]


def test_each_table_names_its_teacher_and_how_accurate_it_was(tmp_path):
    uri, client, exp = fake_store(tmp_path / "kd.db", "xkd-cifar100-kd")
    for seed, acc in ((0, 61.0), (1, 63.0)):
        for method in ("baseline", "kd"):
            log_run(
                client,
                exp,
                method,
                seed,
                {"test_top1": 20.0 + seed + (method == "kd")},
                params={
                    "task": "cifar100-kd",
                    "teacher_id": "img-trained/resnet8/abc",
                    "teacher_test_acc": acc,
                    "data_fraction": 1.0,
                },
            )
    report = build_report(uri, tmp_path / "r").read_text()
    section = report.split("## Same-modality control")[1].split("\n## ")[0]
    assert "Teacher [resnet8_w16, quick]: img-trained/resnet8/abc; test top-1 62.00 ± 1.41 (n=2) (over seeds)" in section
    assert "| kd | RepDistiller README | 73.33 |" in section and "| dkd | mdistiller README | 76.32 |" in section
    assert "+1.00 (n=2, no spread)" in section  # kd - baseline is +1 on both seeds
