"""Run the Modality Focusing Hypothesis authors' own code (github.com/zihuixue/MFH, gauss/main.py, unmodified)
seed by seed and write each run's accuracies, so that their curves can be compared with the harness's
`mfh` task point by point with confidence intervals (their script prints only mean ± std).

    git clone https://github.com/zihuixue/MFH /tmp/MFH
    python scripts/mfh_reference.py --mfh /tmp/MFH/gauss --out mfh_reference.csv [--runs 10]
    python scripts/mfh_reference.py --compare mfh_reference.csv --tracking-uri sqlite:///runs/mfh/mlflow.db

Their seeds: run i of a setting uses seed i for training data and i + 1 for test data (as their exp1/exp2).
--compare prints, per experiment and gamma, KD - no-KD (mean [95% CI], n) of theirs and of the harness's runs.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

EXPERIMENTS = (("exp1", "increase_gamma", [0, 2, 4, 6, 8, 10]), ("exp2", "increase_alpha", [0, 10, 20, 30, 40]))


def run_theirs(folder: Path, out: Path, runs: int) -> None:
    import torch

    sys.path.insert(0, str(folder))
    import main as mfh  # their module: functions only run under its __main__ guard

    mfh.device = torch.device("cpu")
    from tasks.mfh_data import gamma_of

    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "mode", "dim", "gamma", "seed", "teacher_acc", "no_kd_acc", "kd_acc"])
        for exp, mode, dims in EXPERIMENTS:
            for d in dims:
                for i in range(runs):
                    t, b, k = mfh.run_mm(i, d, mode)
                    w.writerow([exp, mode, d, round(gamma_of(mode, d), 4), i, 100 * t, 100 * b, 100 * k])
                    f.flush()


def compare(ref: Path, uri: str) -> None:
    import mlflow
    import pandas as pd

    from benchmark.stats import holm, paired_difference, per_seed

    theirs = pd.read_csv(ref)
    mlflow.set_tracking_uri(uri)
    ours = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'FINISHED'")
    ours = ours[ours["params.task"] == "mfh"]
    print(
        "| experiment | gamma | theirs: teacher / no-KD / KD | theirs: KD - no-KD | ours: teacher / no-KD / KD "
        "| ours: KD - no-KD |"
    )
    print("|---|---|---|---|---|---|")
    rows = []
    for (exp, mode, d), g in theirs.groupby(["experiment", "mode", "dim"], sort=False):
        diff = paired_difference(g["kd_acc"].reset_index(drop=True), g["no_kd_acc"].reset_index(drop=True))
        o = ours[(ours["params.mfh_mode"] == mode) & (ours["params.mfh_dim"] == str(d))]
        kd, base = (o[o["params.method"] == m] for m in ("kd", "baseline"))
        k, b = (per_seed(x["metrics.test_top1"], x["params.seed"]) for x in (kd, base))
        mine = paired_difference(k, b) if len(k) and len(b) else None
        t_ours = pd.to_numeric(base["params.teacher_test_acc"]).mean() if len(base) else float("nan")
        rows.append((exp, mode, g, diff, t_ours, b, k, mine))
    for exp in dict.fromkeys(r[0] for r in rows):  # Holm within each experiment, for each side
        holm([r[3] for r in rows if r[0] == exp])
        holm([r[7] for r in rows if r[0] == exp])
    for exp, mode, g, diff, t_ours, b, k, mine in rows:
        print(
            f"| {exp} ({mode}) | {g['gamma'].iloc[0]:.2f} | {g['teacher_acc'].mean():.2f} / {g['no_kd_acc'].mean():.2f} / "
            f"{g['kd_acc'].mean():.2f} | {diff} | {t_ours:.2f} / {b.mean():.2f} / {k.mean():.2f} | {mine or '—'} |"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--mfh", type=Path, help="their gauss/ folder (holds main.py)")
    ap.add_argument("--out", type=Path, default=Path("mfh_reference.csv"))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--compare", type=Path, help="a CSV written by this script")
    ap.add_argument("--tracking-uri", default="sqlite:///runs/mfh/mlflow.db")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if a.compare:
        compare(a.compare, a.tracking_uri)
    elif a.mfh:
        run_theirs(a.mfh, a.out, a.runs)
    else:
        ap.error("give --mfh FOLDER (run theirs) or --compare CSV")
