"""What makes a table citable: comparisons counted and corrected as a family, the negative-control teachers in
the report, and the random teacher (its architecture untrained, seeded). What the shuffled, class-mean and
label-smoothing controls feed a run: tests/test_teacher_feed.py; the power arithmetic: tests/test_stats.py."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from conftest import run_cli_inprocess, run_context
from reports.generate import build_report
from stores import fake_store, log_run


def _store(tmp_path, rows):
    uri, client, exp = fake_store(tmp_path / "e.db", "xkd-cifar100")
    for method, seed, acc, params in rows:
        log_run(client, exp, method, seed, {"test_top1": acc}, params=params)
    return uri


def test_a_comparison_that_survives_below_the_baseline_is_counted_as_worse(tmp_path):
    """kd 4, 5, 6 above the baseline (p_Holm 0.026), pkt -4, -5, -6 below it: both survive Holm over the two;
    the verdict counts one better and one worse (it used to say '2 survive; the best is kd' only)."""
    base = [30.0, 31.0, 32.0]
    diffs = {"kd": [4, 5, 6], "pkt": [-4, -5, -6]}
    rows = [("baseline", s, base[s], {}) for s in range(3)]
    rows += [(m, s, base[s] + d[s], {}) for m, d in diffs.items() for s in range(3)]
    report = build_report(_store(tmp_path, rows), tmp_path / "r").read_text()
    assert (
        "**Exploratory** (2 comparisons with the baseline, Holm): 2 survive the correction (1 better than the "
        "baseline, 1 worse); the best is kd"
    ) in report


def test_without_a_protocol_every_comparison_is_exploratory_and_keeps_holm(tmp_path):
    """No run carries a protocol (tests/test_protocol.py has those), so no comparison is tested alone, whatever
    the task. Hand values, t-test with 2 df (two-sided p = 1 - t / sqrt(t^2 + 2)): ours_classifier - baseline =
    2, 3, 1 -> t = 2 sqrt 3, p = 0.0742; kd = 4, 5, 6 -> t = 5 sqrt 3, p = 0.01307; pkt = 0, 1, 2 -> t = sqrt 3,
    p = 0.2254. Holm over the three: kd 3 x 0.01307 = 0.0392, ours_classifier max(that, 2 x 0.0742) = 0.1484,
    pkt max(that, 0.2254)."""
    base = [30.0, 31.0, 32.0]
    diffs = {"ours_classifier": [2, 3, 1], "kd": [4, 5, 6], "pkt": [0, 1, 2]}
    rows = [("baseline", s, base[s], {}) for s in range(3)]
    rows += [(m, s, base[s] + d[s], {}) for m, d in diffs.items() for s in range(3)]
    out = tmp_path / "r"
    report = build_report(_store(tmp_path, rows), out).read_text()
    csv = pd.read_csv(out / "report.csv").set_index("method")
    assert not csv["confirmatory"].any()
    p_ours, p_kd = 1 - 12**0.5 / 14**0.5, 1 - 75**0.5 / 77**0.5
    assert csv.loc["kd", "p_holm"] == pytest.approx(3 * p_kd, rel=1e-9)
    assert csv.loc["ours_classifier", "p_holm"] == pytest.approx(2 * p_ours, rel=1e-9)
    assert csv.loc["pkt", "p_holm"] == pytest.approx(1 - 3**0.5 / 5**0.5, rel=1e-9)
    assert "Confirmatory" not in report and "pre-registered" not in report
    assert (
        "**Exploratory** (3 comparisons with the baseline, Holm): 1 survives the correction (1 better than the "
        "baseline, 0 worse); the best is kd"
    ) in report
    assert "Power: with n = 3 seeds" in report and "minimum detectable paired effect at 80% power" in report


def test_control_runs_leave_the_leaderboard_and_show_their_transfer(tmp_path):
    """kd with a shuffled teacher is not a leaderboard row (never pooled with kd, never paired with the
    baseline there); the control table gives, per seed, real gain 5, 6, 7, control gain 1, 1, 4 and their
    transfer 4, 5, 3 (mean 4, sd 1), paired by seed, from the real setting's baseline."""
    base = [30.0, 31.0, 32.0]
    rows = [("baseline", s, base[s], {}) for s in range(3)]
    rows += [("kd", s, base[s] + (5, 6, 7)[s], {"hp.temperature": 4.0}) for s in range(3)]
    rows += [("kd", s, base[s] + (1, 1, 4)[s], {"hp.temperature": 4.0, "teacher_control": "shuffled"}) for s in range(3)]
    out = tmp_path / "r"
    report = build_report(_store(tmp_path, rows), out).read_text()
    board = report.split("## Leaderboards")[1].split("\n## ")[0]
    assert board.count("| kd") == 1 and "teacher_control" not in board
    controls = report.split("## Negative controls")[1].split("\n## ")[0]
    row = next(line for line in controls.splitlines() if line.startswith("| kd"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "shuffled" and cells[2].startswith("+6.00 [") and cells[3].startswith("+2.00 [")
    half = 4.302653 * 1.0 / 3**0.5  # t(0.975, 2) * sd / sqrt(n)
    assert cells[4].startswith(f"+4.00 [{4 - half:+.2f}, {4 + half:+.2f}] (n=3)")
    rec = pd.read_csv(out / "controls.csv").iloc[0]
    assert rec["transfer"] == pytest.approx(4.0) and rec["control_gain"] == pytest.approx(2.0) and rec["gain"] == 6.0


def test_a_store_of_control_runs_alone_is_refused_before_writing(tmp_path):
    from benchmark.registry import UsageError

    uri = _store(tmp_path, [("kd", 0, 30.0, {"teacher_control": "random"})])
    with pytest.raises(UsageError, match="used a control teacher"):
        build_report(uri, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_random_teacher_is_the_architecture_untrained_and_seeded(tmp_path, cifar_dir):
    """teacher_control=random on cifar100-kd: teacher_arch at its initialisation from teacher_seed (the same
    weights for one seed, others for another), never trained (nothing is written to the teacher cache), at
    chance accuracy; on synthetic the MLP teacher untrained, under its own id."""
    from benchmark.registry import TASKS
    from benchmark.resolve import build_config
    from benchmark.teacher_cache import TeacherCache
    from tasks.cifar100_kd import random_teacher

    a, tid = random_teacher("resnet8_w16", 0, 100)
    b, _ = random_teacher("resnet8_w16", 0, 100)
    c, _ = random_teacher("resnet8_w16", 1, 100)
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert tid == "random-init/resnet8_w16/seed0" and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    task = TASKS.get("cifar100-kd")()
    cfg = build_config(task, "smoke", {"data_dir": str(cifar_dir)}, {"teacher_control": "random"})
    data = task.load(cfg)
    tables = task.teacher_tables(cfg, data, TeacherCache(tmp_path / "c"))
    assert tables.teacher_id == "random-init/resnet8_w16/seed0" and not (tmp_path / "c" / "image-teachers").exists()
    assert tables.params["teacher_test_acc"] < 5  # 100 classes: chance is 1%
    again = task.teacher_tables(cfg, data, TeacherCache(tmp_path / "c"))  # the same seeded weights: the same teacher
    other = task.teacher_tables(replace(cfg, teacher_seed=1), data, TeacherCache(tmp_path / "c"))
    assert again.digest() == tables.digest() != other.digest()
    syn = run_context("synthetic", "smoke", "random", cache=tmp_path / "s")
    assert syn.tables.teacher_id == "mlp-teacher/128-64/untrained/seed0"
    assert syn.tables.params["teacher_test_acc"] < 25  # 20 classes: chance is 5%; the trained one is about 90%


@pytest.mark.parametrize("task,control", [("cifar100", "random"), ("paired", "random")])
def test_a_control_a_teacher_cannot_give_is_refused_before_writing(tmp_path, task, control):
    r = run_cli_inprocess(
        ["run", "--task", task, "--profile", "smoke", "--methods", "kd", "--set", f"teacher_control={control}"], tmp_path
    )
    assert (
        r.returncode == 2
        and f"teacher_control={control}: the teacher of task '{task}' has no such control" in r.stderr
        and "tasks with random: cifar100-kd, synthetic" in r.stderr
    )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_the_control_table_splits_a_gain_into_label_level_and_per_sample_parts(tmp_path):
    """kd gains 5, 6, 7 with the real teacher and 2, 3, 1 with its class means: label-level part +2.00, per-sample
    part 3, 3, 6 (mean 4, t = 4 with 2 df, p = 0.057); pkt gains 1, 2, 3 and 1, 2, 4 with the class means:
    per-sample part 0, 0, -1 (p = 0.42). With 3 seeds neither is claimed; with a fourth seed (kd +9 real, +5
    class-mean: parts 3, 3, 6, 4, p = 0.011; pkt 0, 0, -1, 0, p = 0.39) Holm gives kd 2 x 0.011 = 0.022: kd's
    per-sample part is claimed, pkt's not."""

    def report_of(seeds, folder):
        base = [30.0, 31.0, 32.0, 33.0]
        rows = [("baseline", s, base[s], {}) for s in range(seeds)]
        for m, real, mean in (("kd", (5, 6, 7, 9), (2, 3, 1, 5)), ("pkt", (1, 2, 3, 2), (1, 2, 4, 2))):
            rows += [(m, s, base[s] + real[s], {}) for s in range(seeds)]
            rows += [(m, s, base[s] + mean[s], {"teacher_control": "class_mean"}) for s in range(seeds)]
        text = build_report(_store(folder, rows), folder / "r").read_text()
        return text.split("## Negative controls")[1].split("\n## ")[0]

    three = report_of(3, tmp_path / "a")
    assert "the control gain is the label-level part of the gain and the transfer its per-sample part" in three
    kd = [c.strip() for c in next(x for x in three.splitlines() if x.startswith("| kd")).split("|")[1:-1]]
    assert kd[1] == "class_mean" and kd[3].startswith("+2.00 [") and kd[4].startswith("+4.00 [")
    assert "**Per-sample knowledge** (the transfer against class_mean, above 0 after Holm): none; not shown for kd, pkt" in three
    four = report_of(4, tmp_path / "b")
    assert "above 0 after Holm): kd +4.00; not shown for pkt" in four


def test_the_teacher_modality_table_pairs_the_same_method_and_seed_across_the_two_teachers():
    """scripts/teacher_modality.py on hand values: baselines 30, 31, 32 on both tasks; kd +1, +2, +3 over it
    with the text teacher and +6, +7, +5 with the image teacher: image - text = 5, 5, 2 (mean 4, sd 1.73);
    a control run and a run of another method on one task only are left out; FitNet (maps on one teacher, vector
    on the other) is named with both forms."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from teacher_modality import table

    rows = []
    for task, gains in (("cifar100", (1, 2, 3)), ("cifar100-kd", (6, 7, 5))):
        for s in range(3):
            rows.append({"params.task": task, "params.method": "baseline", "params.seed": s, "metrics.test_top1": 30 + s})
            rows.append({"params.task": task, "params.method": "kd", "params.seed": s, "metrics.test_top1": 30 + s + gains[s]})
    rows.append(
        {
            "params.task": "cifar100-kd",
            "params.method": "kd",
            "params.seed": 0,
            "metrics.test_top1": 1.0,
            "params.teacher_control": "shuffled",
        }
    )
    rows.append({"params.task": "cifar100-kd", "params.method": "pkt", "params.seed": 0, "metrics.test_top1": 50.0})
    for task, form in (("cifar100", "vector"), ("cifar100-kd", "maps")):
        rows += [
            {
                "params.task": task,
                "params.method": "fitnet",
                "params.seed": s,
                "metrics.test_top1": 31.0 + s,
                "params.fitnet_form": form,
            }
            for s in range(3)
        ]
    runs = pd.DataFrame(rows).assign(**{"params.code_version": "x", "tags.xkd.study": ""})
    runs["params.teacher_control"] = runs["params.teacher_control"].fillna("none")
    out = table(runs)
    kd = next(line for line in out.splitlines() if line.startswith("| kd"))
    cells = [c.strip() for c in kd.split("|")[2:-1]]
    assert cells[0].startswith("+2.00 [") and cells[1].startswith("+6.00 [")
    assert cells[2].startswith("+4.00 [") and "(n=3)" in cells[2]
    assert "pkt" not in out and "baselines: text task 31.00, image task 31.00" in out
    # a method whose loss reads the image teacher's maps but the text teacher's embedding is named with both forms
    assert "| fitnet (maps on the image teacher, vector on the text teacher) |" in out
    assert "| kd |" in out


def test_the_teacher_type_table_splits_the_image_gain_with_the_class_mean_control():
    """With class-mean runs of kd on cifar100-kd (gains +2, +3, +1 over the baseline 30, 31, 32), the table adds
    the label-level part (+2.00), class-mean - text (kd's text gains +1, +2, +3: +1, +1, -2, mean 0) and the
    per-sample part (image gains +6, +7, +5 minus class-mean: +4, +4, +4, no spread)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from teacher_modality import table

    rows = []
    for task, gains in (("cifar100", (1, 2, 3)), ("cifar100-kd", (6, 7, 5))):
        for s in range(3):
            rows.append({"params.task": task, "params.method": "baseline", "params.seed": s, "metrics.test_top1": 30 + s})
            rows.append({"params.task": task, "params.method": "kd", "params.seed": s, "metrics.test_top1": 30 + s + gains[s]})
    rows += [
        {
            "params.task": "cifar100-kd",
            "params.method": "kd",
            "params.seed": s,
            "params.teacher_control": "class_mean",
            "metrics.test_top1": 30 + s + (2, 3, 1)[s],
        }
        for s in range(3)
    ]
    runs = pd.DataFrame(rows).assign(**{"params.code_version": "x", "tags.xkd.study": ""})
    out = table(runs)
    assert "label-level part: image class-mean − baseline" in out
    cells = [c.strip() for c in next(x for x in out.splitlines() if x.startswith("| kd")).split("|")[2:-1]]
    assert cells[3].startswith("+2.00 [") and cells[4].startswith("+0.00 [") and cells[5] == "+4.00 (n=3, no spread)"


def test_a_surviving_comparison_says_which_way(tmp_path):
    """ours_classifier - baseline = -4, -5, -6 (p = 0.013, a family of one): it survives, worse than the baseline."""
    base = [30.0, 31.0, 32.0]
    rows = [("baseline", s, base[s], {}) for s in range(3)]
    rows += [("ours_classifier", s, base[s] - (4, 5, 6)[s], {}) for s in range(3)]
    report = build_report(_store(tmp_path, rows), tmp_path / "r").read_text()
    assert "1 survives the correction (0 better than the baseline, 1 worse)" in report


def test_a_gain_is_tested_across_teacher_instances_with_teachers_and_seeds_crossed(tmp_path):
    """Three teachers of one recipe (teacher_seed 0, 1, 2) sharing the student seeds and the baseline (30, 31,
    32). kd gains 5, 6, 7 / 2, 3, 4 / 8, 9, 10: teacher means 6, 3, 9, seed effects -1, 0, 1, no residual, so
    MS_teacher = 3 (0 + 9 + 9) / 2 = 27, MS_seed = 3 (1 + 0 + 1) / 2 = 3, MS_residual = 0: SE = sqrt(30 / 9),
    Satterthwaite df = 30^2 / (27^2 / 2 + 3^2 / 2). pkt gains 1, 2, 3 / 2, 3, 4 / 3, 4, 5: MS 3, 3, 0, SE =
    sqrt(6 / 9), df 4. Holm over both. A fourth teacher with kd runs but no baseline is named and left out;
    control runs take no part."""
    from scipy import stats

    rows = []
    for t, (kd, pkt) in enumerate((((5, 6, 7), (1, 2, 3)), ((2, 3, 4), (2, 3, 4)), ((8, 9, 10), (3, 4, 5)))):
        params = {
            "task": "cifar100-kd",
            "teacher_seed": t,
            "teacher_id": f"img-trained/resnet8/key{t}",
            "teacher_test_acc": 47.0 + t,
        }
        for s in range(3):
            rows += [
                ("baseline", s, 30.0 + s, params),
                ("kd", s, 30.0 + s + kd[s], params),
                ("pkt", s, 30.0 + s + pkt[s], params),
                ("kd", s, 1.0, {**params, "teacher_control": "shuffled"}),
            ]
    rows += [
        ("kd", s, 90.0, {"task": "cifar100-kd", "teacher_seed": 3, "teacher_id": "img-trained/resnet8/key3"}) for s in range(3)
    ]
    out = tmp_path / "r"
    report = build_report(_store(tmp_path, rows), out).read_text()
    section = report.split("## Teacher instances")[1].split("\n## ")[0]
    assert "4 teacher instances of one recipe (`teacher_seed` 0, 1, 2, 3)" in section
    assert "except 3 (left out: no baseline)" in section
    assert "teacher_seed=1 (teacher 48.00%): Δ" in section and "teacher_seed=3 (" not in section
    kd = [c.strip() for c in next(x for x in section.splitlines() if x.startswith("| kd")).split("|")[1:-1]]
    assert [c.split(" [")[0] for c in kd[1:4]] == ["+6.00", "+3.00", "+9.00"]
    se_kd, df_kd = (30 / 9) ** 0.5, 900 / (27**2 / 2 + 3**2 / 2)
    half = stats.t.ppf(0.975, df_kd) * se_kd
    assert kd[4].startswith(f"+6.00 [{6 - half:+.2f}, {6 + half:+.2f}] (n=3)") and kd[5:] == ["3.00", "1.00"]
    rec = pd.read_csv(out / "teachers.csv").set_index("configuration")
    p_kd, p_pkt = 2 * stats.t.sf(6 / se_kd, df_kd), 2 * stats.t.sf(3 / (6 / 9) ** 0.5, 4)
    assert rec.loc["kd", "p"] == pytest.approx(p_kd, rel=1e-9) and rec.loc["pkt", "p"] == pytest.approx(p_pkt, rel=1e-9)
    assert rec.loc["pkt", "p_holm"] == pytest.approx(2 * p_pkt, rel=1e-9)
    assert rec.loc["kd", "p_holm"] == pytest.approx(max(2 * p_pkt, p_kd), rel=1e-9)
    assert "Holm over the 2 methods of this table)" in section and "crossed random effects" in section
    assert rec.loc["kd", "gain_over_teachers"] == pytest.approx(6.0) and rec.loc["kd", "teachers"] == 3
    assert rec.loc["kd", "gain_teacher_seed_2"] == pytest.approx(9.0)
    assert rec.loc["kd", "sd_between_teachers"] == pytest.approx(3.0)
    assert rec.loc["kd", "sd_within_teacher"] == pytest.approx(1.0)
    assert "Power over teachers: with k = 3 teachers crossed with the student seeds" in section
    summary = report.split("## Summary")[1].split("\n## ")[0]
    survive = int(rec.loc["kd", "p_holm"] < 0.05) + int(rec.loc["pkt", "p_holm"] < 0.05)
    assert (
        f"**Across 3 teacher instances** (cifar100-kd: resnet8_w16, quick, teachers and seeds crossed): "
        f"{survive} of 2 methods survive"
    ) in summary and f"the largest gain is kd, Δ +6.00 [{6 - half:+.2f}" in summary


def test_a_store_of_one_teacher_instance_has_no_teacher_instance_section(tmp_path):
    rows = [
        (m, s, 30.0 + s + (m == "kd") * (1 + s), {"task": "cifar100-kd", "teacher_seed": 0})
        for m in ("baseline", "kd")
        for s in range(3)
    ]
    out = tmp_path / "r"
    assert "## Teacher instances" not in build_report(_store(tmp_path, rows), out).read_text()
    assert not (out / "teachers.csv").exists()


def test_a_method_run_with_one_teacher_only_is_not_a_teacher_instance_row(tmp_path):
    """Two teachers with a baseline each; kd ran with both, pkt with the first only: pkt's single gain is the
    leaderboard's, not a row here. kd gains 1, 2 (seeds) with teacher 0 and 3, 4 with teacher 1: means 1.5, 3.5."""
    rows = []
    for t in (0, 1):
        params = {"task": "cifar100-kd", "teacher_seed": t, "teacher_id": f"img-trained/resnet8/key{t}"}
        rows += [("baseline", s, 30.0 + s, params) for s in range(2)]
        rows += [("kd", s, 30.0 + s + 1 + s + 2 * t, params) for s in range(2)]
    rows += [
        ("pkt", s, 35.0, {"task": "cifar100-kd", "teacher_seed": 0, "teacher_id": "img-trained/resnet8/key0"}) for s in range(2)
    ]
    out = tmp_path / "r"
    section = build_report(_store(tmp_path, rows), out).read_text().split("## Teacher instances")[1].split("\n## ")[0]
    assert "| pkt" not in section and "| kd" in section
    assert pd.read_csv(out / "teachers.csv")["gain_over_teachers"].tolist() == [2.5]
