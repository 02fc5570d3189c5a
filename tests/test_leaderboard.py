"""reports/leaderboard.py's checks: the summary says what went wrong before any table (issue 45): a run at or
below chance, a flat training loss, a failed positive control, a smoke-profile table, no primary line; and
the power line per comparison's own n (benchmark/stats.py power_line)."""

import math

import pandas as pd

from benchmark.stats import Paired, power_line
from reports.generate import build_report


def _runs(path, rows, task="cifar100-kd", profile="quick"):
    recs = []
    for k, (method, seed, top1, first, last) in enumerate(rows):
        recs.append(
            {
                "run_id": f"{k:032x}",
                "params.task": task,
                "params.method": method,
                "params.seed": seed,
                "params.profile": profile,
                "params.student": "resnet8_w16",
                "params.num_classes": 20,
                "params.data_fraction": 1.0,
                "params.teacher_id": "img-trained/resnet32x4/k",
                "params.n_train": 900,
                "params.n_val": 100,
                "params.n_test": 200,
                "params.hp.temperature": 4.0 if method == "kd" else None,
                "metrics.test_top1": top1,
                "metrics.first_epoch_train_loss": first,
                "metrics.train_loss": last,
                "tags.xkd.kind": "train",
            }
        )
    pd.DataFrame(recs).to_csv(path, index=False)
    return path


def _summary(tmp_path, rows, **kw):
    tmp_path.mkdir(exist_ok=True)
    report = build_report(None, tmp_path / "out", files=[_runs(tmp_path / "runs.csv", rows, **kw)]).read_text()
    return report[report.index("## Summary") : report.index("## Leaderboards")]


def test_below_chance_flat_loss_and_a_failed_positive_control_are_said_first(tmp_path):
    rows = [
        (m, s, top1 + s * d, first, last)
        for s in range(3)
        for m, top1, d, first, last in (
            ("baseline", 30.0, 1.0, 3.0, 2.0),
            ("kd", 29.0, 1.3, 3.0, 2.1),
            ("fitnet", 4.4, 0.05, 2.996, 2.995),
            ("pkt", 33.0, 0.9, 3.0, 1.9),
        )
    ]
    text = _summary(tmp_path, rows)
    assert "**Check**: fitnet: test top-1 (last epoch) 4.45 is at or below chance (5.00 for 20 classes)" in text
    assert "**Check**: fitnet: its training loss stayed flat (2.996 after the first epoch, 2.995 after the last)" in text
    assert "**Check**: the positive control kd" in text and "did not beat the baseline" in text
    for name in ("baseline", "pkt"):
        assert f"**Check**: {name}" not in text  # above chance, learning
    assert "Smoke profile" not in text and "Confirmatory" not in text  # no protocol's runs here
    assert text.index("**Check**") < text.index("**Exploratory")  # said first


def test_a_passing_control_is_quiet_and_a_smoke_table_says_it_is_a_plumbing_check(tmp_path):
    rows = [(m, s, top1 + s * d, 3.0, 2.0) for s in range(3) for m, top1, d in (("baseline", 30.0, 1.0), ("kd", 33.0, 1.2))]
    text = _summary(tmp_path, rows, profile="smoke")
    assert "**Check**" not in text
    assert "**Smoke profile**: a plumbing check" in text
    assert "`python -m benchmark run --task cifar100-kd --profile quick --seeds 3`" in text
    text = _summary(tmp_path / "b", [(m, s, v + s, 3.0, 2.0) for s in range(2) for m, v in (("baseline", 30.0), ("pkt", 31.0))])
    assert "Confirmatory" not in text and "pre-registered" not in text


def test_the_power_line_takes_each_comparisons_own_n():
    """Before: one n for the table, the smallest, with the SD pooled over all: a method added on 2 seeds beside
    five on 5 made the line read 'n = 2' and a minimum detectable effect of 550 points on a percentage."""
    five = [Paired(1.0, 0.0, 2.0, 5, p=0.01, sd=0.8) for _ in range(5)]
    two = Paired(2.0, -50, 54, 2, p=0.6, sd=40.0)
    line = power_line([*five, two], 6)
    assert "n = 5 (5 comparisons, paired SD 0.80): 1.35 points at α = 0.05" in line
    assert "n = 2 (1 comparison, paired SD 40.00): over 100 points, too few seeds to detect any effect" in line
    assert "550" not in line and "462" not in line
    assert power_line(five, 5).startswith("Power: with n = 5 seeds and a paired SD of 0.80 points")  # as before
    assert "over 100 points: too few seeds" in power_line([two], 1) and "over 10,000 seeds" in power_line([two], 1)
    assert not math.isnan(five[0].sd)
