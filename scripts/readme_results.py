"""README's results tables, generated from the example reports' CSVs (tests/test_readme.py checks that README
holds exactly what this prints, so a number in README always has its source).

    python scripts/readme_results.py           # print the tables
    python scripts/readme_results.py --write   # replace them in README.md (between the results markers)

The confirmatory table reads reports/example/confirmatory/{report.csv,runs.csv} and the protocols in
protocols/; the exploratory table reads reports/example/evidence/report.csv. Only what a CSV cannot hold is
written here: each comparison's count of earlier looks (docs/results.md, "Corrections")."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "reports" / "example"
# protocol name -> what its comparison is, in words, in the order of the table
PROTOCOLS = {
    "synthetic_kd": "KD (T = 4) vs baseline, synthetic, gamma = 1",
    "cifar100_ours_classifier": "Ours-classifier vs baseline, `cifar100`, MiniLM text teacher",
    "cifar100_kd_kd": "KD (T = 4) vs baseline, `cifar100-kd`, ResNet8 image teacher",
}
# (task, method, the comparison and its looks before the evidence table)
EXPLORATORY = [
    (
        "cifar100-kd",
        "kd",
        "`cifar100-kd` (image teacher): KD, T = 4 (3 earlier looks: the 2-epoch table, the "
        "KD-temperature study, a run the same day)",
    ),
    ("synthetic", "kd", "`synthetic`, gamma = 1: KD (2: the sweep, the evidence runs)"),
    (
        "cifar100",
        "ours_classifier",
        "`cifar100` (MiniLM text teacher): Ours-classifier (2 superseded tables; seeds 3-4 added after n = 3 read p = 0.040)",
    ),
    (
        "tinyimagenet",
        "ours_classifier",
        "`tinyimagenet` (MiniLM): Ours-classifier (2 superseded tables; seeds 3-4 added afterwards)",
    ),
]
BEGIN, END = "<!-- results tables: scripts/readme_results.py -->", "<!-- end of results tables -->"


def _mean_std(row, metric="test_top1") -> str:
    return f"{row[f'{metric}_mean']:.2f} ± {row[f'{metric}_std']:.2f}"


def _delta(row) -> str:
    return f"{row['delta']:+.2f} [{row['delta_ci_low']:+.2f}, {row['delta_ci_high']:+.2f}]"


def confirmatory() -> str:
    from benchmark.protocol import all_protocols

    rep = pd.read_csv(EXAMPLES / "confirmatory" / "report.csv")
    runs = pd.read_csv(EXAMPLES / "confirmatory" / "runs.csv", dtype=str)
    protos = {p.name: p for p in all_protocols(ROOT / "protocols").values()}
    lines = [
        "| protocol: comparison (n, seeds) | first run started (UTC) | baseline | method | Δ, 95% CI | p, two-sided |",
        "|---|---|---|---|---|---|",
    ]
    for name, words in PROTOCOLS.items():
        proto = protos[name]
        head = f"[`{name}`](protocols/{name}.toml): {words} ({len(proto.seeds)}, {proto.seeds[0]}-{proto.seeds[-1]})"
        mine = rep[rep["setting"].str.contains(f"protocol={proto.tag}", regex=False)]
        prim = mine[mine["confirmatory"].astype(bool)]
        if prim.empty:
            lines.append(f"| {head} | not yet reported (a fixed-n protocol is read once all its runs are done) | | | | |")
            continue
        p, base = prim.iloc[0], mine[mine["method"] == proto.baseline].iloc[0]
        start = pd.to_datetime(runs.loc[runs["params.protocol"] == proto.tag, "start_time"], utc=True).min()
        verdict = (
            ("**resolved, better**" if p["delta"] > 0 else "**resolved, worse**") if p["p"] < proto.alpha else "not resolved"
        )
        delta = f"**{_delta(p)}**" if p["p"] < proto.alpha else _delta(p)
        lines.append(
            f"| {head} | {start:%Y-%m-%d %H:%M} | {_mean_std(base)} | {_mean_std(p)} | {delta} | {p['p']:.2g}: {verdict} |"
        )
    return "\n".join(lines)


def exploratory() -> str:
    rep = pd.read_csv(EXAMPLES / "evidence" / "report.csv")
    lines = [
        "| comparison (looks before this table) | baseline | method | Δ, 95% CI | p (p_Holm in its table) |",
        "|---|---|---|---|---|",
    ]
    for task, method, words in EXPLORATORY:
        here = rep[rep["task"] == task]
        row, base = here[here["method"] == method].iloc[0], here[here["method"] == "baseline"].iloc[0]
        family = int(here["p"].notna().sum())
        lines.append(
            f"| {words} | {_mean_std(base)} | {_mean_std(row)} (n={int(row['test_top1_n'])}) | {_delta(row)} "
            f"| {row['p']:.2g} ({row['p_holm']:.2g}, of {family}) |"
        )
    return "\n".join(lines)


def tables() -> str:
    return (
        f"{BEGIN}\n**Confirmatory** ([reports/example/confirmatory](reports/example/confirmatory/report.md)):\n\n"
        f"{confirmatory()}\n\n**Exploratory, the comparisons once called primary** "
        f"([reports/example/evidence](reports/example/evidence/report.md), code `0bd6057`):\n\n"
        f"{exploratory()}\n{END}"
    )


def main(argv: list[str]) -> int:
    text = tables()
    if "--write" not in argv:
        print(text)
        return 0
    readme = ROOT / "README.md"
    old = readme.read_text()
    start, end = old.index(BEGIN), old.index(END) + len(END)
    readme.write_text(old[:start] + text + old[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
